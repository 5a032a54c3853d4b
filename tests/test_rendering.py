"""Tests of sampling, compositing and two-pass rendering (CPU; one CUDA-only backend comparison)."""

from __future__ import annotations

import math

import nerfacc
import pytest
import torch

from nerfstudio_3dae.backends import decide_backend, nerfacc_extension
from nerfstudio_3dae.rendering import (
    _sample_pdf_torch,
    composite,
    importance_samples,
    interval_bounds,
    no_empty_bins,
    render_rays,
    stratified_samples,
)
from nerfstudio_3dae.triplanes import TriplaneBank, TriplaneMLP, decode_points

SIGMA, X0, X1 = 3.0, -0.5, 0.1  # slab density and its extent along world x
COLOUR = torch.tensor([0.9, 0.2, 0.1])
BACKGROUND = torch.tensor([1.0, 1.0, 1.0])


def slab_field(points: torch.Tensor):
    """Constant density SIGMA and colour COLOUR for X0 <= x <= X1, empty elsewhere."""
    inside = ((points[..., :1] >= X0) & (points[..., :1] <= X1)).float()
    return SIGMA * inside, COLOUR.expand(*points.shape[:-1], 3)


def slab_closed_form(length: float):
    """Accumulation, colour and expected depth (from the slab's front) of a homogeneous slab."""
    acc = 1.0 - math.exp(-SIGMA * length)
    depth = 1.0 / SIGMA - length * math.exp(-SIGMA * length) / acc
    return acc, acc * COLOUR + (1.0 - acc) * BACKGROUND, depth


def test_composite_matches_closed_form_slab() -> None:
    # 3200 intervals from 0 to 1.6 along x; the slab edges fall on interval edges, so the
    # piecewise-constant density is exact: tolerance 1e-5 (float32) on accumulation / colour,
    # 1e-4 on depth (midpoint rule for t).
    t_edges = torch.linspace(0.0, 1.6, 3201)[None]
    t_starts, t_ends = t_edges[:, :-1], t_edges[:, 1:]
    mids = 0.5 * (t_starts + t_ends)
    density, values = slab_field(torch.stack([mids - 1.0, 0 * mids, 0 * mids], dim=-1))  # x = t - 1
    out, depth, acc, weights = composite(t_starts, t_ends, density, values, BACKGROUND)
    acc_cf, colour_cf, depth_cf = slab_closed_form(X1 - X0)
    assert weights.shape == (1, 3200)
    assert acc.item() == pytest.approx(acc_cf, abs=1e-5)
    torch.testing.assert_close(out[0], colour_cf, atol=1e-5, rtol=0)
    assert depth.item() == pytest.approx(1.0 + X0 + depth_cf, abs=1e-4)


@pytest.mark.parametrize("deterministic", [True, False])
def test_render_rays_matches_closed_form_slab(deterministic: bool) -> None:
    # Rays along +x from x = -1.5 (t = distance); slab at t in [1.0, 1.6]. With 256 + 256 samples the
    # slab boundaries are resolved to ~1/300 of a unit: tolerance 2e-2 on accumulation / colour.
    torch.manual_seed(0)
    origins = torch.tensor([[-1.5, 0.2, 0.1], [-1.5, -0.3, 0.4]])
    directions = torch.tensor([[1.0, 0.0, 0.0]]).expand(2, 3)
    out = render_rays(origins, directions, slab_field, 0.5, 2.1, 256, 256, BACKGROUND, deterministic)
    acc_cf, colour_cf, depth_cf = slab_closed_form(X1 - X0)
    assert out["features"].shape == (2, 3) and out["depth"].shape == (2, 1) and out["accumulation"].shape == (2, 1)
    assert out["t"].shape == (2, 512) and (out["t"].diff(dim=-1) >= 0).all()
    torch.testing.assert_close(out["accumulation"], torch.full((2, 1), acc_cf), atol=2e-2, rtol=0)
    torch.testing.assert_close(out["features"], colour_cf.expand(2, 3), atol=2e-2, rtol=0)
    torch.testing.assert_close(out["depth"], torch.full((2, 1), 1.5 + X0 + depth_cf), atol=2e-2, rtol=0)


