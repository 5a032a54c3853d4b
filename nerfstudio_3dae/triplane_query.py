"""A field query of Tri-Plane scenes as one autograd node: each scene's three planes sampled at its points and
summed, decoded by the shared MLP, the density masked, with a hand-written backward.

:func:`~nerfstudio_3dae.triplanes.decode_points` computes the same with torch's autograd, which records some twenty
nodes a query, each a few operators in the backward pass; a training render queries twice. :func:`query_triplanes`
records one, whose backward is the chain rule written out (:func:`query_backward`): about twenty operators in all.
The forward arithmetic is :func:`decode_points`' (the output mapping of the values folded into one scale and shift),
so the two agree to float rounding; ``tests/test_triplane_query.py`` checks values and gradients against it.
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from nerfstudio_3dae.triplanes import WIDENED_SIGMOID_EPS, TriplaneMLP

DENSITY_SHIFT = 1.0
"""The MLP's raw density is shifted by this before the softplus (``TriplaneMLP``: ``softplus(raw - 1)``)."""
SOFTPLUS_THRESHOLD = 20.0
"""``F.softplus``'s default threshold (above it the softplus is the identity), which its backward needs too."""


@functools.lru_cache(maxsize=8)
def _plane_axes(device: torch.device) -> Tensor:
    """``[[0, 1], [0, 2], [1, 2]]``: the world axes of planes xy, xz and yz as grid_sample's (x, y)."""
    return torch.tensor([[0, 1], [0, 2], [1, 2]], device=device)


def plane_grid(points: Float[Tensor, "K P 3"]) -> Float[Tensor, "K*3 1 P 2"]:
    """``grid_sample`` coordinates of every scene's points on its three planes, scene-major (the layout of
    :func:`~nerfstudio_3dae.triplanes.project_to_planes`, permuted as ``sample_triplanes`` permutes it)."""
    k, p = points.shape[:2]
    return points[..., _plane_axes(points.device)].transpose(1, 2).reshape(k * 3, 1, p, 2)


def value_mapping(output_range: Tuple[float, float]) -> Tuple[float, float]:
    """``(scale, shift)`` with ``lo + (hi − lo) · widened_sigmoid(x) = sigmoid(x) · scale + shift``."""
    lo, hi = output_range
    eps = WIDENED_SIGMOID_EPS
    return (hi - lo) * (1.0 + 2.0 * eps), lo - (hi - lo) * eps


def query_forward(
    planes: Float[Tensor, "K 3 C R R"],
    grid: Float[Tensor, "K*3 1 P 2"],
    keep: Optional[Float[Tensor, "K P 1"]],
    w1: Float[Tensor, "H C"],
    b1: Float[Tensor, "H"],
    w2: Float[Tensor, "O H"],
    b2: Float[Tensor, "O"],
    mapping: Tuple[float, float],
) -> Tuple[Float[Tensor, "K P 1"], Float[Tensor, "K P c"], Tuple[Tensor, ...]]:
    """Density ``softplus(raw₀ − 1) · keep`` and values ``sigmoid(raw₁…) · scale + shift`` of the MLP
    ``raw = w2 · softplus(w1 · f + b1) + b2`` at the plane features ``f`` (the three planes' bilinear samples, summed),
    and what :func:`query_backward` needs (``O = 1 + c``)."""
    k, _, c, r, _ = planes.shape
    flat = planes.reshape(k * 3, c, r, r)
    sampled = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # [K*3, C, 1, P]
    features = sampled.view(k, 3, c, -1).sum(dim=1).transpose(1, 2)  # [K, P, C]
    pre = F.linear(features, w1, b1)
    hidden = F.softplus(pre)
    raw = F.linear(hidden, w2, b2)  # [K, P, 1 + c]
    shifted = raw[..., :1] - DENSITY_SHIFT
    density = F.softplus(shifted)
    if keep is not None:
        density = density * keep
    squashed = torch.sigmoid(raw[..., 1:])
    scale, shift = mapping
    values = squashed * scale + shift
    return density, values, (flat, grid, keep, w1, w2, features, pre, hidden, shifted, squashed)


