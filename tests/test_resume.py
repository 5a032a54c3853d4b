"""Crash safety: atomic checkpoint writes, and a run killed with SIGKILL resumes and finishes its schedule."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tool_env

from nerfstudio_3dae.data.synth.generate import generate_dataset
from nerfstudio_3dae.latent_model import LR_PHASE
from nerfstudio_3dae.model import (
    PARAM_GROUP,
    TriplaneModel,  # noqa: F401  (registers the checkpoint loader fix)
)
from nerfstudio_3dae.trainer import atomic_torch_save

BIN = Path(sys.executable).parent


class ExplodesWhilePickled:
    def __reduce__(self):
        raise RuntimeError("killed mid-save")


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path):
    folder = tmp_path / "nerfstudio_models"
    folder.mkdir()
    target = folder / "step-000000010.ckpt"
    atomic_torch_save({"step": 10, "w": torch.ones(3)}, target)
    with pytest.raises(RuntimeError, match="killed mid-save"):
        atomic_torch_save({"step": 20, "w": torch.zeros(1000), "bad": ExplodesWhilePickled()}, target)
    assert torch.load(target)["step"] == 10
    assert sorted(p.name for p in folder.iterdir()) == ["step-000000010.ckpt"], "no partial file where --load-dir looks"
    assert not list(tmp_path.glob(".*.partial")), "nor the temporary file beside the checkpoint folder"


def test_sigkill_then_resume_finishes_the_run(tmp_path):
    data = generate_dataset(tmp_path / "cars", 2, 6, 32, seed=9, test_views=2, progress=False)
    args = [str(BIN / "ns-train"), "3dae-latent", "--data", str(data), "--output-dir", str(tmp_path / "runs"),
            "--timestamp", "run", "--vis", "tensorboard", "--max-num-iterations", "400", "--steps-per-save", "10",
            "--save-only-latest-checkpoint", "False", "--steps-per-eval-image", "10000",
            "--steps-per-eval-all-images", "10000", "--pipeline.model.autoencoder", "scratch",
            "--pipeline.model.scratch-width", "8", "--pipeline.model.resolution", "8",
            "--pipeline.model.num-bases", "2", "--pipeline.model.num-coarse-samples", "8",
            "--pipeline.model.num-fine-samples", "8", "--pipeline.model.finetune-start", "300"]  # fmt: skip
    env = tool_env()
    ckpts = tmp_path / "runs" / "cars" / "3dae-latent" / "run" / "nerfstudio_models"
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(list(ckpts.glob("*.ckpt"))) < 3 and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "training ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # mid-training, maybe mid-save
    finally:
        proc.wait(timeout=60)
    saved = sorted(ckpts.glob("*.ckpt"))
    assert len(saved) >= 3
    for ckpt in saved:  # every checkpoint that is there is complete
        torch.load(ckpt, map_location="cpu")
    last = int(saved[-1].stem.split("-")[1])
    assert last < 399

    resumed = subprocess.run(args + ["--load-dir", str(ckpts)], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    log = "".join((resumed.stdout + resumed.stderr).split())  # rich may wrap the long path
    assert "DoneloadingNerfstudiocheckpoint" in log and f"step-{last:09d}.ckpt" in log
    final = torch.load(ckpts / "step-000000399.ckpt", map_location="cpu")
    assert final["step"] == 399, "the resumed run ends where the uninterrupted one would"
    recorded = {pg.get(LR_PHASE) for pg in final["optimizers"][PARAM_GROUP.micro]["param_groups"]}
    assert recorded == {"finetune"}, "it went through the fine-tune switch at step 300"
