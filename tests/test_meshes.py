"""``ns-3dae-convert meshes`` on a textured cube the test writes (OBJ + MTL + PNG): texture colours land where the
geometry says, the layout reads back, resume keeps finished scenes, and bad files are named, never dropped."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nerfstudio_3dae.data.layout import DatasetError, project_points, read_scene, read_scene_names
from nerfstudio_3dae.data.meshes import load_mesh, sample_texture
from nerfstudio_3dae.data.synth.cameras import square_intrinsics
from nerfstudio_3dae.scripts import convert

RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)
TEXTURE = np.array([[RED, RED, GREEN, GREEN]] * 2 + [[BLUE, BLUE, YELLOW, YELLOW]] * 2, dtype=np.uint8)
"""4x4 texture. Rows 0-1 (v > 0.5): red | green; rows 2-3 (v < 0.5): blue | yellow (u < 0.5 | u > 0.5)."""
REGIONS = {"red": (0.05, 0.55), "blue": (0.05, 0.05), "yellow": (0.55, 0.05), "green": (0.55, 0.55)}
"""Lower-left (u, v) corner of each colour's quadrant of the texture; faces use [corner, corner + 0.4]."""
FILE_FACES = {  # outward normal in the file's axes (OBJ: +Y up) -> the texture quadrant it shows
    (0, 1, 0): "red",  # top
    (0, -1, 0): "green",  # bottom (never seen from the upper hemisphere)
    (1, 0, 0): "blue",
    (-1, 0, 0): "blue",
    (0, 0, 1): "yellow",
    (0, 0, -1): "yellow",
}
SIZE, VIEWS, TEST_VIEWS = 32, 6, 2


