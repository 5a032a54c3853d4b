"""scripts/gpu_check.sh without a GPU: it stops at once, and ``--cpu-smoke`` runs every check on the CPU and ends
with one summary table; ``ns-3dae-bench step-memory``'s library function on the CPU."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from nerfstudio_3dae.bench.step_memory import measure_method, step_memory_data

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
CHECKS = {
    "cuda tests": r"[1-9]\d* skipped.*\(CUDA tests skip on the CPU\)",
    "backend decision": r"^torch \(the model is on cpu",
    "step memory": r"^rgb [\d,]+ MiB \([\d.]+ s\), latent [\d,]+ MiB \([\d.]+ s\), autograd saved \(CPU\), 16²",
    "2 procs save+resume": r"^steps 0-9 on 2 gloo CPU processes, saved; resumed on 1 cpu process to step 19$",
    "eval": r"^test PSNR [\d.]+ dB",
    "render": r"^2 spiral videos",
    "bench scaling": r"^sparse step [\d.]+ ms at N=8",
    "bench compare": r"^PSNR rgb [\d.]+ / latent [\d.]+ dB, cpu",
}
"""Each check of the table and what its figure says on the CPU."""


def _run(args, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the stop where no CUDA device is visible")
def test_without_cuda_it_stops_at_once(tmp_path: Path) -> None:
    proc = _run([], tmp_path)
    assert proc.returncode == 2 and "no CUDA device is visible" in proc.stderr and "--cpu-smoke" in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing was run


def test_unknown_option_is_refused(tmp_path: Path) -> None:
    proc = _run(["--fast"], tmp_path)
    assert proc.returncode == 2 and "unknown option --fast" in proc.stderr


def test_cpu_smoke_runs_every_check_and_prints_one_table(tmp_path: Path) -> None:
    proc = _run(["--cpu-smoke"], tmp_path)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-2000:]
    table = out[out.rindex("gpu_check.sh summary") :].strip().splitlines()
    assert re.match(r"gpu_check.sh summary \(cpu mode, \d+ s, 8 ok, 0 FAILED\)$", table[0])
    assert [c.strip() for c in table[1].split(" | ")] == ["check", "status", "figure", "seconds"]
    rows = [[c.strip() for c in line.split(" | ")] for line in table[3:]]
    assert [r[0] for r in rows] == list(CHECKS), "the table is the last thing printed, one row per check"
    for name, status, figure, seconds in rows:
        assert status == "ok" and re.search(CHECKS[name], figure), (name, figure)
        assert float(seconds) > 0
    assert not list(tmp_path.glob("gpu_check.*")), "a run where every check is ok leaves no work folder"


def test_step_memory_on_cpu(tmp_path: Path, one_thread) -> None:
    data = step_memory_data(tmp_path / "data", 16)
    (step,) = measure_method("3dae-rgb", data, tmp_path, "cpu", steps=1)
    assert step.method == "3dae-rgb" and step.step == 0 and step.seconds > 0
    assert step.cuda_peak_bytes is None and step.cuda_resident_bytes is None  # no such statistic on the CPU
    # 4 scenes x 2 views x 16² rays x 96 samples: autograd keeps at least a float per sample
    assert step.saved_bytes > 4 * 2 * 16 * 16 * 96 * 4 and step.rss_peak_bytes > step.saved_bytes
    with pytest.raises(ValueError, match="--steps 0"):
        measure_method("3dae-rgb", data, tmp_path, "cpu", steps=0)
    with pytest.raises(ValueError, match="choose one of 3dae-rgb, 3dae-latent"):
        measure_method("3dae-autoencoder", data, tmp_path, "cpu")
