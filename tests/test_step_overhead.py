"""No overhead floor (issue 18): a steady training step reads nothing back from the device and dispatches a bounded
number of operators. The counts come from ``ns-3dae-bench step-profile``'s profiler on the CPU; a CUDA test runs the
same steps under ``torch.cuda.set_sync_debug_mode("error")``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nerfstudio_3dae.bench import step_profile
from nerfstudio_3dae.bench.step_memory import configure_defaults, step_memory_data

LATENT_TOP_LEVEL_OPS = 720
"""Bound on the top-level operators of a steady 3dae-latent step at the defaults (measured 2026-12-04: 704 at 32²,
from 1048 before the batch layout, the project's rays, fused optimisers and the host-side occupancy bookkeeping):
a regression guard, not the target (issue 18's target of 250 needs the compiled step)."""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return step_memory_data(tmp_path_factory.mktemp("overhead") / "data", 32)


@pytest.mark.parametrize("phase", ["latent", "decoded"])
def test_a_steady_latent_step_reads_nothing_back(data: Path, tmp_path: Path, one_thread, phase):
    figures = step_profile.profile_method("3dae-latent", data, tmp_path, "cpu", warmup=2, steps=3, phase=phase)
    assert figures["syncs_per_step"]["total"] == 0, figures["syncs_per_step"]
    if phase == "latent":
        assert figures["ops_per_step"]["top_level"] <= LATENT_TOP_LEVEL_OPS, figures["top_ops"]


@pytest.mark.cuda
def test_cuda_steps_never_synchronise(data: Path, tmp_path: Path):
    config = configure_defaults("3dae-latent", data, tmp_path, "cuda", 8)
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    for step in range(3):  # warm-up: the first steps allocate optimiser state
        step_profile.one_step(trainer, step, step_profile.PhaseClock(cuda=False))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(3, 6):
            step_profile.one_step(trainer, step, step_profile.PhaseClock(cuda=False))
    finally:
        torch.cuda.set_sync_debug_mode("default")
