"""Volume rendering of Tri-Plane fields: stratified + importance sampling and alpha compositing.

Conventions (nerfstudio's): ray directions are unit vectors and ``t`` is the distance from the
origin, so a sample lies at ``origin + t * direction``. A ray carries sample *points* ``t_i``; for
compositing, point ``i`` owns the interval ``[t_starts_i, t_ends_i]``. Coarse points own their
stratified bin; after merging coarse and fine points, each point owns the span between the
midpoints to its neighbours (the first starts at ``near``, the last ends at ``far``), so the
intervals tile ``[near, far]`` exactly.

Two backends compute the same numbers: ``"torch"`` (dense ``[rays, samples]`` tensors, any device)
and ``"nerfacc"`` (nerfacc 0.5.2 CUDA ops on packed samples; CUDA tensors only). ``"auto"`` picks
nerfacc for CUDA tensors when its CUDA extension is already built, torch otherwise; the decision is
made once per process, never compiles, and lives in :mod:`nerfstudio_3dae.backends` (docs/gpu.md).
"""

from typing import Callable, Dict, Literal, Optional, Tuple, Union

import torch
from jaxtyping import Float
from torch import Tensor

from nerfstudio_3dae.backends import decide_backend

Backend = Literal["torch", "nerfacc"]
FieldFn = Callable[[Float[Tensor, "R S 3"]], Tuple[Float[Tensor, "R S 1"], Float[Tensor, "R S c"]]]
Bound = Union[float, Float[Tensor, "R 1"]]


def _as_column(bound: Bound, num_rays: int, device: torch.device) -> Float[Tensor, "R 1"]:
    """A near/far bound as a ``[R, 1]`` float32 tensor."""
    if isinstance(bound, Tensor):
        return bound.to(device=device, dtype=torch.float32).reshape(-1, 1).expand(num_rays, 1)
    return torch.full((num_rays, 1), float(bound), device=device)


def stratified_samples(
    num_rays: int,
    num_samples: int,
    near: Bound,
    far: Bound,
    deterministic: bool,
    device: Union[torch.device, str] = "cpu",
) -> Tuple[Float[Tensor, "R S+1"], Float[Tensor, "R S"]]:
    """``num_samples`` equal bins between near and far, one point per bin.

    Returns the bin edges ``[R, S + 1]`` and the points ``[R, S]``: bin centres when
    ``deterministic``, else uniformly jittered inside each bin (independently per sample).
    """
    device = torch.device(device)
    near_c, far_c = _as_column(near, num_rays, device), _as_column(far, num_rays, device)
    steps = torch.linspace(0.0, 1.0, num_samples + 1, device=device)  # [S+1]
    edges = near_c + (far_c - near_c) * steps  # [R, S+1]
    lo, hi = edges[:, :-1], edges[:, 1:]
    u = torch.full_like(lo, 0.5) if deterministic else torch.rand_like(lo)
    return edges, lo + (hi - lo) * u


def _sample_pdf_torch(
    t_edges: Float[Tensor, "R B+1"], cdf: Float[Tensor, "R B+1"], num_samples: int, deterministic: bool
) -> Float[Tensor, "R N"]:
    """Inverse-CDF sampling, the same arithmetic as nerfacc's ``importance_sampling`` kernel."""
    num_rays = t_edges.shape[0]
    offset = (
        torch.full((num_rays, 1), 0.5, device=cdf.device, dtype=cdf.dtype)
        if deterministic
        else torch.rand(num_rays, 1, device=cdf.device, dtype=cdf.dtype)  # one jitter per ray
    )
    ids = torch.arange(num_samples, device=cdf.device, dtype=cdf.dtype)
    u = (ids + offset) / num_samples  # [R, N]
    last = cdf.shape[-1] - 1
    upper = torch.searchsorted(cdf.contiguous(), u.contiguous(), right=True)  # cdf[p-1] <= u < cdf[p]
    i0, i1 = (upper - 1).clamp(0, last), upper.clamp(0, last)
    u0, u1 = cdf.gather(-1, i0), cdf.gather(-1, i1)
    t0, t1 = t_edges.gather(-1, i0), t_edges.gather(-1, i1)
    du = u1 - u0
    flat = du < 1e-10
    frac = (u - u0) / torch.where(flat, torch.ones_like(du), du)
    return torch.where(flat, 0.5 * (t0 + t1), t0 + frac * (t1 - t0))


