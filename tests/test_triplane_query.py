"""The fused field query (one autograd node, hand-written backward) against the plain torch decode it replaces."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from nerfstudio_3dae.triplane_query import plane_grid, query_triplanes
from nerfstudio_3dae.triplanes import TriplaneMLP, decode_points, project_to_planes


def _case(dtype: torch.dtype, seed: int = 0):
    """Planes of 3 scenes, an MLP with a latent output range and points partly outside the box, a 0/1 keep mask."""
    torch.manual_seed(seed)
    mlp = TriplaneMLP(6, 4, 16, (-1.5, 2.0)).to(dtype)
    planes = torch.randn(3, 3, 6, 8, 8, dtype=dtype, requires_grad=True)
    points = torch.rand(3, 40, 3, dtype=dtype) * 2.4 - 1.2
    keep = (torch.rand(3, 40, 1) > 0.3).to(dtype)
    return mlp, planes, points, keep


def test_plane_grid_is_project_to_planes_scene_major() -> None:
    points = torch.randn(2, 5, 3)
    expected = project_to_planes(points).permute(1, 0, 2, 3).reshape(6, 1, 5, 2)
    assert torch.equal(plane_grid(points), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("outputs", ["both", "density", "values"])
def test_the_fused_query_has_the_values_and_gradients_of_decode_points(dtype: torch.dtype, outputs: str) -> None:
    mlp, planes, points, keep = _case(dtype)
    reference = decode_points(planes, mlp, points, zero_outside=False)
    reference = (reference[0] * keep, reference[1])
    fused = query_triplanes(planes, points, mlp, keep)
    tol = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-12, "rtol": 1e-10}
    for got, want in zip(fused, reference, strict=True):
        torch.testing.assert_close(got, want, **tol)
    weights = [torch.randn_like(t) for t in reference]
    used = {"both": (0, 1), "density": (0,), "values": (1,)}[outputs]
    params = [planes, *mlp.parameters()]

    def grads(pair):
        loss = sum((pair[i] * weights[i]).sum() for i in used)
        return torch.autograd.grad(loss, params)

    for got, want, name in zip(grads(fused), grads(reference), ["planes", "w1", "b1", "w2", "b2"], strict=True):
        torch.testing.assert_close(got, want, **tol, msg=lambda m, n=name: f"{n}: {m}")


def test_the_fused_query_passes_gradcheck() -> None:
    mlp, planes, points, keep = _case(torch.float64, seed=1)
    inputs = (planes, *(p.detach().requires_grad_() for p in mlp.parameters()))

    def query(planes, w1, b1, w2, b2):  # the MLP's tensors as inputs, so gradcheck can vary them
        stand_in = SimpleNamespace(
            hidden=SimpleNamespace(weight=w1, bias=b1), head=SimpleNamespace(weight=w2, bias=b2),
            output_range=mlp.output_range,
        )  # fmt: skip
        return query_triplanes(planes, points[:, :12], stand_in, keep[:, :12])

    assert torch.autograd.gradcheck(query, inputs)


def test_without_keep_every_density_is_kept_and_points_get_no_gradient() -> None:
    mlp, planes, points, _ = _case(torch.float32, seed=2)
    points.requires_grad_()
    density, _ = query_triplanes(planes, points, mlp)
    torch.testing.assert_close(density, decode_points(planes, mlp, points, zero_outside=False)[0])
    density.sum().backward()
    assert points.grad is None and planes.grad is not None
