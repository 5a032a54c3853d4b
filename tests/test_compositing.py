"""Compositing as one autograd node (hand-written backward) against the plain torch arithmetic it replaces."""

from __future__ import annotations

import pytest
import torch

from nerfstudio_3dae.compositing import composite_rays


def plain_composite(delta, density, values, t, background):
    """The same outputs with torch's autograd (the renderer's arithmetic before the fused node)."""
    tau = density[..., 0] * delta
    weights = (1.0 - torch.exp(-tau)) * torch.exp(-(torch.cumsum(tau, dim=-1) - tau))
    features = (weights[..., None] * values).sum(dim=-2)
    acc = weights.sum(dim=-1, keepdim=True)
    depth_sum = (weights * t).sum(dim=-1, keepdim=True)
    if background is not None:
        features = features + (1.0 - acc) * background
    return features, acc, depth_sum, weights


def _case(dtype: torch.dtype, background: bool, seed: int = 0):
    """Sorted samples along 5 rays, densities from empty to opaque, optionally a background that learns."""
    torch.manual_seed(seed)
    t = torch.sort(torch.rand(5, 12, dtype=dtype) * 2.0 + 0.5, dim=-1).values
    delta = torch.rand(5, 12, dtype=dtype) * 0.2 + 0.01
    density = (torch.rand(5, 12, 1, dtype=dtype) * 8.0 * (torch.rand(5, 12, 1) > 0.4)).requires_grad_()
    values = torch.rand(5, 12, 3, dtype=dtype, requires_grad=True)
    bg = torch.rand(3, dtype=dtype, requires_grad=True) if background else None
    return delta, density, values, t, bg


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("background", [True, False])
@pytest.mark.parametrize("used", [(0,), (1,), (2,), (3,), (0, 1, 2, 3)])
def test_the_fused_composite_has_the_values_and_gradients_of_plain_torch(dtype, background: bool, used) -> None:
    """Each output alone (features, accumulation, Σ w t, weights) and all together."""
    delta, density, values, t, bg = _case(dtype, background)
    fused, plain = composite_rays(delta, density, values, t, bg), plain_composite(delta, density, values, t, bg)
    tol = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-12, "rtol": 1e-10}
    for got, want in zip(fused, plain, strict=True):
        torch.testing.assert_close(got, want, **tol)
    weights = [torch.randn_like(out) for out in plain]
    inputs = [density, values] + ([bg] if bg is not None else [])

    def grads(outputs):
        loss = sum((outputs[i] * weights[i]).sum() for i in used)
        return torch.autograd.grad(loss, inputs, allow_unused=True, materialize_grads=True)

    for got, want, name in zip(grads(fused), grads(plain), ["density", "values", "background"], strict=False):
        torch.testing.assert_close(got, want, **tol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("background", [True, False])
def test_the_fused_composite_passes_gradcheck(background: bool) -> None:
    delta, density, values, t, bg = _case(torch.float64, background, seed=1)
    inputs = (density, values) + ((bg,) if bg is not None else ())

    def fused(density, values, *bg):
        return composite_rays(delta, density, values, t, bg[0] if bg else None)

    assert torch.autograd.gradcheck(fused, inputs)
