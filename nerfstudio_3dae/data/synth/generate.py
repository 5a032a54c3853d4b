"""Write whole generated datasets: one random object per scene, seen from many cameras, in the multi-scene layout.

Scene ``i`` depends only on ``(seed, category, i)``, so the output is the same for any number of worker processes.
The layout is the multi-scene layout of :mod:`nerfstudio_3dae.data.layout` (``scenes.json`` + one nerfstudio scene
folder per object); see docs/generator.md. The ``ns-3dae-synth`` CLI (:mod:`nerfstudio_3dae.scripts.synth`) is a thin
wrapper over :func:`generate_dataset`.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import List, Literal, Tuple

import numpy as np

from nerfstudio_3dae.data.layout import SCENES_INDEX, Intrinsics, read_scene_names, write_scene, write_scenes_index
from nerfstudio_3dae.data.synth.cameras import (
    FAR,
    FOV_DEG,
    NEAR,
    CameraRig,
    check_in_view,
    sample_hemisphere_rig,
    square_intrinsics,
)
from nerfstudio_3dae.data.synth.raycast import Render, render_views
from nerfstudio_3dae.data.synth.shapes import CATEGORIES, SynthObject, build_object

Category = Literal["car", "chair", "table"]
DEFAULT_WORKERS = max(1, min(2, os.cpu_count() or 1))


@dataclass
class SynthScene:
    """Everything drawn for one scene: the object, its cameras and the intrinsics."""

    name: str
    obj: SynthObject
    rig: CameraRig
    intrinsics: Intrinsics


def scene_name(category: str, index: int, num_scenes: int) -> str:
    """Folder name of scene ``index``, e.g. ``car_0007`` (at least 4 digits)."""
    return f"{category}_{index:0{max(4, len(str(num_scenes - 1)))}d}"


def build_scene(
    seed: int, category: str, index: int, views_per_scene: int, resolution: int, num_scenes: int = 1
) -> SynthScene:
    """Draw scene ``index``: a function of ``(seed, category, index)`` only (plus the view count and resolution)."""
    if seed < 0:
        raise ValueError(f"--seed must be non-negative, got {seed}")
    object_seq, camera_seq = np.random.SeedSequence([seed, zlib.crc32(category.encode()), index]).spawn(2)
    obj = build_object(category, np.random.default_rng(object_seq))
    rig = sample_hemisphere_rig(np.random.default_rng(camera_seq), views_per_scene)
    intrinsics = square_intrinsics(resolution)
    check_in_view(np.asarray(obj.mesh.vertices), rig.camera_to_world, intrinsics)
    return SynthScene(name=scene_name(category, index, num_scenes), obj=obj, rig=rig, intrinsics=intrinsics)


def render_scene(scene: SynthScene) -> Render:
    """Ray cast all views of a scene."""
    return render_views(scene.obj.mesh, scene.rig.camera_to_world, scene.intrinsics, obj=scene.obj)


def write_generated_scene(
    root: Path, scene: SynthScene, images: np.ndarray, test_views: int, seed: int, index: int
) -> Path:
    """Write ``root/<scene>/images/NNNN.png`` and ``transforms.json``; ``images`` is [V, H, W, 3] uint8."""
    from PIL import Image

    folder = root / scene.name
    (folder / "images").mkdir(parents=True, exist_ok=True)
    frames = []
    for v, image in enumerate(images):
        rel = f"images/{v:04d}.png"
        Image.fromarray(image).save(folder / rel, compress_level=1)
        frames.append((rel, scene.rig.camera_to_world[v], "test" if v < test_views else "train"))
    extra = {
        "synth": {
            "generator": "ns-3dae-synth",
            "category": scene.obj.params["category"],
            "seed": seed,
            "scene_index": index,
            "object": scene.obj.params,
            "cameras": {
                "radius": scene.rig.radius,
                "fov_deg": FOV_DEG,
                "near": NEAR,
                "far": FAR,
                "elevation_deg": [float(e) for e in scene.rig.elevation_deg],
                "azimuth_deg": [float(a) for a in scene.rig.azimuth_deg],
            },
        }
    }
    return write_scene(folder, scene.intrinsics, frames, extra=extra)


def _generate_one(job: Tuple[Path, int, str, int, int, int, int, int]) -> str:
    root, seed, category, index, views, resolution, test_views, num_scenes = job
    scene = build_scene(seed, category, index, views, resolution, num_scenes)
    write_generated_scene(root, scene, render_scene(scene).images, test_views, seed, index)
    return scene.name


def _check_options(
    num_scenes: int, views_per_scene: int, resolution: int, seed: int, category: str, test_views: int, workers: int
) -> None:
    if num_scenes < 1:
        raise ValueError(f"--num-scenes must be at least 1, got {num_scenes}")
    if views_per_scene < 1:
        raise ValueError(f"--views-per-scene must be at least 1, got {views_per_scene}")
    if resolution < 1:
        raise ValueError(f"--resolution must be at least 1, got {resolution}")
    if seed < 0:
        raise ValueError(f"--seed must be non-negative, got {seed}")
    if category not in CATEGORIES:
        raise ValueError(f"--category {category!r} is unknown; choose one of {', '.join(CATEGORIES)}")
    if not 0 <= test_views < views_per_scene:
        raise ValueError(
            f"--test-views ({test_views}) must be >= 0 and smaller than --views-per-scene ({views_per_scene}), "
            "so every scene keeps at least one training view"
        )
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")


def _prepare_output(output: Path, overwrite: bool) -> None:
    """Refuse a non-empty folder unless ``overwrite``; then remove what an earlier run generated there."""
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"--output {output} exists and is not a folder")
    if not output.exists() or not any(output.iterdir()):
        output.mkdir(parents=True, exist_ok=True)
        return
    if not overwrite:
        raise FileExistsError(f"--output folder {output} is not empty; pass --overwrite to replace its contents")
    old: List[str] = []
    if (output / SCENES_INDEX).exists():
        try:
            old = read_scene_names(output)
        except ValueError:
            old = []
        (output / SCENES_INDEX).unlink()
    pattern = re.compile(rf"^({'|'.join(CATEGORIES)})_\d{{4,}}$")
    for child in output.iterdir():
        if child.is_dir() and (child.name in old or pattern.match(child.name)):
            shutil.rmtree(child)


def generate_dataset(
    output: Path,
    num_scenes: int,
    views_per_scene: int = 50,
    resolution: int = 128,
    seed: int = 0,
    category: str = "car",
    test_views: int = 10,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Generate a dataset under ``output`` and return ``output``. ``scenes.json`` is written last.

    Raises:
        ValueError: an option is out of range (the message names it).
        FileExistsError: ``output`` is non-empty and ``overwrite`` is False.
    """
    output = Path(output)
    _check_options(num_scenes, views_per_scene, resolution, seed, category, test_views, workers)
    _prepare_output(output, overwrite)
    root = output.resolve()
    jobs = [(root, seed, category, i, views_per_scene, resolution, test_views, num_scenes) for i in range(num_scenes)]
    names = [scene_name(category, i, num_scenes) for i in range(num_scenes)]
    with _progress(progress, num_scenes) as advance:
        if workers == 1 or num_scenes == 1:
            for job in jobs:
                _generate_one(job)
                advance()
        else:
            # spawn: safe even when the caller has imported torch or started threads.
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(processes=min(workers, num_scenes)) as pool:
                for _ in pool.imap_unordered(_generate_one, jobs, chunksize=1):
                    advance()
    write_scenes_index(output, names)
    return output


class _progress:
    """A rich progress bar over scenes (or nothing), used as ``with _progress(on, total) as advance``."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total, self.bar = enabled, total, None

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("scenes"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()
        )
        self.bar.start()
        task = self.bar.add_task("scenes", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
