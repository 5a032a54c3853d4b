"""Per-step cost of latent-space training against the number of scenes N: sparse (lazy) updates vs dense Adam.

One step renders ``K`` latent views (one per scene of the batch, cameras on the radius-1.3 sphere looking at the
origin) through :class:`~nerfstudio_3dae.field.TriplaneField`, takes an MSE loss against random target latents plus
the plane TV regulariser, back-propagates and steps the optimizers. Two modes, same batch for every N:

* ``sparse``: ``TriplaneBank(sparse=True)``, :class:`RowSparseAdam` for micro / weights+bias, Adam for bases / MLP;
* ``dense`` (the reference): ``TriplaneBank(sparse=False)`` and ``torch.optim.Adam`` for every group.

Each (mode, N) is measured in a fresh Python process (``fresh_process``) so that peak RSS figures do not mix;
timings are the median over ``steps`` steps after ``warmup`` steps, for the whole step and for its phases
(``forward``: render + loss; ``backward``; ``optimizer``: zero_grad + step), plus the step's CPU time (with one
thread, the work done: unlike wall time it does not count the waits of a machine shared with other jobs). With
``repeats`` > 1 all runs are repeated in interleaved rounds and each (mode, N) keeps its fastest round.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from nerfstudio.cameras.cameras import Cameras

from nerfstudio_3dae.data.synth.cameras import sample_hemisphere_rig, square_intrinsics
from nerfstudio_3dae.field import RenderSettings, TriplaneField
from nerfstudio_3dae.model import TriplaneModelConfig
from nerfstudio_3dae.sparse_adam import RowSparseAdam
from nerfstudio_3dae.triplanes import TriplaneBank, TriplaneMLP, tv_loss

Mode = Literal["sparse", "dense"]
MODES: Tuple[Mode, ...] = ("sparse", "dense")


@dataclass(frozen=True)
class ScalingPreset:
    """Sizes of the benchmarked model and step."""

    scene_counts: Tuple[int, ...]
    resolution: int
    micro_channels: int
    macro_channels: int
    num_bases: int
    hidden_dim: int
    latent_size: int
    latent_channels: int
    num_coarse: int
    num_fine: int
    batch_scenes: int
    steps: int
    warmup: int


PRESETS: Dict[str, ScalingPreset] = {
    "paper": ScalingPreset((10, 100, 1000), 64, 10, 22, 50, 64, 16, 4, 48, 48, 8, 20, 5),
    "small": ScalingPreset((10, 100, 1000), 32, 10, 22, 50, 64, 16, 4, 12, 12, 8, 20, 3),
    "tiny": ScalingPreset((2, 4, 8), 4, 2, 2, 2, 8, 4, 4, 4, 4, 2, 2, 1),
}
PresetName = Literal["paper", "small", "tiny"]


@dataclass
class ScalingConfig:
    """Time a latent-space training step for N = 10, 100, 1000 scenes, row-sparse vs dense optimiser updates."""

    preset: PresetName = "small"
    """Sizes: 'paper' (R=64, Cmic=10, Cmac=22, M=50, 48+48 samples), 'small' (R=32, 12+12 samples, a few minutes
    on a CPU) or 'tiny' (N = 2, 4, 8; a smoke test)."""
    steps: Optional[int] = None
    """Timed steps per (mode, N); default: the preset's."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to run: 'auto' takes CUDA when available."""
    fresh_process: bool = True
    """Measure each (mode, N) in a fresh Python process, so that peak RSS is per run (else peaks accumulate)."""
    threads: Optional[int] = None
    """CPU threads of torch (``torch.set_num_threads``); default: torch's own choice. On a CPU shared with other
    jobs, 1 gives far steadier times (oversubscribed OpenMP threads stall each other)."""
    repeats: int = 1
    """Rounds over all (mode, N); each keeps its fastest round (a busy shared machine only ever slows runs down)."""
    flush_denormal: bool = True
    """Flush denormal floats to zero on the CPU. Adam's second moments of rarely sampled basis texels decay into
    denormals, whose arithmetic is many times slower on x86: step times then wander by tens of percent."""


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when available, else 'cpu'."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible")
    return device