@torch.no_grad()
def importance_samples(
    t_edges: Float[Tensor, "R B+1"],
    weights: Float[Tensor, "R B"],
    num_samples: int,
    deterministic: bool,
    padding: float = 0.01,
    backend: Backend = "torch",
) -> Float[Tensor, "R N"]:
    """Draw points from the piecewise-constant pdf ``weights`` over the bins ``t_edges`` (inverse CDF).

    ``padding`` is added to every bin's weight before normalising (keeps some samples everywhere;
    an all-zero ray samples uniformly). The quantiles are ``u_i = (i + o) / N`` with ``o = 0.5``
    when ``deterministic`` and one uniform ``o`` per ray otherwise, so the points come out sorted.
    No gradient flows through the points.
    """
    w = weights.float().clamp_min(0.0) + padding
    w_sum = w.sum(dim=-1, keepdim=True)
    w = w + torch.relu(1e-5 - w_sum) / w.shape[-1]
    pdf = w / w.sum(dim=-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, dim=-1).clamp_max(1.0)], dim=-1)
    cdf[:, -1] = 1.0
    t_edges = t_edges.float()
    if backend == "nerfacc":
        import nerfacc  # pylint: disable=import-outside-toplevel

        _, samples = nerfacc.importance_sampling(
            nerfacc.RayIntervals(vals=t_edges.contiguous()), cdf.contiguous(), num_samples, not deterministic
        )
        return samples.vals
    return _sample_pdf_torch(t_edges, cdf, num_samples, deterministic)


def interval_bounds(
    t: Float[Tensor, "R S"], near: Bound, far: Bound
) -> Tuple[Float[Tensor, "R S"], Float[Tensor, "R S"]]:
    """Intervals owned by sorted points: midpoints to the neighbours, ``near``/``far`` at the ends."""
    num_rays = t.shape[0]
    mids = 0.5 * (t[:, 1:] + t[:, :-1])
    starts = torch.cat([_as_column(near, num_rays, t.device).to(t.dtype), mids], dim=-1)
    ends = torch.cat([mids, _as_column(far, num_rays, t.device).to(t.dtype)], dim=-1)
    return starts, ends


def _weights_torch(
    t_starts: Float[Tensor, "R S"], t_ends: Float[Tensor, "R S"], density: Float[Tensor, "R S"]
) -> Float[Tensor, "R S"]:
    tau = density * (t_ends - t_starts)  # optical depth of each interval
    alpha = 1.0 - torch.exp(-tau)
    trans = torch.exp(-(torch.cumsum(tau, dim=-1) - tau))  # exclusive prefix sum
    return alpha * trans


def composite(
    t_starts: Float[Tensor, "R S"],
    t_ends: Float[Tensor, "R S"],
    density: Float[Tensor, "R S 1"],
    values: Float[Tensor, "R S c"],
    background: Optional[Float[Tensor, "c"]] = None,
    t_samples: Optional[Float[Tensor, "R S"]] = None,
    backend: Backend = "torch",
) -> Tuple[Float[Tensor, "R c"], Float[Tensor, "R 1"], Float[Tensor, "R 1"], Float[Tensor, "R S"]]:
    """Alpha-composite samples front to back over a fixed background.

    ``w_i = T_i (1 - exp(-sigma_i delta_i))`` with ``T_i = exp(-sum_{j<i} sigma_j delta_j)``;
    ``values = sum_i w_i v_i + (1 - acc) * background`` with ``acc = sum_i w_i`` (``background``
    None means zeros); ``depth = sum_i w_i t_i / acc`` (the expected distance of the visible
    matter, ``t_i`` = ``t_samples`` or the interval midpoints), clipped to
    ``[t_starts[:, 0], t_ends[:, -1]]`` so empty rays get ``near``.

    Returns ``(values [R, c], depth [R, 1], accumulation [R, 1], weights [R, S])``.
    """
    num_rays, num_samples = t_starts.shape
    if t_samples is None:
        t_samples = 0.5 * (t_starts + t_ends)
    if backend == "nerfacc":
        import nerfacc  # pylint: disable=import-outside-toplevel

        ray_indices = torch.arange(num_rays, device=t_starts.device).repeat_interleave(num_samples)
        chunk_starts = torch.arange(num_rays, device=t_starts.device) * num_samples
        packed_info = torch.stack([chunk_starts, torch.full_like(chunk_starts, num_samples)], dim=-1)
        flat_w, _, _ = nerfacc.render_weight_from_density(
            t_starts.reshape(-1).float(),
            t_ends.reshape(-1).float(),
            density.reshape(-1).float(),
            packed_info=packed_info,
        )
        out = nerfacc.accumulate_along_rays(flat_w, values.reshape(-1, values.shape[-1]), ray_indices, num_rays)
        acc = nerfacc.accumulate_along_rays(flat_w, None, ray_indices, num_rays)
        depth = nerfacc.accumulate_along_rays(flat_w, t_samples.reshape(-1, 1).float(), ray_indices, num_rays)
        weights = flat_w.reshape(num_rays, num_samples)
    else:
        weights = _weights_torch(t_starts, t_ends, density[..., 0])
        out = (weights[..., None] * values).sum(dim=-2)
        acc = weights.sum(dim=-1, keepdim=True)
        depth = (weights * t_samples).sum(dim=-1, keepdim=True)
    depth = depth / acc.clamp_min(1e-10)
    depth = torch.minimum(torch.maximum(depth, t_starts[:, :1]), t_ends[:, -1:])
    if background is not None:
        out = out + (1.0 - acc) * background.to(out)
    return out, depth, acc, weights


