"""Tests of the Tri-Plane bank, sampling conventions and decoder (CPU, fast)."""

from __future__ import annotations

import pytest
import torch

from nerfstudio_3dae.triplanes import (
    WIDENED_SIGMOID_EPS,
    TriplaneBank,
    TriplaneMLP,
    compose_planes,
    decode_points,
    inside_box,
    project_to_planes,
    sample_triplanes,
    tv_loss,
)


def texel_centres(res: int) -> torch.Tensor:
    """World coordinates of the texel centres under align_corners=False."""
    return -1.0 + (2.0 * torch.arange(res, dtype=torch.float32) + 1.0) / res


def test_compose_planes_equals_explicit_sum() -> None:
    torch.manual_seed(0)
    num_scenes, num_bases, c_mic, c_mac, res = 3, 5, 2, 4, 6
    micro = torch.randn(num_scenes, 3, c_mic, res, res)
    weights = torch.randn(num_scenes, num_bases)
    bias = torch.randn(num_scenes)
    bases = torch.randn(num_bases, 3, c_mac, res, res)
    out = compose_planes(micro, weights, bias, bases)
    assert out.shape == (num_scenes, 3, c_mic + c_mac, res, res)
    for s in range(num_scenes):
        macro = sum(weights[s, m] * bases[m] for m in range(num_bases)) + bias[s]
        torch.testing.assert_close(out[s, :, :c_mic], micro[s])
        torch.testing.assert_close(out[s, :, c_mic:], macro, rtol=1e-5, atol=1e-5)


def test_project_to_planes_layout() -> None:
    points = torch.tensor([[0.1, 0.2, 0.3]])
    coords = project_to_planes(points)
    assert coords.shape == (3, 1, 2)
    torch.testing.assert_close(coords[:, 0], torch.tensor([[0.1, 0.2], [0.1, 0.3], [0.2, 0.3]]))


def _bilinear(plane: torch.Tensor, u: float, v: float) -> float:
    """Hand-rolled bilinear lookup of a [R, R] plane at grid coords (u -> column, v -> row)."""
    res = plane.shape[-1]
    px, py = ((u + 1.0) * res - 1.0) / 2.0, ((v + 1.0) * res - 1.0) / 2.0  # align_corners=False
    x0, y0 = int(torch.floor(torch.tensor(px))), int(torch.floor(torch.tensor(py)))
    fx, fy = px - x0, py - y0
    return (
        plane[y0, x0] * (1 - fx) * (1 - fy)
        + plane[y0, x0 + 1] * fx * (1 - fy)
        + plane[y0 + 1, x0] * (1 - fx) * fy
        + plane[y0 + 1, x0 + 1] * fx * fy
    ).item()


def test_sample_triplanes_matches_hand_bilinear() -> None:
    torch.manual_seed(1)
    res = 5
    planes = torch.randn(1, 3, 2, res, res)
    x, y, z = 0.13, -0.41, 0.57
    feats = sample_triplanes(planes, torch.tensor([[[x, y, z]]]))
    assert feats.shape == (1, 1, 2)
    for ch in range(2):
        expected = (
            _bilinear(planes[0, 0, ch], x, y) + _bilinear(planes[0, 1, ch], x, z) + _bilinear(planes[0, 2, ch], y, z)
        )
        assert feats[0, 0, ch].item() == pytest.approx(expected, abs=1e-5)


def test_each_plane_sees_exactly_its_two_coordinates() -> None:
    """A bump in one texel of one plane is seen exactly by points with the matching two coordinates."""
    res = 6
    centres = texel_centres(res)
    grid = torch.stack(torch.meshgrid(centres, centres, centres, indexing="ij"), dim=-1).reshape(1, -1, 3)
    ix, iy, iz = (
        torch.arange(res).repeat_interleave(res * res),
        torch.arange(res).repeat_interleave(res).repeat(res),
        torch.arange(res).repeat(res * res),
    )  # texel index of each grid point along x, y, z
    row, col = 1, 4  # asymmetric, so a swapped axis is caught
    # plane p: (column axis, row axis) = which world coordinate indexes the width / height
    expected_axes = {0: (ix, iy), 1: (ix, iz), 2: (iy, iz)}
    for plane, (col_idx, row_idx) in expected_axes.items():
        planes = torch.zeros(1, 3, 1, res, res)
        planes[0, plane, 0, row, col] = 1.0
        seen = sample_triplanes(planes, grid)[0, :, 0]
        expected = ((col_idx == col) & (row_idx == row)).float()
        torch.testing.assert_close(seen, expected, atol=1e-6, rtol=0)
        assert int(expected.sum()) == res  # any value of the third coordinate


def test_sample_triplanes_keeps_scenes_apart_and_zero_outside() -> None:
    res = 4
    planes = torch.stack([torch.full((3, 2, res, res), float(s + 1)) for s in range(3)])
    points = torch.tensor([[0.0, 0.0, 0.0], [0.3, -0.2, 0.1], [1.5, 0.0, 0.0], [3.0, 3.0, 3.0]])
    feats = sample_triplanes(planes, points.expand(3, -1, -1))
    for s in range(3):
        torch.testing.assert_close(feats[s, :2], torch.full((2, 2), 3.0 * (s + 1)))
        torch.testing.assert_close(feats[s, 3], torch.zeros(2))
        # x outside the box: the xy and xz planes give zero, the yz plane still sees (y, z)
        torch.testing.assert_close(feats[s, 2], torch.full((2,), float(s + 1)))


