"""The scaling benchmark on its tiny preset: the CLI, the JSON it writes and the fresh-process worker (CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nerfstudio_3dae.bench.scaling import MODES, PRESETS, RunOptions, _measure_in_subprocess

PER_MODE_KEYS = {"step_time_s", "step_time_ratio", "step_time_ratio_8_vs_2", "bytes_per_scene", "shared_bytes",
                 "phase_time_s", "optimizer_time_ratio", "step_cpu_time_s", "step_cpu_time_ratio",
                 "peak_rss_bytes", "scene_grad_bytes"}  # fmt: skip


def test_cli_writes_the_scaling_json(tmp_path: Path) -> None:
    output = tmp_path / "scaling.json"
    cmd = [sys.executable, "-m", "nerfstudio_3dae.scripts.bench", "scaling", "--preset", "tiny",
           "--no-fresh-process", "--output", str(output)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step time x" in proc.stdout and "wrote" in proc.stdout
    result = json.loads(output.read_text())
    assert {"preset", "device", "settings", "scene_counts", "dense", *PER_MODE_KEYS} <= result.keys()
    assert PER_MODE_KEYS <= result["dense"].keys()
    assert result["preset"] == "tiny" and result["scene_counts"] == [2, 4, 8]
    for part in (result, result["dense"]):
        assert set(part["step_time_s"]) == set(part["peak_rss_bytes"]) == {"2", "4", "8"}
        assert all(t > 0 for t in part["step_time_s"].values())
        assert set(part["bytes_per_scene"]) == {"params", "optimizer_state", "total"}
    tiny = PRESETS["tiny"]
    floats = 3 * tiny.micro_channels * tiny.resolution**2 + tiny.num_bases + 1  # micro + weights + bias
    assert result["bytes_per_scene"]["params"] == result["dense"]["bytes_per_scene"]["params"] == 4 * floats
    # sparse gradients hold the batch's rows only; dense ones the whole tables
    assert result["scene_grad_bytes"]["8"] < result["dense"]["scene_grad_bytes"]["8"]


def test_fresh_process_worker() -> None:
    """One sparse step of 4 tiny scenes measured in a fresh interpreter: times that add up and have the size of a
    millisecond step (not 0, not a wrong unit), and bytes that follow from the sizes."""
    tiny, scenes = PRESETS["tiny"], 4
    figures = _measure_in_subprocess("tiny", scenes, MODES[0], RunOptions("cpu", 1, 1, True))
    phases = [figures[f"{name}_time_s"] for name in ("forward", "backward", "optimizer")]
    assert figures["step_time_s"] == figures["step_time_min_s"], "one timed step: its median is its minimum"
    assert sum(phases) == pytest.approx(figures["step_time_s"], rel=1e-9), "the phases make up the step"
    assert all(t > 0 for t in phases)
    assert 1e-5 < figures["step_time_s"] < 10.0, "a step of 2 tiny scenes takes milliseconds (seen: 5-20 ms)"
    assert 0 < figures["step_cpu_time_s"] < 10.0
    params = 4 * (3 * tiny.micro_channels * tiny.resolution**2 + tiny.num_bases + 1)  # float32 micro + weights + bias
    assert figures["param_bytes_per_scene"] == params
    # Adam keeps two moments a parameter (plus small step counters); sparse gradients hold the batch's rows only
    assert 2 * params <= figures["optimizer_state_bytes_per_scene"] < 2.5 * params
    shared = figures["shared_param_bytes"]
    assert shared > 0 and 2 * shared <= figures["shared_optimizer_state_bytes"] < 2.5 * shared
    assert tiny.batch_scenes * params <= figures["scene_grad_bytes"] < scenes * params
    # resident memory: torch and nerfstudio loaded (seen: 0.65 GB), then a tiny model on top (seen: +0.17 GB)
    assert 50e6 < figures["baseline_rss_bytes"] < 8e9
    assert 0 <= figures["peak_rss_bytes"] - figures["baseline_rss_bytes"] < 1e9
