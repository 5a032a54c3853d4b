"""Jittered latent rays (``pixel_jitter``): the moved cameras and the shifted target images agree, the RGB loss
compares with the shifted image, and only training steps jitter."""

from __future__ import annotations

from typing import List

import pytest
import torch
from conftest import look_at_c2w, tiny_pipeline
from nerfstudio.cameras.cameras import Cameras

from nerfstudio_3dae import latent_model
from nerfstudio_3dae.image_layout import shift_images
from nerfstudio_3dae.latent_model import pixel_jitter
from nerfstudio_3dae.method_configs import latent_method
from nerfstudio_3dae.rays import BatchLayout, camera_rays


def test_shift_images_resamples_at_p_plus_shift():
    images = torch.rand(2, 3, 8, 10)
    shift = torch.tensor([[2.0, 0.0], [0.0, -1.0]])
    out = shift_images(images, shift)
    assert torch.allclose(out[0, :, :, :-2], images[0, :, :, 2:], atol=1e-5), "x + 2 pixels"
    assert torch.allclose(out[1, :, 1:], images[1, :, :-1], atol=1e-5), "y - 1 pixel"
    half = shift_images(images, torch.tensor([[0.5, 0.0], [0.0, 0.0]]))
    assert torch.allclose(half[0, :, :, 3], (images[0, :, :, 3] + images[0, :, :, 4]) / 2, atol=1e-5)


def test_a_jittered_camera_sees_its_ray_through_the_shifted_pixel():
    import numpy as np

    c2w = torch.tensor(look_at_c2w(np.array([1.2, 0.4, 0.6])), dtype=torch.float32)[:3][None].repeat(3, 1, 1)
    cameras = Cameras(camera_to_worlds=c2w, fx=40.0, fy=40.0, cx=16.0, cy=16.0, width=32, height=32)
    torch.manual_seed(0)
    shift = pixel_jitter(3, downscale=8, device=torch.device("cpu"))
    assert shift.shape == (3, 2) and bool((shift.abs() <= 4).all()) and bool((shift.abs() > 0).any())
    # [3, 16, 3]: rays of the 4 x 4 latent pixels, by the project's pinhole rays and by nerfstudio's moved cameras
    _, moved_dirs, (h, w) = camera_rays(cameras, BatchLayout(32, 32, (0, 0, 0), pinhole=True), 8, shift)
    _, nerfstudio_dirs, _ = camera_rays(cameras, BatchLayout(32, 32, (0, 0, 0), pinhole=False), 8, shift)
    assert torch.allclose(moved_dirs, nerfstudio_dirs, atol=1e-5)
    for k in range(3):  # the same ray from the original camera, through the latent pixel centre + shift
        one = Cameras(camera_to_worlds=c2w[k : k + 1], fx=40.0, fy=40.0, cx=16.0, cy=16.0, width=32, height=32)
        ys, xs = torch.meshgrid(torch.arange(h) * 8 + 4.0, torch.arange(w) * 8 + 4.0, indexing="ij")
        coords = torch.stack([ys + shift[k, 1], xs + shift[k, 0]], dim=-1)  # nerfstudio coords: (y, x)
        expected = one.generate_rays(camera_indices=0, coords=coords).directions.reshape(-1, 3)
        assert torch.allclose(moved_dirs[k], expected, atol=1e-5)


def _jitter_pipeline(data, **model):
    """3dae-latent on ``data`` with the scratch autoencoder, fixed samples and no occupancy grids: a render depends
    only on its rays (and the pixel jitter), in either mode."""
    return tiny_pipeline(latent_method(), data, autoencoder="scratch", scratch_width=8, random_samples=False,
                         occupancy_resolution=0, **model)  # fmt: skip


