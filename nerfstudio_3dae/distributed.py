"""Scenes sharded over the processes of a ``torch.distributed`` group.

With ``W`` processes, rank ``r`` owns the scenes whose id ``s`` satisfies ``s % W == r``: it parses and loads only
their views, and holds only their rows of the per-scene tables (micro planes, mixing weights, bias) and the Adam state
of those rows. Row ``k`` of rank ``r``'s tables is scene ``r + k W``. The shared parts (bases, decoder MLP,
autoencoder) are replicated: broadcast from rank 0 at start, gradients averaged over the ranks before each optimiser
step (:func:`average_gradients`), so they stay identical everywhere.

Checkpoints are independent of the number of processes: before a save the rows are gathered into whole tables
(:func:`gather_scene_rows`, in blocks of bounded size, each moved to rank 0's CPU memory: the whole tables never sit
on a GPU); a process that loads one keeps its own rows (:func:`own_rows`). One process (``W = 1``) owns every scene
and all of this is the identity.

Small control messages (which parameters have a gradient, rank 0's pause state before each step, see
:func:`follow_main`) travel as CPU tensors through a gloo group (:func:`control_group`), so they never make the host
wait for the GPU.

This process's :class:`Shard` is read from the process group once, by :func:`scene_shard`, when the run is set up
(the ``3dae-scenes`` dataparser does it as it parses, and its outputs hand it to the datamanager and the model; the
pipeline and the trainer take it from there). The gathering, broadcasting and averaging functions here take it as an
argument and do nothing for a single-process shard (``world_size == 1``).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn


class Shard(NamedTuple):
    """Which scenes a process holds: rank ``rank`` of ``world_size`` processes owns the scenes ``s`` with
    ``s % world_size == rank`` (a tuple: ``owned_scenes(n, *shard)``)."""

    rank: int
    world_size: int

    @property
    def sharded(self) -> bool:
        """True for a process of a group of more than one (the collectives here do something)."""
        return self.world_size > 1


SINGLE_PROCESS = Shard(0, 1)
"""The shard of a process that holds every scene."""


def scene_shard() -> Shard:
    """This process's :class:`Shard`, read from the ``torch.distributed`` process group (:data:`SINGLE_PROCESS`
    without an initialised one). The one place that reads it: called once when a run is set up (by the ``3dae-scenes``
    dataparser, whose outputs pass it on), and by tools that build no pipeline."""
    if dist.is_available() and dist.is_initialized():
        return Shard(dist.get_rank(), dist.get_world_size())
    return SINGLE_PROCESS


def owned_scenes(num_scenes: int, rank: int, world_size: int) -> List[int]:
    """Scene ids owned by ``rank``: ``rank, rank + W, rank + 2W, ...`` below ``num_scenes``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    return list(range(rank, num_scenes, world_size))


def scene_table_names(module: nn.Module) -> List[str]:
    """State-dict names of the per-scene tables in ``module`` (rows sharded over the ranks, gathered whole into
    checkpoints): the ``scene_tables`` each of its submodules declares (a class attribute, the names of its own
    parameters and buffers: :class:`~nerfstudio_3dae.triplanes.TriplaneBank`,
    :class:`~nerfstudio_3dae.occupancy.OccupancyGrids`), under that submodule's path. A declared name that is not a
    parameter or buffer of its module raises (a renamed table would otherwise be left out of the gathering)."""
    names: List[str] = []
    for path, sub in module.named_modules():
        declared = getattr(type(sub), "scene_tables", ())
        if isinstance(declared, str) or not all(isinstance(name, str) for name in declared):
            raise TypeError(f"{type(sub).__name__}.scene_tables must be a tuple of names, got {declared!r}")
        own = {name for name, _ in sub.named_parameters(recurse=False)}
        own |= {name for name, _ in sub.named_buffers(recurse=False)}
        missing = [name for name in declared if name not in own]
        if missing:
            raise AttributeError(
                f"{type(sub).__name__} (at {path or 'the top'}) declares per-scene tables {missing} that are not "
                f"among its parameters and buffers ({', '.join(sorted(own)) or 'none'})"
            )
        names += [f"{path}.{name}" if path else name for name in declared]
    return names


GATHER_BLOCK_BYTES = 64 * 2**20
"""Largest block of a per-scene table that rank 0 receives at once during a checkpoint gather (all ranks' rows of the
block together); its device memory for the gather is about twice this."""

