"""The backend decision and nerfacc's build without a GPU: CUDA, the build folder, nerfacc's loader and the build's
child are simulated, and any real build attempt fails the test; nerfacc's patched sources are really compiled where
nvcc is present (no GPU needed)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import nerfacc
import pytest
import torch
import torch.utils.cpp_extension
from conftest import tiny_pipeline

from nerfstudio_3dae import backends, nerfacc_build
from nerfstudio_3dae.backends import BackendError, decide_backend, lock_is_held, nerfacc_build_dir, nerfacc_extension
from nerfstudio_3dae.method_configs import rgb_method
from nerfstudio_3dae.nerfacc_build import (
    PATCHES,
    SourcePatchError,
    build_nerfacc,
    compile_check,
    extension_sources,
    nerfacc_csrc,
    patch_sources,
    patched_sources_dir,
)

CUB_ERROR = (
    '/site-packages/nerfacc/cuda/csrc/scan.cu(28): error: namespace "cub" has no member "Equality"\n'
    "4 errors detected in the compilation of scan.cu.\nninja: build stopped: subcommand failed.\n"
)


def _no_build(*args, **kwargs):
    raise AssertionError("a build was started")


@pytest.fixture
def sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A process with simulated CUDA, an empty extensions root in tmp_path, no setup.py-built nerfacc, a stand-in
    for nerfacc's loader (importing the real one would build), an nvcc on PATH in a stand-in toolkit and every build
    entry point raising."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.setitem(sys.modules, "nerfacc.csrc", None)  # `import nerfacc.csrc` raises ImportError
    monkeypatch.setattr(nerfacc, "csrc", None, raising=False)
    monkeypatch.setitem(sys.modules, "nerfacc.cuda._backend", types.SimpleNamespace(_C=None))
    monkeypatch.setattr(torch.utils.cpp_extension, "load", _no_build)
    monkeypatch.setattr(nerfacc_build, "_run_child", _no_build)
    monkeypatch.setattr(nerfacc_build, "find_nvcc", lambda: str(tmp_path / "cuda" / "bin" / "nvcc"))
    monkeypatch.setattr(nerfacc_build, "toolkit_root", lambda nvcc: tmp_path / "cuda")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    logged: list = []
    monkeypatch.setattr(backends, "_log", logged.append)
    backends.clear_decisions()
    yield types.SimpleNamespace(build_dir=nerfacc_build_dir(), logged=logged)
    backends.clear_decisions()


def _finished_build(build_dir: Path) -> Path:
    """What a finished JIT build leaves: the ninja file, the objects, the module, the (released) lock."""
    build_dir.mkdir(parents=True)
    for name in ("build.ninja", "scan.cuda.o", "lock"):
        (build_dir / name).write_text("")
    module = build_dir / "nerfacc_cuda.so"
    module.write_bytes(b"\x7fELF")
    return module


def test_build_dir_follows_torch_extensions_dir(sim) -> None:
    assert sim.build_dir.name == "nerfacc_cuda" and sim.build_dir.parent == Path(os.environ["TORCH_EXTENSIONS_DIR"])
    assert not sim.build_dir.exists()  # locating it creates nothing


def test_no_cuda_means_torch(sim, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    decision = decide_backend("auto", "cuda")
    assert decision.backend == "torch" and "no CUDA device" in decision.reason
    assert not nerfacc_extension().usable
    with pytest.raises(BackendError, match="--pipeline.model.backend nerfacc.*no CUDA device.*ns-3dae-build-nerfacc"):
        decide_backend("nerfacc", "cuda")


def test_cpu_tensors_never_use_nerfacc(sim) -> None:
    _finished_build(sim.build_dir)
    assert decide_backend("auto", "cpu").backend == "torch"
    with pytest.raises(ValueError, match="--pipeline.model.backend nerfacc needs CUDA tensors.*torch or auto"):
        decide_backend("nerfacc", "cpu")
    with pytest.raises(BackendError, match="choose one of auto, torch, nerfacc"):
        decide_backend("fast", "cuda")


def test_torch_requested_probes_nothing(sim, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "probe_nerfacc_extension", _no_build)
    assert decide_backend("torch", "cuda") == backends.BackendDecision("torch", "--pipeline.model.backend torch")


def test_setup_built_module_is_used(sim, monkeypatch: pytest.MonkeyPatch) -> None:
    built = types.ModuleType("nerfacc.csrc")
    monkeypatch.setitem(sys.modules, "nerfacc.csrc", built)
    decision = decide_backend("auto", "cuda")
    assert decision.backend == "nerfacc" and "setup.py-built" in decision.reason
    assert decide_backend("nerfacc", "cuda").backend == "nerfacc" and nerfacc_extension().usable


def test_finished_jit_build_is_loaded_not_built(sim, monkeypatch: pytest.MonkeyPatch) -> None:
    module_file = _finished_build(sim.build_dir)
    module = types.ModuleType("nerfacc_cuda")
    loaded = []
    monkeypatch.setattr(backends, "load_module_file", lambda path: loaded.append(path) or module)
    decision = decide_backend("auto", torch.device("cuda", 0))
    assert decision.backend == "nerfacc" and str(module_file) in decision.reason
    assert loaded == [module_file]
    # handed to nerfacc: its loader's `from nerfacc import csrc` finds it, and an already imported loader uses it
    from nerfacc import csrc  # noqa: PLC0415

    assert csrc is module and sys.modules["nerfacc.cuda._backend"]._C is module
    assert decide_backend("nerfacc", "cuda").backend == "nerfacc" and loaded == [module_file]  # probed once


def test_finished_build_that_does_not_load(sim, monkeypatch: pytest.MonkeyPatch) -> None:
    _finished_build(sim.build_dir)

    def bad(path):
        raise ImportError("undefined symbol: _ZN3c104cuda29c10_cuda_check_implementation")

    monkeypatch.setattr(backends, "load_module_file", bad)
    decision = decide_backend("auto", "cuda")
    assert decision.backend == "torch" and "does not load" in decision.reason and "undefined symbol" in decision.reason
    assert "ns-3dae-build-nerfacc" in decision.reason


def test_empty_build_dir(sim) -> None:
    sim.build_dir.mkdir(parents=True)
    decision = decide_backend("auto", "cuda")
    assert decision.backend == "torch" and "is empty" in decision.reason and "ns-3dae-build-nerfacc" in decision.reason
    with pytest.raises(BackendError, match=r"--pipeline.model.backend nerfacc cannot be used: .*is empty.*"):
        decide_backend("nerfacc", "cuda")


def test_missing_build_dir(sim) -> None:
    decision = decide_backend("auto", "cuda")
    assert decision.backend == "torch" and "does not exist" in decision.reason


def test_stale_lock_is_reported_not_waited_on(sim, monkeypatch: pytest.MonkeyPatch) -> None:
    sim.build_dir.mkdir(parents=True)
    (sim.build_dir / "lock").write_text("")
    monkeypatch.setattr(backends, "load_module_file", _no_build)
    start = time.perf_counter()
    decision = decide_backend("auto", "cuda")
    assert time.perf_counter() - start < 5.0
    assert decision.backend == "torch" and "stale lock" in decision.reason
    assert str(sim.build_dir / "lock") in decision.reason and f"rm -r {sim.build_dir}" in decision.reason


def test_held_lock_is_a_build_in_progress(sim) -> None:
    module_file = _finished_build(sim.build_dir)  # even a module file may be half-written while a build holds it
    fd = os.open(sim.build_dir / "lock", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what torch's FileLock does while it builds
    try:
        decision = decide_backend("auto", "cuda")
        assert decision.backend == "torch" and "in progress" in decision.reason and "not waiting" in decision.reason
        result = build_nerfacc(60, sim.build_dir)
        assert not result.ok and "a process holds" in result.message
    finally:
        os.close(fd)
    assert module_file.exists()


def test_decision_is_logged_once(sim) -> None:
    for _ in range(3):
        decide_backend("auto", "cuda")
    assert len(sim.logged) == 1
    assert sim.logged[0].startswith("rendering backend: torch (--pipeline.model.backend auto: nerfacc's CUDA extension")


def test_log_goes_to_nerfstudio_console(capsys: pytest.CaptureFixture) -> None:
    backends._log("rendering backend: torch (test)")
    assert "rendering backend: torch (test)" in capsys.readouterr().out


def test_failed_build_reports_the_compiler_error(sim) -> None:
    sim.build_dir.mkdir(parents=True)
    lock = sim.build_dir / "lock"
    lock.write_text("")

    def failing(args, timeout_s, log, env):
        assert not lock.exists(), "the stale lock must be removed before building"
        log.write_text(CUB_ERROR)
        return 1, CUB_ERROR

    result = build_nerfacc(60, sim.build_dir, run=failing)
    assert not result.ok and 'namespace "cub" has no member "Equality"' in result.message
    assert "removed the stale lock" in result.message and result.log.read_text() == CUB_ERROR
    decision = decide_backend("auto", "cuda")  # still nothing built: torch
    assert decision.backend == "torch" and "is empty" in decision.reason


def test_successful_build_is_then_used(sim, monkeypatch: pytest.MonkeyPatch) -> None:
    assert decide_backend("auto", "cuda").backend == "torch"

    def succeeding(args, timeout_s, log, env):
        built = sim.build_dir / "nerfacc_cuda.so"
        built.write_bytes(b"\x7fELF")
        log.write_text("[6/6] c++ ... -o nerfacc_cuda.so\n")
        return 0, ""

    result = build_nerfacc(60, sim.build_dir, run=succeeding)
    assert result.ok and str(sim.build_dir / "nerfacc_cuda.so") in result.message
    monkeypatch.setattr(backends, "load_module_file", lambda path: types.ModuleType("nerfacc_cuda"))
    assert decide_backend("auto", "cuda").backend == "nerfacc"  # the build cleared the cached decision


@pytest.mark.parametrize(
    ("code", "output", "expected"),
    [
        (-1, "", "ran past 60 s"),
        (1, "RuntimeError: The detected CUDA version (12.8) mismatches the version used to compile PyTorch (13.0)",
         "mismatches"),
    ],
)  # fmt: skip
def test_build_failures_say_why(sim, code: int, output: str, expected: str) -> None:
    result = build_nerfacc(60, sim.build_dir, run=lambda args, timeout_s, log, env: (code, output))
    assert not result.ok and expected in result.message


def test_build_needs_nvcc_and_a_gpu_or_an_arch_list(sim, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nerfacc_build, "find_nvcc", lambda: None)
    result = build_nerfacc(60, sim.build_dir, run=_no_build)
    assert not result.ok and "no CUDA toolkit (nvcc is not on PATH)" in result.message
    monkeypatch.setattr(nerfacc_build, "find_nvcc", lambda: "nvcc")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    result = build_nerfacc(60, sim.build_dir, run=_no_build)
    assert not result.ok and "set TORCH_CUDA_ARCH_LIST" in result.message and "9.0" in result.message


def test_old_torch_young_unheld_lock_is_not_removed(sim, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nerfacc_build, "torch_takes_os_lock", lambda: False)
    sim.build_dir.mkdir(parents=True)
    lock = sim.build_dir / "lock"
    lock.write_text("")
    result = build_nerfacc(60, sim.build_dir, run=_no_build)
    assert not result.ok and "maybe a build is running" in result.message and lock.exists()
    old = time.time() - 2 * nerfacc_build.STALE_LOCK_AGE_S
    os.utime(lock, (old, old))
    assert "removed the stale lock" in nerfacc_build.remove_stale_lock(sim.build_dir) and not lock.exists()


class _Probed(Exception):
    """Raised by the stand-in build step once it has looked at the lock."""


def test_this_projects_torch_holds_an_os_lock_while_it_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/gpu.md's lock section (a fresh lock no process holds is removed at once) holds only if the pinned torch's
    JIT build (``cpp_extension.load``, the way nerfacc builds) holds an OS lock on ``<build>/lock`` while it builds:
    the build step is replaced by a probe, which sees the lock held; once the build ends (here: fails) the file is
    left, held by no process, and is stale at once."""
    build, source = tmp_path / "build", tmp_path / "probe.cpp"
    build.mkdir()
    source.write_text("int probe() { return 0; }\n")
    seen = []

    def probe_build(**kwargs) -> None:
        seen.append((Path(kwargs["build_directory"]), lock_is_held(build / "lock")))
        raise _Probed

    monkeypatch.setattr(torch.utils.cpp_extension, "_write_ninja_file_and_build_library", probe_build)
    with pytest.raises(_Probed):
        torch.utils.cpp_extension.load(f"lock_probe_{os.getpid()}", [str(source)], build_directory=str(build))
    assert seen == [(build, True)], "the build step runs under an OS lock on <build>/lock"
    assert (build / "lock").exists() and not lock_is_held(build / "lock")
    assert nerfacc_build.torch_takes_os_lock()
    assert "removed the stale lock" in nerfacc_build.remove_stale_lock(build) and not (build / "lock").exists()


