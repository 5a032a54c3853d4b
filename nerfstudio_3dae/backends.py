"""Which volume-rendering backend a process uses, decided once at start-up without compiling anything.

nerfacc 0.5.2 ships no compiled extension: importing ``nerfacc.cuda._backend`` runs torch's
``cpp_extension.load``, a ninja/nvcc build of its CUDA sources (minutes), and it does so inside the first training
step of every new process that reaches a nerfacc op. :func:`decide_backend` never goes there. It uses nerfacc's CUDA
extension only when it is already built:

* the module a ``setup.py`` build of nerfacc installs (``nerfacc.csrc``) imports, or
* torch's JIT build folder for ``nerfacc_cuda`` (``$TORCH_EXTENSIONS_DIR/nerfacc_cuda``, by default
  ``~/.cache/torch_extensions/py3XX_cuXXX/nerfacc_cuda``) holds the finished module ``nerfacc_cuda.so``; it is loaded
  straight from the file and handed to nerfacc as ``nerfacc.csrc``, so nerfacc's own loader never starts a build.

Anything else is the torch backend, with the reason logged once per process. A build folder with a ``lock`` file and
no finished module is reported, never waited on: held by a live process (an OS lock on the file, which torch's
``FileLock`` takes while it builds), it is a build in progress; held by nobody, it is *stale* (an interrupted build).
The build itself is :mod:`nerfstudio_3dae.nerfacc_build` (``ns-3dae-build-nerfacc``): once, outside any training
loop, in a child process with a time limit (docs/gpu.md). This module only reads what a build leaves: the build folder
(:func:`nerfacc_build_dir`), its module and lock, and the build log's path for its messages.
"""

from __future__ import annotations

import fcntl
import functools
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal, Optional, Tuple, Union

import torch

BackendName = Literal["torch", "nerfacc"]
Requested = Literal["auto", "torch", "nerfacc"]

EXTENSION_NAME = "nerfacc_cuda"
"""The name nerfacc 0.5.2 gives torch's JIT build (its build folder and module file)."""

BACKEND_OPTION = "--pipeline.model.backend"
BUILD_COMMAND = "ns-3dae-build-nerfacc"


class BackendError(ValueError):
    """A backend option that cannot be honoured here; the message names the option and what to do."""


@dataclass(frozen=True)
class BackendDecision:
    """The backend a process renders with and why."""

    backend: BackendName
    reason: str


@dataclass(frozen=True)
class ExtensionProbe:
    """Whether nerfacc's CUDA extension can be used without a build, and the module when it can."""

    usable: bool
    reason: str
    module: Optional[ModuleType] = None


def nerfacc_build_dir() -> Path:
    """torch's JIT build folder for ``nerfacc_cuda``, the one nerfacc's loader uses (not created here)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root is None:
        from torch.utils.cpp_extension import get_default_build_root  # pylint: disable=import-outside-toplevel

        accelerator = f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu"
        if torch.version.hip is not None:
            accelerator = f"rocm{torch.version.hip.replace('.', '')}"
        python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
        root = os.path.join(get_default_build_root(), f"{python}_{accelerator}")
    return Path(root) / EXTENSION_NAME


def built_module_path(build_dir: Path) -> Path:
    """Where torch's JIT build writes the finished module (its last step, the link)."""
    return build_dir / f"{EXTENSION_NAME}.so"


def build_log_path(build_dir: Path) -> Path:
    """Where :func:`nerfstudio_3dae.nerfacc_build.build_nerfacc` keeps the whole output of its last build (beside
    the build folder, not in it: nerfacc's loader treats a non-empty folder as a finished build)."""
    return build_dir.parent / f"{EXTENSION_NAME}-build.log"


