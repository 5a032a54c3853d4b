"""Saving and loading checkpoints: safely, and with errors that say which file and why.

* **Saving** (:func:`atomic_save`, every checkpoint of the project: nerfstudio runs and the autoencoder recipe's
  ``state.pt``): through a temporary file, flushed and renamed into place, after checking the disk has room; a save
  that does not fit fails with a message giving the space needed and free (:class:`NotEnoughSpaceError`), not
  torch's ``RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos``, and touches nothing saved.
* **Loading** (:func:`load_checkpoint_file`: ``ns-train --load-dir``/``--load-checkpoint``, ns-eval, ns-render,
  ns-viewer, ns-3dae-render, the recipe's resume): a damaged file (cut short by a crash or a full disk) is a
  :class:`DamagedCheckpointError` naming it and what to do, not torch's ``OSError: [Errno 22] Invalid argument``;
  ``--load-dir`` falls back to the newest intact checkpoint (:meth:`nerfstudio_3dae.trainer.ThreeDAETrainer.
  _load_checkpoint`).
* **torch >= 2.6**, where ``torch.load`` defaults to ``weights_only=True``: nerfstudio 1.1.5 saves optimiser and
  scheduler state that holds numpy scalars (its exponential-decay scheduler computes learning rates with numpy) and
  reloads with a plain ``torch.load``: ns-viewer, ns-eval, ns-render and ``--load-dir`` would raise
  ``UnpicklingError``. Allow-listing the numpy scalar reconstructors keeps the safe loader (no arbitrary code) and
  asks no environment variable of the user (:func:`allow_nerfstudio_checkpoints`, called when a 3dae model module
  is imported).
* **After an evaluation load** the model is told (:data:`LOADED_FOR_EVALUATION`, a method it may define): the 3dae
  models take the scene the stock ``ns-render`` and ``ns-viewer`` show from the ``NS3DAE_SCENE`` environment
  variable there (:meth:`nerfstudio_3dae.model.TriplaneModel.loaded_for_evaluation`). This module knows no model
  class: the model modules import it, not the other way round.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from nerfstudio.utils.rich_utils import CONSOLE


def numpy_scalar_globals() -> list:
    """The globals a pickled numpy scalar needs: the scalar reconstructor and the dtype classes."""
    try:  # numpy >= 2
        from numpy._core.multiarray import scalar  # type: ignore[attr-defined]
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    dtype_classes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)]
    return [scalar, np.dtype, *dtype_classes]


def allow_nerfstudio_checkpoints() -> None:
    """Let ``torch.load(weights_only=True)`` read numpy scalars (a no-op on torch without safe globals), and let
    nerfstudio's evaluation tools load through :func:`load_checkpoint_file` (:func:`use_checked_eval_loading`)."""
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:
        add(numpy_scalar_globals())
    use_checked_eval_loading()


# ----------------------------------------------------------------------------------------------- loading
CHECKPOINT_NAME = re.compile(r"step-(\d+)\.ckpt")
"""nerfstudio's checkpoint file names: ``step-000001234.ckpt``."""


class DamagedCheckpointError(ValueError):
    """A checkpoint file that cannot be read: cut short (a crash, a full disk) or otherwise damaged. The message
    names the file, what is wrong with it and what to do; ``path`` is the file."""

    def __init__(self, message: str, path: Path, damage: str = "") -> None:
        super().__init__(message)
        self.path = Path(path)
        """The damaged file."""
        self.damage = damage
        """What is wrong with it."""


