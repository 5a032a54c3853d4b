"""Where a steady-state training step of ``3dae-rgb`` and ``3dae-latent`` goes (``ns-3dae-bench step-profile``).

Each method is its registered config with the model and datamanager defaults (:mod:`nerfstudio_3dae.bench.
step_memory`), stepped as ``ns-train`` steps it (callbacks, then ``Trainer.train_iteration``). The warm-up runs
``warmup`` steps and then on until every scene's occupancy grid has been computed once (the grids' own warm-up,
``--pipeline.model.occupancy-warmup`` batches per scene, :mod:`nerfstudio_3dae.occupancy`), so the measured steps
use the grids as a long run does. Then two passes of the same steps:

* **profiled**: ``steps`` steps, the first of them updating the grids (their update budget filled, as it fills every
  few batches in a run: :meth:`~nerfstudio_3dae.occupancy.OccupancyGrids.train_batch`), with

  - **wall time per phase**: data (``datamanager.next_train``), forward (``model.get_outputs``), loss
    (``get_loss_dict`` and ``get_metrics_dict``), occupancy (the grids' per-batch bookkeeping, inside forward),
    backward (``torch.autograd.backward``), optimiser (the optimisers' and schedulers' steps), callbacks (before and
    after the iteration: logging, phase switches); "other" is the rest of the step. Each timed call synchronises
    CUDA before and after, so on a GPU the phases add up but the step is slower than unprofiled;
  - **dispatched operators per step** (``torch.profiler``): ``aten::`` calls made from Python or nerfstudio code
    (top-level: no ``aten::`` caller) and all of them (the dispatcher's nested calls included), for the steady
    steps (those that did not update a grid) and for the update steps apart;
  - **host syncs per step by kind**, over every profiled step: operators that read a device value back to the host
    (``item``/``_local_scalar_dense``, ``nonzero``, ``unique``, ``masked_select``, ``equal``, an uncoalesced sparse
    tensor's ``_coalesce``, ...) and the tensor methods that read one without an operator of their own
    (``tolist``, ``numpy``, ``cpu``, ``item``: wrapped while profiling, :func:`counted_host_reads`; on the CPU every
    tensor counts, as on CUDA every device tensor would); on CUDA also every synchronising call
    ``torch.cuda.set_sync_debug_mode("warn")`` reports;
  - **the top operators** of a steady step by count;

* **unprofiled**: as many steps again (the first again updating the grids) with no profiler, no phase clocks and no
  wrapped methods, timed as a whole (CUDA synchronised only before and after): ``ms_per_step_unprofiled``, the
  figure to compare across runs (:func:`run_step_profile` times several rounds, the methods in turn).
"""

from __future__ import annotations

import functools
import itertools
import math
import statistics
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Literal, Optional, Sequence, Tuple

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
    "aten::equal": "equal",
    "aten::_coalesce": "coalesce",
}
"""Operators that wait for a device value on the host (on a GPU: a drained queue), and the kind they count as
(``_coalesce`` is the work of ``coalesce()`` on a tensor not marked coalesced: it reads the new size back)."""
HOST_READ_METHODS = ("tolist", "numpy", "cpu", "item")
"""Tensor methods that bring a value to the host, wrapped while profiling (:func:`counted_host_reads`): ``tolist``,
``numpy`` and ``cpu`` dispatch no operator on a CPU tensor, so the operator counts alone miss them."""
HOST_READ = "ns3dae.host_read."
"""Prefix of the profiler annotation a wrapped host read is recorded under (its kind follows)."""
STEP_MARK = "ns3dae.step."
"""Prefix of the profiler annotation around each profiled step (its index follows)."""
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
def patched(patches: Sequence[Tuple[object, str, Callable]]) -> Iterator[None]:
    """Set each ``(owner, name, replacement)`` for the duration; restore (or remove) the originals after."""
    originals = [(owner, name, owner.__dict__.get(name)) for owner, name, _ in patches]
    for owner, name, replacement in patches:
        setattr(owner, name, replacement)
    try:
        yield
    finally:
        for owner, name, original in reversed(originals):
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)