@pytest.mark.parametrize("file_lock", [True, False])
def test_a_fresh_unheld_lock_is_stale_only_under_an_os_locking_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file_lock: bool
) -> None:
    # what the build does with a lock left a second ago depends on the kind of lock this torch's JIT build takes
    if file_lock:
        monkeypatch.setattr(torch.utils.cpp_extension, "FileLock", object, raising=False)
    else:
        monkeypatch.delattr(torch.utils.cpp_extension, "FileLock", raising=False)
    lock = tmp_path / "lock"
    lock.write_text("")
    if file_lock:  # FileLock: no OS lock on it means no build holds it, whatever its age
        assert "removed the stale lock" in nerfacc_build.remove_stale_lock(tmp_path) and not lock.exists()
    else:  # FileBaton: the file is the lock, so a young one may be a running build's
        with pytest.raises(nerfacc_build.BuildLockedError, match="maybe a build is running"):
            nerfacc_build.remove_stale_lock(tmp_path)
        assert lock.exists()


def test_child_build_is_killed_at_the_timeout(tmp_path: Path) -> None:
    start = time.perf_counter()
    code, _ = nerfacc_build._run_child([sys.executable, "-c", "import time; time.sleep(60)"], 1.0, tmp_path / "l")
    assert code == -1 and time.perf_counter() - start < 10.0


