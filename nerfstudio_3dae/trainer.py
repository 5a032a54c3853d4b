"""nerfstudio's Trainer with crash-safe checkpoints and resumable schedules.

* Checkpoints are written to a temporary file beside the checkpoint folder and moved into place with an atomic
  rename: a kill during a save leaves the previous checkpoint intact (and no half-written ``step-*.ckpt`` that
  ``--load-dir`` would pick as the latest). A save checks the disk has room first and fails with the space needed
  and free (:func:`~nerfstudio_3dae.checkpoints.atomic_save`).
* A damaged checkpoint (cut short by a crash or a full disk, or copied in part) is an error naming the file
  (:func:`~nerfstudio_3dae.checkpoints.load_checkpoint_file`); ``--load-dir`` skips it, says so, and resumes from
  the newest intact one.
* ``--load-dir`` resumes the run's schedule: ``max_num_iterations`` counts from step 0, so a run killed at step k
  and resumed trains the remaining steps and ends where an uninterrupted run ends (phases, such as the decoder
  fine-tune, are defined in absolute steps too).
* Every run ends with an evaluation of every test view, whatever ``--max-num-iterations`` is: the methods'
  ``steps_per_eval_all_images`` is :data:`EVAL_ALL_IMAGES_AT_END` (once, at the last step); a cadence a user sets
  evaluates at its multiples and at the last step as well (nerfstudio's own check never fires there: a run trains
  steps 0 … N−1), see :func:`evaluates_all_images_at_end`. A cadence longer than the run evaluates nothing.
* On the CPU the torch thread count is measured, not guessed (``cpu_threads``, :class:`ThreadProbe`).
* Checkpoints hold CPU tensors only (a run trained on a GPU loads anywhere, with or without ``map_location``).
* Multi-process runs (scenes sharded over ranks, :mod:`nerfstudio_3dae.distributed`): every rank takes part in a
  save (the per-scene rows and their optimiser state are gathered into rank 0's CPU memory), rank 0 writes it; the
  shared parameters' gradients are averaged over the ranks before each optimiser step (:class:`ShardedOptimizers`);
  mixed precision uses one gradient scale on every rank, and a step with an inf/NaN gradient on any rank is skipped
  on all of them (torch's ``ShardedGradScaler``); pausing in the viewer (rank 0) pauses every rank: before each step
  the ranks learn rank 0's state and wait with it (:func:`~nerfstudio_3dae.distributed.follow_main`).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type

import torch
from nerfstudio.engine.callbacks import TrainingCallbackLocation
from nerfstudio.engine.optimizers import Optimizers
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils import comms, writer
from nerfstudio.utils.decorators import check_eval_enabled
from nerfstudio.utils.misc import step_check
from nerfstudio.utils.rich_utils import CONSOLE
from torch.amp.grad_scaler import GradScaler
from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
from torch.nn import Parameter

from nerfstudio_3dae.checkpoints import DamagedCheckpointError, atomic_save, checkpoint_steps, load_checkpoint_file
from nerfstudio_3dae.distributed import (
    PAUSE_KEEPALIVE_S,
    PAUSED,
    SINGLE_PROCESS,
    STOP,
    TRAIN,
    Shard,
    average_gradients,
    follow_main,
    gather_optimizer_state,
    own_optimizer_state,
    to_device,
)
from nerfstudio_3dae.model import SCENE_PARAM_GROUPS
from nerfstudio_3dae.sparse_adam import RowSparseAdam

EVAL_ALL_IMAGES_AT_END = -1
"""``steps_per_eval_all_images`` of the methods: evaluate every test view once, at the run's last step."""


@dataclass
class ThreeDAETrainerConfig(TrainerConfig):
    """TrainerConfig whose trainer saves atomically and resumes schedules (see nerfstudio_3dae.trainer)."""

    _target: Type = field(default_factory=lambda: ThreeDAETrainer)
    """The trainer class."""
    steps_per_eval_all_images: int = EVAL_ALL_IMAGES_AT_END
    """Steps between evaluations of every test view (needs a metrics writer: --vis tensorboard, wandb, ...). -1: once,
    at the run's last step, whatever --max-num-iterations is. N > 0: at multiples of N and at the last step too (N
    longer than the run: none). 0: never."""
    cpu_threads: int = 0
    """Torch threads when training on the CPU. 0: measured: the first steps run alternately on one thread and on
    torch's default count, and the faster is kept (said in the log; a ``OMP_NUM_THREADS`` of 1 is respected).
    Neither fixed choice is right on a 2-core machine shared with another job: one thread was 55x faster for a
    test-sized step (5.6 vs 310 ms), two threads 1.6x faster for a default 3dae-latent step (0.36 vs 0.58 s)
    (docs/scaling.md). Ignored on a GPU."""