def describe_device(device: str, threads: Optional[int] = None) -> str:
    """A one-line description of the machine the benchmark ran on."""
    if device == "cuda":
        return f"cuda: {torch.cuda.get_device_name()}"
    threads = threads or torch.get_num_threads()
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {threads} torch threads"


def _cameras(count: int, size: int, device: str) -> Cameras:
    """``count`` square pinhole cameras of ``size`` pixels on the radius-1.3 upper hemisphere, facing the origin."""
    rig = sample_hemisphere_rig(np.random.default_rng(0), count)
    k = square_intrinsics(size)
    c2w = torch.as_tensor(rig.camera_to_world[:, :3, :], dtype=torch.float32)
    ones = torch.ones(count, 1)
    return Cameras(
        camera_to_worlds=c2w,
        fx=k.fx * ones,
        fy=k.fy * ones,
        cx=k.cx * ones,
        cy=k.cy * ones,
        width=torch.full((count, 1), size),
        height=torch.full((count, 1), size),
    ).to(device)


PHASES = ("forward", "backward", "optimizer")
StepFn = Callable[[], Tuple[float, float, float]]


def build_step(
    preset: ScalingPreset, num_scenes: int, mode: Mode, device: str
) -> Tuple[StepFn, List[torch.nn.Parameter], List[torch.nn.Parameter], List[torch.optim.Optimizer]]:
    """A training step closure (it returns the seconds of its :data:`PHASES`), plus the per-scene parameters, the
    shared parameters and the optimizers."""
    if preset.batch_scenes > num_scenes:
        raise ValueError(f"a batch of {preset.batch_scenes} scenes needs at least as many scenes, got {num_scenes}")
    p = preset
    torch.manual_seed(0)
    bank = TriplaneBank(
        num_scenes, p.resolution, p.micro_channels, p.macro_channels, p.num_bases, 0.1, sparse=mode == "sparse"
    ).to(device)
    mlp = TriplaneMLP(bank.num_channels, p.latent_channels, p.hidden_dim, (-1.0, 1.0)).to(device)
    defaults = TriplaneModelConfig()
    backend = "auto" if device == "cuda" else "torch"
    settings = RenderSettings(defaults.near, defaults.far, p.num_coarse, p.num_fine, 1.0, backend)
    field = TriplaneField(bank, mlp, settings)
    cameras = _cameras(p.batch_scenes, p.latent_size, device)
    background = torch.zeros(p.latent_channels, device=device)
    per_scene, shared = [bank.micro, bank.weights, bank.bias], [bank.bases, *mlp.parameters()]
    scene_opt = RowSparseAdam if mode == "sparse" else torch.optim.Adam
    optimizers = [
        scene_opt([bank.micro], lr=1e-2, eps=1e-15),
        scene_opt([bank.weights, bank.bias], lr=1e-2, eps=1e-15),
        torch.optim.Adam([bank.bases], lr=1e-2, eps=1e-15),
        torch.optim.Adam(mlp.parameters(), lr=1e-2, eps=1e-15),
    ]
    gen = torch.Generator().manual_seed(1)
    target_shape = (p.batch_scenes, p.latent_channels, p.latent_size, p.latent_size)

    def clock() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def step() -> Tuple[float, float, float]:
        ids = torch.randperm(num_scenes, generator=gen)[: p.batch_scenes].to(device)
        target = (torch.rand(target_shape, generator=gen) * 2.0 - 1.0).to(device)
        start = clock()
        for opt in optimizers:  # as nerfstudio's trainer: zero (set_to_none), forward, backward, step
            opt.zero_grad(set_to_none=True)
        zeroed = clock()
        out = field.render(cameras, ids, 1, background, deterministic=False)
        loss = F.mse_loss(out["features"], target) + 1e-4 * tv_loss(out["planes"])
        rendered = clock()
        loss.backward()
        back = clock()
        for opt in optimizers:
            opt.step()
        return rendered - zeroed, back - rendered, (zeroed - start) + (clock() - back)

    return step, per_scene, shared, optimizers


