"""Scenes sharded over the processes of a ``torch.distributed`` group.

With ``W`` processes, rank ``r`` owns the scenes whose id ``s`` satisfies ``s % W == r``: it parses and loads only
their views, and holds only their rows of the per-scene tables (micro planes, mixing weights, bias) and the Adam state
of those rows. Row ``k`` of rank ``r``'s tables is scene ``r + k W``. The shared parts (bases, decoder MLP,
autoencoder) are replicated: broadcast from rank 0 at start, gradients averaged over the ranks before each optimiser
step (:func:`average_gradients`), so they stay identical everywhere.

Checkpoints are independent of the number of processes: before a save the rows are gathered into whole tables
(:func:`gather_scene_rows`); a process that loads one keeps its own rows (:func:`own_rows`). One process (``W = 1``)
owns every scene and all of this is the identity.

Everything here is a no-op without an initialised process group of more than one process.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Sequence, Tuple

import torch
import torch.distributed as dist
from jaxtyping import Int
from torch import Tensor


def scene_shard() -> Tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_sharded() -> bool:
    """True in a process group of more than one process."""
    return scene_shard()[1] > 1


def owned_scenes(num_scenes: int, rank: int, world_size: int) -> List[int]:
    """Scene ids owned by ``rank``: ``rank, rank + W, rank + 2W, ...`` below ``num_scenes``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    return list(range(rank, num_scenes, world_size))


def rows_of(scene_ids: Int[Tensor, "K"], rank: int, world_size: int) -> Int[Tensor, "K"]:
    """Rows of the local tables that hold ``scene_ids``; raises if a scene belongs to another rank."""
    if world_size == 1:
        return scene_ids
    foreign = scene_ids.remainder(world_size) != rank
    if bool(foreign.any()):
        raise ValueError(
            f"scenes {scene_ids[foreign].tolist()} belong to other ranks: rank {rank} of {world_size} holds the "
            f"scenes s with s % {world_size} == {rank}"
        )
    return scene_ids.div(world_size, rounding_mode="floor")


def own_rows(table: Tensor, num_scenes: int, rank: int, world_size: int) -> Tensor:
    """This rank's rows of a whole table ``[num_scenes, ...]`` (a copy; the table itself in a single process)."""
    if table.shape[0] != num_scenes:
        raise ValueError(f"a per-scene table has {table.shape[0]} rows; expected one per scene ({num_scenes})")
    return table if world_size == 1 else table[rank::world_size].clone()


def gather_scene_rows(local: Tensor, num_scenes: int) -> Tensor:
    """The whole table ``[num_scenes, ...]`` from every rank's rows ``[n_r, ...]``, on rank 0 only (collective: every
    rank calls it; the others get their own ``local`` rows back and never hold the whole table)."""
    rank, world = scene_shard()
    if world == 1:
        return local
    per_rank = -(-num_scenes // world)  # rows of the fullest rank
    padded = local.new_zeros((per_rank, *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world)] if rank == 0 else None
    dist.gather(padded, parts, dst=0)
    if parts is None:
        return local
    # scene s = k W + r is row k of rank r: interleave the ranks' rows
    return torch.stack(parts, dim=1).reshape(per_rank * world, *local.shape[1:])[:num_scenes]


@torch.no_grad()
def broadcast_from_main(tensors: Iterable[Tensor]) -> None:
    """Overwrite ``tensors`` on every rank with rank 0's values (collective)."""
    if not is_sharded():
        return
    for tensor in tensors:
        dist.broadcast(tensor.data, src=0)


@torch.no_grad()
def average_gradients(params: Sequence[Tensor]) -> None:
    """Average the (dense) gradients of replicated parameters over the ranks, in one all-reduce (collective).

    A parameter without a gradient on some ranks counts as a zero gradient there; one without a gradient on every
    rank keeps ``grad = None`` (its optimiser then skips it, as in a single process).
    """
    if not is_sharded() or not params:
        return
    world = dist.get_world_size()
    reference = params[0]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    if any(g.is_sparse for g in grads):
        raise ValueError("average_gradients: replicated parameters must have dense gradients")
    has_grad = torch.tensor([float(p.grad is not None) for p in params], device=reference.device)
    flat = torch.cat([g.reshape(-1).to(reference.dtype) for g in grads] + [has_grad])
    dist.all_reduce(flat)
    counts = flat[-len(params) :]
    offset = 0
    for p, count in zip(params, counts.tolist(), strict=True):
        size = p.numel()
        if count > 0:
            p.grad = (flat[offset : offset + size] / world).reshape(p.shape).to(p.dtype)
        offset += size


def broadcast_object(value):
    """Rank 0's ``value`` on every rank (collective; a plain return without a process group)."""
    if not is_sharded():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_optimizer_state(state: Dict[str, Any], num_scenes: int) -> Dict[str, Any]:
    """A per-scene optimiser's ``state_dict`` with every per-row state tensor gathered into whole tables on rank 0
    (collective: every rank must hold the same state keys)."""
    gathered = {
        index: {name: gather_scene_rows(value, num_scenes) for name, value in sorted(entry.items())}
        for index, entry in sorted(state["state"].items())
    }
    return {**state, "state": gathered}


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
