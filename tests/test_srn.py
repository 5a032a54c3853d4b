"""``ns-3dae-convert srn`` on an SRN-format fixture the test writes: poses, intrinsics scaling, the paper's filters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import look_at_c2w
from PIL import Image

from nerfstudio_3dae.data.dataparser import SCENE_ID, ScenesDataParserConfig
from nerfstudio_3dae.data.layout import DatasetError, read_scene_names
from nerfstudio_3dae.data.srn import OPENCV_TO_OPENGL, convert_srn

SIZE = 64  # PNG side
INTR_SIZE = 256  # the size intrinsics.txt describes (SRN cars give intrinsics for another size than the PNGs)
FOCAL, CX, CY = 280.0, 128.0, 120.0  # for 256 x 256
POINT = np.array([0.15, -0.2, 0.1])


def srn_poses(num: int):
    """OpenCV camera-to-world matrices on a sphere of radius 1.3, heights from -0.9 to 1.1."""
    heights = np.linspace(-0.9, 1.1, num)
    poses = []
    for i, z in enumerate(heights):
        a = 2.4 * i
        r = np.sqrt(1.3**2 - z**2)
        poses.append(look_at_c2w(np.array([r * np.cos(a), r * np.sin(a), z])) @ OPENCV_TO_OPENGL)
    return poses


def project_opencv(point, c2w_cv):
    """The SRN convention: pixel = K [R|t] X with the camera looking down +Z, +Y down; scaled to the PNG size."""
    cam = np.linalg.inv(c2w_cv) @ np.append(point, 1.0)
    s = SIZE / INTR_SIZE
    return np.array([FOCAL * s * cam[0] / cam[2] + CX * s, FOCAL * s * cam[1] / cam[2] + CY * s])


def write_srn(root: Path, instances=("a1", "b2"), views=14, world_to_camera=False):
    for name in instances:
        inst = root / name
        (inst / "rgb").mkdir(parents=True)
        (inst / "pose").mkdir()
        lines = [f"{FOCAL} {CX} {CY} 0.", "0. 0. 0.", "1.", f"{INTR_SIZE} {INTR_SIZE}"]
        if world_to_camera:
            lines.append("1")
        (inst / "intrinsics.txt").write_text("\n".join(lines) + "\n")
        for i, pose in enumerate(srn_poses(views)):
            Image.new("RGB", (SIZE, SIZE), (255, 255, 255)).save(inst / "rgb" / f"{i:06d}.png")
            stored = np.linalg.inv(pose) if world_to_camera else pose
            (inst / "pose" / f"{i:06d}.txt").write_text(" ".join(f"{v:.10f}" for v in stored.ravel()))
    return root


@pytest.mark.parametrize("world_to_camera", [False, True])
def test_a_point_lands_on_the_same_pixel_after_conversion(tmp_path, world_to_camera):
    src = write_srn(tmp_path / "srn", world_to_camera=world_to_camera)
    out = tmp_path / "out"
    names = convert_srn(src, out, min_altitude=None, test_views=0)
    assert names == read_scene_names(out) == ["a1", "b2"]
    cameras = ScenesDataParserConfig(data=out, test_every=0).setup().get_dataparser_outputs("train").cameras
    assert len(cameras) == 28
    for i, pose in enumerate(srn_poses(14)):
        before = project_opencv(POINT, pose)
        assert 0 < before[0] < SIZE and 0 < before[1] < SIZE
        # after: nerfstudio's camera model (OpenGL c2w + scaled intrinsics)
        c2w = cameras.camera_to_worlds[i].double().numpy()
        cam = np.linalg.inv(np.vstack([c2w, [0, 0, 0, 1]])) @ np.append(POINT, 1.0)
        fx, fy, cx, cy = (float(getattr(cameras, k)[i]) for k in ("fx", "fy", "cx", "cy"))
        after = np.array([cx + fx * cam[0] / -cam[2], cy - fy * cam[1] / -cam[2]])
        np.testing.assert_allclose(after, before, atol=1e-3)
        # and nerfstudio's ray through that pixel passes through the point
        rays = cameras.generate_rays(camera_indices=i, coords=torch.tensor([[before[1], before[0]]]).float())
        to_point = torch.tensor(POINT).float() - rays.origins[0]
        assert torch.linalg.norm(torch.linalg.cross(to_point, rays.directions[0])) < 1e-4


def test_paper_protocol_altitude_and_held_out_views(tmp_path):
    src = write_srn(tmp_path / "srn", instances=("c",), views=14)
    out = tmp_path / "out"
    convert_srn(src, out, min_altitude=-0.5, test_views=3)
    heights = [p[2, 3] for p in srn_poses(14)]
    kept = [i for i, z in enumerate(heights) if z > -0.5]
    parser = ScenesDataParserConfig(data=out).setup()
    train, test = parser.get_dataparser_outputs("train"), parser.get_dataparser_outputs("test")
    assert [p.name for p in test.image_filenames] == [f"{i:06d}.png" for i in kept[:3]]
    assert [p.name for p in train.image_filenames] == [f"{i:06d}.png" for i in kept[3:]]
    assert (train.cameras.camera_to_worlds[:, 2, 3] > -0.5).all()
    assert train.cameras.metadata[SCENE_ID].unique().tolist() == [0]


def test_bad_srn_input_is_named(tmp_path):
    src = write_srn(tmp_path / "srn", instances=("d",), views=4)
    (src / "d" / "pose" / "000002.txt").unlink()
    with pytest.raises(DatasetError, match=r"images without a pose: \['000002'\]"):
        convert_srn(src, tmp_path / "o1")
    (src / "d" / "pose" / "000002.txt").write_text("1 2 3")
    with pytest.raises(DatasetError, match=r"000002\.txt: a pose must be 16 finite numbers"):
        convert_srn(src, tmp_path / "o2")
    (src / "d" / "intrinsics.txt").write_text("garbage\n")
    with pytest.raises(DatasetError, match=r"intrinsics\.txt"):
        convert_srn(src, tmp_path / "o3")


def test_instance_with_nothing_left_after_the_filter(tmp_path):
    src = write_srn(tmp_path / "srn", instances=("e",), views=4)
    with pytest.raises(DatasetError, match="no view is above --min-altitude 5.0"):
        convert_srn(src, tmp_path / "out", min_altitude=5.0)


def test_cli(tmp_path):
    src = write_srn(tmp_path / "srn", instances=("f",), views=14)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "nerfstudio_3dae.scripts.convert", "srn", "--input", str(src), "--output", str(out)]
    assert subprocess.run(cmd, capture_output=True, text=True, check=True).returncode == 0
    assert read_scene_names(out) == ["f"]
    again = subprocess.run(cmd, capture_output=True, text=True)  # refuses to write into a non-empty folder
    assert again.returncode == 2 and "--overwrite" in again.stderr
    help_text = subprocess.run(cmd[:4] + ["--help"], capture_output=True, text=True, check=True).stdout
    assert "--min-altitude" in help_text and "--test-views" in help_text