def _tensor_bytes(t: torch.Tensor) -> int:
    if t.is_sparse:
        return _tensor_bytes(t._values()) + _tensor_bytes(t._indices())
    return t.numel() * t.element_size()


def _state_bytes(params: Sequence[torch.nn.Parameter], optimizers: Sequence[torch.optim.Optimizer]) -> int:
    """Bytes of the optimizer state tensors of ``params``."""
    wanted = {id(p) for p in params}
    return sum(
        _tensor_bytes(v)
        for opt in optimizers
        for p, state in opt.state.items()
        if id(p) in wanted
        for v in state.values()
        if isinstance(v, torch.Tensor)
    )


@dataclass(frozen=True)
class RunOptions:
    """How one (mode, N) measurement runs."""

    device: str
    steps: int
    threads: Optional[int]
    flush_denormal: bool


def measure(preset: ScalingPreset, num_scenes: int, mode: Mode, options: RunOptions) -> Dict[str, float]:
    """Time ``options.steps`` training steps (after the preset's warm-up) and account for memory, in this process."""
    device, steps = options.device, options.steps
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    torch.set_flush_denormal(options.flush_denormal)
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    step, per_scene, shared, optimizers = build_step(preset, num_scenes, mode, device)
    for _ in range(preset.warmup):
        step()
    phases, cpu_times = [], []  # [steps, 3] wall seconds; [steps] CPU seconds of this process
    for _ in range(steps):
        cpu_start = time.process_time()
        phases.append(step())
        cpu_times.append(time.process_time() - cpu_start)
    totals = [sum(t) for t in phases]
    param_bytes = sum(_tensor_bytes(p) for p in per_scene)
    state_bytes = _state_bytes(per_scene, optimizers)
    result = {
        "step_time_s": statistics.median(totals),
        "step_time_min_s": min(totals),
        "step_cpu_time_s": statistics.median(cpu_times),
        **{f"{name}_time_s": statistics.median(t[i] for t in phases) for i, name in enumerate(PHASES)},
        "param_bytes_per_scene": param_bytes / num_scenes,
        "optimizer_state_bytes_per_scene": state_bytes / num_scenes,
        "shared_param_bytes": sum(_tensor_bytes(p) for p in shared),
        "shared_optimizer_state_bytes": _state_bytes(shared, optimizers),
        "scene_grad_bytes": sum(_tensor_bytes(p.grad) for p in per_scene if p.grad is not None),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "baseline_rss_bytes": baseline_rss,
    }
    if device == "cuda":
        result["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    return result


def _measure_in_subprocess(preset_name: str, num_scenes: int, mode: Mode, options: RunOptions) -> Dict[str, float]:
    """:func:`measure` in a fresh interpreter (``python -m nerfstudio_3dae.bench.scaling JSON``)."""
    request = json.dumps({"preset": preset_name, "num_scenes": num_scenes, "mode": mode, "options": asdict(options)})
    proc = subprocess.run([sys.executable, "-m", __name__, request], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {request} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _summary(runs: Dict[int, Dict[str, float]]) -> Dict[str, object]:
    """The figures of one mode across scene counts."""
    counts = sorted(runs)
    lo, hi = counts[0], counts[-1]
    ratio = runs[hi]["step_time_s"] / runs[lo]["step_time_s"]
    first = runs[lo]
    per_scene = {
        "params": first["param_bytes_per_scene"],
        "optimizer_state": first["optimizer_state_bytes_per_scene"],
        "total": first["param_bytes_per_scene"] + first["optimizer_state_bytes_per_scene"],
    }

    def by_n(key: str) -> Dict[str, float]:
        return {str(n): runs[n][key] for n in counts if key in runs[n]}

    return {
        "step_time_s": by_n("step_time_s"),
        "step_time_min_s": by_n("step_time_min_s"),
        "step_cpu_time_s": by_n("step_cpu_time_s"),
        "phase_time_s": {name: by_n(f"{name}_time_s") for name in PHASES},
        f"step_time_ratio_{hi}_vs_{lo}": ratio,
        "step_time_ratio": ratio,
        "optimizer_time_ratio": runs[hi]["optimizer_time_s"] / runs[lo]["optimizer_time_s"],
        "step_cpu_time_ratio": runs[hi]["step_cpu_time_s"] / runs[lo]["step_cpu_time_s"],
        "bytes_per_scene": per_scene,
        "shared_bytes": {
            "params": first["shared_param_bytes"],
            "optimizer_state": first["shared_optimizer_state_bytes"],
        },
        "scene_grad_bytes": by_n("scene_grad_bytes"),
        "peak_rss_bytes": by_n("peak_rss_bytes"),
        "baseline_rss_bytes": by_n("baseline_rss_bytes"),
        **({"peak_cuda_bytes": by_n("peak_cuda_bytes")} if "peak_cuda_bytes" in first else {}),
    }


def _keep_fastest(best: Optional[Dict[str, float]], new: Dict[str, float]) -> Dict[str, float]:
    """The figures of the faster of two rounds; peak memory is the larger of the two."""
    if best is None:
        return new
    fastest = dict(min(best, new, key=lambda f: f["step_time_s"]))
    fastest["peak_rss_bytes"] = max(best["peak_rss_bytes"], new["peak_rss_bytes"])
    return fastest


def run_scaling(
    config: ScalingConfig, on_run: Optional[Callable[[Mode, int, Dict[str, float]], None]] = None
) -> Dict[str, object]:
    """Measure both modes at every scene count of the preset; the sparse figures at the top level, the dense
    reference under ``dense``. ``on_run(mode, N, figures)`` is called after each measurement (progress)."""
    preset = PRESETS[config.preset]
    device = resolve_device(config.device)
    steps = config.steps if config.steps is not None else preset.steps
    if steps <= 0:
        raise ValueError(f"--steps must be positive, got {steps}")
    if config.repeats <= 0:
        raise ValueError(f"--repeats must be positive, got {config.repeats}")
    options = RunOptions(device, steps, config.threads, config.flush_denormal)
    load_before = os.getloadavg()
    runs: Dict[Mode, Dict[int, Dict[str, float]]] = {mode: {} for mode in MODES}
    for _ in range(config.repeats):
        for num_scenes in preset.scene_counts:
            for mode in MODES:
                if config.fresh_process:
                    figures = _measure_in_subprocess(config.preset, num_scenes, mode, options)
                else:
                    figures = measure(preset, num_scenes, mode, options)
                runs[mode][num_scenes] = _keep_fastest(runs[mode].get(num_scenes), figures)
                if on_run is not None:
                    on_run(mode, num_scenes, figures)
    sparse, dense = _summary(runs["sparse"]), _summary(runs["dense"])
    largest = str(max(preset.scene_counts))
    return {
        "benchmark": "scaling",
        "preset": config.preset,
        "device": describe_device(device, config.threads),
        "settings": {
            **asdict(preset),
            **asdict(options),
            "fresh_process": config.fresh_process,
            "repeats": config.repeats,
            "torch": torch.__version__,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },  # fmt: skip
        "scene_counts": list(preset.scene_counts),
        **sparse,
        "dense": dense,
        "dense_vs_sparse_step_time_at_largest": dense["step_time_s"][largest] / sparse["step_time_s"][largest],
    }


def _worker_main(request: str) -> None:
    """Child-process protocol: one JSON request in argv, one JSON line of figures on stdout."""
    args = json.loads(request)
    figures = measure(PRESETS[args["preset"]], args["num_scenes"], args["mode"], RunOptions(**args["options"]))
    sys.stdout.write(json.dumps(figures) + "\n")


if __name__ == "__main__":
    _worker_main(sys.argv[1])
