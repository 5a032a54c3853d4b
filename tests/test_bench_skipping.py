"""ns-3dae-bench skipping: its options, its figures and its report (the doc runner runs the command itself)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nerfstudio_3dae.bench.measure import MethodRun
from nerfstudio_3dae.bench.presets import PRESETS
from nerfstudio_3dae.bench.skipping import format_report, skipping_preset, summarise_pair

BIN = Path(sys.executable).parent


def test_step_overrides_keep_the_fine_tune_share() -> None:
    small = PRESETS["small"]
    preset = skipping_preset("small", 32, ("rgb", "latent"), rgb_steps=250, latent_steps=750)
    assert (preset.rgb_steps, preset.latent_steps) == (250, 750)
    share = small.finetune_start / small.latent_steps  # kept to the nearest step
    assert preset.finetune_start / preset.latent_steps == pytest.approx(share, abs=1 / preset.latent_steps)
    assert skipping_preset("small", 32, ("rgb",)) == small


@pytest.mark.parametrize(
    "kwargs, option",
    [
        ({"occupancy_resolution": 0}, "--occupancy-resolution"),
        ({"methods": ("rgb", "nerfacto")}, "--methods"),
        ({"methods": ()}, "--methods"),
        ({"rgb_steps": 0}, "--rgb-steps"),
        ({"latent_steps": -3}, "--latent-steps"),
        ({"occupancy_warmup": -1}, "--occupancy-warmup"),
        ({"preset_name": "huge"}, "--preset"),
    ],
)
def test_bad_options_name_the_option(kwargs, option) -> None:
    args = {"preset_name": "tiny", "occupancy_resolution": 8, "methods": ("rgb",), **kwargs}
    with pytest.raises(ValueError, match=option):
        skipping_preset(**args)


def _run(seconds: float, points: float, psnr: float, occupied) -> MethodRun:
    return MethodRun(
        curve=[(10, seconds / 2, psnr - 3, 0.5), (20, seconds, psnr, 0.6)],
        setup_s=1.0,
        phase_s={"rgb": seconds},
        bytes_per_scene=1000,
        shared_bytes=0,
        activation_bytes_per_scene=10.0,
        render_s=seconds / 100,
        run_dir="runs/x",
        points_per_step=points,
        occupied_fraction=occupied,
    )


def test_summary_ratios_and_report() -> None:
    pair = summarise_pair(_run(30.0, 1000.0, 20.0, None), _run(20.0, 400.0, 19.5, 0.25))
    assert pair["time_ratio"] == pytest.approx(1.5) and pair["points_ratio"] == pytest.approx(2.5)
    assert pair["psnr_change_db"] == pytest.approx(-0.5) and pair["render_ratio"] == pytest.approx(1.5)
    result = {"preset": "small", "device": "cpu", "occupancy_resolution": 32, "occupancy_warmup": 50, "rgb": pair}
    report = format_report(result)
    assert "| 3dae-rgb | 30.0 / 20.0 | ×1.50 | 1000 / 400 (×2.50) | 20.00 / 19.50 dB | 25.0% |" in report
    assert "3dae-latent" not in report  # only the measured methods


def test_cli_refuses_a_bad_option_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run(
        [str(BIN / "ns-3dae-bench"), "skipping", "--preset", "tiny", "--rgb-steps", "0", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--rgb-steps must be >= 1" in proc.stdout
    assert not out.exists()
