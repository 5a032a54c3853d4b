"""nerfstudio's tools on a tiny trained 3dae run: ns-eval (every space, per scene), ns-render (every mode, per scene;
run in one process, as test_doc_commands runs the docs' commands), outputs at any resolution, the viewer's scene
picker."""

from __future__ import annotations

import json
import math
import shlex
import subprocess
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
from conftest import BIN, look_at_c2w, run_in_one_process, tool_env
from PIL import Image

from nerfstudio_3dae.data.synth.generate import generate_dataset
from nerfstudio_3dae.preview import tile_test_views


def run(tool: str, *args, env_extra=None) -> str:
    env = tool_env(bin_on_path=True, **(env_extra or {}))
    proc = subprocess.run([str(BIN / tool), *map(str, args)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"{tool} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3dae-latent run on 2 generated scenes (random 'scratch' autoencoder: the tools, not quality, are tested)."""
    root = tmp_path_factory.mktemp("tools")
    data = generate_dataset(root / "cars", 2, 6, 32, seed=5, test_views=2, progress=False)
    run("ns-train", "3dae-latent", "--data", data, "--output-dir", root / "runs", "--timestamp", "run",
        "--vis", "tensorboard", "--max-num-iterations", 30, "--steps-per-eval-image", 1000,
        "--steps-per-eval-all-images", 1000, "--pipeline.model.autoencoder", "scratch",
        "--pipeline.model.scratch-width", 8, "--pipeline.model.resolution", 16, "--pipeline.model.num-bases", 2,
        "--pipeline.model.num-coarse-samples", 16, "--pipeline.model.num-fine-samples", 16)  # fmt: skip
    return root / "runs" / "cars" / "3dae-latent" / "run" / "config.yml"


def frames(video: Path) -> list:
    # imported here: collection must not need this optional package (a GPU machine with torch alone runs -m cuda)
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    reader = imageio_ffmpeg.read_frames(str(video))
    meta = next(reader)
    return [np.frombuffer(f, dtype=np.uint8).reshape(meta["size"][1], meta["size"][0], 3) for f in reader]


def _psnr(pred: np.ndarray, gt: np.ndarray) -> float:
    return float(-10 * np.log10(np.mean((pred - gt) ** 2)))


def test_metrics_of_known_image_pairs():
    """The figures ns-eval reports, on pairs whose PSNR and SSIM are known: identical images, noise of +-0.1 (MSE
    0.01: 20 dB) with or without structure lost, and a render brighter than white (clamped to [0, 1] first)."""
    from nerfstudio_3dae.metrics import rgb_metrics

    gen = torch.Generator().manual_seed(0)
    gt = 0.2 + 0.6 * torch.rand(24, 32, 3, generator=gen)  # [H, W, 3], away from 0 and 1: nothing clamps
    same = rgb_metrics(gt, gt)
    assert same["psnr"] > 60 and same["ssim"] == pytest.approx(1.0, abs=1e-6)
    sign = torch.where(torch.rand(gt.shape, generator=gen) < 0.5, -1.0, 1.0)
    noisy, shifted = rgb_metrics(gt + 0.1 * sign, gt), rgb_metrics(gt + 0.1, gt)
    assert noisy["psnr"] == pytest.approx(20.0, abs=1e-3) and shifted["psnr"] == pytest.approx(20.0, abs=1e-3)
    assert 0.5 < noisy["ssim"] < 0.95, "random noise breaks the structure"  # seen: 0.85
    assert noisy["ssim"] < shifted["ssim"] < 1, "a brightness shift keeps it"  # seen: 0.98
    white = rgb_metrics(gt + 1.0, gt)  # clamped to 1 everywhere
    assert white["psnr"] == pytest.approx(_psnr(np.ones(gt.shape), gt.double().numpy()), abs=1e-3)


def test_ns_eval_reports_every_space_and_every_scene(trained, tmp_path):
    out = tmp_path / "eval.json"
    log = run("ns-eval", "--load-config", trained, "--output-path", out, "--render-output-path", tmp_path / "img")
    results = json.loads(out.read_text())["results"]
    for key in ("psnr", "ssim", "latent_psnr", "latent_ssim", "autoencoded_psnr", "autoencoded_ssim"):
        assert math.isfinite(results[key]) and f"{key}_std" in results
    for key in ("ssim", "latent_ssim", "autoencoded_ssim"):
        assert -1 <= results[key] <= 1
    assert set(results["per_scene"]) == {"car_0000", "car_0001"}
    # two test views a scene: the overall mean is the mean of the scenes' means
    per_scene = [results["per_scene"][s]["psnr"] for s in ("car_0000", "car_0001")]
    assert results["psnr"] == pytest.approx(sum(per_scene) / 2, abs=1e-4)
    if isinstance(results["lpips"], str):  # no local AlexNet weights: said, not faked
        assert "LPIPS not computed" in results["lpips"] and "LPIPS not computed" in log
    else:  # weights present: a real LPIPS in both image spaces
        assert math.isfinite(results["lpips"]) and math.isfinite(results["autoencoded_lpips"])
    views = sorted((tmp_path / "img").glob("*.png"))
    assert len(views) == 4
    with Image.open(views[0]) as first:  # ground truth | decoded render | the autoencoder alone
        assert first.width == 3 * first.height
    # the reported PSNRs are those of the pictures written beside them (8-bit: within a few hundredths of a dB)
    panels = [np.split(np.asarray(Image.open(v), dtype=np.float64) / 255, 3, axis=1) for v in views]
    for key, panel in (("psnr", 1), ("autoencoded_psnr", 2)):
        mean = sum(_psnr(p[panel], p[0]) for p in panels) / len(panels)
        assert results[key] == pytest.approx(mean, abs=0.1), key
    grid = np.asarray(Image.open(tile_test_views(tmp_path / "img", tmp_path / "grid.png")))
    assert grid.shape[0] > 2 * first.height  # a row per scene (two scenes)


def run_tools(commands: List[Tuple[list, Dict[str, str]]], scratch: Path) -> None:
    """Run tool commands (argv, extra environment) in one Python process (:func:`conftest.run_in_one_process`);
    each must exit with 0."""
    results = run_in_one_process([{"argv": argv, "env": env} for argv, env in commands], scratch,
                                 tool_env(bin_on_path=True), scratch)  # fmt: skip
    for result in results:
        ran = shlex.join(result["argv"])
        assert result["code"] == 0, f"{ran} failed:\n{result['output'][-3000:]}\n{result['runner_log']}"


def test_ns_render_modes_and_scene_choice(trained, tmp_path):
    path = {"camera_type": "perspective", "render_height": 40, "render_width": 56, "seconds": 1, "fps": 3,
            "camera_path": [{"camera_to_world": look_at_c2w(np.array([1.3 * math.cos(a), 1.3 * math.sin(a), 0.6]))
                             .ravel().tolist(), "fov": 50, "aspect": 56 / 40} for a in (0.0, 0.5, 1.0)]}  # fmt: skip
    (tmp_path / "path.json").write_text(json.dumps(path))
    scenes = ("car_0000", "car_0001")
    camera_path = [(["ns-render", "camera-path", "--load-config", trained, "--camera-path-filename",
                     tmp_path / "path.json", "--output-path", tmp_path / scene, "--output-format", "images"],
                    {"NS3DAE_SCENE": scene}) for scene in scenes]  # fmt: skip
    run_tools(camera_path + [
        (["ns-render", "interpolate", "--load-config", trained, "--output-path", tmp_path / "interp.mp4",
          "--interpolation-steps", 2, "--frame-rate", 4], {}),
        (["ns-3dae-render", "spiral", "--load-config", trained, "--output-path", tmp_path / "spiral.mp4",
          "--scenes", "0:2", "--seconds", 1, "--frame-rate", 3], {}),
        (["ns-render", "dataset", "--load-config", trained, "--output-path", tmp_path / "ds", "--split", "test",
          "--rendered-output-names", "rgb", "depth"], {}),
    ], tmp_path)  # fmt: skip
    images = {}
    for scene in scenes:
        (first,) = sorted((tmp_path / scene).glob("00000.*"))
        images[scene] = np.asarray(Image.open(first))
        assert images[scene].shape[:2] == (40, 56), "any width x height, not only multiples of 8"
    assert np.abs(images["car_0000"].astype(int) - images["car_0001"].astype(int)).mean() > 0.5
    assert len(frames(tmp_path / "interp.mp4")) >= 2
    for scene in scenes:
        assert len(frames(tmp_path / f"spiral_{scene}.mp4")) == 3
    rendered = sorted(p.relative_to(tmp_path / "ds") for p in (tmp_path / "ds").rglob("*.jpg"))
    assert len(rendered) == 8 and any("car_0001" in str(p) for p in rendered)


def test_outputs_at_any_resolution_and_scene_picker(trained):
    from nerfstudio.cameras.cameras import Cameras
    from nerfstudio.utils.eval_utils import eval_setup
    from nerfstudio.viewer.utils import parse_object
    from nerfstudio.viewer.viewer_elements import ViewerDropdown

    _, pipeline, _, _ = eval_setup(trained, test_mode="inference")
    model = pipeline.model
    c2w = torch.tensor(look_at_c2w(np.array([1.3, 0.0, 0.5]))[:3], dtype=torch.float32)[None]
    camera = Cameras(camera_to_worlds=c2w, fx=40.0, fy=40.0, cx=18.5, cy=11.5, width=37, height=23)
    outputs = model.get_outputs_for_camera(camera)
    assert list(outputs)[0] == "rgb"
    assert {k: tuple(v.shape) for k, v in outputs.items()} == {
        "rgb": (23, 37, 3), "latent": (23, 37, 4), "depth": (23, 37, 1), "accumulation": (23, 37, 1)}  # fmt: skip

    pickers = [e for _, e in parse_object(pipeline, ViewerDropdown, "Custom Elements") if e.name == "Scene"]
    assert len(pickers) == 1 and pickers[0].options == ["car_0000", "car_0001"]
    pickers[0].cb_hook(type("Picked", (), {"value": "car_0001"})())
    assert model.scene == 1
    other = model.get_outputs_for_camera(camera)["rgb"]
    assert not torch.allclose(other, outputs["rgb"]), "the picked scene is rendered"