@pytest.mark.parametrize("sparse", [True, False])
def test_bank_returns_requested_scenes_and_grads_only_reach_them(sparse: bool) -> None:
    torch.manual_seed(2)
    bank = TriplaneBank(num_scenes=5, resolution=4, micro_channels=2, macro_channels=3, num_bases=4, sparse=sparse)
    ids = torch.tensor([3, 1])
    planes = bank.planes(ids)
    assert planes.shape == (2, 3, 5, 4, 4) and bank.num_channels == 5
    for k, s in enumerate(ids.tolist()):
        expected = compose_planes(bank.micro[s : s + 1], bank.weights[s : s + 1], bank.bias[s : s + 1], bank.bases)
        torch.testing.assert_close(planes[k], expected[0])
    (planes * torch.randn_like(planes)).sum().backward()
    used = torch.zeros(5, dtype=torch.bool)
    used[ids] = True
    for grad in (bank.micro.grad, bank.weights.grad, bank.bias.grad):
        assert grad.is_sparse == sparse
        per_scene = grad.to_dense().reshape(5, -1).abs().sum(dim=1)
        assert (per_scene[used] > 0).all()
        assert (per_scene[~used] == 0).all()
    assert bank.bases.grad.abs().sum() > 0


@pytest.mark.parametrize("c_mic,c_mac,num_bases,channels", [(4, 0, 5, 4), (4, 3, 0, 4), (0, 3, 2, 3), (2, 3, 2, 5)])
def test_bank_micro_only_and_macro_only(c_mic: int, c_mac: int, num_bases: int, channels: int) -> None:
    bank = TriplaneBank(num_scenes=3, resolution=4, micro_channels=c_mic, macro_channels=c_mac, num_bases=num_bases)
    assert bank.num_channels == channels
    planes = bank.planes(torch.tensor([2]))
    assert planes.shape == (1, 3, channels, 4, 4)
    feats = sample_triplanes(planes, torch.zeros(1, 7, 3))
    assert feats.shape == (1, 7, channels)


def test_bank_init_scale() -> None:
    torch.manual_seed(3)
    bank = TriplaneBank(num_scenes=4, resolution=16, micro_channels=4, macro_channels=6, num_bases=50)
    planes = bank.planes(torch.arange(4))
    micro_std, macro_std = planes[:, :, :4].std().item(), planes[:, :, 4:].std().item()
    assert micro_std == pytest.approx(0.1, rel=0.1)
    assert macro_std == pytest.approx(0.1, rel=0.3)


def test_tv_loss() -> None:
    assert tv_loss(torch.ones(2, 3, 4, 5, 5)).item() == 0.0
    checker = (torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2  # neighbours always differ by 1
    assert tv_loss(checker.float()).item() == pytest.approx(2.0)
    ramp = torch.arange(4.0)[None, :].expand(4, 4)  # columns differ by 1, rows are equal
    assert tv_loss(ramp).item() == pytest.approx(1.0)


@pytest.mark.parametrize("output_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_mlp_output_ranges(output_range) -> None:
    torch.manual_seed(4)
    mlp = TriplaneMLP(in_channels=6, out_channels=4, output_range=output_range)
    density, values = mlp(torch.randn(1000, 6) * 50.0)
    assert density.shape == (1000, 1) and values.shape == (1000, 4)
    lo, hi = output_range
    margin = WIDENED_SIGMOID_EPS * (hi - lo)
    assert (density >= 0).all()
    assert (values >= lo - margin - 1e-6).all() and (values <= hi + margin + 1e-6).all()
    with torch.no_grad():  # saturated logits reach just past both ends of the range
        mlp.head.weight.zero_()
        mlp.head.bias.copy_(torch.tensor([-1e4, 1e4, -1e4, 1e4, 0.0]))
    density, values = mlp(torch.zeros(1, 6))
    assert density.item() == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(values[0], torch.tensor([hi + margin, lo - margin, hi + margin, (lo + hi) / 2]))


def test_decode_points_zero_density_outside() -> None:
    torch.manual_seed(5)
    bank = TriplaneBank(num_scenes=2, resolution=8, micro_channels=3, macro_channels=2, num_bases=3)
    mlp = TriplaneMLP(bank.num_channels, out_channels=3)
    points = torch.tensor([[[0.2, 0.1, -0.3], [1.2, 0.0, 0.0], [0.0, -1.01, 0.5]]]).expand(2, -1, -1)
    assert inside_box(points[0]).tolist() == [True, False, False]
    planes = bank.planes(torch.tensor([0, 1]))
    density, values = decode_points(planes, mlp, points)
    assert density.shape == (2, 3, 1) and values.shape == (2, 3, 3)
    assert (density[:, 0] > 0).all() and (density[:, 1:] == 0).all()
    density_raw, _ = decode_points(planes, mlp, points, zero_outside=False)
    assert (density_raw[:, 1:] > 0).all()


def test_tv_loss_gradient_is_the_plain_torch_one() -> None:
    """The hand-written backward against autograd's of the same arithmetic (and gradcheck), planes not square."""
    torch.manual_seed(8)
    planes = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    d_rows, d_cols = planes[..., 1:, :] - planes[..., :-1, :], planes[..., :, 1:] - planes[..., :, :-1]
    plain = d_rows.square().mean() + d_cols.square().mean()
    torch.testing.assert_close(tv_loss(planes), plain)
    (expected,) = torch.autograd.grad(3.0 * plain, planes)
    (got,) = torch.autograd.grad(3.0 * tv_loss(planes), planes)
    torch.testing.assert_close(got, expected)
    assert torch.autograd.gradcheck(tv_loss, (planes[:1, :1, :2],))