def evaluates_all_images_at_end(step: int, total_steps: int, interval: int) -> bool:
    """Whether ``step`` is the last of a ``total_steps`` run whose ``steps_per_eval_all_images`` (``interval``) is
    :data:`EVAL_ALL_IMAGES_AT_END` (any negative) or a cadence no longer than the run, while nerfstudio's own check
    (multiples of ``interval``, never step 0) does not fire there.

    nerfstudio trains steps ``0 … total_steps − 1`` and its check skips step 0: an interval equal to the run's
    length never fires, and one that does not divide it misses the end. An interval longer than the run (how the
    tests say "no evaluation") and 0 evaluate nothing."""
    if interval == 0 or step != total_steps - 1:
        return False
    if interval < 0:
        return True
    return interval <= total_steps and not step_check(step, interval)


class ThreadProbe:
    """Times a run's own first training steps on each candidate thread count and picks the fastest (median).

    After ``warmup`` untimed steps, the candidates take turns ``rounds`` times (alternating, so a change in the
    machine's load hits all of them alike). The steps are the run's ordinary steps: only their speed differs.
    """

    def __init__(self, candidates: Sequence[int], rounds: int = 3, warmup: int = 1) -> None:
        if not candidates or min(candidates) < 1 or rounds < 1 or warmup < 0:
            raise ValueError(f"ThreadProbe needs thread counts >= 1 and rounds >= 1, got {candidates}, {rounds}")
        self.plan: List[Optional[int]] = [None] * warmup + [c for _ in range(rounds) for c in candidates]
        """Thread count of each coming step (None: a warm-up step, not timed, threads unchanged)."""
        self.seconds: Dict[int, List[float]] = {c: [] for c in candidates}
        """Timed seconds per candidate."""

    @property
    def done(self) -> bool:
        """Whether every planned step was recorded."""
        return not self.plan

    def next_threads(self) -> Optional[int]:
        """Thread count for the coming step (None: leave it)."""
        return self.plan[0]

    def record(self, seconds: float) -> None:
        """Seconds the coming step took."""
        threads = self.plan.pop(0)
        if threads is not None:
            self.seconds[threads].append(seconds)

    def best(self) -> int:
        """The candidate with the lowest median step time (the fewer threads on a tie)."""
        return min(self.seconds, key=lambda c: (statistics.median(self.seconds[c]), c))


def atomic_torch_save(obj, path: Path) -> None:
    """:func:`~nerfstudio_3dae.checkpoints.atomic_save` of a checkpoint, its temporary file beside the checkpoint
    folder (not in it, where ``--load-dir`` looks). A save that fails (unpicklable state, full disk) leaves neither
    ``path`` nor the temporary file behind, and raises."""
    atomic_save(obj, path, tmp_dir=path.parent.parent)


def sharded_grad_scaler(scaler: GradScaler, device: str) -> GradScaler:
    """The grad scaler of a multi-process run: torch's ``ShardedGradScaler``, enabled as ``scaler`` is, for the
    ``device`` the run trains on. Its inf/NaN check is summed over the ranks, so every rank skips the same steps and
    keeps the same scale (with one ``GradScaler`` per rank, a step skipped on one rank only would make them diverge).
    ``scaler``'s settings and state (scale, growth and backoff) are carried over."""
    sharded = ShardedGradScaler(str(device).split(":")[0], enabled=scaler.is_enabled())
    if scaler.is_enabled():
        sharded.load_state_dict(scaler.state_dict())
    return sharded