def write_cube(folder: Path, name: str = "cube") -> Path:
    """A cube [-1, 1]^3 (OBJ axes, +Y up) whose faces show quadrants of TEXTURE, as OBJ + MTL + PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(TEXTURE).save(folder / "tex.png")
    (folder / f"{name}.mtl").write_text("newmtl paint\nKd 0.5 0.5 0.5\nmap_Kd tex.png\n")
    lines, vts = [f"mtllib {name}.mtl", "usemtl paint"], []
    for k, (normal, colour) in enumerate(FILE_FACES.items()):
        n = np.array(normal, dtype=float)
        a = np.roll(n, 1) if n.sum() > 0 else np.roll(n, 2)  # two tangents with a x b = n
        b = np.cross(n, a)
        for su, sv in ((-1, -1), (1, -1), (1, 1), (-1, 1)):  # counter-clockwise seen from outside
            lines.append("v {} {} {}".format(*(n + su * a + sv * b)))
        u0, v0 = REGIONS[colour]
        for su, sv in ((0, 0), (1, 0), (1, 1), (0, 1)):
            vts.append(f"vt {u0 + 0.4 * su} {v0 + 0.4 * sv}")
        lines.append("f " + " ".join(f"{4 * k + i + 1}/{4 * k + i + 1}" for i in range(4)))
    path = folder / f"{name}.obj"
    path.write_text("\n".join(lines[:2] + [ln for ln in lines[2:] if ln.startswith("v ")] + vts
                              + [ln for ln in lines[2:] if ln.startswith("f ")]) + "\n")  # fmt: skip
    return path


def run_cli(monkeypatch, *args: str) -> int:
    """``ns-3dae-convert`` in this process; its exit code (0 when it returns)."""
    monkeypatch.setenv("COLUMNS", "500")  # rich must not wrap the file names the test looks for
    monkeypatch.setattr(sys, "argv", ["ns-3dae-convert", *args])
    try:
        convert.entrypoint()
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def classify(rgb: np.ndarray) -> str:
    r, g, b = (float(c) for c in rgb)
    if r > 3 * max(g, b, 1.0):
        return "red"
    if b > 3 * max(r, g, 1.0):
        return "blue"
    if min(r, g) > 3 * max(b, 1.0):
        return "yellow"
    if g > 3 * max(r, b, 1.0):
        return "green"
    return f"other{(r, g, b)}"


def test_texture_lookup_is_bilinear_wrapping_with_v_up():
    image = TEXTURE.astype(np.float32) / 255.0
    got = sample_texture(image, np.array([[0.25, 0.75], [0.75, 0.25], [1.25, -0.25], [0.5, 0.75]]))
    np.testing.assert_allclose(got[0], np.array(RED) / 255)  # v = 0.75 is the image's upper half
    np.testing.assert_allclose(got[1], np.array(YELLOW) / 255)
    np.testing.assert_allclose(got[2], np.array(RED) / 255)  # wraps: (1.25, -0.25) is (0.25, 0.75)
    np.testing.assert_allclose(got[3], (np.array(RED) + np.array(GREEN)) / 2 / 255)  # halfway between columns 1, 2


def test_a_cube_is_normalised_like_the_generated_objects(tmp_path):
    cube = load_mesh(write_cube(tmp_path / "cube"))
    vertices = np.asarray(cube.mesh.vertices)
    # largest side 0.9 unless a vertex would pass 0.55 from the origin: here the corners decide (side 1.1 / sqrt 3)
    np.testing.assert_allclose(np.abs(vertices).max(0), 0.55 / np.sqrt(3))
    assert len(cube.textures) == 1 and (cube.face_texture == 0).all()
    top = cube.mesh.face_normals[:, 2] > 0.99  # file +Y is the scene's +Z
    assert top.sum() == 2


def test_cli_renders_the_texture_where_the_geometry_says(tmp_path, monkeypatch):
    mesh = write_cube(tmp_path / "meshes" / "cube")
    out = tmp_path / "data"
    args = ["meshes", "--input", str(tmp_path / "meshes"), "--output", str(out), "--views-per-scene", str(VIEWS),
            "--test-views", str(TEST_VIEWS), "--resolution", str(SIZE)]  # fmt: skip
    assert run_cli(monkeypatch, *args) == 0
    assert read_scene_names(out) == ["cube"]  # meshes/cube/cube.obj: the folder's name
    scene = read_scene(out, "cube")
    assert [v.split for v in scene.views] == ["test"] * TEST_VIEWS + ["train"] * (VIEWS - TEST_VIEWS)
    assert scene.views[0].intrinsics == square_intrinsics(SIZE)
    meta = json.loads((out / "cube" / "transforms.json").read_text())["mesh"]
    assert meta["source"] == str(mesh.resolve()) and meta["textured_faces"] == 12
    half = meta["normalisation"]["scale"]  # file coordinates +-1 -> scene coordinates +-scale
    checked = set()
    for view in scene.views:
        image = np.asarray(Image.open(view.image).convert("RGB"))
        assert (image[0, 0] == 255).all() and (image[-1, -1] == 255).all(), "missed rays are white"
        camera = view.camera_to_world[:3, 3]
        for normal, colour in FILE_FACES.items():
            n = np.array([normal[0], -normal[2], normal[1]], dtype=float)  # OBJ (x, y, z) -> scene (x, -z, y)
            centre = n * half
            to_camera = camera - centre
            if n @ to_camera < 0.3 * np.linalg.norm(to_camera):
                continue  # a face seen edge-on or from behind
            uv, _ = project_points(centre[None], view.camera_to_world, view.intrinsics)
            x, y = np.floor(uv[0]).astype(int)
            assert classify(image[y, x]) == colour, f"{view.image}: face {normal} at pixel {(x, y)}"
            checked.add(colour)
    assert checked == {"red", "blue", "yellow"}, "every visible texture quadrant was looked at"

    # --resume keeps the finished scene; the images stay as they were
    before = (out / "cube" / "images" / "0000.png").read_bytes()
    assert run_cli(monkeypatch, *args, "--resume") == 0
    assert (out / "cube" / "images" / "0000.png").read_bytes() == before
    assert run_cli(monkeypatch, *args) == 2, "a non-empty output needs --resume or --overwrite"


def test_bad_meshes_are_named_and_skipped_ones_reported(tmp_path, monkeypatch, capsys):
    meshes = tmp_path / "meshes"
    write_cube(meshes / "a_cube", "a_cube")
    empty = meshes / "b_empty.obj"
    empty.write_text("# no vertices, no faces\n")
    broken = meshes / "c_broken.ply"
    broken.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 99\nend_header\n\x00\x01")
    with pytest.raises(DatasetError, match="b_empty.obj has no faces"):
        load_mesh(empty)
    with pytest.raises(DatasetError, match="c_broken.ply cannot be read"):
        load_mesh(broken)

    base = ["meshes", "--input", str(meshes), "--views-per-scene", "2", "--test-views", "1", "--resolution", "16"]
    assert run_cli(monkeypatch, *base, "--output", str(tmp_path / "strict")) == 2
    assert "b_empty.obj has no faces" in capsys.readouterr().err

    out = tmp_path / "lenient"
    assert run_cli(monkeypatch, *base, "--output", str(out), "--skip-bad") == 0
    printed = capsys.readouterr().out
    assert "1 scenes" in printed and "2 meshes skipped" in printed
    assert "b_empty.obj" in printed and "c_broken.ply" in printed
    assert read_scene_names(out) == ["a_cube"]
    skipped = json.loads((out / "skipped.json").read_text())
    assert [Path(s["file"]).name for s in skipped] == ["b_empty.obj", "c_broken.ply"]
    assert run_cli(monkeypatch, "meshes", "--input", str(tmp_path / "nothing"), "--output", str(out)) == 2
    assert "nothing does not exist" in capsys.readouterr().err
