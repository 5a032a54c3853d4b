"""Host → device copies that do not make the host wait: through pinned (page-locked) memory to a GPU, with
``non_blocking=True`` (an ordinary copy from pageable memory waits for the device's queue). Used for a batch's rows
(images, latents) and for the small index tensors a training step builds on the host."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor


def wants_pinned(source: Union[torch.device, str], target: Union[torch.device, str]) -> bool:
    """Whether data copied from ``source`` to ``target`` goes through pinned host memory: CPU to CUDA only (a CPU
    target needs no copy; pinning needs CUDA)."""
    return torch.device(source).type == "cpu" and torch.device(target).type == "cuda"


PINNING_FAILURE: List[str] = []
"""The first reason pinned host memory could not be had (empty while it always could): logged when it happened,
later failures are not."""


def _pinned(shape: Tuple[int, ...], dtype: torch.dtype) -> Optional[Tensor]:
    """An empty pinned host tensor, or None where pinned memory cannot be had (e.g. the locked-memory limit): the
    copy is then an ordinary one, which makes the host wait for the device; the first such failure says so."""
    try:
        return torch.empty(shape, dtype=dtype, pin_memory=True)
    except RuntimeError as err:  # how torch reports a refused host allocation (CUDA's error, out of memory)
        if not PINNING_FAILURE:
            PINNING_FAILURE.append(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
            CONSOLE.log(
                f"[yellow]pinned host memory could not be had ({PINNING_FAILURE[0]}): host -> device copies are "
                "ordinary ones, each makes the host wait for the device (raise the locked-memory limit, ulimit -l, "
                "or free host memory)"
            )
        return None


def rows_to_device(store: Tensor, indices: Tensor, device: Union[torch.device, str]) -> Tensor:
    """``store[indices]`` on ``device``, in the store's dtype (convert it there, after the copy).

    The rows are gathered where the store is. From a CPU store to a CUDA device they are gathered straight into
    pinned memory and copied without blocking (torch's pinned-memory cache keeps the buffer until the copy is done).
    Pinning the store itself would not help: indexing it makes a new, pageable tensor. Where pinned memory cannot be
    had, the copy is an ordinary one."""
    device = torch.device(device)
    if not wants_pinned(store.device, device):
        return on_device(store[on_device(indices, store.device)], device)
    staged = _pinned((len(indices), *store.shape[1:]), store.dtype)
    if staged is None:
        return store[indices].to(device)
    torch.index_select(store, 0, indices, out=staged)
    return staged.to(device, non_blocking=True)


def on_device(x: Tensor, device: Union[torch.device, str]) -> Tensor:
    """``x`` on ``device``: ``x`` itself where it is there already (``Tensor.to`` dispatches an operator even
    then)."""
    return x if x.device == torch.device(device) else x.to(device)


def host_to_device(values: Sequence[int], device: Union[torch.device, str]) -> Tensor:
    """Host ints as an int64 tensor on ``device``, copied as :func:`rows_to_device` copies (no copy on the CPU)."""
    host = torch.from_numpy(np.asarray(values, dtype=np.int64))  # one operator (torch.tensor: four)
    device = torch.device(device)
    if not wants_pinned(host.device, device):
        return host if device.type == "cpu" else host.to(device)
    staged = _pinned(tuple(host.shape), host.dtype)
    if staged is None:
        return host.to(device)
    return staged.copy_(host).to(device, non_blocking=True)