def test_child_build_output_is_logged(tmp_path: Path) -> None:
    code, output = nerfacc_build._run_child([sys.executable, "-c", "print('ninja: no work to do')"], 30, tmp_path / "l")
    assert code == 0 and "no work to do" in output and (tmp_path / "l").read_text() == output


def test_cli_reports_a_failed_build(tmp_path: Path) -> None:
    # the real CLI in an empty extensions root, with no nvcc on PATH: no build starts, the CLI says why
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path), "PATH": os.path.dirname(sys.executable)}
    proc = subprocess.run(
        [sys.executable, "-m", "nerfstudio_3dae.scripts.build_nerfacc", "--timeout-s", "120"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no CUDA toolkit" in proc.stdout and "FAILED" in proc.stdout


def test_cuda_marker_skips_with_the_decision_reason(sim) -> None:
    from conftest import cuda_unavailable_reason  # noqa: PLC0415

    assert cuda_unavailable_reason() is None  # simulated CUDA: a plain CUDA test runs
    reason = cuda_unavailable_reason(nerfacc=True)
    assert reason.startswith("nerfacc cannot be used: nerfacc's CUDA extension is not built")


@pytest.mark.parametrize(("require", "code", "outcome"), [("0", 0, "1 skipped"), ("1", 1, "1 error")])
def test_cuda_marker_fails_when_cuda_is_required(require: str, code: int, outcome: str) -> None:
    env = {**os.environ, "NS3DAE_REQUIRE_CUDA": require}
    if torch.cuda.is_available():
        pytest.skip("checks the policy where the CUDA test cannot run")
    test = str(Path(__file__).parent / "test_rendering.py")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", test],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == code and outcome in proc.stdout, proc.stdout


REAL_BUILD_OUTPUT = """\
Traceback (most recent call last):
  File "/venv/site-packages/nerfacc/cuda/_backend.py", line 53, in <module>
    from nerfacc import csrc as _C
ImportError: cannot import name 'csrc' from 'nerfacc' (/venv/site-packages/nerfacc/__init__.py)
subprocess.CalledProcessError: Command '['ninja', '-v', '-j', '2']' returned non-zero exit status 2.
RuntimeError: Error building extension 'nerfacc_cuda': [1/6] /usr/local/cuda-13.0/bin/nvcc -MD -MF scan.cuda.o.d
FAILED: [code=2] scan.cuda.o
/venv/site-packages/nerfacc/cuda/csrc/scan.cu(28): error: namespace "cub" has no member "Equality"
      do { size_t temp_storage_bytes = 0; cub::DeviceScan::ExclusiveSumByKey(nullptr, temp_storage_bytes, keys,
/venv/site-packages/nerfacc/cuda/csrc/scan.cu(28): error: namespace "cub" has no member "Equality"
/venv/site-packages/nerfacc/cuda/csrc/include/utils_math.cuh:1145:44: error: 'float lerp(float, float, float)' \
conflicts with a previous declaration
4 errors detected in the compilation of "/venv/site-packages/nerfacc/cuda/csrc/scan.cu".
ninja: build stopped: subcommand failed.
"""
"""Lines of the real build against CUDA 13.0 and torch 2.14.1 (ns-3dae-build-nerfacc, docs/gpu.md), paths cut."""


def test_error_lines_of_a_real_build() -> None:
    lines = nerfacc_build.error_lines(REAL_BUILD_OUTPUT)
    assert lines == [
        "FAILED: [code=2] scan.cuda.o",
        '/venv/site-packages/nerfacc/cuda/csrc/scan.cu(28): error: namespace "cub" has no member "Equality"',
        "/venv/site-packages/nerfacc/cuda/csrc/include/utils_math.cuh:1145:44: error: 'float lerp(float, float, "
        "float)' conflicts with a previous declaration",
        "ninja: build stopped: subcommand failed.",
    ]
    mismatch = "Traceback ...\nRuntimeError: The detected CUDA version (12.8) mismatches the version (13.0)\n"
    assert nerfacc_build.error_lines(mismatch) == [
        "RuntimeError: The detected CUDA version (12.8) mismatches the version (13.0)"
    ]
    assert len(nerfacc_build.error_lines("x" * 1000)[0]) == 300


def test_the_model_decides_its_backend_at_start_up(tiny_dataset) -> None:
    data = tiny_dataset(num_scenes=2)
    with pytest.raises(ValueError, match="--pipeline.model.backend"):  # on the CPU: when the model is built
        tiny_pipeline(rgb_method(), data, backend="nerfacc")


# ----------------------------------------------------------------------------------------------------------------
# nerfacc's sources, patched for CUDA 13 / C++20, and their compilation


def _fake_csrc(root: Path, scan: str, math: str) -> Path:
    """A source folder shaped like nerfacc's, with the two patched files' text given."""
    (root / "include").mkdir(parents=True)
    (root / "scan.cu").write_text(scan)
    (root / "include" / "utils_math.cuh").write_text(math)
    (root / "nerfacc.cpp").write_text("// untouched\n")
    return root


def test_patch_sources_fixes_nerfaccs_sources_once(tmp_path: Path) -> None:
    src, dest = nerfacc_csrc(), tmp_path / "csrc"
    done = patch_sources(src, dest)
    assert done == [
        "include/utils_math.cuh: replaced 1x 'inline __device__ __host__ float lerp(float a, float b, float t)'",
        "scan.cu: replaced 2x 'cub::Equality()'",
    ]
    scan, math = (dest / "scan.cu").read_text(), (dest / "include" / "utils_math.cuh").read_text()
    assert "cub::Equality" not in scan and scan.count("::cuda::std::equal_to<>()") == 2
    assert "#if __cplusplus <= 201703L" in math and math.count("float lerp(float a, float b, float t)") == 1
    assert "float3 lerp(float3 a, float3 b, float t)" in math  # the vector overloads stay
    patched = {p.relative_to(dest) for p in dest.rglob("*") if p.is_file()}
    assert patched == {p.relative_to(src) for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    for name in ("camera.cu", "grid.cu", "pdf.cu", "nerfacc.cpp", "include/utils_scan.cuh"):
        assert (dest / name).read_bytes() == (src / name).read_bytes()
    stamps = {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()}
    time.sleep(0.01)
    assert patch_sources(src, dest) == done  # a second build patches the same way...
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()} == stamps  # ...and rewrites nothing
    again = patch_sources(dest, tmp_path / "again")  # patched sources (or a nerfacc with these fixes) pass as they are
    assert again == ["include/utils_math.cuh: already patched", "scan.cu: already patched"]
    assert (tmp_path / "again" / "include" / "utils_math.cuh").read_text().count("#if __cplusplus") == 1
    assert extension_sources(dest) == [dest / n for n in ("camera.cu", "grid.cu", "pdf.cu", "scan.cu", "nerfacc.cpp")]


def test_patch_fails_naming_the_file_and_the_expected_text(tmp_path: Path) -> None:
    math = PATCHES[1].old
    src = _fake_csrc(tmp_path / "changed", "cub::DeviceScan::ExclusiveSumByKey(k, v, o, n, cub::Equality{});\n", math)
    with pytest.raises(SourcePatchError) as err:
        patch_sources(src, tmp_path / "out")
    message = str(err.value)
    assert str(src / "scan.cu") in message and "'cub::Equality()'" in message and "update PATCHES" in message
    src = _fake_csrc(tmp_path / "renamed", "", "inline float lerp(float a, float b, float t) { return a; }\n")
    with pytest.raises(SourcePatchError, match=r"utils_math\.cuh: cannot apply the nerfacc patch \(under C\+\+20"):
        patch_sources(src, tmp_path / "out2")
    (src / "scan.cu").unlink()
    with pytest.raises(SourcePatchError, match=r"scan\.cu: missing"):
        patch_sources(src, tmp_path / "out3")


def test_sources_that_no_longer_use_cub_equality_need_no_patch(tmp_path: Path) -> None:
    src = _fake_csrc(tmp_path / "newer", "// newer nerfacc: thrust::equal_to<int64_t>()\n", PATCHES[1].new)
    assert patch_sources(src, tmp_path / "out") == [
        "include/utils_math.cuh: already patched",
        "scan.cu: no 'cub::Equality' left, nothing to patch",
    ]
    assert (tmp_path / "out" / "scan.cu").read_text() == (src / "scan.cu").read_text()


def test_build_compiles_the_patched_sources(sim) -> None:
    seen = {}

    def child(args, timeout_s, log, env):
        seen.update(args=args, env=env)
        (sim.build_dir / "nerfacc_cuda.so").write_bytes(b"\x7fELF")
        return 0, ""

    result = build_nerfacc(60, sim.build_dir, run=child)
    assert result.ok, result.message
    csrc = patched_sources_dir(sim.build_dir)
    assert csrc == sim.build_dir.parent / "nerfacc_cuda-csrc" and "cub::Equality" not in (csrc / "scan.cu").read_text()
    build_dir, _includes, *sources = seen["args"][3:]
    assert build_dir == str(sim.build_dir) and len(sources) == 5
    assert sources == [str(p) for p in extension_sources(csrc)]
    assert seen["env"]["CUDA_HOME"] == str(Path(os.environ["TORCH_EXTENSIONS_DIR"]).parent / "cuda")  # nvcc's toolkit
    assert sorted(p.name for p in sim.build_dir.iterdir()) == ["nerfacc_cuda.so"]  # nothing else in the build folder


def test_build_stops_when_the_sources_cannot_be_patched(sim, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(nerfacc_build, "nerfacc_csrc", lambda: _fake_csrc(tmp_path / "other", "", ""))
    result = build_nerfacc(60, sim.build_dir, run=_no_build)
    assert not result.ok and "utils_math.cuh: cannot apply the nerfacc patch" in result.message
    assert not patched_sources_dir(sim.build_dir).exists()  # nothing half-patched is left to build


def test_compile_command_follows_torchs_build_file(tmp_path: Path) -> None:
    toolkit, extra = Path("/opt/cuda"), [tmp_path / "cublas"]
    cu = nerfacc_build.compile_command(Path("scan.cu"), Path("scan.o"), toolkit, extra, "9.0", "nvcc")
    assert cu[:5] == ["nvcc", "-c", "scan.cu", "-o", "scan.o"] and cu[-2:] == ["-O3", "-std=c++20"]
    for flag in ("-DTORCH_EXTENSION_NAME=nerfacc_cuda", "--expt-relaxed-constexpr", "-D__CUDA_NO_HALF_OPERATORS__",
                 "-gencode=arch=compute_90,code=sm_90", f"-I{extra[0]}", "/opt/cuda/include"):  # fmt: skip
        assert flag in cu
    assert str(Path(torch.__file__).parent / "include") in cu and cu.index(f"-I{extra[0]}") < cu.index("-isystem")
    cpp = nerfacc_build.compile_command(Path("nerfacc.cpp"), Path("n.o"), toolkit, extra)
    assert "-fPIC" in cpp and "-std=c++20" in cpp and "--expt-relaxed-constexpr" not in cpp


@pytest.mark.skipif(shutil.which("c++") is None, reason="no host C++ compiler (c++) on PATH")
def test_compile_check_reports_each_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nerfacc_build, "toolkit_root", lambda nvcc: tmp_path / "cuda")
    (tmp_path / "good.cpp").write_text("int good() { return 1; }\n")
    (tmp_path / "bad.cpp").write_text("int bad() { return undefined_name; }\n")
    results = compile_check([tmp_path / "good.cpp", tmp_path / "bad.cpp"], tmp_path / "obj", nvcc="nvcc")
    assert [(r.source.name, r.ok) for r in results] == [("good.cpp", True), ("bad.cpp", False)]
    assert (tmp_path / "obj" / "good.cpp.o").is_file() and results[0].message.startswith("compiled ")
    bad = results[1].message
    assert "bad.cpp:1:" in bad and "error" in bad and "undefined_name" in bad


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH: compiling nerfacc needs a CUDA toolkit")
@pytest.mark.skipif(
    os.environ.get("NS3DAE_COMPILE_NERFACC") != "1",
    reason="compiling nerfacc's sources takes about 10 minutes on 2 cores: set NS3DAE_COMPILE_NERFACC=1 to run it",
)
def test_every_nerfacc_source_compiles_after_the_patch(tmp_path: Path) -> None:
    # no GPU needed: each patched source to an object, 2 at a time, with torch's flags for sm_90 (585 s on the
    # development machine, 2026-12-04: docs/gpu.md)
    csrc = tmp_path / "csrc"
    patch_sources(nerfacc_csrc(), csrc)
    results = compile_check(extension_sources(csrc), tmp_path / "obj", jobs=2)
    assert [r.source.name for r in results] == ["camera.cu", "grid.cu", "pdf.cu", "scan.cu", "nerfacc.cpp"]
    failed = [f"{r.source.name} ({r.seconds:.0f} s): {r.message}" for r in results if not r.ok]
    assert not failed, "\n".join(failed)
