"""Per-scene occupancy grids: the cells, the masked evaluation, and renders that skip empty space."""

from __future__ import annotations

import math

import pytest
import torch

from nerfstudio_3dae.occupancy import (
    OccupancyGrids,
    cell_points,
    compact,
    decode_masked,
    density_threshold,
    keep_samples,
    lookup,
    occupied_cells,
    pack_cells,
    unpack_cells,
    unpacked_cells,
)
from nerfstudio_3dae.rendering import render_rays


def test_density_threshold_is_the_opacity_over_one_interval() -> None:
    sigma = density_threshold(0.01, 0.05)
    assert math.isclose(1 - math.exp(-sigma * 0.05), 0.01)
    with pytest.raises(ValueError, match="alpha"):
        density_threshold(1.5, 0.05)


def test_cell_points_and_lookup_agree_on_the_cell_layout() -> None:
    centres = cell_points(4, 1.0, 1, jitter=False, device=torch.device("cpu"))[0]  # [64, 3]
    assert torch.allclose(centres[0], torch.tensor([-0.75, -0.75, -0.75]))
    # entry (i * G + j) * G + k is the cell of x-index i, y-index j, z-index k
    assert torch.allclose(centres[(1 * 4 + 2) * 4 + 3], torch.tensor([-0.25, 0.25, 0.75]))
    jittered = cell_points(4, 1.0, 2, jitter=True, device=torch.device("cpu"))
    assert ((jittered - centres).abs() <= 0.25).all() and not torch.allclose(jittered[0], jittered[1])
    grid = torch.zeros(1, 4, 4, 4, dtype=torch.bool)
    grid[0, 1, 2, 3] = True
    points = torch.tensor([[[-0.3, 0.2, 0.9], [-0.3, 0.2, 0.4], [-0.3, 0.2, 1.2]]])  # in, next cell, outside
    assert lookup(pack_cells(grid), points, 1.0, 4).tolist() == [[True, False, False]]


@pytest.mark.parametrize("resolution", [4, 5])
def test_keep_samples_is_the_lookup_as_a_factor(resolution: int) -> None:
    """The unpacked grids (a byte table) and the float lookup the renderer multiplies densities by agree with
    :func:`lookup`, the box's faces and points outside it included (125 cells: a padded last byte)."""
    torch.manual_seed(4)
    grids = torch.rand(3, resolution, resolution, resolution) > 0.5
    cells = unpacked_cells(pack_cells(grids), resolution)
    assert cells.shape == (3, resolution**3, 1) and torch.equal(cells[..., 0].bool(), grids.reshape(3, -1))
    points = torch.rand(3, 500, 3) * 2.6 - 1.3
    points[:, :6] = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.5, 0.5], [0.2, 1.0, -1.0], [0.0, 0.0, 1.0000001]] * 2)[:6]
    expected = lookup(pack_cells(grids), points, 1.0, resolution)
    keep = keep_samples(cells, points, 1.0, resolution)
    assert keep.dtype == torch.float32 and torch.equal(keep[..., 0], expected.float())
    assert 0 < expected.float().mean() < 1


def test_packed_cells_round_trip() -> None:
    grids = torch.rand(3, 5, 5, 5) > 0.5  # 125 cells: the last byte is part padding
    bits = pack_cells(grids)
    assert bits.shape == (3, 16) and bits.dtype == torch.uint8
    assert torch.equal(unpack_cells(bits, 5), grids)


def test_occupied_cells_threshold_dilation_and_faint_scenes() -> None:
    density = torch.zeros(3, 5**3)
    density[0, (2 * 5 + 2) * 5 + 2] = 10.0  # one dense cell in the middle
    density[1] = 0.01  # uniform and faint: nothing known to be empty
    density[2] = 0.01
    density[2, 0] = 0.05  # faint everywhere, one cell above the scene's mean
    grids = occupied_cells(density, 5, threshold=1.0, dilation=1)
    assert grids[0].sum() == 27 and grids[0, 1:4, 1:4, 1:4].all()  # the cell and its 26 neighbours
    assert grids[1].all()
    assert grids[2].sum() == 8 and grids[2, :2, :2, :2].all()  # the corner cell, dilated inside the grid
    assert occupied_cells(density, 5, threshold=1.0, dilation=0)[0].sum() == 1