class ShardedOptimizers(Optimizers):
    """nerfstudio's ``Optimizers`` for scenes sharded over the ranks of ``shard``'s group (plain ``Optimizers`` in a
    single process).

    Before any optimiser step the gradients of the replicated groups (all but ``scene_groups``) are averaged over the
    ranks in one all-reduce; the per-scene groups step on their own rows, with gradients divided by the number of
    ranks: both are then the gradients of the mean loss over all ranks' batches, as one process with the union of
    the batches computes them. Their state is gathered into whole tables
    for a checkpoint (:meth:`checkpoint_state`) and sliced back to the rank's rows when loaded.

    With a grad scaler (mixed precision) every rank scales its loss by the same factor, so the averaged scaled
    gradients are the scaled average; every optimiser is then unscaled on every rank, in the same order, by a
    ``ShardedGradScaler`` (which sums the inf/NaN flags over the ranks), before any step.
    """

    def __init__(
        self,
        config: Dict[str, Any],
        param_groups: Dict[str, List[Parameter]],
        scene_groups: Sequence[str],
        num_scenes: int,
        shard: Shard,
    ) -> None:
        super().__init__(config, param_groups)
        self.scene_groups = [g for g in scene_groups if g in self.optimizers]
        self.num_scenes = num_scenes
        self.shard = shard

    def _average(self, groups: Sequence[str]) -> None:
        shared = [g for g in self.optimizers if g not in self.scene_groups and g in groups]  # same order on all ranks
        average_gradients([p for g in shared for p in self.parameters[g] if p.requires_grad], self.shard)
        world = self.shard.world_size
        scene_params = [p for g in self.scene_groups if g in groups for p in self.parameters[g]]
        for p in scene_params if world > 1 else []:
            if p.grad is not None:
                p.grad = p.grad / world

    def optimizer_step(self, param_group_name: str) -> None:
        self._average([param_group_name])
        super().optimizer_step(param_group_name)

    def optimizer_step_all(self) -> None:
        self._average(list(self.optimizers))
        super().optimizer_step_all()

    def optimizer_scaler_step_all(self, grad_scaler: GradScaler) -> None:
        self.optimizer_scaler_step_some(grad_scaler, list(self.optimizers))

    def optimizer_scaler_step_some(self, grad_scaler: GradScaler, param_groups: List[str]) -> None:
        self._average(param_groups)
        if not self.shard.sharded or not grad_scaler.is_enabled():
            super().optimizer_scaler_step_some(grad_scaler, param_groups)
            return
        if not isinstance(grad_scaler, ShardedGradScaler):
            raise ValueError(
                "--mixed-precision True (or --use-grad-scaler True) with several processes needs one grad scale "
                "for all ranks: use ThreeDAETrainer (its ShardedGradScaler), not a GradScaler per rank"
            )
        for group in param_groups:  # the same groups in the same order on every rank: unscale_ is collective
            grad_scaler.unscale_(self.optimizers[group])
        for group in param_groups:
            optimizer = self.optimizers[group]
            max_norm = self.config[group]["optimizer"].max_norm
            if max_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.parameters[group], max_norm)
            if any(p.grad is not None for g in optimizer.param_groups for p in g["params"]):
                grad_scaler.step(optimizer)  # skipped on every rank alike when any rank found inf/NaN

    def checkpoint_state(self) -> Dict[str, Any]:
        """Every optimiser's ``state_dict``, the per-scene ones with whole tables (collective)."""
        states = {}
        for name, optimizer in self.optimizers.items():
            if name in self.scene_groups:
                if isinstance(optimizer, RowSparseAdam):  # same state keys on every rank, even before a step
                    for p in self.parameters[name]:
                        optimizer.state_for(p)
                states[name] = gather_optimizer_state(optimizer.state_dict(), self.num_scenes, self.shard)
            else:
                states[name] = optimizer.state_dict()
        return states

    def load_optimizers(self, loaded_state: Dict[str, Any]) -> None:
        loaded = {
            name: own_optimizer_state(state, self.num_scenes, *self.shard) if name in self.scene_groups else state
            for name, state in loaded_state.items()
        }
        super().load_optimizers(loaded)


