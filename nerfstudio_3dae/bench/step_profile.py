"""Where a steady-state training step of ``3dae-rgb`` and ``3dae-latent`` goes (``ns-3dae-bench step-profile``).

Each method is its registered config with the model and datamanager defaults (:mod:`nerfstudio_3dae.bench.
step_memory`), stepped as ``ns-train`` steps it (callbacks, then ``Trainer.train_iteration``). After ``warmup``
steps, ``steps`` steps are measured:

* **wall time per phase**: data (``datamanager.next_train``), forward (``model.get_outputs``), loss
  (``get_loss_dict`` and ``get_metrics_dict``), occupancy (the grids' per-batch bookkeeping, inside forward),
  backward (``torch.autograd.backward``), optimiser (the optimisers' and schedulers' steps), callbacks (before and
  after the iteration: logging, phase switches); "other" is the rest of the step. Each timed call synchronises
  CUDA before and after, so on a GPU the phases add up but the step is slower than unprofiled;
* **dispatched operators per step** (``torch.profiler``): ``aten::`` calls made from Python or nerfstudio code
  (top-level: no ``aten::`` caller) and all of them (the dispatcher's nested calls included);
* **host syncs per step by kind**: operators that read a device value back to the host (``item``/
  ``_local_scalar_dense``, ``nonzero``, ``unique``, ``masked_select``, ...); on CUDA also every synchronising call
  ``torch.cuda.set_sync_debug_mode("warn")`` reports;
* **the top operators** by count.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Literal, Sequence

import torch
from nerfstudio.engine.callbacks import TrainingCallbackLocation

from nerfstudio_3dae.bench.scaling import describe_device, resolve_device
from nerfstudio_3dae.bench.step_memory import MethodName, configure_defaults, step_memory_data

SYNC_OPS = {
    "aten::_local_scalar_dense": "item",
    "aten::nonzero": "nonzero",
    "aten::_unique2": "unique",
    "aten::unique_dim": "unique",
    "aten::unique_consecutive": "unique",
    "aten::masked_select": "masked_select",
    "aten::is_nonzero": "is_nonzero",
    "aten::repeat_interleave": "repeat_interleave",
}
"""Operators that wait for a device value on the host (on a GPU: a drained queue), and the kind they count as."""
HOST_STATE_OPS = {"aten::_fused_adam_", "aten::_fused_adamw_"}
"""Operators whose CPU kernels read a CPU scalar of their own (the optimiser's step count): not a wait for a device
(on CUDA the fused kernels keep the step on the device and read it there), so reads inside them do not count."""
Phase = Literal["latent", "decoded"]
PHASES = ("data", "forward", "occupancy", "loss", "backward", "optimizer", "callbacks", "other")


class PhaseClock:
    """Wall seconds per phase, from wrapped calls (nested calls count in the innermost phase only)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.seconds: Counter = Counter()
        self._stack: List[str] = []

    def wrap(self, phase: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if self.cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            self._stack.append(phase)
            try:
                return fn(*args, **kwargs)
            finally:
                self._stack.pop()
                if self.cuda:
                    torch.cuda.synchronize()
                spent = time.perf_counter() - start
                self.seconds[phase] += spent
                if self._stack:  # the caller's phase does not count this time again
                    self.seconds[self._stack[-1]] -= spent

        return timed


@contextmanager
def timed_phases(trainer, clock: PhaseClock) -> Iterator[None]:
    """Wrap the trainer's data, forward, loss, occupancy, backward and optimiser calls with ``clock``."""
    pipeline, model = trainer.pipeline, trainer.pipeline.model
    patches = [
        (pipeline.datamanager, "next_train", "data"),
        (model, "get_outputs", "forward"),
        (model, "get_loss_dict", "loss"),
        (model, "get_metrics_dict", "loss"),
    ]
    for name in ("zero_grad_some", "optimizer_scaler_step_some", "optimizer_scaler_step_all", "scheduler_step_all"):
        if hasattr(trainer.optimizers, name):  # nerfstudio 1.1.5 steps "some" groups (gradient accumulation)
            patches.append((trainer.optimizers, name, "optimizer"))
    if getattr(model.field, "occupancy", None) is not None:
        patches.append((model.field.occupancy, "train_batch", "occupancy"))
    originals = [(obj, name, obj.__dict__.get(name)) for obj, name, _ in patches]
    for obj, name, phase in patches:
        setattr(obj, name, clock.wrap(phase, getattr(obj, name)))
    backward = torch.autograd.backward
    torch.autograd.backward = clock.wrap("backward", backward)
    try:
        yield
    finally:
        torch.autograd.backward = backward
        for obj, name, original in originals:
            if original is None:
                delattr(obj, name)
            else:
                setattr(obj, name, original)


def one_step(trainer, step: int, clock: PhaseClock) -> None:
    """One training step as ``ns-train`` runs it, callbacks timed as their own phase."""
    run_callbacks = clock.wrap("callbacks", _run_callbacks)
    run_callbacks(trainer, step, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
    trainer.train_iteration(step)
    run_callbacks(trainer, step, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)


def _run_callbacks(trainer, step: int, location) -> None:
    for callback in trainer.callbacks:
        callback.run_callback_at_location(step, location=location)


def count_ops(events) -> Dict[str, object]:
    """Top-level and all ``aten::`` operators, syncs by kind and the most frequent operators of profiler events."""
    aten = [e for e in events if e.name.startswith("aten::")]
    top = [e for e in aten if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    outermost = [e for e in aten if e.name in SYNC_OPS and not _inside_sync(e) and not _inside(e, HOST_STATE_OPS)]
    syncs = Counter(SYNC_OPS[e.name] for e in outermost)  # a sync op that calls another counts once
    return {"top_level": len(top), "all": len(aten), "syncs": dict(syncs), "top": Counter(e.name for e in top)}


def _inside_sync(event) -> bool:
    """Whether a caller of ``event`` (any level up) is itself a host-syncing operator."""
    return _inside(event, SYNC_OPS)


def _inside(event, names) -> bool:
    """Whether a caller of ``event`` (any level up) is one of the operators ``names``."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in names:
            return True
        parent = parent.cpu_parent
    return False


def profile_method(
    method: MethodName,
    data: Path,
    output: Path,
    device: str,
    warmup: int,
    steps: int,
    phase: Phase = "latent",
    compile_renderer: bool = False,
) -> Dict:
    """Warm ``method`` up for ``warmup`` steps, then measure ``steps`` steps; the per-step figures. ``phase``
    ``"decoded"`` profiles ``3dae-latent`` in its decoded phase (RGB through the decoder from the first step);
    ``compile_renderer`` sets the model option of that name (the compiling happens in the warm-up)."""
    if warmup < 0 or steps < 1:
        raise ValueError(f"--warmup {warmup} / --steps {steps}: warm up >= 0 steps and measure at least one")
    config = configure_defaults(method, data, output, device, warmup + steps)
    if phase == "decoded" and method == "3dae-latent":
        config.pipeline.model.finetune_start = 0
    config.pipeline.model.compile_renderer = compile_renderer
    torch.manual_seed(config.machine.seed)
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    cuda = str(trainer.device).startswith("cuda")
    warming = PhaseClock(cuda)  # not reported
    for step in range(warmup):
        one_step(trainer, step, warming)
    clock = PhaseClock(cuda)
    activities = [torch.profiler.ProfilerActivity.CPU]
    cuda_syncs: Counter = Counter()
    start = time.perf_counter()
    with timed_phases(trainer, clock), torch.profiler.profile(activities=activities) as prof:
        for step in range(warmup, warmup + steps):
            with warnings.catch_warnings(record=True) as caught:
                if cuda:
                    warnings.simplefilter("always")
                    torch.cuda.set_sync_debug_mode("warn")
                one_step(trainer, step, clock)
                if cuda:
                    torch.cuda.set_sync_debug_mode("default")
            cuda_syncs.update(_sync_kind(str(w.message)) for w in caught if "synchroniz" in str(w.message))
        if cuda:
            torch.cuda.synchronize()
    total = time.perf_counter() - start
    counted = count_ops(prof.events())
    timed = sum(clock.seconds.values())
    phases_ms = {phase: 1e3 * clock.seconds.get(phase, 0.0) / steps for phase in PHASES if phase != "other"}
    phases_ms["other"] = 1e3 * max(total - timed, 0.0) / steps
    syncs = {kind: n / steps for kind, n in counted["syncs"].items()}
    result = {
        "ms_per_step": 1e3 * total / steps,
        "phases_ms": phases_ms,
        "ops_per_step": {"top_level": counted["top_level"] / steps, "all": counted["all"] / steps},
        "syncs_per_step": {**syncs, "total": sum(syncs.values())},
        "top_ops": [[name, n / steps] for name, n in counted["top"].most_common(15)],
        "note": "profiled: the profiler and the phase clocks slow the step; compare counts, not times, across runs",
    }
    if cuda:
        result["cuda_sync_debug_per_step"] = {kind: n / steps for kind, n in cuda_syncs.items()}
    del trainer
    return result


def _sync_kind(message: str) -> str:
    """The operation a ``set_sync_debug_mode`` warning names (its first words), or 'synchronizing call'."""
    return message.split(":")[0][:60] if ":" in message else "synchronizing call"


def run_step_profile(
    output: Path,
    image_size: int = 64,
    device: str = "auto",
    methods: Sequence[MethodName] = ("3dae-rgb", "3dae-latent"),
    warmup: int = 5,
    steps: int = 5,
    log: Callable[[str], None] = print,
    phase: Phase = "latent",
    compile_renderer: bool = False,
) -> Dict:
    """Profile each method on generated ``image_size``² cars; the JSON-ready figures (``phase``: which phase of
    ``3dae-latent``, see :func:`profile_method`)."""
    device = resolve_device(device)
    log(f"generating 4 scenes of {image_size}² views in {output / 'data'}")
    data = step_memory_data(output / "data", image_size)
    figures = {}
    for method in methods:
        log(f"{method}: {warmup} warm-up step(s), then {steps} profiled, method defaults, on {device}")
        figures[method] = profile_method(method, data, output, device, warmup, steps, phase, compile_renderer)
    return {"device": describe_device(device), "image_size": image_size, "warmup": warmup, "steps": steps,
            "latent_phase": phase, "compile_renderer": compile_renderer, "methods": figures}  # fmt: skip


def step_profile_table(result: Dict) -> str:
    """Markdown: one column per method."""
    methods = list(result["methods"])
    rows = [("ms per step", lambda m: f"{m['ms_per_step']:.1f}")]
    rows += [(f"  {phase} ms", lambda m, p=phase: f"{m['phases_ms'][p]:.1f}") for phase in PHASES]
    rows += [
        ("operators per step, top-level", lambda m: f"{m['ops_per_step']['top_level']:.0f}"),
        ("operators per step, all", lambda m: f"{m['ops_per_step']['all']:.0f}"),
        ("host syncs per step", lambda m: f"{m['syncs_per_step']['total']:.1f}"),
        ("  by kind", lambda m: ", ".join(f"{k} {v:g}" for k, v in m["syncs_per_step"].items() if k != "total")),
        ("top operators", lambda m: ", ".join(f"{n.removeprefix('aten::')} {c:g}" for n, c in m["top_ops"][:6])),
    ]
    lines = ["| " + " | ".join(["", *methods]) + " |", "|" + "---|" * (len(methods) + 1)]
    lines += ["| " + " | ".join([label, *(fmt(result["methods"][m]) for m in methods)]) + " |" for label, fmt in rows]
    phase = f"3dae-latent in its {result.get('latent_phase', 'latent')} phase"
    phase += ", compiled renderer" if result.get("compile_renderer") else ""
    title = (f"step profile on {result['device']}, {result['image_size']}² views, {result['steps']} steps after "
             f"{result['warmup']} warm-up, {phase}")  # fmt: skip
    return title + "\n\n" + "\n".join(lines) + "\n"