def _query(
    field_fn: FieldFn,
    origins: Float[Tensor, "R 3"],
    directions: Float[Tensor, "R 3"],
    t: Float[Tensor, "R S"],
    box_bound: Optional[float],
) -> Tuple[Float[Tensor, "R S 1"], Float[Tensor, "R S c"]]:
    """Evaluate the field at ``origin + t * direction``; zero density outside the box if asked."""
    points = origins[:, None, :] + t[..., None] * directions[:, None, :]  # [R, S, 3]
    density, values = field_fn(points)
    if box_bound is not None:
        inside = (points.abs() <= box_bound).all(dim=-1, keepdim=True)
        density = density * inside.to(density.dtype)
    return density, values


def render_rays(
    origins: Float[Tensor, "R 3"],
    directions: Float[Tensor, "R 3"],
    field_fn: FieldFn,
    near: Bound = 0.5,
    far: Bound = 2.1,
    num_coarse: int = 48,
    num_fine: int = 48,
    background: Optional[Float[Tensor, "c"]] = None,
    deterministic: bool = False,
    backend: Backend = "torch",
    histogram_padding: float = 0.01,
    box_bound: Optional[float] = 1.0,
) -> Dict[str, Tensor]:
    """Two-pass (coarse + importance) volume rendering of one field along unit-direction rays.

    1. ``num_coarse`` stratified points in ``[near, far]`` are evaluated with ``field_fn``;
    2. their compositing weights (no gradient) drive ``num_fine`` inverse-CDF points
       (:func:`importance_samples`), which are evaluated too;
    3. all points are merged and sorted and composited together over ``background``
       (:func:`interval_bounds`, :func:`composite`); coarse evaluations are reused, with gradients.

    ``field_fn(points [R, S, 3]) -> (density [R, S, 1], values [R, S, c])`` is a closure (it
    knows which scene each ray belongs to). With ``box_bound`` (default 1.0) points outside
    ``[-box_bound, box_bound]^3`` get density 0; None disables the mask. ``deterministic``
    removes all jitter (evaluation).

    Returns ``features [R, c]``, ``depth [R, 1]``, ``accumulation [R, 1]``, and the per-sample
    ``weights [R, S]`` and sorted distances ``t [R, S]`` (``S = num_coarse + num_fine``).
    """
    num_rays, device = origins.shape[0], origins.device
    if backend == "nerfacc":  # its kernels need CUDA tensors and the built extension: a clear error otherwise
        decide_backend("nerfacc", device)
    backend_used = backend
    edges, t = stratified_samples(num_rays, num_coarse, near, far, deterministic, device)
    density, values = _query(field_fn, origins, directions, t, box_bound)
    if num_fine > 0:
        with torch.no_grad():  # only the weights steer the fine samples: no values, depth or background composited
            if backend_used == "torch":
                coarse_w = _weights_torch(edges[:, :-1], edges[:, 1:], density.detach()[..., 0])
            else:
                coarse_w = composite(edges[:, :-1], edges[:, 1:], density.detach(), values.detach(), None, t,
                                     backend_used)[3]  # fmt: skip
        t_fine = importance_samples(edges, coarse_w, num_fine, deterministic, histogram_padding, backend_used)
        density_f, values_f = _query(field_fn, origins, directions, t_fine.to(t.dtype), box_bound)
        t, order = torch.sort(torch.cat([t, t_fine.to(t.dtype)], dim=-1), dim=-1)
        density = torch.cat([density, density_f], dim=1).gather(1, order[..., None])
        values = torch.cat([values, values_f], dim=1)
        values = values.gather(1, order[..., None].expand(-1, -1, values.shape[-1]))
        t_starts, t_ends = interval_bounds(t, near, far)
    else:
        t_starts, t_ends = edges[:, :-1], edges[:, 1:]
    features, depth, acc, weights = composite(t_starts, t_ends, density, values, background, t, backend_used)
    return {"features": features, "depth": depth, "accumulation": acc, "weights": weights, "t": t}
