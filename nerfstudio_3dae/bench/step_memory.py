"""Peak memory and wall time of single training steps of ``3dae-rgb`` and ``3dae-latent`` (``ns-3dae-bench
step-memory``).

Each method is its registered config (:mod:`nerfstudio_3dae.method_configs`) with the model and datamanager defaults
untouched, on a dataset of ``image_size``² views, set up and stepped exactly as ``ns-train`` steps it (callbacks, then
``Trainer.train_iteration``). Per step, three figures, each named for what it counts:

* ``cuda_peak_bytes`` (CUDA only): ``torch.cuda.max_memory_allocated`` over the step, its peak statistics reset just
  before: everything the caching allocator handed out at the step's highest point (parameters, optimiser state,
  activations, gradients, temporaries). None on the CPU: torch's CPU allocator keeps no such statistic.
* ``saved_bytes`` (any device): the tensors autograd saved for backward during the step (each storage once,
  :func:`nerfstudio_3dae.bench.measure.saved_activation_bytes`): the activations, a lower bound of a step's peak
  beyond the resident parameters and state, not the allocator's peak.
* ``rss_peak_bytes`` (any device): the process's peak resident set size so far (``getrusage``): it includes set-up,
  the autoencoder and every earlier step, so it only bounds the step from above, and on CUDA it is host memory.

The wall time includes the saved-tensor hook (one Python call per saved tensor: small beside a step).
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Literal, Optional, Sequence

import torch
from nerfstudio.engine.callbacks import TrainingCallbackLocation

from nerfstudio_3dae.bench.measure import saved_activation_bytes
from nerfstudio_3dae.bench.scaling import describe_device, resolve_device
from nerfstudio_3dae.data.synth.generate import generate_dataset
from nerfstudio_3dae.method_configs import latent_method, rgb_method

MethodName = Literal["3dae-rgb", "3dae-latent"]
METHODS: Dict[str, Callable] = {"3dae-rgb": rgb_method, "3dae-latent": latent_method}
"""The measured methods and their config factories."""


@dataclass(frozen=True)
class StepFigures:
    """One training step of one method."""

    method: str
    step: int
    seconds: float
    """Wall time of the step (callbacks and ``train_iteration``, synchronised on CUDA)."""
    cuda_peak_bytes: Optional[int]
    """``torch.cuda.max_memory_allocated`` over the step (None on the CPU)."""
    cuda_resident_bytes: Optional[int]
    """``torch.cuda.memory_allocated`` just before the step (None on the CPU)."""
    saved_bytes: int
    """Tensors autograd saved for backward during the step."""
    rss_peak_bytes: int
    """The process's peak resident set size after the step (since the process started)."""


def peak_rss_bytes() -> int:
    """The process's peak resident set size (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def step_memory_data(output: Path, image_size: int, num_scenes: int = 4, views: int = 3, seed: int = 0) -> Path:
    """Generated cars for the measurement: ``num_scenes`` (the default batch, 4 scenes per step) of ``views``
    ``image_size``² views, one a test view (the default batch draws 2 training views per scene)."""
    return generate_dataset(
        output, num_scenes, views, image_size, seed=seed, test_views=1, progress=False, overwrite=True
    )


def configure_defaults(method: MethodName, data: Path, output: Path, device: str, steps: int):
    """The method's registered config on ``data`` with its model and batch defaults; no saves, evaluations or
    writers during the ``steps`` steps."""
    if method not in METHODS:
        raise ValueError(f"method {method!r}: choose one of {', '.join(METHODS)}")
    config = METHODS[method]()
    config.pipeline.datamanager.data = data
    config.pipeline.datamanager.latent_cache_dir = output / "latent-cache" / method
    config.output_dir = output / "runs"
    config.experiment_name = method
    config.timestamp = "step-memory"
    config.vis = "tensorboard"
    config.max_num_iterations = steps
    config.steps_per_eval_batch = config.steps_per_eval_image = config.steps_per_eval_all_images = 10**9
    config.steps_per_save = 10**9
    config.logging.local_writer.enable = False
    config.machine.device_type = device
    return config


def measure_method(method: MethodName, data: Path, output: Path, device: str, steps: int = 2) -> List[StepFigures]:
    """Set up ``method`` on ``data`` and measure each of its first ``steps`` training steps (the first one creates
    the optimiser state)."""
    if steps < 1:
        raise ValueError(f"--steps {steps}: measure at least one step")
    config = configure_defaults(method, data, output, device, steps)
    torch.manual_seed(config.machine.seed)
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    cuda = str(trainer.device).startswith("cuda")
    figures = []
    for step in range(steps):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        resident = torch.cuda.memory_allocated() if cuda else None
        start = time.perf_counter()

        def one_step(step: int = step) -> None:
            for callback in trainer.callbacks:
                callback.run_callback_at_location(step, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
            trainer.train_iteration(step)
            for callback in trainer.callbacks:
                callback.run_callback_at_location(step, location=TrainingCallbackLocation.AFTER_TRAIN_ITERATION)

        saved = saved_activation_bytes(one_step)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() if cuda else None
        figures.append(StepFigures(method, step, seconds, peak, resident, saved, peak_rss_bytes()))
    del trainer
    if cuda:
        torch.cuda.empty_cache()
    return figures


def run_step_memory(
    output: Path,
    image_size: int = 128,
    device: str = "auto",
    methods: Sequence[MethodName] = ("3dae-rgb", "3dae-latent"),
    steps: int = 2,
    data: Optional[Path] = None,
    log: Callable[[str], None] = print,
) -> Dict:
    """Measure ``steps`` training steps of each method on ``data`` (default: generated ``image_size``² cars under
    ``output/data``); the figures as a JSON-ready dict."""
    device = resolve_device(device)
    generated = data is None
    if generated:
        log(f"generating 4 scenes of {image_size}² views in {output / 'data'}")
        data = step_memory_data(output / "data", image_size)
    rows = []
    for method in methods:
        log(f"{method}: {steps} training step(s) with the method defaults on {device}")
        rows.extend(asdict(f) for f in measure_method(method, data, output, device, steps))
    size = image_size if generated else None
    return {"device": describe_device(device), "image_size": size, "data": str(data), "steps": rows}