def checkpoint_steps(folder: Path) -> List[Tuple[int, Path]]:
    """``(step, path)`` of the ``step-*.ckpt`` files in ``folder``, newest first (other files are ignored)."""
    found = []
    for path in Path(folder).iterdir() if Path(folder).is_dir() else []:
        match = CHECKPOINT_NAME.fullmatch(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def zip_damage(path: Path) -> Optional[str]:
    """What is wrong with the zip container of a torch file (None: every member is there with a correct CRC).

    ``torch.save`` writes a zip archive whose directory is at the end of the file, so a file cut short has none;
    damage inside a member shows as a CRC mismatch."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty"
    if not zipfile.is_zipfile(path):
        return f"it ends after {_size(size)}, before its archive directory: it was cut short"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        return f"its archive cannot be read ({err})"
    return None if bad is None else f"its member {bad} fails its CRC check"


def _older_advice(path: Path) -> str:
    older = [p.name for step, p in checkpoint_steps(path.parent) if p != path]
    if older:
        return f"Move it out of {path.parent} to use the newest other checkpoint there ({older[0]}), or train again."
    return "It is the only checkpoint in its folder: train again (or restore it from a copy)."


def load_checkpoint_file(
    path: Path, *, map_location: Any = "cpu", weights_only: Optional[bool] = None, advice: Optional[str] = None
) -> Dict[str, Any]:
    """``torch.load`` of a checkpoint with a readable error for a damaged file.

    A file that does not load and whose zip container is damaged (:func:`zip_damage`: cut short, empty, a bad CRC)
    raises :class:`DamagedCheckpointError` naming the file, the damage and ``advice`` (default: the older checkpoint
    beside it, or to train again) instead of torch's ``OSError: [Errno 22] Invalid argument`` or ``PytorchStreamReader
    failed reading zip archive``. Any other failure (a missing file, a checkpoint of another torch, a tensor on a
    missing device) is raised as torch raises it. ``weights_only`` None: torch's default."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except FileNotFoundError:
        raise
    except Exception as err:
        damage = zip_damage(path) if path.is_file() else None
        if damage is None:
            raise
        advice = _older_advice(path) if advice is None else advice
        raise DamagedCheckpointError(
            f"checkpoint {path} is damaged and cannot be loaded: {damage} (a crash or a full disk while it was "
            f"written). {advice}".rstrip(),
            path,
            damage,
        ) from err


def checked_eval_load_checkpoint(config: Any, pipeline: Any) -> Tuple[Path, int]:
    """nerfstudio's ``eval_load_checkpoint`` (ns-eval, ns-render, ns-viewer, ns-export, ns-3dae-render) with
    :func:`load_checkpoint_file`: the latest ``step-*.ckpt`` of the run (or ``load_step``'s) is loaded, and a damaged
    one is an error that names it and the older checkpoint to use instead (evaluating an older step without being
    asked would report the wrong step's numbers). Other files in the folder are ignored (nerfstudio's own version
    fails on them). Once loaded, the model's :data:`LOADED_FOR_EVALUATION` method is called where it has one (a 3dae
    model shows the scene ``NS3DAE_SCENE`` names).
    """
    assert config.load_dir is not None
    load_dir = Path(config.load_dir)
    if config.load_step is None:
        CONSOLE.print("Loading latest checkpoint from load_dir")
        found = checkpoint_steps(load_dir)
        if not found:
            CONSOLE.rule("Error", style="red")
            CONSOLE.print(f"No checkpoint (step-*.ckpt) found in {load_dir}", justify="center")
            CONSOLE.print(
                "Please make sure the checkpoint exists, they should be generated periodically during training",
                justify="center",
            )
            sys.exit(1)
        load_step, load_path = found[0]
    else:
        load_step = config.load_step
        load_path = load_dir / f"step-{load_step:09d}.ckpt"
    assert load_path.exists(), f"Checkpoint {load_path} does not exist"
    loaded_state = load_checkpoint_file(load_path)
    pipeline.load_pipeline(loaded_state["pipeline"], loaded_state["step"])
    CONSOLE.print(f":white_check_mark: Done loading checkpoint from {load_path}")
    loaded = getattr(pipeline.model, LOADED_FOR_EVALUATION, None)
    if callable(loaded):
        loaded()
    return load_path, load_step


LOADED_FOR_EVALUATION = "loaded_for_evaluation"
"""The model method (no arguments) :func:`checked_eval_load_checkpoint` calls once it has loaded a run for nerfstudio's
``eval_setup`` (ns-eval, ns-render, ns-viewer, ns-export, ns-3dae-render); models without one are left alone."""


def use_checked_eval_loading() -> None:
    """Make nerfstudio's ``eval_setup`` load with :func:`checked_eval_load_checkpoint` (idempotent), once
    ``nerfstudio.utils.eval_utils`` is imported (importing it here would be circular: it discovers the plugins).

    ``eval_setup`` builds the model (whose ``populate_modules`` calls :func:`allow_nerfstudio_checkpoints`, hence
    this) before it looks the loader up in its module, so every tool built on it (ns-eval, ns-render, ns-viewer,
    ns-export, ns-3dae-render) loads a 3dae run through it; runs of other methods keep nerfstudio's loader."""
    eval_utils = sys.modules.get("nerfstudio.utils.eval_utils")
    if eval_utils is not None and hasattr(eval_utils, "eval_setup"):  # not while its own imports run
        eval_utils.eval_load_checkpoint = checked_eval_load_checkpoint


# ----------------------------------------------------------------------------------------------- saving
SAVE_MARGIN_BYTES = 1 << 20
"""Bytes a save needs beyond its tensors' (the pickled structure, the archive's headers), plus 1 % of them."""
PER_TENSOR_BYTES = 128
"""Archive overhead per stored tensor (a local header and alignment to 64 bytes)."""
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
"""``OSError`` numbers that mean a write ran out of room (no space, over quota, over the file size limit)."""


class NotEnoughSpaceError(OSError):
    """A save that does not fit (checked before writing) or that ran out of room while writing. The message gives
    the file, the space needed and free, and the folder; nothing saved before is touched."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC


def free_bytes(folder: Path) -> int:
    """Free bytes on the file system of ``folder`` (module-level, so tests can pretend a disk is full)."""
    return shutil.disk_usage(folder).free


def save_size_estimate(obj: Any) -> int:
    """Bytes ``torch.save(obj)`` is expected to write: every tensor storage once (views share theirs; a view saves
    its whole storage), numpy arrays, :data:`PER_TENSOR_BYTES` each, plus 1 % and :data:`SAVE_MARGIN_BYTES`."""
    storages: Dict[Tuple[str, int], int] = {}
    other = 0
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            storages[(str(item.device), storage.data_ptr())] = storage.nbytes()
        elif isinstance(item, np.ndarray):
            other += item.nbytes + PER_TENSOR_BYTES
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set)):
            stack.extend(item)
    data = sum(storages.values()) + len(storages) * PER_TENSOR_BYTES + other
    return data + data // 100 + SAVE_MARGIN_BYTES


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _ran_out_of_room(err: BaseException) -> bool:
    """Whether a failed save ran out of room: an ``OSError`` of :data:`DISK_FULL_ERRNOS` in the exception chain, or
    torch's archive writer noticing a short write (``unexpected pos``, what a full disk looks like through it)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
            return True
        if isinstance(err, RuntimeError) and ("unexpected pos" in str(err) or "failed writing" in str(err)):
            return True
        err = err.__cause__ or err.__context__
    return False


def atomic_save(obj: Any, path: Path, tmp_dir: Optional[Path] = None) -> None:
    """``torch.save`` of ``obj`` to ``path`` through a temporary file (in ``tmp_dir``, default: beside ``path``),
    flushed to the disk and renamed into place: ``path`` is either the old file or the new one, never a part.

    Free space is checked first (:func:`save_size_estimate` against :func:`free_bytes` of ``path``'s folder): a save
    that would not fit raises :class:`NotEnoughSpaceError` before writing anything. A save that still runs out of
    room (the disk filled meanwhile) raises the same error, from torch's; any other failure (unpicklable state) is
    raised as it is. Either way the temporary file is removed and the files already saved are left alone."""
    path = Path(path)
    folder = path.parent
    tmp = Path(tmp_dir if tmp_dir is not None else folder) / f".{path.name}.partial"
    need, free = save_size_estimate(obj), free_bytes(folder)
    if need > free:
        raise NotEnoughSpaceError(
            f"not enough free space to save {path}: it needs about {_size(need)}, {folder} has {_size(free)} free. "
            "Free some space there (or write the run elsewhere) and run again; nothing was written, the files "
            "already saved are intact."
        )
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, Exception) and _ran_out_of_room(err):
            raise NotEnoughSpaceError(
                f"the disk filled up while saving {path}: it needs about {_size(need)}, {folder} has "
                f"{_size(free_bytes(folder))} free now. Free some space there (or write the run elsewhere) and run "
                "again; the partial file was removed, the files already saved are intact."
            ) from err
        raise
    _sync_folder(folder)


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every platform opens folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
