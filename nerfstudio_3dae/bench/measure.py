"""Training a method config the way ``ns-train`` does, with the clock, memory and evaluation figures the benchmarks
report (:class:`MeasuredRun`); one run after the other (:func:`train_and_measure`) or several with their steps
interleaved (:func:`train_interleaved`), so that a change in the machine's load hits all of them alike.

Each run is set up and stepped exactly as ``ns-train`` steps it (training callbacks, then
``Trainer.train_iteration``). The clock counts set-up (image decoding and, for a latent method, encoding) and
training steps; every ``eval_every`` steps the clock stops while all test views are rendered and scored.

Which clock (:data:`Clock`): ``wall`` seconds (what a GPU user waits), or ``cpu``, the process's CPU seconds
(``time.process_time``, all its threads): on a shared CPU a run's CPU seconds do not grow when another process
takes a core, so runs made at the same time, or side by side, stay comparable. :func:`default_clock` picks ``cpu``
on the CPU and ``wall`` on CUDA (where the work is the GPU's, and a CPU clock would miss it).
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch
from nerfstudio.engine.callbacks import TrainingCallbackLocation

from nerfstudio_3dae.accounting import memory_report
from nerfstudio_3dae.bench.memory import ParameterCounts, parameter_counts
from nerfstudio_3dae.bench.presets import ComparePreset

Clock = Literal["wall", "cpu"]
"""What the benchmark clocks read: wall seconds, or the process's CPU seconds."""

CLOCK_NAMES: Dict[str, str] = {"wall": "wall seconds", "cpu": "CPU seconds of the process (all its threads)"}
"""How compare.json names each clock."""


def default_clock(device: str) -> Clock:
    """``wall`` on a CUDA device, ``cpu`` otherwise (see the module's docstring)."""
    return "wall" if str(device).startswith("cuda") else "cpu"


def read_clock(clock: Clock) -> float:
    """Seconds on ``clock`` (a reading: only differences mean something)."""
    if clock == "cpu":
        return time.process_time()
    if clock == "wall":
        return time.perf_counter()
    raise ValueError(f"--clock: unknown clock {clock!r}; choose 'wall' or 'cpu'")


OnEval = Callable[[str, int, float, float], None]
"""Called at every evaluation with (method name, step, seconds on the clock, test PSNR)."""


@dataclass
class MethodRun:
    """What one method's run measured."""

    curve: List[Tuple[int, float, float, float]]
    """(step, training seconds so far, test PSNR, test SSIM) at every evaluation."""
    setup_s: float
    """Seconds of set-up (model, image decoding, latent encoding) on the clock."""
    phase_s: Dict[str, float]
    """Seconds of training steps per phase."""
    bytes_per_scene: int
    """Parameters + optimiser state of one scene."""
    shared_bytes: int
    """Parameters + optimiser state shared by all scenes."""
    activation_bytes_per_scene: float
    """Bytes autograd saved for backward in one training step, per scene of the batch."""
    render_s: float
    """Median seconds to render one render_size² view."""
    run_dir: str
    """The nerfstudio run folder."""
    autoencoded_psnr: Optional[float] = None
    """Test PSNR of D(E(x)) at the last evaluation (latent method): the ceiling its decoded renders face."""
    parameters: Optional[ParameterCounts] = None
    """Parameter counts for the paper's effective-memory accounting."""
    points_per_step: float = 0.0
    """Samples the field evaluated per training step (mean over the run; recomputed chunks count twice)."""
    occupied_fraction: Optional[float] = None
    """Mean share of occupied occupancy-grid cells over the scenes at the end (None: no grids)."""


def method_run_from_dict(figures: Dict) -> MethodRun:
    """The :class:`MethodRun` that ``dataclasses.asdict`` (through JSON) made ``figures`` of."""
    counts = figures.get("parameters")
    return MethodRun(
        **{
            **figures,
            "curve": [tuple(point) for point in figures["curve"]],
            "parameters": None if counts is None else ParameterCounts(**counts),
        }
    )


def seed_like_ns_train(seed: int) -> None:
    """What ns-train seeds before a run (each method starts from the same state, whatever ran before it)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def sync(device) -> None:
    """Wait for the GPU's queued work (a no-op on the CPU), so that a clock reading covers it."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def saved_activation_bytes(step: Callable[[], None]) -> int:
    """Bytes of the tensors autograd saves for backward while ``step`` runs (each storage counted once)."""
    seen: Dict[int, int] = {}

    def pack(tensor: torch.Tensor):
        if tensor.layout == torch.strided:
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def render_time(pipeline, size: int, repeats: int, clock: Clock = "wall") -> float:
    """Median seconds on ``clock`` to render the first test view at ``size``² (after one warm-up render)."""
    camera, _ = pipeline.datamanager.fixed_indices_eval_dataloader[0]
    camera = camera.flatten()[:1]
    camera.rescale_output_resolution(size / int(camera.width.reshape(-1)[0]))
    model = pipeline.model
    model.eval()
    model.get_outputs_for_camera(camera)  # warm-up
    times = []
    for _ in range(repeats):
        sync(model.device)
        start = read_clock(clock)
        model.get_outputs_for_camera(camera)
        sync(model.device)
        times.append(read_clock(clock) - start)
    model.train()
    return statistics.median(times)