def test_compact_moves_the_selected_entries_to_the_front_in_order() -> None:
    mask = torch.tensor([[False, True, True, False, True], [True, False, False, False, False]])
    assert compact(mask).tolist() == [[1, 2, 4], [0, 5, 5]]  # 5: padding, one past the row
    assert compact(torch.zeros(2, 4, dtype=torch.bool)).shape == (2, 0)
    mask = torch.rand(3, 1000) < 0.3
    for row, index in zip(mask, compact(mask), strict=True):
        assert torch.equal(index[index < 1000], row.nonzero()[:, 0])


def test_decode_masked_evaluates_every_sample_when_nearly_all_are_selected() -> None:
    points = torch.randn(2, 20, 3, requires_grad=True)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[0, 3] = False  # 95 % selected: above DENSE_SHARE
    seen = []

    def decode(p):
        seen.append(p.shape)
        return p.square().sum(-1, keepdim=True), p * 2

    density, values = decode_masked(decode, points, mask)
    assert seen == [torch.Size([2, 20, 3])]
    assert (density[0, 3] == 0).all() and (values[0, 3] == 0).all()
    assert torch.allclose(values[mask], 2 * points[mask])
    density.sum().backward()
    assert (points.grad[0, 3] == 0).all() and torch.allclose(points.grad[mask], 2 * points[mask])


def test_decode_masked_evaluates_only_the_masked_points_with_gradients() -> None:
    points = torch.randn(2, 6, 3, requires_grad=True)
    mask = torch.tensor([[True, False, True, False, False, True], [False, False, False, False, True, False]])
    seen = []

    def decode(p):
        seen.append(p.shape)
        return p.square().sum(-1, keepdim=True), p * 2

    density, values = decode_masked(decode, points, mask)
    assert seen == [torch.Size([2, 3, 3])]  # the fuller camera's 3 points; the other padded
    full_density, full_values = decode(points)
    assert torch.allclose(density[mask], full_density[mask]) and (density[~mask] == 0).all()
    assert torch.allclose(values[mask], full_values[mask]) and (values[~mask] == 0).all()
    density.sum().backward()
    assert torch.allclose(points.grad[mask], 2 * points[mask]) and (points.grad[~mask] == 0).all()


def test_grids_warm_up_then_follow_the_density() -> None:
    # an update of one scene is charged 8³ = 512 evaluations, paid from half of each batch's samples
    grids = OccupancyGrids(3, 8, 1.0, threshold=1.0, warmup=2, update_share=0.5, dilation=0)
    ball = lambda p: 10.0 * (p.norm(dim=-1, keepdim=True) < 0.5).float()  # noqa: E731
    points = torch.tensor([[[0.0, 0.0, 0.0], [0.9, 0.9, 0.9], [0.0, 0.0, 1.5]]]).expand(2, -1, -1)
    rows = torch.tensor([0, 1])
    assert grids.mask(rows, points).tolist() == [[True, True, False]] * 2  # cold: the box, not the grid
    updated = []  # positions in its batch of each updated scene, per update

    def batch(scenes, dense_points):
        def density_of(positions):  # a slice when every scene of the batch is updated
            updated.append(list(range(len(scenes)))[positions] if isinstance(positions, slice) else positions.tolist())
            return ball

        grids.train_batch(scenes, torch.tensor(scenes), density_of, dense_points)

    batch([0], 512)
    assert grids.visits.tolist() == [1, 0, 0] and grids.grid.all()  # in warm-up: no update
    batch([0], 512)
    assert updated == [[0]]  # one update, of the batch's one scene
    assert grids.visits.tolist() == [2, 0, 0] and not grids.grid[0].all() and grids.grid[1].all()
    assert grids.mask(rows, points).tolist() == [[True, False, False], [True, True, False]]
    assert 0 < grids.occupied_fraction()[0] < 0.2
    batch([1], 2048)  # the budget allows it, but scene 1 is in warm-up
    assert updated == [[0]] and grids.grid[1].all()
    batch([1], 0)  # warm now, the budget was kept (capped at the batch's cost)
    assert updated == [[0], [0]] and not grids.grid[1].all()
    assert grids.budget == 0  # 512 filled, one scene's update (512) paid
    batch([2], 0)
    batch([2], 0)  # warm: a first update is due, whatever the budget
    assert updated == [[0], [0], [0]] and grids.budget == -512 and not grids.grid[2].all()
    batch([0, 2], 0)  # no budget, no first update due: nothing
    assert len(updated) == 3 and grids.updates.tolist() == [1, 1, 1]
    batch([0, 2], 4096)  # budget for the whole batch: both scenes
    assert updated[-1] == [0, 1] and grids.updates.tolist() == [2, 1, 2]
    batch([1, 2], 1024)  # scene 1 is due a regular update, the budget pays for one of the two: neither
    assert len(updated) == 4
    with pytest.raises(ValueError, match="distinct rows"):
        batch([1, 1], 0)