PAUSE_KEEPALIVE_S = 1.0
"""While rank 0 is paused (viewer), how often it tells the other ranks, which wait for it (:func:`follow_main`)."""

TRAIN, PAUSED, STOP = 0, 1, 2
"""Rank 0's state before a step, as :func:`follow_main` passes it on: train the step, paused (wait), stop the run."""

_control: Dict[int, Any] = {}
"""The gloo group of :func:`control_group`, by the id of the default process group it was made in."""


def control_group() -> Optional[Any]:
    """The process group for small CPU messages: ``None`` (the default group) when it takes CPU tensors (gloo), else
    a gloo group over the same ranks, made on first use (collective: every rank calls this at the same point)."""
    default = dist.group.WORLD
    if "gloo" in str(dist.get_backend()):
        return None
    key = id(default)
    if key not in _control:
        _control.clear()
        _control[key] = dist.new_group(backend="gloo")
    return _control[key]


def transport_device(backend: str, device: torch.device) -> torch.device:
    """Where a tensor on ``device`` must be for a collective of ``backend``: NCCL takes CUDA tensors only (the
    current CUDA device for a CPU tensor), gloo CPU ones; a group with both (``"cpu:gloo,cuda:nccl"``) either."""
    device = torch.device(device)
    if "nccl" in backend and "gloo" in backend:
        return device
    if "nccl" in backend:
        return device if device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def rows_of(scene_ids: Sequence[int], rank: int, world_size: int) -> List[int]:
    """Rows of the local tables that hold ``scene_ids`` (host ints: no device read); raises if a scene belongs to
    another rank."""
    foreign = [s for s in scene_ids if s % world_size != rank]
    if foreign:
        raise ValueError(
            f"scenes {foreign} belong to other ranks: rank {rank} of {world_size} holds the scenes s with "
            f"s % {world_size} == {rank}"
        )
    return [s // world_size for s in scene_ids]


def own_rows(table: Tensor, num_scenes: int, rank: int, world_size: int) -> Tensor:
    """This rank's rows of a whole table ``[num_scenes, ...]`` (a copy; the table itself in a single process)."""
    if table.shape[0] != num_scenes:
        raise ValueError(f"a per-scene table has {table.shape[0]} rows; expected one per scene ({num_scenes})")
    return table if world_size == 1 else table[rank::world_size].clone()


def gather_scene_rows(local: Tensor, num_scenes: int, shard: Shard, block_bytes: int = GATHER_BLOCK_BYTES) -> Tensor:
    """The whole table ``[num_scenes, ...]`` from every rank's rows ``[n_r, ...]``, in rank 0's CPU memory
    (collective: every rank of ``shard``'s group calls it; the others get their own ``local`` rows back and never
    hold the whole table).

    The rows travel in blocks of at most ``block_bytes`` (all ranks' rows of a block together, at least one row per
    rank), each copied into the CPU table as it arrives: rank 0's device holds one block at a time, whatever the
    number of scenes. NCCL moves device tensors, gloo CPU ones (:func:`transport_device`). In a single process the
    table itself is returned, wherever it is."""
    rank, world = shard
    if world == 1:
        return local
    if block_bytes < 1:
        raise ValueError(f"gather_scene_rows: block_bytes must be >= 1, got {block_bytes}")
    row_shape = tuple(local.shape[1:])
    row_bytes = max(1, math.prod(row_shape) * local.element_size())
    per_rank = -(-num_scenes // world)  # rows of the fullest rank
    block_rows = max(1, block_bytes // (world * row_bytes))
    device = transport_device(str(dist.get_backend()), local.device)
    whole = torch.empty((num_scenes, *row_shape), dtype=local.dtype) if rank == 0 else None
    for start in range(0, per_rank, block_rows):
        stop = min(start + block_rows, per_rank)
        chunk = torch.zeros((stop - start, *row_shape), dtype=local.dtype, device=device)
        mine = local[start:stop]
        chunk[: mine.shape[0]] = mine.to(device)
        parts = [torch.empty_like(chunk) for _ in range(world)] if whole is not None else None
        dist.gather(chunk, parts, dst=0)
        if whole is None or parts is None:
            continue
        end = min(stop * world, num_scenes)
        for r, part in enumerate(parts):  # scene s = k W + r is row k of rank r
            rows = whole[start * world + r : end : world]
            rows.copy_(part[: rows.shape[0]])
    return local if whole is None else whole


@torch.no_grad()
def broadcast_from_main(tensors: Iterable[Tensor], shard: Shard) -> None:
    """Overwrite ``tensors`` on every rank with rank 0's values (collective)."""
    if not shard.sharded:
        return
    for tensor in tensors:
        dist.broadcast(tensor.data, src=0)


@torch.no_grad()
def average_gradients(params: Sequence[Tensor], shard: Shard) -> None:
    """Average the (dense) gradients of replicated parameters over the ranks, in one all-reduce (collective).

    A parameter without a gradient on some ranks counts as a zero gradient there; one without a gradient on every
    rank keeps ``grad = None`` (its optimiser then skips it, as in a single process). Which parameters have one is
    agreed on the CPU (:func:`control_group`): the host never waits for the device here.
    """
    if not shard.sharded or not params:
        return
    world = shard.world_size
    reference = params[0]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    if any(g.is_sparse for g in grads):
        raise ValueError("average_gradients: replicated parameters must have dense gradients")
    counts = torch.tensor([int(p.grad is not None) for p in params], dtype=torch.int32)
    dist.all_reduce(counts, group=control_group())
    flat = torch.cat([g.reshape(-1).to(reference.dtype) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p, count in zip(params, counts.tolist(), strict=True):
        size = p.numel()
        if count > 0:
            p.grad = (flat[offset : offset + size] / world).reshape(p.shape).to(p.dtype)
        offset += size


def broadcast_object(value, shard: Shard):
    """Rank 0's ``value`` on every rank (collective; a plain return in a single process)."""
    if not shard.sharded:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_optimizer_state(
    state: Dict[str, Any], num_scenes: int, shard: Shard, block_bytes: int = GATHER_BLOCK_BYTES
) -> Dict[str, Any]:
    """A per-scene optimiser's ``state_dict`` with every per-row state tensor gathered into whole tables in rank 0's
    CPU memory (:func:`gather_scene_rows`; scalars are kept as they are; collective: every rank must hold the same
    state keys)."""
    gathered = {
        index: {
            name: gather_scene_rows(value, num_scenes, shard, block_bytes)
            if torch.is_tensor(value) and value.ndim
            else value
            for name, value in sorted(entry.items())
        }
        for index, entry in sorted(state["state"].items())
    }
    return {**state, "state": gathered}


def to_device(value: Any, device: Union[torch.device, str]) -> Any:
    """``value`` with every tensor in it (nested dicts, lists, tuples) moved to ``device``; other values as they are.
    A checkpoint made CPU-only this way loads on a machine without the device it was trained on."""
    if torch.is_tensor(value):
        return value.to(device)
    if isinstance(value, dict):
        return {key: to_device(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(item, device) for item in value)
    return value


def exchange_main_code(code: int) -> int:
    """Rank 0's ``code`` on every rank (collective, a CPU broadcast through :func:`control_group`)."""
    box = torch.tensor([code], dtype=torch.int64)
    dist.broadcast(box, src=0, group=control_group())
    return int(box[0])


def follow_main(
    main_code: Optional[Callable[[], int]],
    exchange: Callable[[int], int] = exchange_main_code,
    keepalive_s: float = PAUSE_KEEPALIVE_S,
    poll_s: float = 0.01,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Called by every rank before a step: returns :data:`TRAIN` or :data:`STOP` as rank 0 decides (collective).

    Rank 0 passes ``main_code`` (its :data:`TRAIN`, :data:`PAUSED` or :data:`STOP` now); while it says
    :data:`PAUSED` rank 0 waits, and tells the others so every ``keepalive_s`` seconds, so they wait with it (each of
    their waits is one short collective, never one that lasts the whole pause and runs into the process group's
    timeout). The other ranks pass ``None``. One tiny CPU broadcast per step when nobody pauses.
    """
    if main_code is None:
        while True:
            code = exchange(TRAIN)
            if code != PAUSED:
                return code
    code = main_code()
    told = None
    while code == PAUSED:
        if told is None or clock() - told >= keepalive_s:
            exchange(PAUSED)
            told = clock()
        sleep(poll_s)
        code = main_code()
    return exchange(code)


def own_optimizer_state(state: Dict[str, Any], num_scenes: int, rank: int, world_size: int) -> Dict[str, Any]:
    """This rank's rows of a per-scene optimiser's ``state_dict`` saved with whole tables."""
    owned = {
        index: {
            name: own_rows(value, num_scenes, rank, world_size) if torch.is_tensor(value) and value.ndim else value
            for name, value in entry.items()
        }
        for index, entry in state["state"].items()
    }
    return {**state, "state": owned}
