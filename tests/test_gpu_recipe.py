"""scripts/gpu_recipe.sh (the embedded-autoencoder recipe at GPU sizes) on the CPU: ``--cpu-smoke`` runs every step
at the smallest sizes and leaves the logs, the two exports and the held-out figures in OUTDIR; without CUDA and
without the flag it stops at once."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch

from nerfstudio_3dae.autoencoder import load_autoencoder

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_recipe.sh"
EMBEDDED = ROOT / "nerfstudio_3dae" / "weights" / "autoencoder"


def _run(args, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    env.pop("WORK", None)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)


def test_cpu_smoke_runs_the_recipe_and_reports(tmp_path: Path) -> None:
    shipped = {f.name: f.stat().st_mtime_ns for f in EMBEDDED.iterdir()}
    out = tmp_path / "results"
    proc = _run([str(out), "--cpu-smoke"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    text = proc.stdout[proc.stdout.rindex("gpu_recipe.sh summary") :]
    assert re.match(r"gpu_recipe.sh summary \(cpu mode, cpu \(1 thread\), \d+ s wall\)", text)
    names = "autoencoder-only|after the joint phase|after the decoder polish|shipped embedded"
    figures = dict(re.findall(rf"^ +({names}): ([\d.]+) dB$", text, re.M))
    assert len(figures) == 4 and all(float(v) > 5 for v in figures.values()), text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ae_steps"] == 4 and summary["batch_size"] == 4 and summary["holdout_views"] == 2
    assert summary["holdout_psnr_db"]["autoencoder-only"] == pytest.approx(float(figures["autoencoder-only"]))
    assert set(summary["phase_s"]) == {"1", "2", "3"}
    # what comes back from OUTDIR: at most 8 files, the final export without the joint scenes' bases
    files = sorted(str(f.relative_to(out)) for f in out.rglob("*") if f.is_file())
    assert files == ["ae-log.jsonl", "ae-only-autoencoder.tar", "autoencoder/3dae_autoencoder.json",
                     "autoencoder/config.json", "autoencoder/diffusion_pytorch_model.safetensors", "recipe.log",
                     "summary.json"]  # fmt: skip
    assert sum((out / f).stat().st_size for f in files) < 25 * 2**20
    final = load_autoencoder(out / "autoencoder")
    assert {p.device.type for p in final.parameters()} == {"cpu"} and final.latent_channels == 16
    with tarfile.open(out / "ae-only-autoencoder.tar") as tar:
        assert "autoencoder/diffusion_pytorch_model.safetensors" in tar.getnames()
    start = json.loads((out / "ae-log.jsonl").read_text().splitlines()[0])
    assert start == {"device": "cpu", "batch_size": 4, "from_step": 0}
    assert "[make-ae] 4/4 skipped (INSTALL=0)" in (out / "recipe.log").read_text()
    joint_run = tmp_path / "gpu_recipe-work-smoke" / "runs" / "embedded-ae" / "3dae-autoencoder" / "run"
    polished, joint = load_autoencoder(out / "autoencoder"), load_autoencoder(joint_run / "autoencoder")
    assert polished.encoder_identity == joint.encoder_identity, "the polish leaves the encoder as the joint made it"
    assert polished.identity != joint.identity, "the polish trained the decoder"
    assert {f.name: f.stat().st_mtime_ns for f in EMBEDDED.iterdir()} == shipped, "the package's weights stay"
    assert (tmp_path / "gpu_recipe-work-smoke" / "ae" / "state.pt").is_file(), "the work folder is outside OUTDIR"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the stop where no CUDA device is visible")
def test_without_cuda_it_stops_at_once(tmp_path: Path) -> None:
    proc = _run([str(tmp_path / "results")], tmp_path)
    assert proc.returncode == 2 and "no CUDA device is visible" in proc.stderr and "--cpu-smoke" in proc.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "gpu_recipe-work").exists()


def test_arguments_are_checked(tmp_path: Path) -> None:
    assert "unknown option --fast" in _run([str(tmp_path), "--fast"], tmp_path).stderr
    proc = _run(["--cpu-smoke"], tmp_path)
    assert proc.returncode == 2 and "usage: bash scripts/gpu_recipe.sh OUTDIR" in proc.stderr
