"""nerfstudio's Trainer with crash-safe checkpoints and resumable schedules.

* Checkpoints are written to a temporary file beside the checkpoint folder and moved into place with an atomic
  rename: a kill during a save leaves the previous checkpoint intact (and no half-written ``step-*.ckpt`` that
  ``--load-dir`` would pick as the latest).
* ``--load-dir`` resumes the run's schedule: ``max_num_iterations`` counts from step 0, so a run killed at step k
  and resumed trains the remaining steps and ends where an uninterrupted run ends (phases, such as the decoder
  fine-tune, are defined in absolute steps too).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Type

import torch

from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE


@dataclass
class ThreeDAETrainerConfig(TrainerConfig):
    """TrainerConfig whose trainer saves atomically and resumes schedules (see nerfstudio_3dae.trainer)."""

    _target: Type = field(default_factory=lambda: ThreeDAETrainer)


def atomic_torch_save(obj, path: Path) -> None:
    """``torch.save`` to ``path`` through a temporary file in the parent folder and an atomic rename."""
    tmp = path.parent.parent / f".{path.name}.partial"
    with open(tmp, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class ThreeDAETrainer(Trainer):
    config: ThreeDAETrainerConfig

    def setup(self, test_mode="val") -> None:
        super().setup(test_mode=test_mode)
        self.total_steps = self.config.max_num_iterations
        # nerfstudio trains max_num_iterations steps *after* the loaded one; count them from step 0 instead
        self.config.max_num_iterations = max(self.total_steps - self._start_step, 0)

    def train(self) -> None:
        if self.config.max_num_iterations == 0:
            CONSOLE.print(f"[bold]nothing to do: the checkpoint is at step {self._start_step - 1}, the run has "
                          f"{self.total_steps} steps")
            return
        super().train()

    def save_checkpoint(self, step: int) -> None:
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        ckpt_path = self.checkpoint_dir / f"step-{step:09d}.ckpt"
        pipeline = self.pipeline.module if hasattr(self.pipeline, "module") else self.pipeline  # type: ignore
        atomic_torch_save(
            {
                "step": step,
                "pipeline": pipeline.state_dict(),
                "optimizers": {k: v.state_dict() for (k, v) in self.optimizers.optimizers.items()},
                "schedulers": {k: v.state_dict() for (k, v) in self.optimizers.schedulers.items()},
                "scalers": self.grad_scaler.state_dict(),
            },
            ckpt_path,
        )
        if self.config.save_only_latest_checkpoint:  # only once the new one is complete
            for old in self.checkpoint_dir.glob("*.ckpt"):
                if old != ckpt_path:
                    old.unlink()