def test_render_rays_box_mask_and_empty_rays() -> None:
    # A field with density everywhere: only the part of the ray inside [-1, 1]^3 may count.
    def fog(points: torch.Tensor):
        return torch.full_like(points[..., :1], 2.0), torch.zeros_like(points)

    origins = torch.tensor([[-1.5, 0.0, 0.0], [-1.5, 5.0, 0.0]])  # the second ray misses the box
    directions = torch.tensor([[1.0, 0.0, 0.0]]).expand(2, 3)
    out = render_rays(origins, directions, fog, 0.5, 2.1, 200, 0, BACKGROUND, deterministic=True)
    inside_len = 2.1 - 0.5  # x from -1 to 0.6: entirely inside
    assert out["accumulation"][0].item() == pytest.approx(1 - math.exp(-2.0 * inside_len), abs=1e-4)
    assert out["accumulation"][1].item() == 0.0
    torch.testing.assert_close(out["features"][1], BACKGROUND)
    assert out["depth"][1].item() == pytest.approx(0.5)  # empty rays report near


def test_stratified_samples() -> None:
    edges, t = stratified_samples(3, 8, 0.5, 2.1, deterministic=True)
    assert edges.shape == (3, 9) and t.shape == (3, 8)
    torch.testing.assert_close(t, 0.5 * (edges[:, 1:] + edges[:, :-1]))
    torch.manual_seed(1)
    edges, t = stratified_samples(100, 8, torch.full((100, 1), 1.0), 3.0, deterministic=False)
    assert ((t >= edges[:, :-1]) & (t <= edges[:, 1:])).all()
    assert t.std(dim=0).min() > 0  # jittered


def test_importance_samples_concentrate_on_weights() -> None:
    torch.manual_seed(2)
    edges, _ = stratified_samples(4, 16, 0.5, 2.1, deterministic=True)
    weights = torch.zeros(4, 16)
    weights[torch.arange(4), torch.tensor([2, 7, 7, 13])] = 0.8
    for deterministic in (True, False):
        t = importance_samples(edges, weights, 32, deterministic, padding=0.0)
        assert t.shape == (4, 32) and (t.diff(dim=-1) >= 0).all()
        for r, b in enumerate([2, 7, 7, 13]):
            assert ((t[r] >= edges[r, b]) & (t[r] <= edges[r, b + 1])).all()
        t = importance_samples(edges, weights, 32, deterministic, padding=0.01)
        for r, b in enumerate([2, 7, 7, 13]):  # 0.8 of 0.96 of the mass: >= 80% of the samples
            assert ((t[r] >= edges[r, b]) & (t[r] <= edges[r, b + 1])).float().mean() >= 0.8
    # all-zero weights sample uniformly; deterministic quantiles (i + 0.5) / N
    t = importance_samples(edges, torch.zeros(4, 16), 8, True, padding=0.0)
    torch.testing.assert_close(t, 0.5 + 1.6 * (torch.arange(8.0) + 0.5).expand(4, 8) / 8)


@pytest.mark.parametrize("deterministic", [True, False])
def test_importance_samples_of_compositing_weights_skip_the_idle_guards(deterministic: bool) -> None:
    """Weights that sum to at most 1 (compositing's, empty rays and opaque ones included) with the default padding:
    the samples drawn without the guards against negative weights and empty bins are the guarded ones; with too
    little padding the guards stay (an all-zero ray still samples uniformly)."""
    torch.manual_seed(5)
    edges, _ = stratified_samples(6, 16, 0.5, 2.1, deterministic=True)
    weights = torch.rand(6, 16) * (torch.rand(6, 16) > 0.5)
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-6) * torch.tensor([[1.0], [0.5], [0.0]] * 2)
    samples = []
    for bound in (None, 1.0):
        torch.manual_seed(6)
        samples.append(importance_samples(edges, weights, 24, deterministic, 0.01, weight_sum_bound=bound))
    torch.testing.assert_close(samples[1], samples[0], atol=1e-6, rtol=0)
    uniform = importance_samples(edges, torch.zeros(6, 16), 8, True, padding=0.0, weight_sum_bound=1.0)
    torch.testing.assert_close(uniform, 0.5 + 1.6 * (torch.arange(8.0) + 0.5).expand(6, 8) / 8)
    assert no_empty_bins(0.01, 48, 1.0) and not no_empty_bins(0.0, 48, 1.0) and not no_empty_bins(1e-7, 48, 1.0)
    assert not no_empty_bins(0.01, 48, 1e4)  # weights that may sum to far more leave a padded bin too little


