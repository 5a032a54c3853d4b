"""The project's pinhole rays against nerfstudio's ``generate_rays``, and the host-side batch layout."""

from __future__ import annotations

import pytest
import torch
from nerfstudio.cameras.cameras import Cameras, CameraType

from nerfstudio_3dae.data.dataparser import SCENE_ID
from nerfstudio_3dae.rays import (
    BATCH_LAYOUT,
    BatchLayout,
    batch_layout,
    camera_rays,
    distinct,
    pinhole_rays,
    scene_runs,
)


def random_cameras(count: int, height: int, width: int, **extra) -> Cameras:
    torch.manual_seed(1)
    rotation, _ = torch.linalg.qr(torch.randn(count, 3, 3))
    c2w = torch.cat([rotation, torch.randn(count, 3, 1)], dim=-1)
    intrinsics = torch.rand(count, 4) * torch.tensor([40.0, 40.0, 8.0, 8.0]) + torch.tensor([20.0, 20.0, 12.0, 10.0])
    fx, fy, cx, cy = intrinsics.split(1, dim=-1)
    return Cameras(camera_to_worlds=c2w, fx=fx, fy=fy, cx=cx, cy=cy, width=width, height=height, **extra)


@pytest.mark.parametrize("downscale", [1, 8])
def test_pinhole_rays_are_nerfstudios_rays(downscale):
    cameras = random_cameras(3, 24, 40)  # not square, not a multiple of 8 high: the grid is rounded up
    pinhole = camera_rays(cameras, BatchLayout(24, 40, (0, 1, 2), pinhole=True), downscale)
    nerfstudio = camera_rays(cameras, BatchLayout(24, 40, (0, 1, 2), pinhole=False), downscale)
    assert pinhole[2] == nerfstudio[2] == ((24, 40) if downscale == 1 else (3, 5))
    assert torch.allclose(pinhole[0], nerfstudio[0]) and torch.allclose(pinhole[1], nerfstudio[1], atol=1e-5)
    assert torch.allclose(pinhole[1].norm(dim=-1), torch.ones(())), "unit directions"
    # at full resolution, pixel (row 5, column 7) of camera 1 is nerfstudio's ray at coords (5.5, 7.5)
    if downscale == 1:
        one = cameras[1:2]
        ray = one.generate_rays(camera_indices=0, coords=torch.tensor([[5.5, 7.5]])).directions[0]
        assert torch.allclose(pinhole[1][1, 5 * 40 + 7], ray, atol=1e-5)


def test_pinhole_rays_dispatch_few_operators():
    cameras = random_cameras(8, 128, 128)
    c2w, intrinsics = cameras.camera_to_worlds, torch.cat([cameras.fx, cameras.fy, cameras.cx, cameras.cy], -1)
    with torch.profiler.profile() as prof:
        pinhole_rays(c2w, intrinsics, (128, 128), 8, torch.zeros(8, 2))
    top = [
        e
        for e in prof.events()
        if e.name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
    ]
    assert len(top) <= 40, [e.name for e in top]  # nerfstudio's generate_rays: about 300 for a batch


def test_a_batch_layout_is_attached_or_read_from_the_cameras():
    cameras = random_cameras(2, 16, 16, metadata={SCENE_ID: torch.tensor([[3], [1]])})
    assert batch_layout(cameras, default_scene=0) == BatchLayout(16, 16, (3, 1), pinhole=True)
    attached = BatchLayout(16, 16, (5, 6), pinhole=True)
    cameras.metadata[BATCH_LAYOUT] = attached
    assert batch_layout(cameras, default_scene=0) is attached
    assert batch_layout(cameras[0:1], default_scene=0).scene_ids == (3,), "a layout of another count is not used"
    fisheye = random_cameras(1, 16, 16, camera_type=CameraType.FISHEYE)
    assert batch_layout(fisheye, default_scene=4) == BatchLayout(16, 16, (4,), pinhole=False)
    mixed = Cameras(
        camera_to_worlds=torch.eye(4)[:3].expand(2, 3, 4), fx=10.0, fy=10.0, cx=8.0, cy=8.0,
        width=torch.tensor([[16], [32]]), height=16,
    )  # fmt: skip
    with pytest.raises(ValueError, match="same resolution"):
        batch_layout(mixed, default_scene=0)


def test_distinct_rows_and_positions():
    assert distinct([4, 2, 4, 2, 7]) == ((2, 4, 7), (1, 0, 1, 0, 2))
    assert scene_runs(distinct([2, 2, 5, 5, 9, 9])[1]) == (0, 1, 2) and scene_runs((0, 1, 2)) == (0, 1, 2)
    assert scene_runs(distinct([9, 9, 2, 2, 5, 5])[1]) == (2, 0, 1)
    assert scene_runs(distinct([2, 5, 2, 5])[1]) is None and scene_runs((0, 0, 1)) is None
    assert scene_runs((0, 0, 1, 1, 1, 1)) is None and scene_runs(()) is None and scene_runs((1, 1, 0, 1)) is None
