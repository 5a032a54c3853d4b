"""The on-disk multi-scene layout: read, validate and write it.

A dataset root holds ``scenes.json`` (a JSON list of scene folder names; list order = scene index) and one folder
per scene. Each scene folder is a standard nerfstudio/Blender scene: ``transforms.json`` with camera-to-world
matrices in the OpenGL convention (camera looks down -Z, +Y up) and the images it lists. A frame may carry
``"split": "train" | "test"``. A plain single-scene folder (``transforms.json`` at the root, or Blender's
``transforms_{train,val,test}.json``) reads as a one-scene dataset.

Everything here is plain Python + numpy: no torch, no nerfstudio, so generators and converters stay light and the
dataparser can check thousands of scenes quickly. Every error is a :class:`DatasetError` naming the file or option.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

SCENES_INDEX = "scenes.json"
TRANSFORMS = "transforms.json"
BLENDER_SPLIT_FILES = {"train": "transforms_train.json", "val": "transforms_val.json", "test": "transforms_test.json"}
SPLITS = ("train", "test")


class DatasetError(ValueError):
    """Bad input in a 3dae dataset. The message names the file or option at fault and says what is wrong."""


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels; pixel centres sit at half-integers (nerfstudio's convention)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def to_json(self) -> Dict[str, float]:
        return {"fl_x": self.fx, "fl_y": self.fy, "cx": self.cx, "cy": self.cy, "w": self.width, "h": self.height}


@dataclass
class View:
    """One posed image of a scene."""

    image: Path
    """Absolute path of the image file."""
    camera_to_world: np.ndarray
    """[4, 4] float camera-to-world matrix, OpenGL axes (camera looks down -Z, +Y up)."""
    intrinsics: Optional[Intrinsics]
    """None when the file gives only a field of view (Blender's camera_angle_x) and the size comes from the image."""
    split: Optional[str] = None
    """'train', 'test', or None when the scene does not say."""
    camera_angle_x: Optional[float] = None
    """Horizontal field of view in radians, for Blender-style scenes without explicit focal lengths."""


@dataclass
class Scene:
    """A scene folder and its views, in file order."""

    name: str
    root: Path
    views: List[View] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------- writing


def write_scene(
    scene_dir: Path,
    intrinsics: Intrinsics,
    frames: Sequence[Tuple[str, np.ndarray, Optional[str]]],
    extra: Optional[dict] = None,
) -> Path:
    """Write ``scene_dir/transforms.json``.

    Args:
        scene_dir: the scene folder (created if missing).
        intrinsics: shared by all frames.
        frames: ``(image path relative to scene_dir, [4, 4] camera-to-world in OpenGL axes, split or None)``.
        extra: more top-level keys (e.g. generator parameters), kept for provenance.
    """
    scene_dir.mkdir(parents=True, exist_ok=True)
    content: dict = {"camera_model": "OPENCV", **intrinsics.to_json()}
    content["frames"] = []
    for file_path, c2w, split in frames:
        frame: dict = {"file_path": file_path, "transform_matrix": np.asarray(c2w, dtype=float).tolist()}
        if split is not None:
            if split not in SPLITS:
                raise DatasetError(f"{scene_dir / TRANSFORMS}: split {split!r} of {file_path} is not one of {SPLITS}")
            frame["split"] = split
        content["frames"].append(frame)
    if extra:
        content.update(extra)
    path = scene_dir / TRANSFORMS
    _atomic_write_json(path, content)
    return path


def write_scenes_index(root: Path, names: Sequence[str]) -> Path:
    """Write ``root/scenes.json`` listing the scene folders in scene-index order."""
    _check_scene_names(list(names), root / SCENES_INDEX)
    root.mkdir(parents=True, exist_ok=True)
    path = root / SCENES_INDEX
    _atomic_write_json(path, list(names))
    return path


def _atomic_write_json(path: Path, content) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=1))
    tmp.replace(path)


# ----------------------------------------------------------------------------------------------------- reading


