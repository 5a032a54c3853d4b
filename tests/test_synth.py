"""Tests of the procedural generator ``ns-3dae-synth`` (CPU, tiny sizes)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from PIL import Image

from nerfstudio_3dae.data.layout import Intrinsics, project_points, read_scene, read_scene_names
from nerfstudio_3dae.data.synth import CATEGORIES, build_object, look_at, pixel_rays, render_views, square_intrinsics
from nerfstudio_3dae.data.synth.generate import build_scene, generate_dataset, render_scene

SCENES, VIEWS, RES, TEST = 3, 6, 32, 2
BIN = Path(sys.executable).parent


def _generate(root: Path, seed: int = 0, category: str = "car", workers: int = 1) -> Path:
    return generate_dataset(root, SCENES, VIEWS, RES, seed, category, TEST, workers=workers, progress=False)


def _files(root: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def car_dataset(tmp_path_factory) -> Path:
    return _generate(tmp_path_factory.mktemp("synth") / "cars")


def test_same_seed_any_workers_gives_identical_bytes(car_dataset: Path, tmp_path: Path):
    again = _generate(tmp_path / "again", workers=2)
    a, b = _files(car_dataset), _files(again)
    assert sorted(a) == sorted(b)
    assert all(a[k] == b[k] for k in a), "output changed with the number of workers or between runs"
    other = _files(_generate(tmp_path / "other", seed=1))
    assert other["car_0000/images/0000.png"] != a["car_0000/images/0000.png"]
    assert other["car_0000/transforms.json"] != a["car_0000/transforms.json"]


def test_output_parses_back_with_splits_and_sizes(car_dataset: Path):
    names = read_scene_names(car_dataset)
    assert names == [f"car_{i:04d}" for i in range(SCENES)]
    for name in names:
        scene = read_scene(car_dataset, name)
        assert len(scene.views) == VIEWS
        assert [v.split for v in scene.views] == ["test"] * TEST + ["train"] * (VIEWS - TEST)
        for view in scene.views:
            assert view.intrinsics is not None and (view.intrinsics.width, view.intrinsics.height) == (RES, RES)
            assert view.intrinsics.cx == view.intrinsics.cy == RES / 2 and view.intrinsics.fx == view.intrinsics.fy
            with Image.open(view.image) as img:
                assert img.size == (RES, RES) and img.mode == "RGB"
            # Cameras on the upper hemisphere at radius 1.3, looking at the origin (OpenGL: forward is -Z).
            centre, forward = view.camera_to_world[:3, 3], -view.camera_to_world[:3, 2]
            assert np.isclose(np.linalg.norm(centre), 1.3) and centre[2] > 0
            assert np.allclose(forward, -centre / np.linalg.norm(centre))
            assert np.allclose(view.camera_to_world[:3, :3].T @ view.camera_to_world[:3, :3], np.eye(3))
        meta = json.loads((scene.root / "transforms.json").read_text())
        assert meta["synth"]["category"] == "car" and meta["synth"]["seed"] == 0


def test_scenes_differ(car_dataset: Path):
    images = [np.asarray(Image.open(car_dataset / f"car_{i:04d}" / "images" / "0000.png")) for i in range(SCENES)]
    assert not np.array_equal(images[0], images[1]) and not np.array_equal(images[1], images[2])
    params = [
        json.loads((car_dataset / f"car_{i:04d}" / "transforms.json").read_text())["synth"]["object"]
        for i in range(SCENES)
    ]
    assert params[0]["length"] != params[1]["length"] and params[0]["paint"] != params[1]["paint"]


@pytest.mark.parametrize("category", CATEGORIES)
def test_objects_fit_and_vary(category: str):
    sizes = []
    for i in range(8):
        obj = build_object(category, np.random.default_rng([5, i]))
        verts = np.asarray(obj.mesh.vertices)
        assert np.all(np.abs(verts) <= 1.0) and np.linalg.norm(verts, axis=1).max() <= 0.55 + 1e-9
        assert obj.mesh.visual.face_colors.shape == (len(obj.mesh.faces), 4)
        assert obj.params["category"] == category
        json.dumps(obj.params)
        sizes.append(verts.max(0) - verts.min(0))
    assert np.ptp(np.array(sizes), axis=0).max() > 0.02, "objects of one category should vary"


@pytest.mark.parametrize("category", ["chair", "table"])
def test_other_categories_generate(category: str, tmp_path: Path):
    root = _generate(tmp_path / category, category=category)
    assert read_scene_names(root) == [f"{category}_{i:04d}" for i in range(SCENES)]


@pytest.mark.parametrize("category", ["car", "chair"])
def test_projection_matches_nerfstudio_cameras(category: str, tmp_path: Path):
    torch = pytest.importorskip("torch")
    from nerfstudio.cameras.cameras import Cameras, CameraType

    root = generate_dataset(tmp_path / "d", 1, 4, 48, 3, category, 1, progress=False)
    scene = build_scene(3, category, 0, 4, 48)
    render = render_scene(scene)
    views = read_scene(root, read_scene_names(root)[0]).views
    for v, view in enumerate(views):
        image = np.asarray(Image.open(view.image))
        assert np.array_equal(image, render.images[v])
        assert render.hit[v].any() and (~render.hit[v]).any()
        assert np.all(image[render.coverage[v] == 0] == 255), "pixels no sample hit must be background white"
        intr = view.intrinsics
        cams = Cameras(
            camera_to_worlds=torch.tensor(view.camera_to_world[:3, :4], dtype=torch.float32)[None],
            fx=intr.fx,
            fy=intr.fy,
            cx=intr.cx,
            cy=intr.cy,
            width=intr.width,
            height=intr.height,
            camera_type=CameraType.PERSPECTIVE,
        )
        rows, cols = np.nonzero(render.hit[v])  # pixel (col=u, row=v) indices of hits
        points = render.points[v, rows, cols]  # [N, 3]
        coords = torch.tensor(np.stack([rows + 0.5, cols + 0.5], -1), dtype=torch.float32)  # nerfstudio: (y, x)
        rays = cams.generate_rays(camera_indices=0, coords=coords)
        o, d = rays.origins.double().numpy(), rays.directions.double().numpy()  # [N, 3]
        rel = points - o
        off_ray = rel - (rel * d).sum(-1, keepdims=True) * d
        assert np.linalg.norm(off_ray, axis=-1).max() < 1e-3
        assert ((rel * d).sum(-1) > 0).all()
        uv, depth = project_points(points, view.camera_to_world, intr)
        assert np.abs(uv - np.stack([cols + 0.5, rows + 0.5], -1)).max() < 1e-6
        assert depth.min() > 0.5 and depth.max() < 2.1


def test_pixel_rays_follow_pixel_centres():
    intr = Intrinsics(fx=20.0, fy=20.0, cx=8.0, cy=6.0, width=16, height=12)
    c2w = look_at(np.array([[1.0, -0.5, 0.7]]))
    origins, dirs = pixel_rays(c2w, intr)  # [1, 12, 16, 3]
    points = origins[0] + 0.9 * dirs[0]
    uv, _ = project_points(points.reshape(-1, 3), c2w[0], intr)
    rows, cols = np.mgrid[0:12, 0:16]
    assert np.allclose(uv, np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], -1))


def test_render_of_empty_view_is_white():
    scene = build_scene(0, "car", 0, 1, 16)
    away = scene.rig.camera_to_world.copy()
    away[:, :3, 2] *= -1  # turn the camera around (keep it right-handed)
    away[:, :3, 0] *= -1
    render = render_views(scene.obj.mesh, away, square_intrinsics(16))
    assert not render.hit.any() and np.all(render.images == 255)


def test_option_errors(tmp_path: Path):
    with pytest.raises(ValueError, match="--test-views"):
        generate_dataset(tmp_path / "a", 1, 4, 16, test_views=4, progress=False)
    with pytest.raises(ValueError, match="--category"):
        generate_dataset(tmp_path / "b", 1, 4, 16, category="boat", test_views=1, progress=False)
    full = tmp_path / "full"
    (full / "notes").mkdir(parents=True)
    with pytest.raises(FileExistsError, match=re.escape(str(full))):
        generate_dataset(full, 1, 2, 16, test_views=1, progress=False)
    generate_dataset(full, 1, 2, 16, test_views=1, overwrite=True, progress=False)
    assert read_scene_names(full) == ["car_0000"] and (full / "notes").is_dir()


def _console_script() -> list:
    exe = BIN / "ns-3dae-synth"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "nerfstudio_3dae.scripts.synth"]


def test_cli_help_and_tiny_run(tmp_path: Path):
    env = {**os.environ, "COLUMNS": "120"}
    out = subprocess.run(_console_script() + ["--help"], capture_output=True, text=True, env=env, check=True)
    for option in (
        "--output",
        "--num-scenes",
        "--views-per-scene",
        "--resolution",
        "--seed",
        "--category",
        "--test-views",
        "--workers",
        "--overwrite",
    ):
        assert option in out.stdout
    root = tmp_path / "cli"
    args = [
        "--output",
        str(root),
        "--num-scenes",
        "2",
        "--views-per-scene",
        "3",
        "--resolution",
        "16",
        "--test-views",
        "1",
        "--category",
        "chair",
        "--workers",
        "1",
    ]
    run = subprocess.run(_console_script() + args, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert "Wrote 2 chair scenes" in run.stdout
    assert read_scene_names(root) == ["chair_0000", "chair_0001"]
    again = subprocess.run(_console_script() + args, capture_output=True, text=True, env=env)
    assert again.returncode == 2 and "--overwrite" in again.stdout


def test_views_are_a_prefix_stable_sequence():
    few, many = build_scene(2, "car", 1, 3, 16), build_scene(2, "car", 1, 7, 16)
    assert np.array_equal(few.rig.camera_to_world, many.rig.camera_to_world[:3])
    assert few.obj.params == many.obj.params


def test_cars_are_textured_and_antialiased():
    """Liveries, glass, rims and lights: a car's pixels are far from a handful of flat colours, its edges blend."""
    from nerfstudio_3dae.data.synth.raycast import render_views as render

    kinds = set()
    for i in range(6):
        scene = build_scene(11, "car", i, 3, 64)
        kinds |= {m.kind for m in scene.obj.materials}
        textured = render(scene.obj.mesh, scene.rig.camera_to_world, scene.intrinsics, obj=scene.obj)
        flat = render(scene.obj.mesh, scene.rig.camera_to_world, scene.intrinsics, antialias=False)
        on = textured.coverage == 1
        assert len(np.unique(textured.images[on], axis=0)) > 2 * len(np.unique(flat.images[flat.hit], axis=0))
        partial = (textured.coverage > 0) & (textured.coverage < 1)
        assert partial.any(), "silhouette pixels must mix object and background"
        assert np.all(textured.images[textured.coverage == 0] == 255)
    assert {"paint", "glass", "tyre", "rim", "light", "grille"} <= kinds


