"""Multi-process training on 2 gloo processes: mixed precision's grad scale agreed by every rank, and a pause (or a
stop) in rank 0's viewer that the other ranks follow instead of timing out in their next collective."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port, tiny_run_config
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
from torch.nn import Parameter

from nerfstudio_3dae.distributed import scene_shard
from nerfstudio_3dae.method_configs import rgb_method
from nerfstudio_3dae.model import SCENE_PARAM_GROUPS
from nerfstudio_3dae.trainer import ShardedOptimizers, sharded_grad_scaler

TIMEOUT_S = 4.0
"""The process group's timeout in the pause test: a rank left waiting in a collective longer than this fails."""
PAUSE_S = 2.5 * TIMEOUT_S
"""How long rank 0 stays paused."""


def _scaled_steps(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=2, rank=rank)
    try:
        config = {g: {"optimizer": AdamOptimizerConfig(lr=0.1), "scheduler": None} for g in ("mlp", "micro")}
        shared, rows = Parameter(torch.ones(2)), Parameter(torch.ones(3))
        optimizers = ShardedOptimizers(config, {"mlp": [shared], "micro": [rows]}, SCENE_PARAM_GROUPS, 2, scene_shard())
        plain = torch.amp.GradScaler("cpu", init_scale=8.0)
        scaler = sharded_grad_scaler(plain, "cpu")
        record = []
        for rows_factor in (float(rank + 1), float("inf") if rank == 1 else 1.0):  # step 2: inf on rank 1 only
            optimizers.zero_grad_all()
            loss = (shared * (rank + 1)).sum() + (rows * rows_factor).sum()
            scaler.scale(loss).backward()
            optimizers.optimizer_scaler_step_all(scaler)
            scaler.update()
            record.append((shared.grad.tolist(), shared.tolist(), rows.tolist(), scaler.get_scale()))
        results[rank] = (isinstance(scaler, ShardedGradScaler), record)
        optimizers.zero_grad_all()
        plain.scale((shared.sum() + rows.sum()) * 1.0).backward()
        with pytest.raises(ValueError, match="--mixed-precision True"):
            optimizers.optimizer_scaler_step_all(plain)
    finally:
        dist.destroy_process_group()


def test_mixed_precision_ranks_share_one_scale_and_skip_together():
    results = mp.Manager().dict()
    mp.spawn(_scaled_steps, args=(free_port(), results), nprocs=2, join=True)
    for rank in (0, 1):
        sharded, (first, second) = results[rank]
        assert sharded, "a multi-process run scales with ShardedGradScaler"
        grad, shared, rows, scale = first
        assert grad == [1.5, 1.5], "the shared gradient is the unscaled mean over the ranks (1 and 2)"
        assert shared == pytest.approx([0.9, 0.9]) and rows == pytest.approx([0.9] * 3), "Adam's first step: lr"
        assert scale == 8.0, "the scale the run was configured with (carried into the sharded scaler)"
        _, shared, rows, scale = second
        assert rows == pytest.approx([0.9] * 3), f"rank {rank}: an inf in rank 1's rows skips the step on every rank"
        assert shared == pytest.approx([0.8, 0.8]), "an optimiser whose gradients are finite steps (as in one process)"
        assert scale == 4.0, f"rank {rank}: every rank lowers the scale alike"


def _paused_run(rank: int, port: int, data: Path, out: Path, results) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=2, rank=rank, timeout=timedelta(seconds=TIMEOUT_S)
    )
    try:
        torch.set_num_threads(1)
        config = tiny_run_config(rgb_method(), data, out, steps=6, scenes_per_step=1)
        config.machine.device_type = "cpu"
        config.timestamp = "run"
        trainer = config.setup(local_rank=rank, world_size=2)
        trainer.pause_keepalive_s = 0.2
        trainer.setup()
        started = {}
        trainer.callbacks.append(
            TrainingCallback(
                [TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
                lambda step: started.setdefault(step, time.monotonic()),
            )
        )
        if rank == 0:

            def pause(step: int) -> None:  # what the viewer's pause and resume buttons do
                trainer.training_state = "paused"
                threading.Timer(PAUSE_S, lambda: setattr(trainer, "training_state", "training")).start()

            def stop(step: int) -> None:  # what trainer.shutdown() does
                trainer.stop_training = True

            trainer.callbacks.append(
                TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], pause, iters=(1,))
            )
            trainer.callbacks.append(
                TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], stop, iters=(3,))
            )
        trainer.train()
        results[rank] = (dict(started), trainer.training_state)
    finally:
        dist.destroy_process_group()


def test_a_pause_on_rank_0_pauses_every_rank_and_a_stop_stops_them(tiny_dataset, tmp_path):
    data = tiny_dataset(num_scenes=2)
    results = mp.Manager().dict()
    mp.spawn(_paused_run, args=(free_port(), data, tmp_path / "runs", results), nprocs=2, join=True)
    for rank in (0, 1):
        started, state = results[rank]
        assert sorted(started) == [0, 1, 2, 3], f"rank {rank}: rank 0 stopped the run after step 3"
        assert started[2] - started[1] >= PAUSE_S - 0.5, f"rank {rank} waited for rank 0's pause"
        assert state == "completed"
    saved = sorted(p.name for p in (tmp_path / "runs").rglob("*.ckpt"))
    assert saved == ["step-000000004.ckpt"], "the final save, gathered from both ranks"