class MeasuredRun:
    """One method config, set up on the clock and trained step by step (:meth:`step`), then :meth:`finish`."""

    def __init__(
        self,
        config,
        preset: ComparePreset,
        on_eval: Optional[OnEval] = None,
        eval_at: Sequence[int] = (),
        clock: Clock = "wall",
    ) -> None:
        """``eval_at``: step counts evaluated besides every ``eval_every`` and the last; ``clock``: what the
        seconds are."""
        self.config, self.preset, self.on_eval, self.clock_kind = config, preset, on_eval, clock
        self.eval_at = frozenset(eval_at)
        seed_like_ns_train(config.machine.seed)
        start = read_clock(clock)
        self.trainer = config.setup(local_rank=0, world_size=1)
        self.trainer.setup()
        _ = self.trainer.pipeline.datamanager.train_images  # decoded on the clock (nerfstudio decodes lazily)
        sync(self.trainer.device)
        self.setup_s = read_clock(clock) - start
        self.model = self.trainer.pipeline.model
        self.steps: int = config.max_num_iterations
        self.steps_done = 0
        self.clock = self.setup_s
        self.curve: List[Tuple[int, float, float, float]] = []
        self.phase_s: Dict[str, float] = {}
        self.metrics: Dict = {}
        self.activation = 0.0
        self.points = 0

    def step(self, step: int) -> bool:
        """Train ``step`` (callbacks included) on the clock; evaluate off the clock when it is due (True then)."""
        trainer, model = self.trainer, self.model
        phase = str(getattr(model, "phase", "rgb"))
        points_before = model.field.points_decoded
        t0 = read_clock(self.clock_kind)
        for callback in trainer.callbacks:
            callback.run_callback_at_location(step, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        if step == 0:
            saved = saved_activation_bytes(lambda: trainer.train_iteration(0))
            self.activation = saved / trainer.pipeline.datamanager.scenes_per_step
        else:
            trainer.train_iteration(step)
        for callback in trainer.callbacks:
            callback.run_callback_at_location(step, location=TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
        sync(trainer.device)
        spent = read_clock(self.clock_kind) - t0
        self.points += model.field.points_decoded - points_before
        self.clock += spent
        self.phase_s[phase] = self.phase_s.get(phase, 0.0) + spent
        self.steps_done = step + 1
        if (step + 1) % self.preset.eval_every == 0 or step + 1 == self.steps or step + 1 in self.eval_at:
            self.evaluate(step + 1)
            return True
        return False

    def evaluate(self, steps_done: int) -> Dict:
        """Score all test views off the clock after ``steps_done`` steps (once per step count); the metrics."""
        if self.curve and self.curve[-1][0] == steps_done:
            return self.metrics
        self.metrics = self.trainer.pipeline.get_average_eval_image_metrics(step=steps_done - 1)
        self.curve.append((steps_done, self.clock, float(self.metrics["psnr"]), float(self.metrics["ssim"])))
        if self.on_eval is not None:
            self.on_eval(self.config.method_name, steps_done, self.clock, float(self.metrics["psnr"]))
        return self.metrics

    def finish(self) -> MethodRun:
        """The figures of the run (after its last step), with the render time measured now."""
        model = self.model
        grids = model.field.occupancy
        per_scene, shared = memory_report(model)
        return MethodRun(
            self.curve,
            self.setup_s,
            self.phase_s,
            per_scene,
            shared,
            self.activation,
            render_time(self.trainer.pipeline, self.preset.render_size, self.preset.render_repeats, self.clock_kind),
            str(self.trainer.base_dir),
            self.metrics.get("autoencoded_psnr"),
            parameter_counts(model),
            self.points / max(self.steps_done, 1),
            None if grids is None else float(grids.occupied_fraction().mean()),
        )


def train_and_measure(
    config,
    preset: ComparePreset,
    on_eval: Optional[OnEval] = None,
    stop: Optional[Callable[[List[Tuple[int, float, float, float]]], bool]] = None,
    eval_at: Sequence[int] = (),
    clock: Clock = "wall",
) -> MethodRun:
    """Set up ``config`` and train it step by step, timing set-up and steps on ``clock``, evaluating every
    ``eval_every`` (and at the step counts ``eval_at``); with ``stop``, asked after every evaluation with the curve
    so far, the run ends early when it says so (``max_num_iterations`` is then the cap)."""
    run = MeasuredRun(config, preset, on_eval, eval_at, clock)
    for step in range(run.steps):
        if run.step(step) and stop is not None and stop(run.curve):
            break
    return run.finish()


def train_interleaved(configs: Sequence, preset: ComparePreset, on_eval: Optional[OnEval] = None) -> List[MethodRun]:
    """Set up every config, then train them one step each in turn (step 0 of each, step 1 of each, ...): each run's
    clock counts only its own steps, and a change in the machine's load falls on all of them alike."""
    runs = [MeasuredRun(config, preset, on_eval) for config in configs]
    for step in range(max(run.steps for run in runs)):
        for run in runs:
            if step < run.steps:
                run.step(step)
    return [run.finish() for run in runs]