def test_the_host_counts_follow_a_loaded_state() -> None:
    grids = OccupancyGrids(2, 4, 1.0, threshold=1.0, warmup=3, update_share=1.0)
    state = {k: v.clone() for k, v in grids.state_dict().items()}
    state["visits"] = torch.tensor([5, 0], dtype=torch.int32)
    grids.load_state_dict(state)
    grids.train_batch([0, 1], torch.tensor([0, 1]), lambda positions: lambda p: p[..., :1] * 0, 0)
    assert grids.updates.tolist() == [1, 0]  # scene 0 was warm by the loaded counts; its first update came now


def sphere_field(points):
    """A dense sphere of radius 0.4 (colour from position) in an otherwise empty box."""
    density = 30.0 * (points.norm(dim=-1, keepdim=True) < 0.4).float()
    return density, (points + 1) / 2


def test_skipping_empty_space_renders_the_same_image_with_fewer_queries() -> None:
    torch.manual_seed(0)
    grids = OccupancyGrids(1, 16, 1.0, density_threshold(0.01, 1.6 / 32), warmup=0, update_share=1.0)
    grids.update(torch.tensor([0]), lambda p: sphere_field(p)[0])
    angles = torch.rand(256) * 2 * math.pi
    origins = torch.stack([1.3 * angles.cos(), 1.3 * angles.sin(), torch.full_like(angles, 0.3)], dim=-1)
    directions = torch.nn.functional.normalize(-origins + 0.3 * torch.randn(256, 3), dim=-1)
    queries = {"dense": 0, "skipping": 0}

    def make_field(name, skip):
        def field_fn(points):  # [R, S, 3]: one "camera" holding every ray
            flat = points.reshape(1, -1, 3)

            def decode(p):
                queries[name] += p.shape[1]
                d, v = sphere_field(p)
                return d, v

            if skip:
                d, v = decode_masked(decode, flat, grids.mask(torch.tensor([0]), flat))
            else:
                d, v = decode(flat)
            return d.reshape(*points.shape[:2], 1), v.reshape(*points.shape[:2], 3)

        return field_fn

    kwargs = dict(num_coarse=32, num_fine=32, background=torch.ones(3), deterministic=True, backend="torch")
    dense = render_rays(origins, directions, make_field("dense", False), **kwargs)
    skipping = render_rays(origins, directions, make_field("skipping", True), **kwargs)
    # the sphere fills 3% of the box: most coarse samples are skipped; the fine ones gather on the sphere anyway
    assert queries["skipping"] < 0.65 * queries["dense"], queries  # measured 9452 of 16384
    assert (dense["features"] - skipping["features"]).abs().max() < 0.02
    assert (dense["accumulation"] - skipping["accumulation"]).abs().max() < 0.02