@contextmanager
def timed_phases(trainer, clock: PhaseClock) -> Iterator[None]:
    """Wrap the trainer's data, forward, loss, occupancy, backward and optimiser calls with ``clock``."""
    pipeline, model = trainer.pipeline, trainer.pipeline.model
    targets = [
        (pipeline.datamanager, "next_train", "data"),
        (model, "get_outputs", "forward"),
        (model, "get_loss_dict", "loss"),
        (model, "get_metrics_dict", "loss"),
    ]
    for name in ("zero_grad_some", "optimizer_scaler_step_some", "optimizer_scaler_step_all", "scheduler_step_all"):
        if hasattr(trainer.optimizers, name):  # nerfstudio 1.1.5 steps "some" groups (gradient accumulation)
            targets.append((trainer.optimizers, name, "optimizer"))
    if getattr(model.field, "occupancy", None) is not None:
        targets.append((model.field.occupancy, "train_batch", "occupancy"))
    patches = [(obj, name, clock.wrap(phase, getattr(obj, name))) for obj, name, phase in targets]
    patches.append((torch.autograd, "backward", clock.wrap("backward", torch.autograd.backward)))
    with patched(patches):
        yield


@contextmanager
def counted_host_reads(device: torch.device) -> Iterator[None]:
    """While open, every call of a :data:`HOST_READ_METHODS` method on a tensor of ``device``'s type runs inside a
    profiler annotation ``ns3dae.host_read.<method>`` (counted as a sync by :func:`count_ops`). On a CPU run every
    tensor counts: on CUDA the same call on a device tensor would wait for the queue."""
    device_type = torch.device(device).type

    def wrapped(name: str, method: Callable) -> Callable:
        @functools.wraps(method)
        def read(self, *args, **kwargs):
            if self.device.type != device_type:
                return method(self, *args, **kwargs)
            with torch.profiler.record_function(HOST_READ + name):
                return method(self, *args, **kwargs)

        return read

    with patched([(torch.Tensor, name, wrapped(name, getattr(torch.Tensor, name))) for name in HOST_READ_METHODS]):
        yield


