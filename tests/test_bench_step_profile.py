"""ns-3dae-bench step-profile: phases, operator and host-sync counts of steady training steps (tiny, CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from nerfstudio_3dae.bench import step_profile
from nerfstudio_3dae.bench.step_memory import step_memory_data


def test_a_host_read_added_to_the_step_is_counted_once_per_step(tmp_path: Path, one_thread, monkeypatch):
    data = step_memory_data(tmp_path / "data", 16)
    kwargs = dict(warmup=1, steps=3, occupancy_warmup=1)  # the grids' warm-up shortened
    base = step_profile.profile_method("3dae-latent", data, tmp_path, "cpu", **kwargs)
    original = step_profile.one_step

    def with_a_read(trainer, step, clock=None):  # a loss value read on the host inside every step
        original(trainer, step, clock)
        float(trainer.pipeline.model.field.bank.micro.sum())

    monkeypatch.setattr(step_profile, "one_step", with_a_read)
    read = step_profile.profile_method("3dae-latent", data, tmp_path, "cpu", **kwargs)
    assert read["syncs_per_step"]["item"] == base["syncs_per_step"].get("item", 0) + 1
    assert read["ops_per_step"]["top_level"] == base["ops_per_step"]["top_level"] + 2  # sum and the read
    for figures in (base, read):
        assert figures["steps"] == 3 and figures["grid_update_steps"] == 1  # the first one, made due
        assert figures["ops_per_update_step"]["top_level"] > figures["ops_per_step"]["top_level"]
        assert figures["ops_per_step"]["all"] >= figures["ops_per_step"]["top_level"] > 50
        assert set(figures["phases_ms"]) == set(step_profile.PHASES)
        assert figures["phases_ms"]["forward"] > 0 and figures["phases_ms"]["backward"] > 0
        assert sum(figures["phases_ms"].values()) <= figures["ms_per_step"] * 1.05
        assert figures["ms_per_step_unprofiled"] > 0 and figures["grid_update_steps_unprofiled"] >= 1


def test_nested_sync_ops_count_once():
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        x = torch.arange(6.0)
        bool(x.sum() > 0)  # is_nonzero, which reads the value through _local_scalar_dense
        x[x > 2]  # a boolean index: nonzero
    counted = step_profile.count_ops(prof.events())
    assert counted["syncs"].get("is_nonzero") == 1 and counted["syncs"].get("item", 0) == 0
    assert counted["syncs"].get("nonzero", 0) >= 1


def test_cli_writes_json_and_table(tmp_path: Path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "nerfstudio_3dae.scripts.bench", "step-profile", "--device", "cpu", "--image-size",
         "16", "--warmup", "1", "--steps", "2", "--rounds", "2", "--methods", "3dae-latent", "--output", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((out / "step-profile.json").read_text())
    assert set(result["methods"]) == {"3dae-latent", "3dae-latent/decoded"}  # both phases by default
    for figures in result["methods"].values():
        assert {"ops_per_step", "syncs_per_step", "ms_per_step", "ms_per_step_unprofiled"} <= set(figures)
        assert len(figures["ms_per_step_unprofiled_rounds"]) == 2 and figures["grid_update_steps"] == 1
        assert figures["warmup_steps"] >= 50  # the grids' warm-up: 50 batches of each scene
    ratio = result["methods"]["3dae-latent/decoded"]["ms_per_step_unprofiled"]
    assert (
        result["decoded_over_latent_unprofiled"] == ratio / result["methods"]["3dae-latent"]["ms_per_step_unprofiled"]
    )
    table = (out / "step-profile.md").read_text()
    assert "operators per steady step, top-level" in table and "decoded step / latent step, unprofiled" in table
    bad = subprocess.run(
        [sys.executable, "-m", "nerfstudio_3dae.scripts.bench", "step-profile", "--image-size", "12"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and "--image-size" in bad.stdout