def read_scene_names(root: Path) -> List[str]:
    """Scene folder names of a dataset root, in scene-index order.

    A root without ``scenes.json`` that is itself a scene (``transforms.json`` or Blender split files) is a one-scene
    dataset whose single scene is named ``"."``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist or is not a folder")
    index = root / SCENES_INDEX
    if not index.exists():
        if _is_scene_folder(root):
            return ["."]
        raise DatasetError(
            f"{root} has neither {SCENES_INDEX} (a multi-scene dataset) nor {TRANSFORMS} (a single scene)"
        )
    try:
        names = json.loads(index.read_text())
    except json.JSONDecodeError as err:
        raise DatasetError(f"{index} is not valid JSON: {err}") from err
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DatasetError(f"{index} must hold a JSON list of scene folder names (strings)")
    _check_scene_names(names, index)
    for name in names:
        if not (root / name).is_dir():
            raise DatasetError(f"{index} lists scene {name!r} but the folder {root / name} does not exist")
    return names


def _check_scene_names(names: List[str], where: Path) -> None:
    if not names:
        raise DatasetError(f"{where} lists no scenes")
    seen: Dict[str, int] = {}
    for i, name in enumerate(names):
        if not name or name.strip() != name:
            raise DatasetError(f"{where}: scene {i} has an empty or padded name {name!r}")
        if name in seen:
            raise DatasetError(f"{where}: scene name {name!r} appears twice (entries {seen[name]} and {i})")
        seen[name] = i


def _is_scene_folder(folder: Path) -> bool:
    return (folder / TRANSFORMS).exists() or any((folder / f).exists() for f in BLENDER_SPLIT_FILES.values())


def read_scene(root: Path, name: str) -> Scene:
    """Read one scene folder (``root/name``): its frames, poses, intrinsics and splits. Images must exist."""
    folder = (Path(root) / name).resolve() if name != "." else Path(root).resolve()
    transforms = folder / TRANSFORMS
    if transforms.exists():
        views = _read_transforms(transforms, default_split=None)
    elif any((folder / f).exists() for f in BLENDER_SPLIT_FILES.values()):
        views = []
        for split, file_name in BLENDER_SPLIT_FILES.items():
            if (folder / file_name).exists():
                # Blender's validation views are held-out views too: they join the test split rather than vanish.
                views += _read_transforms(folder / file_name, default_split="train" if split == "train" else "test")
    else:
        raise DatasetError(f"scene {name!r}: {transforms} is missing")
    if not views:
        raise DatasetError(f"scene {name!r}: {transforms} lists no frames (a scene needs at least one view)")
    return Scene(name=name, root=folder, views=views)


def _read_transforms(path: Path, default_split: Optional[str]) -> List[View]:
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise DatasetError(f"{path} must be a JSON object with a 'frames' list")
    views = []
    for i, frame in enumerate(meta["frames"]):
        where = f"{path}, frame {i}"
        if not isinstance(frame, dict) or "file_path" not in frame or "transform_matrix" not in frame:
            raise DatasetError(f"{where}: a frame needs 'file_path' and 'transform_matrix'")
        c2w = np.asarray(frame["transform_matrix"], dtype=np.float64)
        if c2w.shape == (3, 4):
            c2w = np.concatenate([c2w, [[0.0, 0.0, 0.0, 1.0]]], axis=0)
        if c2w.shape != (4, 4) or not np.isfinite(c2w).all():
            raise DatasetError(f"{where}: 'transform_matrix' must be a finite 4x4 (or 3x4) matrix")
        split = frame.get("split", default_split)
        if split is not None and split not in SPLITS:
            raise DatasetError(f"{where}: 'split' is {split!r}; use one of {SPLITS}")
        views.append(
            View(
                image=_resolve_image(path.parent, str(frame["file_path"]), where),
                camera_to_world=c2w,
                intrinsics=_read_intrinsics({**meta, **frame}, where),
                split=split,
                camera_angle_x=meta.get("camera_angle_x"),
            )
        )
    return views


def _resolve_image(folder: Path, file_path: str, where: str) -> Path:
    image = (folder / file_path).resolve()
    if image.is_file():
        return image
    # Blender's synthetic scenes list images without their extension ("./train/r_0").
    if not image.suffix and image.with_suffix(".png").is_file():
        return image.with_suffix(".png")
    raise DatasetError(f"{where}: image {image} is listed but does not exist")


def _read_intrinsics(meta: dict, where: str) -> Optional[Intrinsics]:
    keys = ("fl_x", "cx", "cy", "w", "h")
    if all(k in meta for k in keys):
        try:
            fx = float(meta["fl_x"])
            intr = Intrinsics(
                fx=fx,
                fy=float(meta.get("fl_y", fx)),
                cx=float(meta["cx"]),
                cy=float(meta["cy"]),
                width=int(meta["w"]),
                height=int(meta["h"]),
            )
        except (TypeError, ValueError) as err:
            raise DatasetError(f"{where}: intrinsics {keys} must be numbers ({err})") from err
        if intr.fx <= 0 or intr.fy <= 0 or intr.width <= 0 or intr.height <= 0:
            raise DatasetError(f"{where}: focal lengths and image size must be positive, got {intr}")
        return intr
    if "camera_angle_x" in meta:
        angle = float(meta["camera_angle_x"])
        if not 0 < angle < math.pi:
            raise DatasetError(f"{where}: camera_angle_x {angle} is not a field of view in (0, pi) radians")
        return None
    raise DatasetError(f"{where}: no intrinsics; give fl_x, fl_y, cx, cy, w, h or Blender's camera_angle_x")


def image_size(path: Path) -> Tuple[int, int]:
    """``(width, height)`` of an image from its header only (cheap), or a DatasetError naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetError(f"image {path} cannot be read as an image: {err}") from err


def blender_intrinsics(camera_angle_x: float, width: int, height: int) -> Intrinsics:
    """Square-pixel intrinsics from a horizontal field of view, principal point at the image centre."""
    focal = 0.5 * width / math.tan(0.5 * camera_angle_x)
    return Intrinsics(fx=focal, fy=focal, cx=width / 2.0, cy=height / 2.0, width=width, height=height)


def project_points(
    points: np.ndarray, camera_to_world: np.ndarray, intrinsics: Intrinsics
) -> Tuple[np.ndarray, np.ndarray]:
    """Project world points into one camera (OpenGL axes).

    Args:
        points: [P, 3] world coordinates.
        camera_to_world: [4, 4].
    Returns:
        uv: [P, 2] pixel coordinates (x right, y down; the centre of pixel (i, j) is (i + 0.5, j + 0.5)).
        depth: [P] distance along the viewing direction (positive in front of the camera).
    """
    world_to_camera = np.linalg.inv(camera_to_world)
    cam = points @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]
    depth = -cam[:, 2]
    u = intrinsics.cx + intrinsics.fx * cam[:, 0] / depth
    v = intrinsics.cy - intrinsics.fy * cam[:, 1] / depth
    return np.stack([u, v], axis=-1), depth
