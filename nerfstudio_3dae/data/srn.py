"""Import SRN ShapeNet renderings (the paper's data) into the multi-scene layout.

SRN layout: ``<root>/<instance>/rgb/NNNNNN.png``, ``<root>/<instance>/pose/NNNNNN.txt`` (a 4x4 camera-to-world
matrix as 16 numbers, OpenCV axes: camera looks down +Z, +Y points down) and ``<root>/<instance>/intrinsics.txt``:

    f cx cy 0.
    0. 0. 0.          (grid barycentre, unused)
    1.                (scale, unused)
    H W               (the size the intrinsics are given for)
    [1]               (optional: poses are world-to-camera)

The intrinsics may describe another resolution than the PNGs; ``f, cx, cy`` are scaled by image size / (H, W).
Poses become OpenGL camera-to-world (nerfstudio's transforms.json) by flipping the camera's Y and Z axes.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Literal, Optional, Sequence, Tuple

import numpy as np

from nerfstudio_3dae.data.layout import DatasetError, Intrinsics, image_size, write_scene, write_scenes_index

OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])
"""Right-multiplying a camera-to-world matrix by this turns OpenCV camera axes into OpenGL ones (and back)."""


@dataclass(frozen=True)
class SrnIntrinsics:
    """What ``intrinsics.txt`` says."""

    focal: float
    cx: float
    cy: float
    height: int
    width: int
    world_to_camera: bool


def read_srn_intrinsics(path: Path) -> SrnIntrinsics:
    """Parse an SRN ``intrinsics.txt``; errors name the file and the line."""
    if not path.is_file():
        raise DatasetError(f"{path} is missing (every SRN instance needs intrinsics.txt)")
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    try:
        focal, cx, cy = (float(x) for x in lines[0][:3])
        height, width = (int(float(x)) for x in lines[3][:2])
        flag = bool(int(float(lines[4][0]))) if len(lines) > 4 else False
    except (IndexError, ValueError) as err:
        raise DatasetError(
            f"{path}: expected 'f cx cy 0.', the barycentre, the scale, 'H W' and an optional world-to-camera flag "
            f"on separate lines ({err})"
        ) from err
    if focal <= 0 or height <= 0 or width <= 0:
        raise DatasetError(f"{path}: focal length and size must be positive")
    return SrnIntrinsics(focal=focal, cx=cx, cy=cy, height=height, width=width, world_to_camera=flag)


def scaled_intrinsics(srn: SrnIntrinsics, width: int, height: int) -> Intrinsics:
    """Intrinsics for images of ``width x height`` from intrinsics given for ``srn.width x srn.height``."""
    sx, sy = width / srn.width, height / srn.height
    return Intrinsics(fx=srn.focal * sx, fy=srn.focal * sy, cx=srn.cx * sx, cy=srn.cy * sy, width=width, height=height)


def read_srn_pose(path: Path, world_to_camera: bool) -> np.ndarray:
    """A pose file as an OpenCV camera-to-world [4, 4] matrix."""
    try:
        values = np.array(path.read_text().split(), dtype=np.float64)
    except ValueError as err:
        raise DatasetError(f"{path}: a pose must be 16 numbers ({err})") from err
    if values.size != 16 or not np.isfinite(values).all():
        raise DatasetError(f"{path}: a pose must be 16 finite numbers, found {values.size}")
    pose = values.reshape(4, 4)
    return np.linalg.inv(pose) if world_to_camera else pose


@dataclass
class SrnView:
    image: Path
    c2w_opencv: np.ndarray  # [4, 4]


def list_srn_views(instance: Path, world_to_camera: bool) -> List[SrnView]:
    """The instance's views in file order; every image needs a pose and every pose an image."""
    rgb, pose = instance / "rgb", instance / "pose"
    for folder in (rgb, pose):
        if not folder.is_dir():
            raise DatasetError(f"SRN instance {instance}: folder {folder} is missing")
    images = {p.stem: p for p in rgb.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")}
    poses = {p.stem: p for p in pose.iterdir() if p.suffix == ".txt"}
    if images.keys() != poses.keys():
        missing_pose = sorted(images.keys() - poses.keys())
        missing_image = sorted(poses.keys() - images.keys())
        raise DatasetError(
            f"SRN instance {instance}: views must pair rgb/X.png with pose/X.txt; images without a pose: "
            f"{missing_pose[:5]}, poses without an image: {missing_image[:5]}"
        )
    if not images:
        raise DatasetError(f"SRN instance {instance} has no views in {rgb}")
    return [SrnView(images[k], read_srn_pose(poses[k], world_to_camera)) for k in sorted(images)]


def select_views(views: Sequence[SrnView], min_altitude: Optional[float], test_views: int) -> List[Tuple[SrnView, str]]:
    """The paper's protocol: keep views whose camera height (c2w[2, 3]) is above ``min_altitude`` (None keeps all),
    then mark the first ``test_views`` kept views as test views."""
    kept = [v for v in views if min_altitude is None or v.c2w_opencv[2, 3] > min_altitude]
    return [(v, "test" if i < test_views else "train") for i, v in enumerate(kept)]


def convert_srn(
    source: Path,
    output: Path,
    min_altitude: Optional[float] = -0.5,
    test_views: int = 10,
    files: Literal["copy", "symlink", "hardlink"] = "copy",
    overwrite: bool = False,
    on_instance: Optional[Callable[[str], None]] = None,
) -> List[str]:
    """Convert every instance folder of ``source`` into a scene of the layout under ``output``.

    Returns the scene names (instance folder names, sorted). Instances left with no view after the altitude filter
    or with no training view raise a DatasetError; nothing is skipped silently.
    """
    source, output = Path(source), Path(output)
    if not source.is_dir():
        raise DatasetError(f"--input {source} is not a folder")
    if test_views < 0:
        raise DatasetError(f"--test-views must be >= 0, got {test_views}")
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise DatasetError(f"--output {output} is not empty; pass --overwrite to write into it")
    instances = sorted(p for p in source.iterdir() if p.is_dir())
    if not instances:
        raise DatasetError(f"--input {source} holds no instance folders")
    for instance in instances:
        _convert_instance(instance, output / instance.name, min_altitude, test_views, files)
        if on_instance is not None:
            on_instance(instance.name)
    names = [p.name for p in instances]
    write_scenes_index(output, names)
    return names


def _convert_instance(
    instance: Path, scene_dir: Path, min_altitude: Optional[float], test_views: int, files: str
) -> None:
    srn = read_srn_intrinsics(instance / "intrinsics.txt")
    selected = select_views(list_srn_views(instance, srn.world_to_camera), min_altitude, test_views)
    if not selected:
        raise DatasetError(f"SRN instance {instance}: no view is above --min-altitude {min_altitude}")
    if all(split == "test" for _, split in selected):
        raise DatasetError(
            f"SRN instance {instance}: all {len(selected)} kept views are test views (--test-views {test_views})"
        )
    width, height = image_size(selected[0][0].image)
    intrinsics = scaled_intrinsics(srn, width, height)
    (scene_dir / "images").mkdir(parents=True, exist_ok=True)
    frames = []
    for view, split in selected:
        if image_size(view.image) != (width, height):
            raise DatasetError(
                f"{view.image} is {image_size(view.image)}, other views of {instance} are {width, height}"
            )
        target = scene_dir / "images" / view.image.name
        _place_file(view.image, target, files)
        frames.append((f"images/{view.image.name}", view.c2w_opencv @ OPENCV_TO_OPENGL, split))
    write_scene(scene_dir, intrinsics, frames, extra={"source": "srn", "srn_instance": str(instance)})


def _place_file(src: Path, dst: Path, files: str) -> None:
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if files == "copy":
        shutil.copyfile(src, dst)
    elif files == "symlink":
        dst.symlink_to(src.resolve())
    elif files == "hardlink":
        os.link(src, dst)
    else:
        raise DatasetError(f"--files must be copy, symlink or hardlink, got {files!r}")