def test_liveries_vary_between_scenes():
    liveries = [build_scene(0, "car", i, 1, 16).obj.materials[0] for i in range(40)]
    assert all(m.kind == "paint" for m in liveries)
    features = {k for m in liveries for k in m.params if k != "waves"}
    assert {"gradient", "two_tone", "checkers", "stripes", "band", "number", "text"} <= features
    assert len({tuple(m.color) for m in liveries}) == len(liveries)


@pytest.mark.parametrize("category, kind", [("chair", "fabric"), ("table", "wood"), ("chair", "wood")])
def test_furniture_gets_wood_and_fabric(category: str, kind: str):
    kinds = {m.kind for i in range(12) for m in build_scene(2, category, i, 1, 16).obj.materials}
    assert kind in kinds


def test_race_number_glyphs():
    from nerfstudio_3dae.data.synth.textures import DIGIT_BITMAPS, _glyph_ink

    # "1" then "0": sample every cell centre of a 2-glyph row and read the bitmaps back
    rows, cols = np.mgrid[0:5, 0:7]
    ink = _glyph_ink(DIGIT_BITMAPS[[1, 0]], cols.ravel() + 0.5, rows.ravel() + 0.5).reshape(5, 7)
    assert np.array_equal(ink[:, :3], DIGIT_BITMAPS[1]) and np.array_equal(ink[:, 4:], DIGIT_BITMAPS[0])
    assert not ink[:, 3].any(), "one empty column between glyphs"
    assert not _glyph_ink(DIGIT_BITMAPS[[8]], np.array([-0.5, 3.5, 1.5]), np.array([1.5, 1.5, 5.5])).any()


def test_provenance_lists_materials(car_dataset: Path):
    meta = json.loads((car_dataset / "car_0000" / "transforms.json").read_text())["synth"]["object"]
    kinds = [m["kind"] for m in meta["materials"]]
    assert kinds[0] == "paint" and "glass" in kinds