def test_sample_pdf_hand_example() -> None:
    # nerfacc's documented example: edges [0, 1, 2], cdf [0, .5, 1], 2 samples -> [0.5, 1.5]
    t = _sample_pdf_torch(torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[0.0, 0.5, 1.0]]), 2, True)
    torch.testing.assert_close(t, torch.tensor([[0.5, 1.5]]))


def test_interval_bounds_tile_near_far() -> None:
    t = torch.tensor([[0.7, 0.7, 1.0, 2.0]])
    starts, ends = interval_bounds(t, 0.5, 2.1)
    torch.testing.assert_close(starts, torch.tensor([[0.5, 0.7, 0.85, 1.5]]))
    torch.testing.assert_close(ends, torch.tensor([[0.7, 0.85, 1.5, 2.1]]))


def test_torch_composite_agrees_with_nerfacc_batched_ops() -> None:
    torch.manual_seed(3)
    t = torch.sort(torch.rand(64, 33) * 3.0, dim=-1).values
    t_starts, t_ends = t[:, :-1], t[:, 1:]
    density = torch.rand(64, 32, 1) * 4.0
    values = torch.rand(64, 32, 3)
    out, depth, acc, weights = composite(t_starts, t_ends, density, values, BACKGROUND)
    ref_w, _, _ = nerfacc.render_weight_from_density(t_starts, t_ends, density[..., 0])
    torch.testing.assert_close(weights, ref_w, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(acc, nerfacc.accumulate_along_rays(ref_w, None), atol=1e-6, rtol=1e-5)
    ref_rgb, ref_acc, ref_depth, _ = nerfacc.rendering(
        t_starts, t_ends, rgb_sigma_fn=lambda *_: (values, density[..., 0]), render_bkgd=BACKGROUND
    )
    torch.testing.assert_close(out, ref_rgb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(depth, ref_depth, atol=1e-5, rtol=1e-5)


def test_backend_selection_on_cpu() -> None:
    assert decide_backend("auto", "cpu").backend == "torch"
    assert decide_backend("torch", "cpu").backend == "torch"
    with pytest.raises(ValueError):
        decide_backend("nerfacc", "cpu")


@pytest.mark.cuda(nerfacc=True)  # skips with the backend decision's reason; fails under NS3DAE_REQUIRE_CUDA=1
def test_torch_and_nerfacc_backends_agree_on_cuda() -> None:
    assert nerfacc_extension().usable
    torch.manual_seed(4)
    device = torch.device("cuda")
    edges, _ = stratified_samples(128, 24, 0.5, 2.1, True, device)
    weights = torch.rand(128, 24, device=device) ** 4
    t_torch = importance_samples(edges, weights, 24, True, backend="torch")
    t_nerfacc = importance_samples(edges, weights, 24, True, backend="nerfacc")
    torch.testing.assert_close(t_torch, t_nerfacc, atol=1e-5, rtol=1e-5)

    bank = TriplaneBank(1, resolution=16, micro_channels=4, macro_channels=4, num_bases=3).to(device)
    mlp = TriplaneMLP(bank.num_channels, out_channels=4, output_range=(-1.0, 1.0)).to(device)
    origins = torch.randn(128, 3, device=device)
    origins = 1.3 * origins / origins.norm(dim=-1, keepdim=True)
    directions = -origins / origins.norm(dim=-1, keepdim=True) + 0.2 * torch.randn(128, 3, device=device)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    background = torch.tensor([0.5, -0.5, 0.0, 1.0], device=device)
    outs = {}
    for backend in ("torch", "nerfacc"):
        bank.zero_grad()
        planes = bank.planes(torch.tensor([0], device=device))

        def field_fn(points, planes=planes):
            density, values = decode_points(planes, mlp, points.reshape(1, -1, 3))
            return density.reshape(*points.shape[:-1], 1), values.reshape(*points.shape[:-1], -1)

        out = render_rays(origins, directions, field_fn, 0.5, 2.1, 48, 48, background, True, backend)
        out["features"].square().sum().backward()
        outs[backend] = {k: v.detach() for k, v in out.items()} | {"grad": bank.micro.grad.clone()}
    for key in ("t", "features", "depth", "accumulation", "weights", "grad"):
        torch.testing.assert_close(outs["torch"][key], outs["nerfacc"][key], atol=1e-4, rtol=1e-3)


def _sphere_targets(origins, directions, colour, radius=0.5):
    """White background, ``colour`` where the ray hits the sphere of ``radius`` at the origin."""
    b = (origins * directions).sum(-1)
    disc = b**2 - (origins.square().sum(-1) - radius**2)
    hit = (disc > 0)[:, None].float()
    return hit * colour + (1 - hit) * BACKGROUND


def _cameras(num_cams: int, res: int, distance: float = 1.3):
    """Rays of pinhole cameras on a ring around the origin, looking at it (60 degree fov)."""
    origins, directions = [], []
    lin = torch.linspace(-0.55, 0.55, res)
    v, u = torch.meshgrid(lin, lin, indexing="ij")
    for k in range(num_cams):
        angle = 2 * math.pi * k / num_cams
        eye = torch.tensor([distance * math.cos(angle), distance * math.sin(angle), 0.3])
        fwd = -eye / eye.norm()
        right = torch.linalg.cross(fwd, torch.tensor([0.0, 0.0, 1.0]))
        right = right / right.norm()
        up = torch.linalg.cross(right, fwd)
        d = fwd + u.reshape(-1, 1) * right + v.reshape(-1, 1) * up
        directions.append(d / d.norm(dim=-1, keepdim=True))
        origins.append(eye.expand(res * res, 3))
    return torch.cat(origins), torch.cat(directions)


def test_two_scene_bank_learns_two_coloured_spheres(one_thread) -> None:
    torch.manual_seed(5)
    bank = TriplaneBank(num_scenes=2, resolution=16, micro_channels=6, macro_channels=6, num_bases=4)
    mlp = TriplaneMLP(bank.num_channels, out_channels=3, output_range=(0.0, 1.0))
    origins, directions = _cameras(num_cams=4, res=8)
    colours = [torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.1, 0.2, 0.9])]
    target = torch.cat([_sphere_targets(origins, directions, c) for c in colours])  # [2 * rays, 3]
    origins2, directions2 = origins.repeat(2, 1), directions.repeat(2, 1)  # scene 0 rays, then scene 1
    optimizer = torch.optim.Adam(list(bank.parameters()) + list(mlp.parameters()), lr=0.03)
    scene_ids = torch.tensor([0, 1])
    losses = []
    for _ in range(100):
        planes = bank.planes(scene_ids)

        def field_fn(points, planes=planes):
            density, values = decode_points(planes, mlp, points.reshape(2, -1, 3))
            return density.reshape(*points.shape[:-1], 1), values.reshape(*points.shape[:-1], -1)

        out = render_rays(origins2, directions2, field_fn, 0.5, 2.1, 16, 16, BACKGROUND, deterministic=False)
        loss = (out["features"] - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = losses[0], sum(losses[-10:]) / 10
    assert last < first / 20, (first, last)  # seeds 0-4: 53x-88x after 100 steps
