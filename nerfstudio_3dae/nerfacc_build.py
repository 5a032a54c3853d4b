"""Building nerfacc's CUDA extension once, outside any training loop (``ns-3dae-build-nerfacc``, docs/gpu.md).

nerfacc 0.5.2's sources do not compile on CUDA 13 with torch 2.14 as shipped, so the build compiles a patched copy
(:data:`PATCHES`, two checked textual replacements) beside torch's JIT build folder, ``<extensions root>/
nerfacc_cuda-csrc``:

* ``scan.cu``: ``cub::Equality()`` becomes ``::cuda::std::equal_to<>()``. CUB 3 (CCCL 3, CUDA 13) removed
  ``cub::Equality``; ``cuda::std::equal_to<>`` is the default equality of ``DeviceScan::*ByKey`` there and exists in
  CUDA 12's CCCL 2 too.
* ``include/utils_math.cuh``: nerfacc's global ``float lerp(float, float, float)`` is compiled only before C++20.
  torch 2.14 builds extensions with ``-std=c++20``, where libstdc++'s ``math.h`` puts ``std::lerp`` in the global
  namespace and the two conflict; nerfacc calls none of its ``lerp`` overloads (the vector ones stay).

Each replacement must find its text, or the build stops with :class:`SourcePatchError` naming the file and the text;
a file that already holds the replacement (or, for ``cub::Equality``, no longer uses it) is left as it is.

:func:`build_nerfacc` then runs torch's ``cpp_extension.load`` on the patched copy, with nerfacc's own flags
(``-O3``), in a child process with a time limit, into the folder :func:`nerfstudio_3dae.backends.nerfacc_build_dir`
that the backend decision loads ``nerfacc_cuda.so`` from. :func:`compile_check` compiles each source to an object
with the flags torch 2.14's ``cpp_extension`` uses, without a GPU (tests/test_backends.py).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from nerfstudio_3dae.backends import (
    EXTENSION_NAME,
    build_log_path,
    built_module_path,
    clear_decisions,
    lock_is_held,
    nerfacc_build_dir,
)

STALE_LOCK_AGE_S = 600.0
"""A lock file no process holds an OS lock on is stale at once under torch's ``FileLock``; under an older torch
(``FileBaton``: the file's mere existence is the lock, no OS lock) only once it is this old, because a build by such a
torch cannot be told from an interrupted one otherwise (a nerfacc build takes minutes, not ten)."""

CXX_STD = "-std=c++20"
"""The language standard torch 2.14's ``cpp_extension`` compiles extensions with (its headers require C++20)."""

EXTRA_CFLAGS = ["-O3"]
"""nerfacc's own extra flags for its JIT build (``nerfacc/cuda/_backend.py``), for both C++ and CUDA sources."""

LIBRARY_HEADERS = ("cublas_v2.h", "curand.h")
"""CUDA library headers the sources need (torch's ``ATen/cuda/Exceptions.h`` includes ``cublas_v2.h``; ``grid.cu`` and
``pdf.cu`` include curand's); a toolkit without them gets them from the ``nvidia`` wheels torch installed."""


class BuildLockedError(RuntimeError):
    """The build folder's lock may belong to a running build."""


class SourcePatchError(RuntimeError):
    """nerfacc's sources do not hold the text a patch replaces, nor its fix; the message names the file and text."""


class NoBuildTargetError(RuntimeError):
    """No GPU is visible and ``TORCH_CUDA_ARCH_LIST`` does not say which GPU to build for."""


@dataclass(frozen=True)
class SourcePatch:
    """One checked textual replacement in nerfacc's ``csrc`` folder."""

    file: str
    """The file, relative to ``csrc``."""
    old: str
    """The text replaced (every occurrence); it must be there unless the fix already is."""
    new: str
    """Its replacement; a file that holds it is already patched."""
    why: str
    gone: Optional[str] = None
    """Text whose absence also means there is nothing to fix (newer sources that dropped the construct)."""


PATCHES: Tuple[SourcePatch, ...] = (
    SourcePatch(
        "scan.cu",
        "cub::Equality()",
        "::cuda::std::equal_to<>()",
        "CUB 3 (CUDA 13) removed cub::Equality; cuda::std::equal_to<> is its default key equality",
        gone="cub::Equality",
    ),
    SourcePatch(
        "include/utils_math.cuh",
        "inline __device__ __host__ float lerp(float a, float b, float t)\n{\n    return a + t * (b - a);\n}\n",
        "#if __cplusplus <= 201703L  // nerfstudio_3dae: C++20's math.h declares this lerp (std::lerp)\n"
        "inline __device__ __host__ float lerp(float a, float b, float t)\n{\n    return a + t * (b - a);\n}\n"
        "#endif\n",
        "under C++20 (torch 2.14) libstdc++'s math.h brings std::lerp(float, float, float) into the global namespace",
    ),
)
"""The patches :func:`patch_sources` applies (module docstring)."""


@dataclass(frozen=True)
class BuildResult:
    """What :func:`build_nerfacc` did."""

    ok: bool
    seconds: float
    message: str
    """The built module's path, or why the build failed (the compiler's error lines, a timeout, a held lock)."""
    log: Optional[Path] = None
    """The build's whole output."""


@dataclass(frozen=True)
class CompileResult:
    """One source file compiled to an object by :func:`compile_check`."""

    source: Path
    ok: bool
    seconds: float
    message: str
    """``compiled <object>``, or the compiler's error lines."""


# ----------------------------------------------------------------------------------------------------------------
# The sources and their patch


def nerfacc_csrc() -> Path:
    """nerfacc's installed CUDA/C++ source folder, the one its own JIT build compiles."""
    spec = importlib.util.find_spec("nerfacc")
    if spec is None or spec.origin is None:
        raise SourcePatchError("nerfacc is not installed: no sources to build")
    return Path(spec.origin).parent / "cuda" / "csrc"


def patched_sources_dir(build_dir: Path) -> Path:
    """Where the patched copy of nerfacc's sources lives: beside the build folder (nerfacc's loader treats a
    non-empty build folder as a finished build, so nothing else goes in it)."""
    return build_dir.parent / f"{EXTENSION_NAME}-csrc"


def extension_sources(csrc: Path) -> List[Path]:
    """The files a build of ``csrc`` compiles: its ``*.cu`` and ``*.cpp`` (nerfacc's loader globs the same)."""
    return sorted(csrc.glob("*.cu")) + sorted(csrc.glob("*.cpp"))


def apply_patch(text: str, patch: SourcePatch, path: Path) -> Tuple[str, str]:
    """``text`` with ``patch`` applied, and what was done; :class:`SourcePatchError` when neither its text nor its
    fix is there."""
    if patch.new in text:  # checked first: a replacement may contain the text it replaces (the lerp guard)
        return text, f"{patch.file}: already patched"
    count = text.count(patch.old)
    if count:
        return text.replace(patch.old, patch.new), f"{patch.file}: replaced {count}x {patch.old.splitlines()[0]!r}"
    if patch.gone is not None and patch.gone not in text:
        return text, f"{patch.file}: no {patch.gone!r} left, nothing to patch"
    raise SourcePatchError(
        f"{path}: cannot apply the nerfacc patch ({patch.why}): the expected text {patch.old!r} is not there, nor "
        f"its replacement; nerfacc's sources changed, update PATCHES in nerfstudio_3dae/nerfacc_build.py"
    )


def patch_sources(
    src: Path, dest: Path, patches: Sequence[SourcePatch] = PATCHES
) -> List[str]:  # fmt: skip
    """Copy the source folder ``src`` to ``dest`` with ``patches`` applied; returns what each patch did.

    A file whose content is already the same in ``dest`` is not rewritten (its time stamp stays, so ninja does not
    recompile it). Raises :class:`SourcePatchError` naming the file when a patch's file or text is missing, before
    anything is written.
    """
    by_file: Dict[str, List[SourcePatch]] = {}
    for patch in patches:
        if not (src / patch.file).is_file():
            raise SourcePatchError(f"{src / patch.file}: missing, the nerfacc patch ({patch.why}) needs it")
        by_file.setdefault(patch.file, []).append(patch)
    done: List[str] = []
    contents: Dict[str, bytes] = {}
    for path in sorted(p for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        relative = path.relative_to(src).as_posix()
        content = path.read_bytes()
        if relative in by_file:
            text = content.decode("utf-8")
            for patch in by_file[relative]:
                text, what = apply_patch(text, patch, path)
                done.append(what)
            content = text.encode("utf-8")
        contents[relative] = content
    for relative, content in contents.items():
        target = dest / relative
        if not target.is_file() or target.read_bytes() != content:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    return done


# ----------------------------------------------------------------------------------------------------------------
# The toolkit and the flags torch uses


def find_nvcc() -> Optional[str]:
    """nvcc as found on PATH (nerfacc's loader and torch look there), or None."""
    return shutil.which("nvcc")


def toolkit_root(nvcc: str) -> Path:
    """The CUDA toolkit ``nvcc`` belongs to (its ``TOP``, as ``nvcc -dryrun`` prints it): right where nvcc on PATH
    is a wrapper script (``/usr/local/bin/nvcc`` here), from which torch would guess ``/usr/local``."""
    proc = subprocess.run(
        [nvcc, "-dryrun", "-c", "x.cu"], capture_output=True, text=True, timeout=60, check=False
    )  # fmt: skip
    match = re.search(r"^#\$ TOP=(.+)$", proc.stdout + proc.stderr, re.MULTILINE)
    if match is None:
        return Path(nvcc).resolve().parent.parent
    return Path(match.group(1).strip()).resolve()


def library_include_dirs(toolkit: Path) -> List[Path]:
    """Folders that supply the :data:`LIBRARY_HEADERS` the toolkit lacks: the ``include`` folders of the ``nvidia``
    wheels (``nvidia/cu13/include`` for torch cu130). Empty when the toolkit has them all."""
    missing = [name for name in LIBRARY_HEADERS if not (toolkit / "include" / name).is_file()]
    spec = importlib.util.find_spec("nvidia")
    roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec is not None else []
    found: List[Path] = []
    for name in missing:
        for root in roots:
            hits = sorted(root.glob(f"*/include/{name}"))
            if hits and hits[0].parent not in found:
                found.append(hits[0].parent)
                break
    return found


def compile_command(
    source: Path, obj: Path, toolkit: Path, include_dirs: Sequence[Path] = (), arch: str = "9.0", nvcc: str = "nvcc"
) -> List[str]:
    """The command torch 2.14's ``cpp_extension`` (its ``build.ninja``) compiles ``source`` with, as one argument
    list: nvcc for ``.cu``, the host compiler (``$CXX``, else ``c++``) for the rest.

    Defines of an extension build, ``-I include_dirs`` then ``-isystem`` torch's headers, the toolkit's and Python's,
    torch's nvcc flags, ``-gencode`` for ``arch`` (``9.0``: sm_90, H100/H200), ``-fPIC``, nerfacc's ``-O3`` and
    :data:`CXX_STD`.
    """
    from torch.utils import cpp_extension  # pylint: disable=import-outside-toplevel

    python_include = sysconfig.get_path("include", scheme="posix_prefix")
    system = [*cpp_extension.include_paths("cpu"), str(toolkit / "include"), python_include]
    flags = [f"-DTORCH_EXTENSION_NAME={EXTENSION_NAME}", "-DTORCH_API_INCLUDE_EXTENSION_H"]
    flags += [f"-I{d}" for d in include_dirs]
    flags += [arg for d in system for arg in ("-isystem", d)]
    if source.suffix == ".cu":
        number = arch.replace(".", "")
        return [
            nvcc, "-c", str(source), "-o", str(obj), *flags, *cpp_extension.COMMON_NVCC_FLAGS,
            f"-gencode=arch=compute_{number},code=sm_{number}", "--compiler-options", "-fPIC", *EXTRA_CFLAGS, CXX_STD,
        ]  # fmt: skip
    return [os.environ.get("CXX", "c++"), "-c", str(source), "-o", str(obj), *flags, "-fPIC", CXX_STD, *EXTRA_CFLAGS]


def compile_check(
    sources: Sequence[Path],
    out_dir: Path,
    jobs: int = 2,
    arch: str = "9.0",
    timeout_s: float = 900.0,
    nvcc: Optional[str] = None,
) -> List[CompileResult]:
    """Compile each of ``sources`` to an object in ``out_dir`` (``jobs`` at a time) with :func:`compile_command`'s
    flags, the toolkit of ``nvcc`` (default: on PATH) and the library headers it lacks. Needs no GPU; links nothing.

    Returns one :class:`CompileResult` per source, in order: ``ok`` and the seconds, or the compiler's error lines.
    """
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise FileNotFoundError("nvcc is not on PATH: compiling nerfacc's sources needs the CUDA toolkit")
    toolkit = toolkit_root(nvcc)
    include_dirs = library_include_dirs(toolkit)
    out_dir.mkdir(parents=True, exist_ok=True)

    def one(source: Path) -> CompileResult:
        obj = out_dir / f"{source.name}.o"
        args = compile_command(source, obj, toolkit, include_dirs, arch, nvcc)
        start = time.perf_counter()
        try:
            proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return CompileResult(source, False, time.perf_counter() - start, f"stopped after {timeout_s:.0f} s")
        seconds = time.perf_counter() - start
        if proc.returncode == 0 and obj.is_file():
            return CompileResult(source, True, seconds, f"compiled {obj}")
        why = "\n".join(error_lines(proc.stdout + proc.stderr)) or f"exit status {proc.returncode}"
        return CompileResult(source, False, seconds, why)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(one, sources))


def build_environment(nvcc: str, environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The child build's environment: ``environ`` (default this process's) with ``CUDA_HOME`` set to nvcc's toolkit
    (:func:`toolkit_root`) when neither ``CUDA_HOME`` nor ``CUDA_PATH`` is, so torch finds its headers and libraries
    even where nvcc on PATH is a wrapper."""
    env = dict(os.environ if environ is None else environ)
    if "CUDA_HOME" not in env and "CUDA_PATH" not in env:
        env["CUDA_HOME"] = str(toolkit_root(nvcc))
    return env


# ----------------------------------------------------------------------------------------------------------------
# The lock


def torch_takes_os_lock() -> bool:
    """Whether this torch's JIT build holds an OS lock on ``lock`` (``FileLock``, recent torch) rather than relying
    on the file's existence (``FileBaton``, which a killed build leaves behind and every later build waits on)."""
    import torch.utils.cpp_extension as cpp_extension  # pylint: disable=import-outside-toplevel

    return hasattr(cpp_extension, "FileLock")


def remove_stale_lock(build_dir: Path, stale_after_s: float = STALE_LOCK_AGE_S) -> Optional[str]:
    """Remove ``build_dir/lock`` when stale; returns what was done, or raises when a build may still be running.

    Stale: no process holds an OS lock on it and, when this torch takes no OS lock (``FileBaton``), it is older than
    ``stale_after_s``.
    """
    lock = build_dir / "lock"
    if not lock.exists():
        return None
    if lock_is_held(lock):
        raise BuildLockedError(f"a process holds {lock}: a nerfacc build is running; let it finish or stop it")
    age = time.time() - lock.stat().st_mtime
    if not torch_takes_os_lock() and age < stale_after_s:
        raise BuildLockedError(
            f"{lock} is {age:.0f} s old and this torch locks by the file's existence only: maybe a build is running. "
            f"Wait, or remove it (`rm {lock}`) if no build is"
        )
    lock.unlink()
    return f"removed the stale lock {lock} ({age:.0f} s old, held by no process)"


# ----------------------------------------------------------------------------------------------------------------
# The build


_BUILD_SCRIPT = """
import sys
from torch.utils.cpp_extension import load
build_dir, include_dirs, sources = sys.argv[1], sys.argv[2], sys.argv[3:]
load(name="nerfacc_cuda", sources=sources, extra_cflags=["-O3"], extra_cuda_cflags=["-O3"],
     extra_include_paths=[d for d in include_dirs.split(":") if d], build_directory=build_dir, verbose=True)
"""
"""The child's program: torch's JIT build of the patched sources with nerfacc's own arguments, into the build
folder (``argv``: the folder, the extra include folders joined by ``:``, the sources)."""


COMPILER_ERROR = re.compile(r"(\berror\b.*:|: error|fatal error|^FAILED:|^ninja: build stopped)")
"""Lines of a build's output that say what failed: nvcc's ``file(line): error: ...``, gcc's ``file:l:c: error:``,
ninja's ``FAILED:`` and its stop."""


def error_lines(output: str, limit: int = 12, width: int = 300) -> List[str]:
    """What a failed build's output says went wrong: its compiler and ninja error lines (each once, at most
    ``limit``, cut to ``width`` characters), else its last line (the exception: a CUDA version mismatch, ...)."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = list(dict.fromkeys(ln for ln in lines if COMPILER_ERROR.search(ln)))
    chosen = errors[:limit] if errors else lines[-1:]
    return [ln if len(ln) <= width else ln[: width - 3] + "..." for ln in chosen]


def _run_child(
    args: List[str], timeout_s: float, log: Path, env: Optional[Mapping[str, str]] = None
) -> Tuple[int, str]:  # fmt: skip
    """Run ``args`` in its own process group, killed whole (ninja, nvcc) after ``timeout_s``; the exit code (-1 at
    the timeout) and the output, also written to ``log``."""
    with subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env
    ) as child:
        try:
            output, _ = child.communicate(timeout=timeout_s)
            code = child.returncode
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            output, _ = child.communicate()
            code = -1
    log.write_text(output or "")
    return code, output or ""


def build_command(build_dir: Path, sources: Sequence[Path], include_dirs: Sequence[Path]) -> List[str]:
    """The child build's command line (:data:`_BUILD_SCRIPT`)."""
    joined = ":".join(str(d) for d in include_dirs)
    return [sys.executable, "-c", _BUILD_SCRIPT, str(build_dir), joined, *(str(s) for s in sources)]


Runner = Callable[[List[str], float, Path, Optional[Mapping[str, str]]], Tuple[int, str]]
"""``run(args, timeout_s, log, env) -> (exit code, output)``: how :func:`build_nerfacc` runs its child."""


def _prepare(build_dir: Path) -> Tuple[List[str], Dict[str, str]]:
    """The child's command and environment for a build into ``build_dir``, its patched sources written; raises
    :class:`SourcePatchError` or :class:`FileNotFoundError` (no nvcc) or :class:`NoBuildTargetError`."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise FileNotFoundError("no CUDA toolkit (nvcc is not on PATH)")
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        raise NoBuildTargetError(
            "no GPU here to build for: set TORCH_CUDA_ARCH_LIST to the GPU's compute capability (e.g. 9.0 for "
            "H100/H200)"
        )
    csrc = patched_sources_dir(build_dir)
    patch_sources(nerfacc_csrc(), csrc)
    env = build_environment(nvcc)
    includes = library_include_dirs(Path(env.get("CUDA_HOME") or env["CUDA_PATH"]))
    return build_command(build_dir, extension_sources(csrc), includes), env


def build_nerfacc(
    timeout_s: float = 1800.0, build_dir: Optional[Path] = None, run: Optional[Runner] = None
) -> BuildResult:
    """Build nerfacc's CUDA extension once, outside any training loop, with a time limit.

    Removes a stale lock (:func:`remove_stale_lock`), writes the patched sources (:func:`patch_sources`, beside the
    build folder), runs torch's JIT build of them in a child process (killed after ``timeout_s``), and reports the
    seconds and the built module, or the compiler's error lines and the log. Needs nvcc and the CUDA headers, not a
    GPU (then ``TORCH_CUDA_ARCH_LIST`` says which GPU to build for). ``run`` replaces the child (tests).
    """
    run = _run_child if run is None else run
    build_dir = nerfacc_build_dir() if build_dir is None else build_dir
    start = time.perf_counter()
    try:
        removed = remove_stale_lock(build_dir)
    except BuildLockedError as err:
        return BuildResult(False, 0.0, str(err))
    prefix = f"{removed}; " if removed else ""
    try:
        command, env = _prepare(build_dir)
    except (SourcePatchError, FileNotFoundError, NoBuildTargetError) as err:
        return BuildResult(False, time.perf_counter() - start, f"{prefix}{err}")
    build_dir.mkdir(parents=True, exist_ok=True)
    log = build_log_path(build_dir)
    code, output = run(command, timeout_s, log, env)
    seconds = time.perf_counter() - start
    built = built_module_path(build_dir)
    if code == 0 and built.is_file():
        clear_decisions()
        return BuildResult(True, seconds, f"{prefix}built {built}", log)
    if code == -1:
        why = f"the build ran past {timeout_s:.0f} s and was stopped (raise --timeout-s)"
    else:
        why = "\n".join(error_lines(output)) or f"the build exited with {code}"
    return BuildResult(False, seconds, f"{prefix}{why}", log)
