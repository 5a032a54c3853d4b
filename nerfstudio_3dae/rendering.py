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

import functools
from typing import Callable, Dict, Literal, Optional, Tuple, Union

import torch
from jaxtyping import Float
from torch import Tensor

from nerfstudio_3dae.backends import decide_backend
from nerfstudio_3dae.compositing import composite_rays

Backend = Literal["torch", "nerfacc"]
FieldFn = Callable[[Float[Tensor, "R S 3"]], Tuple[Float[Tensor, "R S 1"], Float[Tensor, "R S c"]]]
Bound = Union[float, Float[Tensor, "R 1"]]


def _as_column(bound: Bound, num_rays: int, device: torch.device) -> Float[Tensor, "R 1"]:
    """A near/far bound as a ``[R, 1]`` float32 tensor (a float's is made once: :func:`_column`)."""
    if isinstance(bound, Tensor):
        return bound.to(device=device, dtype=torch.float32).reshape(-1, 1).expand(num_rays, 1)
    return _column(num_rays, float(bound), torch.device(device), torch.float32)


@functools.lru_cache(maxsize=32)
def _column(num_rays: int, value: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``value`` as a ``[R, 1]`` tensor, made once per shape, value and device (never written to: shared)."""
    return torch.full((num_rays, 1), value, device=device, dtype=dtype)


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
    edges, t, _ = _stratified(num_rays, num_samples, near, far, deterministic, torch.device(device))
    return edges.clone(), t.clone()  # the renderer shares the bins of float bounds (:func:`_bins`); a caller owns these


def _stratified(
    num_rays: int, num_samples: int, near: Bound, far: Bound, deterministic: bool, device: torch.device
) -> Tuple[Float[Tensor, "R S+1"], Float[Tensor, "R S"], Float[Tensor, "R S"]]:
    """:func:`stratified_samples` and the bins' widths; the bins of float bounds are made once (:func:`_bins`)."""
    if isinstance(near, Tensor) or isinstance(far, Tensor):
        edges, lo, width, centres = _bins_of(_as_column(near, num_rays, device), _as_column(far, num_rays, device),
                                             num_samples)  # fmt: skip
    else:
        edges, lo, width, centres = _bins(num_rays, num_samples, float(near), float(far), device)
    t = centres if deterministic else torch.addcmul(lo, width, torch.rand(lo.shape, device=device))
    return edges, t, width


@functools.lru_cache(maxsize=16)
def _bins(num_rays: int, num_samples: int, near: float, far: float, device: torch.device) -> Tuple[Tensor, ...]:
    """:func:`_bins_of` float bounds, made once per shape, bounds and device (never written to: shared)."""
    return _bins_of(_as_column(near, num_rays, device), _as_column(far, num_rays, device), num_samples)


def _bins_of(
    near: Float[Tensor, "R 1"], far: Float[Tensor, "R 1"], num_samples: int
) -> Tuple[Float[Tensor, "R S+1"], Float[Tensor, "R S"], Float[Tensor, "R S"], Float[Tensor, "R S"]]:
    """Edges, lower edges, widths and centres of ``num_samples`` equal bins from near to far."""
    steps = torch.linspace(0.0, 1.0, num_samples + 1, device=near.device)  # [S+1]
    edges = near + (far - near) * steps  # [R, S+1]
    lo, width = edges[:, :-1], edges[:, 1:] - edges[:, :-1]
    return edges, lo, width, lo + width * 0.5


def _sample_pdf_torch(
    t_edges: Float[Tensor, "R B+1"],
    cdf: Float[Tensor, "R B+1"],
    num_samples: int,
    deterministic: bool,
    no_empty_bin: bool = False,
) -> Float[Tensor, "R N"]:
    """Inverse-CDF sampling, the same arithmetic as nerfacc's ``importance_sampling`` kernel. ``no_empty_bin``: the
    caller vouches that every bin holds a share of the mass far above the cdf's rounding, so no guard against empty
    bins is needed (a quantile that rounds up to 1.0 then falls at the far end of the last bin, as it does with
    them)."""
    num_rays = t_edges.shape[0]
    if deterministic:
        u = _quantiles(num_rays, num_samples, cdf.device, cdf.dtype)
    else:  # one jitter per ray
        offset = torch.rand(num_rays, 1, device=cdf.device, dtype=cdf.dtype)
        u = (_sample_ids(num_samples, cdf.device, cdf.dtype) + offset) / num_samples  # [R, N]
    last = cdf.shape[-1] - 1
    upper = torch.searchsorted(cdf.contiguous(), u.contiguous(), right=True)  # cdf[p-1] <= u < cdf[p]
    if no_empty_bin:  # upper >= 1 (cdf[0] = 0 <= u); upper = last + 1 only where u rounded up to 1.0
        i1 = upper.clamp_max(last)
        i0 = i1 - 1
        u0 = cdf.gather(-1, i0)
        t0 = t_edges.gather(-1, i0)
        frac = (u - u0) / (cdf.gather(-1, i1) - u0)
        return torch.addcmul(t0, frac, t_edges.gather(-1, i1) - t0)
    i0, i1 = (upper - 1).clamp(0, last), upper.clamp(0, last)
    u0, u1 = cdf.gather(-1, i0), cdf.gather(-1, i1)
    t0, t1 = t_edges.gather(-1, i0), t_edges.gather(-1, i1)
    du = u1 - u0
    flat = du < 1e-10
    frac = (u - u0) / torch.where(flat, 1.0, du)
    return torch.where(flat, 0.5 * (t0 + t1), torch.addcmul(t0, frac, t1 - t0))


@functools.lru_cache(maxsize=16)
def _sample_ids(num_samples: int, device: torch.device, dtype: torch.dtype) -> Float[Tensor, "N"]:
    """``0, 1, …, N − 1``, made once (never written to: shared)."""
    return torch.arange(num_samples, device=device, dtype=dtype)


@functools.lru_cache(maxsize=16)
def _quantiles(num_rays: int, num_samples: int, device: torch.device, dtype: torch.dtype) -> Float[Tensor, "R N"]:
    """``(i + 0.5) / N`` for every ray, made once (never written to: shared)."""
    offset = torch.full((num_rays, 1), 0.5, device=device, dtype=dtype)
    return (_sample_ids(num_samples, device, dtype) + offset) / num_samples


@torch.no_grad()
def importance_samples(
    t_edges: Float[Tensor, "R B+1"],
    weights: Float[Tensor, "R B"],
    num_samples: int,
    deterministic: bool,
    padding: float = 0.01,
    backend: Backend = "torch",
    weight_sum_bound: Optional[float] = None,
) -> Float[Tensor, "R N"]:
    """Draw points from the piecewise-constant pdf ``weights`` over the bins ``t_edges`` (inverse CDF).

    ``padding`` is added to every bin's weight before normalising (keeps some samples everywhere;
    an all-zero ray samples uniformly). The quantiles are ``u_i = (i + o) / N`` with ``o = 0.5``
    when ``deterministic`` and one uniform ``o`` per ray otherwise, so the points come out sorted.
    No gradient flows through the points. ``weight_sum_bound``: the caller vouches that the weights
    are not negative and sum to at most this along a ray (compositing weights: 1), which spares the
    guards that padding then makes idle.
    """
    w = _float(weights)
    w = (w if weight_sum_bound is not None else w.clamp_min(0.0)) + padding
    w_sum = w.sum(dim=-1, keepdim=True)
    if padding * w.shape[-1] < 1e-5:  # otherwise every ray's sum is at least that: nothing to lift
        w = w + torch.relu(1e-5 - w_sum) / w.shape[-1]
        w_sum = w.sum(dim=-1, keepdim=True)
    cdf = torch.cumsum(w / w_sum, dim=-1).clamp_max_(1.0)
    num_rays = w.shape[0]
    cdf = torch.cat([_column(num_rays, 0.0, cdf.device, cdf.dtype), cdf[:, :-1],
                     _column(num_rays, 1.0, cdf.device, cdf.dtype)], dim=-1)  # fmt: skip
    t_edges = _float(t_edges)
    if backend == "nerfacc":
        import nerfacc  # pylint: disable=import-outside-toplevel

        _, samples = nerfacc.importance_sampling(
            nerfacc.RayIntervals(vals=t_edges.contiguous()), cdf.contiguous(), num_samples, not deterministic
        )
        return samples.vals
    no_empty_bin = weight_sum_bound is not None and no_empty_bins(padding, w.shape[-1], weight_sum_bound)
    return _sample_pdf_torch(t_edges, cdf, num_samples, deterministic, no_empty_bin)


MIN_BIN_MASS = 1e-4
"""A bin's least share of the mass for :func:`_sample_pdf_torch` to skip its guards against empty bins: far above
the rounding of a float32 cdf."""


def no_empty_bins(padding: float, bins: int, weight_sum_bound: float) -> bool:
    """Whether ``padding`` gives every one of ``bins`` bins at least :data:`MIN_BIN_MASS` of the mass when the weights
    sum to at most ``weight_sum_bound``: each bin's share is at least ``padding / (bound + bins · padding)``."""
    return padding > MIN_BIN_MASS * (weight_sum_bound + bins * padding)


def _float(x: Tensor) -> Tensor:
    """``x`` as float32 (no operator where it is)."""
    return x if x.dtype == torch.float32 else x.float()


def interval_bounds(
    t: Float[Tensor, "R S"], near: Bound, far: Bound
) -> Tuple[Float[Tensor, "R S"], Float[Tensor, "R S"]]:
    """Intervals owned by sorted points: midpoints to the neighbours, ``near``/``far`` at the ends."""
    bounds = _interval_edges(t, near, far)
    return bounds[:, :-1], bounds[:, 1:]


def _interval_edges(t: Float[Tensor, "R S"], near: Bound, far: Bound) -> Float[Tensor, "R S+1"]:
    """The edges of :func:`interval_bounds`' intervals: near, the midpoints between neighbours, far."""
    num_rays = t.shape[0]
    mids = t.unfold(-1, 2, 1).mean(dim=-1)  # (t_i + t_{i+1}) / 2
    ends = [_as_column(bound, num_rays, t.device) for bound in (near, far)]
    ends = [end if end.dtype == t.dtype else end.to(t.dtype) for end in ends]
    return torch.cat([ends[0], mids, ends[1]], dim=-1)


def _weights_torch(delta: Float[Tensor, "R S"], density: Float[Tensor, "R S"]) -> Float[Tensor, "R S"]:
    """Compositing weights of samples with interval lengths ``delta`` (plain torch: the coarse pass's, no
    gradient)."""
    tau = density * delta  # optical depth of each interval
    return (1.0 - torch.exp(-tau)) * torch.exp(tau - torch.cumsum(tau, dim=-1))  # exclusive prefix sum


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
    ``[t_starts[:, 0], t_ends[:, -1]]`` so empty rays get ``near``. The torch backend records one
    autograd node (:mod:`nerfstudio_3dae.compositing`).

    Returns ``(values [R, c], depth [R, 1], accumulation [R, 1], weights [R, S])``.
    """
    if t_samples is None:
        t_samples = 0.5 * (t_starts + t_ends)
    return _composite(t_ends - t_starts, lambda: (t_starts, t_ends), density, values, background, t_samples, backend,
                      (t_starts[:, :1], t_ends[:, -1:]))  # fmt: skip


def _composite(
    delta: Float[Tensor, "R S"],
    intervals: Callable[[], Tuple[Float[Tensor, "R S"], Float[Tensor, "R S"]]],
    density: Float[Tensor, "R S 1"],
    values: Float[Tensor, "R S c"],
    background: Optional[Float[Tensor, "c"]],
    t_samples: Float[Tensor, "R S"],
    backend: Backend,
    clip: Tuple[Float[Tensor, "R 1"], Float[Tensor, "R 1"]],
) -> Tuple[Float[Tensor, "R c"], Float[Tensor, "R 1"], Float[Tensor, "R 1"], Float[Tensor, "R S"]]:
    """:func:`composite` of intervals of lengths ``delta`` (``intervals()``: their starts and ends, for nerfacc), the
    depth clipped to ``clip`` (first start, last end)."""
    if backend == "nerfacc":
        import nerfacc  # pylint: disable=import-outside-toplevel

        num_rays, num_samples = delta.shape
        t_starts, t_ends = intervals()
        ray_indices = torch.arange(num_rays, device=delta.device).repeat_interleave(num_samples)
        chunk_starts = torch.arange(num_rays, device=delta.device) * num_samples
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
        if background is not None:
            out = out + (1.0 - acc) * background.to(out)
    else:
        out, acc, depth, weights = composite_rays(delta, density, values, t_samples, background)
    depth = torch.clamp(depth / acc.clamp_min(1e-10), *clip)
    return out, depth, acc, weights


def _query(
    field_fn: FieldFn,
    origins: Float[Tensor, "R 1 3"],
    directions: Float[Tensor, "R 1 3"],
    t: Float[Tensor, "R S"],
    box_bound: Optional[float],
) -> Tuple[Float[Tensor, "R S 1"], Float[Tensor, "R S c"]]:
    """Evaluate the field at ``origin + t * direction``; zero density outside the box if asked."""
    points = torch.addcmul(origins, t[..., None], directions)  # [R, S, 3]
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
    origins, directions = origins[:, None], directions[:, None]
    edges, t, width = _stratified(num_rays, num_coarse, near, far, deterministic, device)
    density, values = _query(field_fn, origins, directions, t, box_bound)
    if num_fine > 0:
        with torch.no_grad():  # only the weights steer the fine samples: no values, depth or background composited
            if backend == "torch":
                coarse_w = _weights_torch(width, density[..., 0])
            else:
                coarse_w = composite(edges[:, :-1], edges[:, 1:], density.detach(), values.detach(), None, t,
                                     backend)[3]  # fmt: skip
        t_fine = importance_samples(edges, coarse_w, num_fine, deterministic, histogram_padding, backend, 1.0)
        t_fine = t_fine if t_fine.dtype == t.dtype else t_fine.to(t.dtype)
        density_f, values_f = _query(field_fn, origins, directions, t_fine, box_bound)
        t, order = torch.sort(torch.cat([t, t_fine], dim=-1), dim=-1)
        order = order[..., None]
        density = torch.cat([density, density_f], dim=1).gather(1, order)
        values = torch.cat([values, values_f], dim=1)
        values = values.gather(1, order.expand(-1, -1, values.shape[-1]))
        edges = _interval_edges(t, near, far)
        delta = torch.diff(edges, dim=-1)
    else:
        delta = width
        t = t.clone() if deterministic else t  # bin centres are shared (made once): the caller gets its own
    if num_fine > 0 and not (isinstance(near, Tensor) or isinstance(far, Tensor)):  # the edges' end columns
        clip = (_as_column(near, num_rays, device), _as_column(far, num_rays, device))
    else:
        clip = (edges[:, :1], edges[:, -1:])
    features, depth, acc, weights = _composite(delta, lambda: (edges[:, :-1], edges[:, 1:]), density, values,
                                               background, t, backend, clip)  # fmt: skip
    return {"features": features, "depth": depth, "accumulation": acc, "weights": weights, "t": t}