def one_step(trainer, step: int, clock: Optional[PhaseClock] = None) -> None:
    """One training step as ``ns-train`` runs it, callbacks timed as their own phase (``clock`` None: untimed)."""
    run_callbacks = _run_callbacks if clock is None else clock.wrap("callbacks", _run_callbacks)
    run_callbacks(trainer, step, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
    trainer.train_iteration(step)
    run_callbacks(trainer, step, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)


def _run_callbacks(trainer, step: int, location) -> None:
    for callback in trainer.callbacks:
        callback.run_callback_at_location(step, location=location)


def count_ops(events) -> Dict[str, object]:
    """Top-level and all ``aten::`` operators, syncs by kind (host-read annotations included) and the most frequent
    operators of profiler events."""
    aten = [e for e in events if e.name.startswith("aten::")]
    top = [e for e in aten if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    reads = [e for e in events if e.name.startswith(HOST_READ) and not _inside(e, _is_sync)]
    outermost = [e for e in aten if e.name in SYNC_OPS and not _inside(e, _is_sync) and not _inside(e, _host_state)]
    syncs = Counter(SYNC_OPS[e.name] for e in outermost)  # a sync op that calls another counts once
    syncs.update(e.name[len(HOST_READ) :] for e in reads)
    return {"top_level": len(top), "all": len(aten), "syncs": dict(syncs), "top": Counter(e.name for e in top)}


def _is_sync(name: str) -> bool:
    return name in SYNC_OPS or name.startswith(HOST_READ)


def _host_state(name: str) -> bool:
    return name in HOST_STATE_OPS


def _inside(event, caller: Callable[[str], bool]) -> bool:
    """Whether a caller of ``event`` (any level up) is named as ``caller`` accepts."""
    parent = event.cpu_parent
    while parent is not None:
        if caller(parent.name):
            return True
        parent = parent.cpu_parent
    return False


def events_by_step(events) -> Dict[int, list]:
    """The profiler events of each annotated step (:data:`STEP_MARK`), by their start time (any thread: a CUDA
    backward runs on the autograd engine's own thread)."""
    marks = sorted(
        (e.time_range.start, e.time_range.end, int(e.name[len(STEP_MARK) :]))
        for e in events
        if e.name.startswith(STEP_MARK)
    )
    steps: Dict[int, list] = {index: [] for _, _, index in marks}
    for event in events:
        if event.name.startswith(STEP_MARK):
            continue
        for start, end, index in marks:
            if start <= event.time_range.start <= end:
                steps[index].append(event)
                break
    return steps


def grid_updates(trainer) -> int:
    """Occupancy-grid computations so far (summed over scenes; the host's copy of the counts: no device read)."""
    grids = getattr(trainer.pipeline.model.field, "occupancy", None)
    return 0 if grids is None else sum(grids._updates)


def _grids_computed(trainer) -> bool:
    """Whether every scene's occupancy grid has been computed at least once (True without grids)."""
    grids = getattr(trainer.pipeline.model.field, "occupancy", None)
    return grids is None or min(grids._updates) > 0


def _warmup_limit(trainer, warmup: int) -> int:
    """Steps after which the warm-up gives up waiting for the grids: their warm-up of every scene, twice over."""
    grids = getattr(trainer.pipeline.model.field, "occupancy", None)
    if grids is None:
        return warmup
    scenes, per_step = len(grids._updates), max(1, trainer.pipeline.datamanager.scenes_per_step)
    return warmup + 2 * (grids.warmup + 1) * math.ceil(scenes / per_step) + 10


def prepared_trainer(
    method: MethodName,
    data: Path,
    output: Path,
    device: str,
    warmup: int,
    phase: Phase = "latent",
    compile_renderer: bool = False,
    occupancy_warmup: Optional[int] = None,
) -> Tuple[object, int]:
    """``method``'s trainer warmed up: ``warmup`` steps, then on until every occupancy grid was computed; with the
    next step's index. ``phase`` ``"decoded"``: ``3dae-latent`` in its decoded phase (RGB through the decoder from the
    first step); ``compile_renderer`` sets the model option of that name (the compiling happens in the warm-up);
    ``occupancy_warmup`` replaces the model's ``occupancy_warmup`` (None: the method's; tests shorten it)."""
    if warmup < 0:
        raise ValueError(f"--warmup {warmup}: warm up >= 0 steps")
    config = configure_defaults(method, data, output, device, 10**6)
    if phase == "decoded" and method == "3dae-latent":
        config.pipeline.model.finetune_start = 0
    config.pipeline.model.compile_renderer = compile_renderer
    if occupancy_warmup is not None:
        config.pipeline.model.occupancy_warmup = occupancy_warmup
    torch.manual_seed(config.machine.seed)
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    step, limit = 0, _warmup_limit(trainer, warmup)
    while step < warmup or not _grids_computed(trainer):
        if step >= limit:
            raise RuntimeError(f"{method}: the occupancy grids were not all computed after {step} warm-up steps")
        one_step(trainer, step)
        step += 1
    return trainer, step


def profile_method(
    method: MethodName,
    data: Path,
    output: Path,
    device: str,
    warmup: int,
    steps: int,
    phase: Phase = "latent",
    compile_renderer: bool = False,
    occupancy_warmup: Optional[int] = None,
) -> Dict:
    """:func:`prepared_trainer`, then ``steps`` profiled steps (the first one updates the occupancy grids) and as many
    unprofiled; the per-step figures."""
    if steps < 1:
        raise ValueError(f"--steps {steps}: measure at least one step")
    trainer, step = prepared_trainer(method, data, output, device, warmup, phase, compile_renderer, occupancy_warmup)
    figures = {"warmup_steps": step, **profiled_pass(trainer, step, steps)}
    figures.update(unprofiled_pass(trainer, step + steps, steps))
    del trainer
    return figures


def _update_due(trainer) -> None:
    """Make the next training batch update the occupancy grids of its scenes, as every few batches do in a run (the
    grids' update budget, a host number that only sets their cadence, is filled)."""
    grids = getattr(trainer.pipeline.model.field, "occupancy", None)
    if grids is not None:
        grids.make_update_due()


def profiled_pass(trainer, first: int, steps: int) -> Dict:
    """``steps`` profiled steps from step ``first``, the first of them updating the occupancy grids; their figures."""
    cuda = str(trainer.device).startswith("cuda")
    clock = PhaseClock(cuda)
    cuda_syncs: Counter = Counter()
    updating: List[bool] = []
    _update_due(trainer)
    start = time.perf_counter()
    with (
        timed_phases(trainer, clock),
        counted_host_reads(trainer.device),
        torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof,
    ):
        while len(updating) < steps:
            before = grid_updates(trainer)
            with warnings.catch_warnings(record=True) as caught:
                if cuda:
                    warnings.simplefilter("always")
                    torch.cuda.set_sync_debug_mode("warn")
                with torch.profiler.record_function(f"{STEP_MARK}{len(updating)}"):
                    one_step(trainer, first + len(updating), clock)
                if cuda:
                    torch.cuda.set_sync_debug_mode("default")
            cuda_syncs.update(_sync_kind(str(w.message)) for w in caught if "synchroniz" in str(w.message))
            updating.append(grid_updates(trainer) > before)
        if cuda:
            torch.cuda.synchronize()
    total = time.perf_counter() - start
    n = len(updating)
    events = prof.events()
    per_step = events_by_step(events)
    steady = [i for i in range(n) if not updating[i]] or list(range(n))  # RGB at 128²: every step updates
    updates = [i for i in range(n) if updating[i]]
    steady_counts = count_ops([e for i in steady for e in per_step[i]])
    every = count_ops(events)
    timed = sum(clock.seconds.values())
    phases_ms = {phase: 1e3 * clock.seconds.get(phase, 0.0) / n for phase in PHASES if phase != "other"}
    phases_ms["other"] = 1e3 * max(total - timed, 0.0) / n
    syncs = {kind: count / n for kind, count in every["syncs"].items()}
    result = {
        "steps": n,
        "grid_update_steps": len(updates),
        "ms_per_step": 1e3 * total / n,
        "phases_ms": phases_ms,
        "ops_per_step": {
            "top_level": steady_counts["top_level"] / len(steady),
            "all": steady_counts["all"] / len(steady),
        },
        "syncs_per_step": {**syncs, "total": sum(syncs.values())},
        "top_ops": [[name, count / len(steady)] for name, count in steady_counts["top"].most_common(15)],
        "note": "profiled: the profiler and the phase clocks slow the step; compare counts, not times, across runs",
    }
    if updates:
        update_counts = count_ops([e for i in updates for e in per_step[i]])
        result["ops_per_update_step"] = {
            "top_level": update_counts["top_level"] / len(updates),
            "all": update_counts["all"] / len(updates),
        }
    if cuda:
        result["cuda_sync_debug_per_step"] = {kind: count / n for kind, count in cuda_syncs.items()}
    return result


def unprofiled_pass(trainer, first: int, steps: int) -> Dict:
    """``steps`` steps from ``first`` with nothing wrapped or recorded, timed as a whole (the first one updates the
    occupancy grids, as in :func:`profiled_pass`); the steps that updated grids are told apart by the host's counts."""
    cuda = str(trainer.device).startswith("cuda")
    _update_due(trainer)
    counts = [grid_updates(trainer)]
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for step in range(first, first + steps):
        one_step(trainer, step)
        counts.append(grid_updates(trainer))  # a sum of host ints
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "ms_per_step_unprofiled": 1e3 * seconds / steps,
        "grid_update_steps_unprofiled": sum(after > before for before, after in itertools.pairwise(counts)),
    }


def _sync_kind(message: str) -> str:
    """The operation a ``set_sync_debug_mode`` warning names (its first words), or 'synchronizing call'."""
    return message.split(":")[0][:60] if ":" in message else "synchronizing call"


def entry_name(method: MethodName, phase: Phase) -> str:
    """The key of a profiled method and phase in the results: ``3dae-rgb``, ``3dae-latent`` (its latent phase),
    ``3dae-latent/decoded``."""
    return f"{method}/decoded" if method == "3dae-latent" and phase == "decoded" else method


def run_step_profile(
    output: Path,
    image_size: int = 64,
    device: str = "auto",
    methods: Sequence[MethodName] = ("3dae-rgb", "3dae-latent"),
    warmup: int = 5,
    steps: int = 5,
    log: Callable[[str], None] = print,
    phases: Sequence[Phase] = ("latent", "decoded"),
    compile_renderer: bool = False,
    rounds: int = 3,
) -> Dict:
    """Profile each method (``3dae-latent`` in each of ``phases``) on generated ``image_size``² cars; the JSON-ready
    figures (see :func:`profile_method`). The unprofiled passes run after every profiled one, in ``rounds`` rounds
    that take the methods in turn (a shared machine's load then weighs on all of them alike); a method's
    ``ms_per_step_unprofiled`` is the median of its rounds. With both phases, the decoded step's unprofiled time over
    the latent step's."""
    device = resolve_device(device)
    if not phases or steps < 1 or rounds < 1:
        raise ValueError("--latent-phases: at least one of latent, decoded; --steps and --rounds: at least 1")
    log(f"generating 4 scenes of {image_size}² views in {output / 'data'}")
    data = step_memory_data(output / "data", image_size)
    figures: Dict[str, Dict] = {}
    trainers: Dict[str, Tuple[object, int]] = {}
    for method in methods:
        for phase in phases if method == "3dae-latent" else ("latent",):
            name = entry_name(method, phase)
            log(f"{name}: {warmup} warm-up step(s) and on until every occupancy grid was computed, then {steps} "
                f"profiled, method defaults, on {device}")  # fmt: skip
            trainer, step = prepared_trainer(method, data, output, device, warmup, phase, compile_renderer)
            figures[name] = {"warmup_steps": step, **profiled_pass(trainer, step, steps)}
            trainers[name] = (trainer, step + steps)
    timed: Dict[str, List[Dict]] = {name: [] for name in trainers}
    log(f"timing {steps} unprofiled steps of each, {rounds} round(s)")
    for _ in range(rounds):
        for name, (trainer, step) in trainers.items():
            timed[name].append(unprofiled_pass(trainer, step, steps))
            trainers[name] = (trainer, step + steps)
    for name, passes in timed.items():
        times = [p["ms_per_step_unprofiled"] for p in passes]
        figures[name]["ms_per_step_unprofiled"] = statistics.median(times)
        figures[name]["ms_per_step_unprofiled_rounds"] = times
        figures[name]["grid_update_steps_unprofiled"] = [p["grid_update_steps_unprofiled"] for p in passes]
    trainers.clear()
    result = {"device": describe_device(device), "image_size": image_size, "warmup": warmup, "steps": steps,
              "rounds": rounds, "latent_phases": list(phases), "compile_renderer": compile_renderer,
              "methods": figures}  # fmt: skip
    decoded, latent = figures.get(entry_name("3dae-latent", "decoded")), figures.get("3dae-latent")
    if decoded is not None and latent is not None:
        result["decoded_over_latent_unprofiled"] = decoded["ms_per_step_unprofiled"] / latent["ms_per_step_unprofiled"]
    return result


def step_profile_table(result: Dict) -> str:
    """Markdown: one column per method (and phase)."""
    methods = list(result["methods"])
    rows = [
        ("ms per step, unprofiled (median of the rounds)", lambda m: f"{m['ms_per_step_unprofiled']:.1f}"),
        ("ms per step, profiled", lambda m: f"{m['ms_per_step']:.1f}"),
    ]
    rows += [(f"  {phase} ms", lambda m, p=phase: f"{m['phases_ms'][p]:.1f}") for phase in PHASES]
    rows += [
        ("steps profiled (grid updates)", lambda m: f"{m['steps']} ({m['grid_update_steps']})"),
        ("operators per steady step, top-level", lambda m: f"{m['ops_per_step']['top_level']:.0f}"),
        ("operators per steady step, all", lambda m: f"{m['ops_per_step']['all']:.0f}"),
        ("operators per grid-update step, top-level", _update_ops),
        ("host syncs per step", lambda m: f"{m['syncs_per_step']['total']:.1f}"),
        ("  by kind", lambda m: ", ".join(f"{k} {v:g}" for k, v in m["syncs_per_step"].items() if k != "total")),
        ("top operators", lambda m: ", ".join(f"{n.removeprefix('aten::')} {c:g}" for n, c in m["top_ops"][:6])),
    ]
    lines = ["| " + " | ".join(["", *methods]) + " |", "|" + "---|" * (len(methods) + 1)]
    lines += ["| " + " | ".join([label, *(fmt(result["methods"][m]) for m in methods)]) + " |" for label, fmt in rows]
    extra = ", compiled renderer" if result.get("compile_renderer") else ""
    title = (f"step profile on {result['device']}, {result['image_size']}² views, after {result['warmup']}+ warm-up "
             f"steps (until every occupancy grid was computed): {result['steps']} steps profiled (the first updates "
             f"the grids), as many unprofiled in each of {result.get('rounds', 1)} round(s){extra}")  # fmt: skip
    text = title + "\n\n" + "\n".join(lines) + "\n"
    if "decoded_over_latent_unprofiled" in result:
        text += f"\ndecoded step / latent step, unprofiled: {result['decoded_over_latent_unprofiled']:.2f}\n"
    return text


def _update_ops(m: Dict) -> str:
    return f"{m['ops_per_update_step']['top_level']:.0f}" if "ops_per_update_step" in m else "-"