def test_only_training_steps_jitter_their_rays(tiny_dataset, one_thread):
    """Evaluation (ns-eval, the trainer's eval images), ns-render and the viewer render through
    ``get_outputs_for_camera(s)`` or ``get_outputs`` in eval mode: their rays go through the latent pixel centres,
    with ``pixel_jitter`` on and even with the model in training mode."""
    pipeline = _jitter_pipeline(tiny_dataset(num_scenes=2), finetune_start=0)
    model = pipeline.model
    camera = pipeline.datamanager.eval_dataset.cameras[0:1]
    cameras, _ = pipeline.datamanager.next_train(0)

    @torch.no_grad()
    def renders(jitter: bool, training: bool) -> List[torch.Tensor]:
        model.config.pixel_jitter = jitter
        model.train(training)
        torch.manual_seed(int(jitter))  # a jitter would draw another shift
        return [model.get_outputs(cameras)["latent"], model.get_outputs_for_camera(camera)["rgb"],
                model.get_outputs_for_cameras(cameras)[1]["rgb"]]  # fmt: skip

    for training in (False, True):
        plain = renders(jitter=False, training=training)
        step, one, several = renders(jitter=True, training=training)
        if training:
            assert not torch.allclose(step, plain[0], atol=1e-4), "a training step's rays are jittered"
        else:
            assert torch.allclose(step, plain[0], atol=1e-6), "get_outputs in eval mode does not jitter"
        assert torch.allclose(one, plain[1], atol=1e-6), f"get_outputs_for_camera jitters (training={training})"
        assert torch.allclose(several, plain[2], atol=1e-6), f"get_outputs_for_cameras jitters (training={training})"

    metrics = {}
    for jitter in (False, True):
        model.config.pixel_jitter = jitter
        torch.manual_seed(int(jitter))
        figures = pipeline.get_average_eval_image_metrics(step=0)  # ns-eval's way
        metrics[jitter] = {key: value for key, value in figures.items() if "psnr" in key or "ssim" in key}
    assert len(metrics[False]) >= 3 and metrics[True] == pytest.approx(metrics[False], abs=1e-5)


def test_the_rgb_loss_compares_with_the_image_shifted_as_the_rays(tiny_dataset, one_thread, monkeypatch):
    """A jittered view's decoded render is compared with its image resampled at the same shift. The decoder returns
    black here and the images brighten to the right (a ramp in x), so the RGB loss is the mean square of the target:
    larger when the rays (and so the target) move right, smaller when they move left; equal without the shift."""
    pipeline = _jitter_pipeline(tiny_dataset(num_scenes=2), finetune_start=0, finetune_latent_weight=0.0, tv_weight=0.0)
    model = pipeline.model.train()
    cameras, batch = pipeline.datamanager.next_train(0)
    k, h, w, _ = batch["image"].shape
    ramp = torch.linspace(0.1, 0.9, w).view(1, 1, w, 1).expand(k, h, w, 3).contiguous()
    factor = model.downscale
    black = lambda z, **kwargs: torch.zeros(z.shape[0], 3, z.shape[-2] * factor, z.shape[-1] * factor)  # noqa: E731
    monkeypatch.setattr(model.autoencoder, "decode", black)

    def rgb_loss(dx: float) -> float:
        shift = torch.tensor([[dx, 0.0]])
        monkeypatch.setattr(latent_model, "pixel_jitter", lambda count, downscale, device: shift.expand(count, 2))
        torch.manual_seed(0)  # whatever else a step draws, drawn alike
        outputs = model.get_outputs(cameras)
        return float(model.get_loss_dict(outputs, {**batch, "image": ramp})["rgb_loss"])

    assert factor / 2 >= 3.0, "shifts within a latent pixel"
    right, centre, left = rgb_loss(3.0), rgb_loss(0.0), rgb_loss(-3.0)
    assert right > 1.1 * centre and centre > 1.1 * left, f"{right:.4f} > {centre:.4f} > {left:.4f}"


@pytest.mark.parametrize("shifted", [False, True])
def test_the_latent_target_is_resampled_at_the_shift_only_when_asked(tiny_dataset, one_thread, monkeypatch, shifted):
    """``shift_latent_target``: the latent loss compares a jittered render with the cached latents resampled at the
    rays' shift (in latent pixels); off, with the latents of the pixels as cached."""
    pipeline = _jitter_pipeline(tiny_dataset(num_scenes=2, size=32), finetune_start=-1, tv_weight=0.0,
                                shift_latent_target=shifted)  # fmt: skip
    model = pipeline.model.train()
    cameras, batch = pipeline.datamanager.next_train(0)
    shift = torch.tensor([[6.0, -2.0]])
    monkeypatch.setattr(latent_model, "pixel_jitter", lambda count, downscale, device: shift.expand(count, 2))
    outputs = model.get_outputs(cameras)
    assert "pixel_shift" in outputs and "latent" in batch
    cached = batch["latent"]
    resampled = shift_images(cached, shift.expand(cached.shape[0], 2) / model.downscale)
    loss = model.get_loss_dict(outputs, batch)["latent_loss"]
    expected, other = (resampled, cached) if shifted else (cached, resampled)
    weight = model.config.latent_weight
    assert torch.allclose(loss, weight * torch.nn.functional.mse_loss(outputs["latent"], expected))
    assert not torch.allclose(loss, weight * torch.nn.functional.mse_loss(outputs["latent"], other))