def query_backward(
    saved: Tuple[Tensor, ...],
    g_density: Optional[Float[Tensor, "K P 1"]],
    g_values: Optional[Float[Tensor, "K P c"]],
    mapping: Tuple[float, float],
    needs: Tuple[bool, ...],
) -> Tuple[Optional[Tensor], ...]:
    """The gradients of :func:`query_forward` w.r.t. ``planes, w1, b1, w2, b2`` (None where ``needs`` says they are not
    wanted; a missing output gradient counts as zero)."""
    flat, grid, keep, w1, w2, features, pre, hidden, shifted, squashed = saved
    if g_density is None:
        g_density = torch.zeros_like(shifted)
    if g_values is None:
        g_values = torch.zeros_like(squashed)
    if keep is not None:
        g_density = g_density * keep
    g_raw = torch.cat(
        [
            torch.ops.aten.softplus_backward(g_density, shifted, 1.0, SOFTPLUS_THRESHOLD),
            torch.ops.aten.sigmoid_backward(g_values * mapping[0], squashed),
        ],
        dim=-1,
    )  # [K, P, 1 + c]
    need_planes, need_w1, need_b1, need_w2, need_b2 = needs
    g_w2 = torch.einsum("kpo,kph->oh", g_raw, hidden) if need_w2 else None
    g_b2 = g_raw.sum(dim=(0, 1)) if need_b2 else None
    if not (need_planes or need_w1 or need_b1):
        return None, None, None, g_w2, g_b2
    g_pre = torch.ops.aten.softplus_backward(g_raw @ w2, pre, 1.0, SOFTPLUS_THRESHOLD)  # [K, P, H]
    g_w1 = torch.einsum("kph,kpc->hc", g_pre, features) if need_w1 else None
    g_b1 = g_pre.sum(dim=(0, 1)) if need_b1 else None
    g_planes = None
    if need_planes:
        k3, c, r, _ = flat.shape
        g_features = (g_pre @ w1).transpose(1, 2)  # [K, C, P]
        g_sampled = torch.stack([g_features] * 3, dim=1).view(k3, c, 1, -1)  # each plane gets the sum's gradient
        g_flat = torch.ops.aten.grid_sampler_2d_backward(g_sampled, flat, grid, 0, 0, False, [True, False])[0]
        g_planes = g_flat.view(k3 // 3, 3, c, r, r)
    return g_planes, g_w1, g_b1, g_w2, g_b2


class _TriplaneQuery(torch.autograd.Function):
    """:func:`query_forward` as one autograd node (:func:`query_backward`); no gradient w.r.t. the points or
    ``keep``."""

    @staticmethod
    def forward(ctx, planes, grid, keep, w1, b1, w2, b2, mapping):  # type: ignore[override]
        density, values, saved = query_forward(planes, grid, keep, w1, b1, w2, b2, mapping)
        if any(ctx.needs_input_grad):
            ctx.save_for_backward(*saved)
        ctx.mapping = mapping
        ctx.set_materialize_grads(False)
        return density, values

    @staticmethod
    def backward(ctx, g_density, g_values):  # type: ignore[override]
        saved = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grads = query_backward(saved, g_density, g_values, ctx.mapping, (needs[0], *needs[3:7]))
        return grads[0], None, None, *grads[1:], None


def query_triplanes(
    planes: Float[Tensor, "K 3 C R R"],
    points: Float[Tensor, "K P 3"],
    mlp: TriplaneMLP,
    keep: Optional[Float[Tensor, "K P 1"]] = None,
) -> Tuple[Float[Tensor, "K P 1"], Float[Tensor, "K P c"]]:
    """``decode_points(planes, mlp, points, zero_outside=False)`` with the density multiplied by ``keep`` (the
    samples to keep: 1, or 0 where the density must be 0; None: all), as one autograd node with a hand-written
    backward (gradients reach the planes and the MLP, not the points). Values are not masked: a sample of zero density
    adds nothing to a composited ray."""
    grid = plane_grid(points)
    mapping = value_mapping(mlp.output_range)
    hidden, head = mlp.hidden, mlp.head
    return _TriplaneQuery.apply(planes, grid, keep, hidden.weight, hidden.bias, head.weight, head.bias, mapping)
