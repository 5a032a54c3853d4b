"""The plugin installs beside nerfstudio without breaking it: ns-train lists stock and 3dae methods."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def test_ns_train_help_lists_stock_and_3dae_methods():
    out = subprocess.run([str(BIN / "ns-train"), "--help"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for method in ("nerfacto", "splatfacto", "3dae-autoencoder", "3dae-latent", "3dae-rgb"):
        assert method in out.stdout


def test_method_help_shows_documented_options():
    out = subprocess.run([str(BIN / "ns-train"), "3dae-latent", "--help"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = " ".join(out.stdout.split())
    for option in ("--pipeline.model.autoencoder", "--pipeline.model.finetune-start", "3dae-scenes"):
        assert option in text


def test_console_scripts_for_multi_process_training_and_benchmarks():
    out = subprocess.run([str(BIN / "ns-3dae-train"), "--help"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "3dae-latent" in out.stdout and "torchrun" in " ".join(out.stdout.split())
    out = subprocess.run([str(BIN / "ns-3dae-bench"), "compare", "--help"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "--preset" in out.stdout and "paper" in out.stdout
