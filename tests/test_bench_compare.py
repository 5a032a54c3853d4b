"""ns-3dae-bench compare: the whole code path on the tiny preset (CLI, JSON, table, plots), and its arithmetic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from nerfstudio_3dae.bench.compare import PRESETS, MethodRun, saved_activation_bytes, summarise, time_to_reach
from nerfstudio_3dae.bench.report import PLOTS, markdown_table

REQUIRED = {"time_ratio", "memory_ratio", "render_ratio", "psnr_rgb", "psnr_latent", "ssim_rgb", "ssim_latent",
            "device"}  # fmt: skip


def test_cli_runs_the_tiny_comparison_and_writes_every_output(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "nerfstudio_3dae.scripts.bench", "compare", "--preset", "tiny", "--output", str(out),
           "--threads", "1"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    result = json.loads((out / "compare.json").read_text())
    assert REQUIRED <= result.keys()
    assert result["preset"] == "tiny" and result["device"].startswith("cuda" if torch.cuda.is_available() else "cpu")
    for key in ("memory_ratio", "render_ratio", "activation_memory_ratio", "stage1_time_s"):
        assert result[key] > 0, key
    assert 0 < result["ssim_rgb"] <= 1 and 0 < result["ssim_latent"] <= 1
    assert result["autoencoded_psnr"] > 5, "the latent run reports its autoencoder's own test PSNR"
    assert result["psnr_target"] == pytest.approx(result["psnr_rgb"] - 0.5)
    assert result["time_ratio"] is None or result["time_ratio"] > 0
    assert len(result["curves"]["rgb"]) == 2 and len(result["curves"]["latent"]) == 2  # every 10 steps and the end
    assert {"setup", "latent", "finetune"} <= result["profile_s"]["latent"].keys(), "both latent phases ran"
    assert "ratio (RGB ÷ latent)" in (out / "compare.md").read_text()
    for name in PLOTS:
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width > 200
    assert (out / "runs" / "stage1" / "3dae-autoencoder" / "bench" / "autoencoder" / "bases.pt").is_file()
    assert "ns-3dae-bench compare" in proc.stdout


def _run(curve, bytes_per_scene=1000, render_s=0.2):
    return MethodRun(curve, 1.0, {"rgb": 9.0}, bytes_per_scene, 10, 4096.0, render_s, "run")


def test_summary_arithmetic_and_an_unreached_target():
    preset = PRESETS["tiny"]  # 2 scenes
    rgb = _run([(10, 10.0, 20.0, 0.8), (20, 20.0, 24.0, 0.9)], bytes_per_scene=3000, render_s=0.5)
    latent = _run([(10, 2.0, 22.0, 0.7), (20, 4.0, 23.6, 0.85)], render_s=0.1)
    result = summarise("tiny", preset, 100.0, rgb, latent, "cpu", 0.5)
    assert result["psnr_target"] == 23.5
    assert result["time_per_scene_s"] == {"rgb": 10.0, "latent": 2.0}
    assert result["time_ratio"] == 5.0 and result["memory_ratio"] == 3.0 and result["render_ratio"] == 5.0
    assert result["effective_time_per_scene_s"]["10"]["latent"] == 2.0 + 100.0 / 10
    assert result["common_psnr"] == 23.6 and result["time_ratio_at_common_psnr"] == 20.0 / 4.0
    assert result["effective_time_per_scene_s"]["1000"]["latent_full_schedule"] == 2.0 + 0.1
    table = markdown_table(result)
    assert "| time per scene to the PSNR target | 5.00 | ≥ 10 | no |" in table
    assert "| render one 32² view | 5.00 | ≥ 5 | yes |" in table

    never = _run([(10, 2.0, 20.0, 0.7), (20, 4.0, 21.0, 0.75)])
    missed = summarise("tiny", preset, 100.0, rgb, never, "cpu", 0.5)
    assert missed["time_ratio"] is None and not missed["latent_reached_target"]
    assert missed["effective_time_per_scene_s"]["10"]["latent"] is None
    assert "not reached" in markdown_table(missed)
    assert missed["common_psnr"] == 21.0 and missed["time_ratio_at_common_psnr"] == 20.0 / 4.0
    assert time_to_reach(never.curve, 20.5) == 4.0


def test_saved_activation_bytes_counts_what_backward_keeps():
    x = torch.randn(1000, requires_grad=True)

    def step():
        (x * x).sum().backward()  # saves x (4000 bytes) once

    assert saved_activation_bytes(step) == 4000


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_runnable_schedules(name):
    p = PRESETS[name]
    assert p.image_size % 8 == 0 and p.render_size % 8 == 0, "the autoencoder downsamples by 8"
    assert 0 < p.test_views < p.views_per_scene
    assert p.stage1_warmup < p.stage1_steps, "stage 1 reaches its joint phase"
    assert 0 < p.finetune_start < p.latent_steps, "the latent run fine-tunes its decoder"
    assert p.scenes_per_step <= min(p.scenes, p.stage1_scenes)
    assert p.eval_every <= min(p.rgb_steps, p.latent_steps)