def lock_is_held(lock: Path) -> bool:
    """Whether a live process holds an OS lock (``flock``) on ``lock``; never waits, never creates the file."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def load_module_file(path: Path) -> ModuleType:
    """Import a built extension module from its file, as torch's ``load`` does once the build is done."""
    spec = importlib.util.spec_from_file_location(EXTENSION_NAME, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not an importable extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _import_setup_built() -> Tuple[Optional[ModuleType], str]:
    """nerfacc's ``setup.py``-built extension (``nerfacc.csrc``) and, when it does not import, why."""
    try:
        return importlib.import_module("nerfacc.csrc"), ""
    except ImportError as err:  # ModuleNotFoundError: nerfacc came from PyPI's source package, nothing built
        return None, f"{type(err).__name__}: {err}"


def probe_nerfacc_extension(build_dir: Optional[Path] = None) -> ExtensionProbe:
    """Whether nerfacc's CUDA extension is usable in this process without compiling anything.

    Usable: CUDA is available and either the ``setup.py``-built ``nerfacc.csrc`` imports or ``build_dir`` (default
    :func:`nerfacc_build_dir`) holds a finished ``nerfacc_cuda.so`` that loads. Never builds, never waits on a lock.
    """
    if not torch.cuda.is_available():
        return ExtensionProbe(False, "no CUDA device (torch.cuda.is_available() is False)")
    module, why_not = _import_setup_built()
    if module is not None:
        return ExtensionProbe(True, "nerfacc's setup.py-built extension (nerfacc.csrc) imports", module)
    build_dir = nerfacc_build_dir() if build_dir is None else build_dir
    built, lock = built_module_path(build_dir), build_dir / "lock"
    if lock_is_held(lock):
        return ExtensionProbe(
            False,
            f"a nerfacc build is in progress in {build_dir} (a process holds {lock}); not waiting for it. Let it "
            f"finish (or stop it) and start again",
        )
    if built.is_file():
        try:
            module = load_module_file(built)
            return ExtensionProbe(True, f"nerfacc's built extension {built} loaded (no compile)", module)
        except Exception as err:  # noqa: BLE001 - a bad .so raises ImportError/OSError/RuntimeError
            return ExtensionProbe(
                False, f"the built extension {built} does not load ({type(err).__name__}: {err}); rebuild it with "
                f"`{BUILD_COMMAND}`"
            )  # fmt: skip
    if lock.exists():
        log = build_log_path(build_dir)
        seen = f" (the last {BUILD_COMMAND} output: {log})" if log.is_file() else ""
        return ExtensionProbe(
            False,
            f"stale lock {lock} and no finished {built.name}: an interrupted or failed nerfacc build{seen}. Remove "
            f"it with `rm -r {build_dir}`, or run `{BUILD_COMMAND}` (removes it and builds)",
        )
    if not build_dir.is_dir():
        state = "does not exist"
    else:
        state = f"has no {built.name}" if any(build_dir.iterdir()) else "is empty"
    return ExtensionProbe(
        False,
        f"nerfacc's CUDA extension is not built ({build_dir} {state}; nerfacc.csrc: {why_not}); build it once with "
        f"`{BUILD_COMMAND}`",
    )


@functools.lru_cache(maxsize=None)
def nerfacc_extension() -> ExtensionProbe:
    """:func:`probe_nerfacc_extension` once per process; a usable module is handed to nerfacc as ``nerfacc.csrc``."""
    probe = probe_nerfacc_extension()
    if probe.usable and probe.module is not None:
        install_extension(probe.module)
    return probe


def install_extension(module: ModuleType) -> None:
    """Make nerfacc use ``module`` as its compiled extension: its loader imports ``nerfacc.csrc`` first and only
    builds when that fails (``nerfacc/cuda/_backend.py``)."""
    import nerfacc  # pylint: disable=import-outside-toplevel

    sys.modules["nerfacc.csrc"] = module
    nerfacc.csrc = module
    loader = sys.modules.get("nerfacc.cuda._backend")
    if loader is not None:  # imported before (its build failed or was skipped): point it at the module
        loader._C = module


def _log(message: str) -> None:
    from nerfstudio.utils.rich_utils import CONSOLE  # pylint: disable=import-outside-toplevel

    CONSOLE.log(message)


@functools.lru_cache(maxsize=None)
def _decide(requested: str, device_type: str) -> BackendDecision:
    """The decision for one (requested, device type), logged when made: once per process."""
    if requested not in ("auto", "torch", "nerfacc"):
        raise BackendError(f"{BACKEND_OPTION} {requested!r}: choose one of auto, torch, nerfacc")
    if requested == "torch":
        decision = BackendDecision("torch", f"{BACKEND_OPTION} torch")
    elif device_type != "cuda":
        if requested == "nerfacc":
            raise BackendError(
                f"{BACKEND_OPTION} nerfacc needs CUDA tensors, the model is on {device_type}; use "
                f"{BACKEND_OPTION} torch or auto"
            )
        decision = BackendDecision("torch", f"the model is on {device_type}: nerfacc runs on CUDA tensors only")
    else:
        probe = nerfacc_extension()
        if probe.usable:
            decision = BackendDecision("nerfacc", probe.reason)
        elif requested == "nerfacc":
            raise BackendError(
                f"{BACKEND_OPTION} nerfacc cannot be used: {probe.reason}. Build nerfacc's extension once with "
                f"`{BUILD_COMMAND}` (docs/gpu.md), or use {BACKEND_OPTION} torch (or auto)"
            )
        else:
            decision = BackendDecision("torch", probe.reason)
    _log(f"rendering backend: {decision.backend} ({BACKEND_OPTION} {requested}: {decision.reason})")
    return decision


def decide_backend(requested: Requested, device: Union[torch.device, str]) -> BackendDecision:
    """The backend for tensors on ``device`` when ``requested`` (the model's ``backend`` option); cached per process.

    ``auto``: nerfacc on CUDA when its extension is already built, torch otherwise. ``torch``: torch. ``nerfacc``:
    nerfacc, or :class:`BackendError` when the tensors are not on CUDA or the extension is not usable. Never
    compiles; logs the decision and its reason once.
    """
    return _decide(requested, torch.device(device).type)


def clear_decisions() -> None:
    """Forget the cached probe and decisions (tests; a process that just built the extension)."""
    _decide.cache_clear()
    nerfacc_extension.cache_clear()