class ThreeDAETrainer(Trainer):
    config: ThreeDAETrainerConfig

    pause_keepalive_s: float = PAUSE_KEEPALIVE_S
    """While paused in the viewer, how often rank 0 tells the waiting ranks (multi-process runs)."""

    def __init__(self, config: ThreeDAETrainerConfig, local_rank: int = 0, world_size: int = 1) -> None:
        self._gated = False
        super().__init__(config, local_rank=local_rank, world_size=world_size)
        self.shard: Shard = SINGLE_PROCESS
        """This process's scenes: the pipeline's shard, taken once it is built (:meth:`setup_optimizers`)."""

    @property
    def step(self) -> int:
        """The current step. nerfstudio's loop sets it first thing in every iteration; in a multi-process run that
        is where every rank learns rank 0's state (:meth:`_follow_main`)."""
        return self._step

    @step.setter
    def step(self, value: int) -> None:
        self._step = value
        if self._gated:
            self._follow_main()

    def _main_code(self) -> int:
        """Rank 0's state for the other ranks: stop, paused (viewer) or train."""
        if self.stop_training:
            return STOP
        return PAUSED if self.training_state == "paused" else TRAIN

    def _follow_main(self) -> None:
        """Wait while rank 0 is paused (every rank, rank 0 included, leaves together); stop when rank 0 stops. The
        loop's own pause check then finds every rank training (or stopping)."""
        main = comms.is_main_process()
        code = follow_main(self._main_code if main else None, keepalive_s=self.pause_keepalive_s)
        if code == STOP:
            self.stop_training = True
        elif not main:
            self.training_state = "training"  # e.g. --start-paused: only rank 0's viewer can resume it

    def setup_optimizers(self) -> Optimizers:
        """Called by nerfstudio's ``setup`` right after it built the pipeline, before a checkpoint is loaded: the run's
        shard is the pipeline's from here on; a multi-process run scales with a ``ShardedGradScaler``
        (:func:`sharded_grad_scaler`), whose state a resumed run then loads."""
        self.shard = self.pipeline.shard
        if self.shard.sharded:
            self.grad_scaler = sharded_grad_scaler(self.grad_scaler, self.device)
        return ShardedOptimizers(
            self.config.optimizers.copy(),
            self.pipeline.get_param_groups(),
            SCENE_PARAM_GROUPS,
            self.pipeline.model.num_scenes,
            self.shard,
        )

    def setup(self, test_mode="val") -> None:
        super().setup(test_mode=test_mode)
        self.total_steps = self.config.max_num_iterations
        # nerfstudio trains max_num_iterations steps *after* the loaded one; count them from step 0 instead
        self.config.max_num_iterations = max(self.total_steps - self._start_step, 0)
        if self.config.steps_per_eval_all_images < 0:  # at the end only: nerfstudio's check never fires in the run
            self.config.steps_per_eval_all_images = max(self.total_steps, 1)

    def _load_checkpoint(self) -> None:
        """nerfstudio's loading (``--load-dir``, ``--load-step``, ``--load-checkpoint``) through
        :func:`~nerfstudio_3dae.checkpoints.load_checkpoint_file`. ``--load-dir`` without ``--load-step`` resumes from
        the newest intact checkpoint: a damaged newer one is skipped with a log line naming it. A damaged file asked
        for by name (``--load-checkpoint``, ``--load-step``) is an error naming it."""
        load_dir, load_checkpoint = self.config.load_dir, self.config.load_checkpoint
        if load_dir is not None and self.config.load_step is None:
            CONSOLE.print("Loading latest Nerfstudio checkpoint from load_dir...")
            load_path, loaded_state = self._newest_intact_checkpoint(Path(load_dir))
        elif load_dir is not None or load_checkpoint is not None:
            load_path = Path(load_dir) / f"step-{self.config.load_step:09d}.ckpt" if load_dir else Path(load_checkpoint)
            if not load_path.is_file():
                raise FileNotFoundError(f"Checkpoint {load_path} does not exist")
            loaded_state = load_checkpoint_file(load_path, advice=self._advice_for_named(load_path))
        else:
            CONSOLE.print("No Nerfstudio checkpoint to load, so training from scratch.")
            return
        self._start_step = loaded_state["step"] + 1
        # load the checkpoints for pipeline, optimizers, and gradient scalar
        self.pipeline.load_pipeline(loaded_state["pipeline"], loaded_state["step"])
        self.optimizers.load_optimizers(loaded_state["optimizers"])
        if "schedulers" in loaded_state and self.config.load_scheduler:
            self.optimizers.load_schedulers(loaded_state["schedulers"])
        self.grad_scaler.load_state_dict(loaded_state["scalers"])
        CONSOLE.print(f"Done loading Nerfstudio checkpoint from {load_path}")

    def _advice_for_named(self, path: Path) -> str:
        """What to do when the checkpoint ``--load-checkpoint`` or ``--load-step`` names is damaged."""
        others = [p.name for _, p in checkpoint_steps(path.parent) if p != path]
        if not others:
            return "There is no other checkpoint beside it: train again (or restore it from a copy)."
        how = "drop --load-step" if self.config.load_dir is not None else f"use --load-dir {path.parent} instead"
        return f"To resume from the newest intact checkpoint of that folder (newest other: {others[0]}), {how}."

    @staticmethod
    def _newest_intact_checkpoint(load_dir: Path) -> Tuple[Path, Dict[str, Any]]:
        """The newest ``step-*.ckpt`` of ``load_dir`` that loads, and its state; each damaged newer one is skipped
        with a log line. None intact: a :class:`DamagedCheckpointError` listing them."""
        found = checkpoint_steps(load_dir)
        if not found:
            raise FileNotFoundError(f"--load-dir {load_dir}: no checkpoint (step-*.ckpt) there")
        damaged: List[DamagedCheckpointError] = []
        for _, path in found:
            try:
                state = load_checkpoint_file(path, advice="")
            except DamagedCheckpointError as err:
                CONSOLE.log(
                    f"skipping damaged checkpoint {path}: {err.damage}; trying the one before",
                    style="yellow",
                    markup=False,
                )
                damaged.append(err)
                continue
            if damaged:
                skipped = ", ".join(err.path.name for err in damaged)
                CONSOLE.log(
                    f"resuming from {path}, the newest intact checkpoint (skipped {skipped})",
                    style="yellow",
                    markup=False,
                )
            return path, state
        raise DamagedCheckpointError(
            f"--load-dir {load_dir}: every checkpoint there is damaged ("
            + "; ".join(f"{err.path.name}: {err.damage}" for err in damaged)
            + "). Train again without --load-dir (or restore a checkpoint from a copy).",
            damaged[0].path,
        )

    def train(self) -> None:
        if self.config.max_num_iterations == 0:
            CONSOLE.print(
                f"[bold]nothing to do: the checkpoint is at step {self._start_step - 1}, the run has "
                f"{self.total_steps} steps"
            )
            # what a run does at its end still happens (a stage-1 run exports its autoencoder and bases)
            for callback in self.callbacks:
                callback.run_callback_at_location(self._start_step - 1, location=TrainingCallbackLocation.AFTER_TRAIN)
            return
        self._thread_probe: Optional[ThreadProbe] = None
        if str(self.device).startswith("cpu"):
            if self.config.cpu_threads > 0:
                torch.set_num_threads(self.config.cpu_threads)
            elif torch.get_num_threads() > 1:
                self._thread_probe = ThreadProbe((1, torch.get_num_threads()))
        self._gated = self.shard.sharded
        try:
            super().train()
        finally:
            self._gated = False

    def train_iteration(self, step: int):
        probe = getattr(self, "_thread_probe", None)
        if probe is None:
            return super().train_iteration(step)
        threads = probe.next_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        start = time.perf_counter()
        result = super().train_iteration(step)
        probe.record(time.perf_counter() - start)
        if probe.done:
            best = probe.best()
            torch.set_num_threads(best)
            medians = ", ".join(f"{c}: {statistics.median(t) * 1e3:.1f} ms" for c, t in probe.seconds.items())
            CONSOLE.log(f"CPU training on {best} torch thread(s) (median step time per thread count: {medians})")
            self._thread_probe = None
        return result

    @check_eval_enabled
    def eval_iteration(self, step: int) -> None:
        """nerfstudio's evaluations, and every test view at the run's last step (:func:`evaluates_all_images_at_end`:
        where nerfstudio's own check does not fire there)."""
        super().eval_iteration(step)
        if evaluates_all_images_at_end(step, self.total_steps, self.config.steps_per_eval_all_images):
            metrics = self.pipeline.get_average_eval_image_metrics(step=step)
            writer.put_dict(name="Eval Images Metrics Dict (all images)", scalar_dict=metrics, step=step)

    def _after_train(self) -> None:
        if comms.is_main_process():
            super()._after_train()
            return
        # other ranks: only their part of the final (collective) save, no second "Training Finished" panel
        self.training_state = "completed"
        self.save_checkpoint(self.step)

    def save_checkpoint(self, step: int) -> None:
        """Called by every rank (nerfstudio's version runs on rank 0 only): the gathering is collective, and only
        rank 0 holds and writes the whole tables."""
        state = {
            "step": step,
            "pipeline": self.pipeline.checkpoint_state(),
            "optimizers": self.optimizers.checkpoint_state(),
            "schedulers": {k: v.state_dict() for (k, v) in self.optimizers.schedulers.items()},
            "scalers": self.grad_scaler.state_dict(),
        }
        if not comms.is_main_process():
            return
        state = to_device(state, "cpu")  # loads without the training device (the gathered tables already are)
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        ckpt_path = self.checkpoint_dir / f"step-{step:09d}.ckpt"
        atomic_torch_save(state, ckpt_path)
        if self.config.save_only_latest_checkpoint:  # only once the new one is complete
            for old in self.checkpoint_dir.glob("*.ckpt"):
                if old != ckpt_path:
                    old.unlink()
