"""Training renders in checkpointed ray chunks: the gradients of one graph, the saved activations of one chunk."""

from __future__ import annotations

import numpy as np
import torch
from conftest import look_at_c2w
from nerfstudio.cameras.cameras import Cameras

from nerfstudio_3dae.bench.measure import saved_activation_bytes
from nerfstudio_3dae.field import RenderSettings, TriplaneField
from nerfstudio_3dae.triplanes import TriplaneBank, TriplaneMLP


def ring_cameras(num: int, size: int) -> Cameras:
    """``num`` pinhole cameras of ``size``² pixels on a ring, looking at the origin."""
    angles = np.linspace(0, 2 * np.pi, num, endpoint=False)
    c2w = [look_at_c2w(np.array([1.3 * np.cos(a), 1.3 * np.sin(a), 0.5]))[:3] for a in angles]
    return Cameras(
        camera_to_worlds=torch.tensor(np.stack(c2w), dtype=torch.float32),
        fx=size * 1.2,
        fy=size * 1.2,
        cx=size / 2,
        cy=size / 2,
        width=size,
        height=size,
    )


def tiny_field(seed: int = 0, samples: int = 8) -> TriplaneField:
    torch.manual_seed(seed)
    bank = TriplaneBank(2, resolution=8, micro_channels=4, macro_channels=4, num_bases=2)
    mlp = TriplaneMLP(bank.num_channels, 3, hidden_dim=16)
    return TriplaneField(bank, mlp, RenderSettings(0.5, 2.1, samples, samples, 1.0, "torch"))


def loss_and_grads(field: TriplaneField, deterministic: bool, seed: int = 3, order=(0, 1, 2, 3), **chunking):
    """A step's loss and gradients; ``order``: the cameras of the ring in this order, the scene of camera ``i`` is
    ``i % 2`` (the images are put back in ring order before the loss)."""
    order = torch.tensor(order)
    cameras, ids = ring_cameras(4, 12)[order], order % 2
    torch.manual_seed(seed)  # the random samples of the step
    out = field.render(cameras, ids, 1, torch.ones(3), deterministic, **chunking)
    out = {key: out[key][torch.argsort(order)] for key in ("features", "depth")}
    target = torch.linspace(0, 1, out["features"].numel()).reshape(out["features"].shape)
    loss = (out["features"] - target).square().mean() + out["depth"].mean() * 1e-2
    field.zero_grad()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in field.named_parameters()}


def assert_same(a, b) -> None:
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert torch.allclose(loss_a, loss_b, rtol=1e-6, atol=1e-7)
    for name, grad in grads_a.items():
        assert torch.allclose(grad, grads_b[name], rtol=1e-4, atol=1e-7), name


def test_chunked_training_render_has_the_gradients_of_one_graph() -> None:
    field = tiny_field()
    # 4 cameras x 144 rays; chunks of 100 rays (25 per camera) do not divide the image: a ragged last chunk
    assert_same(loss_and_grads(field, True), loss_and_grads(field, True, checkpoint_rays=100))


def test_a_scenes_cameras_rendered_as_one_query_give_the_images_and_gradients_of_one_query_each() -> None:
    """Cameras that come scene after scene are rendered as one query per scene (no planes copied per camera), in one
    graph or in chunks: the same as the same cameras in another order, a query per camera."""
    field = tiny_field()
    per_camera = loss_and_grads(field, True)
    for grouped in ((0, 2, 1, 3), (1, 3, 0, 2)):  # scenes 0, 0, 1, 1 and 1, 1, 0, 0
        assert_same(loss_and_grads(field, True, order=grouped), per_camera)
        assert_same(loss_and_grads(field, True, order=grouped, checkpoint_rays=100), per_camera)


def test_checkpointed_chunks_replay_their_random_samples() -> None:
    field = tiny_field()
    # random samples are drawn chunk by chunk; the backward pass recomputes each chunk with the same samples, so the
    # gradients are those of the same chunks kept in one graph
    assert_same(loss_and_grads(field, False, max_rays=100), loss_and_grads(field, False, checkpoint_rays=100))


def test_chunked_training_render_bounds_the_saved_activations() -> None:
    field = tiny_field(samples=16)
    cameras, ids = ring_cameras(4, 16), torch.tensor([0, 1, 0, 1])

    def step(checkpoint_rays):
        def run():
            out = field.render(cameras, ids, 1, torch.ones(3), False, checkpoint_rays=checkpoint_rays)
            out["features"].mean().backward()

        return saved_activation_bytes(run)

    whole, chunked = step(None), step(128)
    # one graph saves ~1 KiB per ray (32 samples); chunked, only the planes, each chunk's rays and its outputs
    assert chunked < whole / 8, (whole, chunked)
    assert step(4 * 256) == whole  # a batch that fits in one chunk is one graph: nothing recomputed


def test_chunking_only_applies_where_autograd_records() -> None:
    field = tiny_field()
    cameras, ids = ring_cameras(2, 8), torch.tensor([0, 1])
    with torch.no_grad():
        a = field.render(cameras, ids, 1, torch.ones(3), True, checkpoint_rays=16)
        b = field.render(cameras, ids, 1, torch.ones(3), True)
    assert torch.equal(a["features"], b["features"])
