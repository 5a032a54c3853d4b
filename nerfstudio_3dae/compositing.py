"""Alpha compositing along rays (the torch backend) as one autograd node with a hand-written backward.

With torch's autograd, the dozen operators of compositing (optical depth, transmittance, weights, weighted sums,
background) record a dozen nodes, some thirty operators in the backward pass. :func:`composite_rays` records one;
its backward (:func:`composite_backward`) writes out the chain rule of ``w_i = T_i (1 − e^{−τ_i})``,
``T_i = e^{−Σ_{j<i} τ_j}``, ``τ_i = σ_i δ_i``:

    ∂L/∂τ_k = ∂L/∂w_k · T_k e^{−τ_k} − Σ_{i>k} ∂L/∂w_i · w_i

(``T_k e^{−τ_k} = T_{k+1} = T_k − w_k``; the sum over ``i > k`` is the total less a running sum). The forward
arithmetic is that of the plain torch version, so the two agree to float rounding (``tests/test_compositing.py``).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from jaxtyping import Float
from torch import Tensor


def composite_forward(
    delta: Float[Tensor, "R S"],
    density: Float[Tensor, "R S 1"],
    values: Float[Tensor, "R S c"],
    t: Float[Tensor, "R S"],
    background: Optional[Float[Tensor, "c"]],
) -> Tuple[Tuple[Tensor, Tensor, Tensor, Tensor], Tuple[Tensor, Tensor]]:
    """``(features [R, c], accumulation [R, 1], Σ w t [R, 1], weights [R, S])`` of samples with interval lengths
    ``delta`` and distances ``t`` over ``background`` (None: zeros), and the weights' transmittance ``T [R, S]``
    (for :func:`composite_backward`)."""
    tau = density[..., 0] * delta  # optical depth of each interval
    transmittance = torch.exp(tau - torch.cumsum(tau, dim=-1))  # exclusive prefix sum
    weights = transmittance * (1.0 - torch.exp(-tau))
    features = torch.einsum("rs,rsc->rc", weights, values)
    acc = weights.sum(dim=-1, keepdim=True)
    depth_sum = torch.linalg.vecdot(weights, t).unsqueeze(-1)
    if background is not None:
        features = torch.addcmul(features, 1.0 - acc, background)
    return (features, acc, depth_sum, weights), (transmittance, weights)


def composite_backward(
    saved: Tuple[Tensor, ...],
    grads: Tuple[Optional[Tensor], ...],
    needs_background: bool,
) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Gradients w.r.t. ``density [R, S, 1]``, ``values`` and ``background`` (None where no gradient flows) of
    :func:`composite_forward`'s outputs, given theirs (None: zero)."""
    delta, values, t, background, transmittance, weights = saved
    g_features, g_acc, g_depth_sum, g_weights = grads
    g_w = g_weights
    g_values = None
    if g_features is not None:
        g_values = torch.einsum("rs,rc->rsc", weights, g_features)
        from_features = torch.einsum("rc,rsc->rs", g_features, values)
        if background is not None:  # features = Σ w v + (1 − Σ w) bg
            from_features = from_features - (g_features @ background).unsqueeze(-1)
        g_w = from_features if g_w is None else g_w + from_features
    if g_acc is not None:
        g_w = g_acc.expand_as(weights) if g_w is None else g_w + g_acc
    if g_depth_sum is not None:
        g_w = g_depth_sum * t if g_w is None else torch.addcmul(g_w, g_depth_sum, t)
    g_background = None
    if needs_background and g_features is not None:
        acc = weights.sum(dim=-1, keepdim=True)
        g_background = (g_features * (1.0 - acc)).sum(dim=0)
    if g_w is None:
        return None, g_values, g_background
    running = torch.cumsum(g_w * weights, dim=-1)
    later = running - running[:, -1:]  # −Σ_{i>k} ∂L/∂w_i · w_i
    g_tau = torch.addcmul(later, g_w, transmittance - weights)  # T_k − w_k = T_{k+1}
    return (g_tau * delta).unsqueeze(-1), g_values, g_background


class _Composite(torch.autograd.Function):
    """:func:`composite_forward` as one autograd node (no gradient w.r.t. ``delta`` or ``t``)."""

    @staticmethod
    def forward(ctx, delta, density, values, t, background):  # type: ignore[override]
        outputs, (transmittance, weights) = composite_forward(delta, density, values, t, background)
        ctx.save_for_backward(delta, values, t, background, transmittance, weights)
        ctx.set_materialize_grads(False)
        return outputs

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        needs = ctx.needs_input_grad
        g_density, g_values, g_background = composite_backward(ctx.saved_tensors, grads, needs[4])
        return None, g_density if needs[1] else None, g_values if needs[2] else None, None, g_background


def composite_rays(
    delta: Float[Tensor, "R S"],
    density: Float[Tensor, "R S 1"],
    values: Float[Tensor, "R S c"],
    t: Float[Tensor, "R S"],
    background: Optional[Float[Tensor, "c"]] = None,
) -> Tuple[Float[Tensor, "R c"], Float[Tensor, "R 1"], Float[Tensor, "R 1"], Float[Tensor, "R S"]]:
    """Alpha-composite samples front to back (intervals of length ``delta``, sample distances ``t``) over a fixed
    ``background`` (None: zeros): ``(features, accumulation, Σ_i w_i t_i, weights)``, one autograd node."""
    if background is not None and (background.dtype != values.dtype or background.device != values.device):
        background = background.to(values)
    return _Composite.apply(delta, density, values, t, background)
