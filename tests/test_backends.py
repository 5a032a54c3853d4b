"""The backend decision without a GPU: CUDA, the build folder, nerfacc's loader and its build are all simulated, and
any real build attempt fails the test."""

from __future__ import annotations

import fcntl
import os
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

from nerfstudio_3dae import backends
from nerfstudio_3dae.backends import BackendError, build_nerfacc, decide_backend, nerfacc_build_dir
from nerfstudio_3dae.method_configs import rgb_method
from nerfstudio_3dae.rendering import nerfacc_cuda_available, resolve_backend

CUB_ERROR = (
    '/site-packages/nerfacc/cuda/csrc/scan.cu(28): error: namespace "cub" has no member "Equality"\n'
    "4 errors detected in the compilation of scan.cu.\nninja: build stopped: subcommand failed.\n"
)


def _no_build(*args, **kwargs):
    raise AssertionError("a build was started")


@pytest.fixture
def sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A process with simulated CUDA, an empty extensions root in tmp_path, no setup.py-built nerfacc, a stand-in
    for nerfacc's loader (importing the real one would build) and every build entry point raising."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.setitem(sys.modules, "nerfacc.csrc", None)  # `import nerfacc.csrc` raises ImportError
    monkeypatch.setattr(nerfacc, "csrc", None, raising=False)
    monkeypatch.setitem(sys.modules, "nerfacc.cuda._backend", types.SimpleNamespace(_C=None))
    monkeypatch.setattr(torch.utils.cpp_extension, "load", _no_build)
    monkeypatch.setattr(backends, "_run_build", _no_build)
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
    assert not nerfacc_cuda_available()
    with pytest.raises(BackendError, match="--pipeline.model.backend nerfacc.*no CUDA device.*ns-3dae-build-nerfacc"):
        decide_backend("nerfacc", "cuda")


def test_cpu_tensors_never_use_nerfacc(sim) -> None:
    _finished_build(sim.build_dir)
    assert decide_backend("auto", "cpu").backend == "torch"
    with pytest.raises(ValueError, match="--pipeline.model.backend nerfacc needs CUDA tensors.*torch or auto"):
        resolve_backend("nerfacc", torch.device("cpu"))
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
    assert decide_backend("nerfacc", "cuda").backend == "nerfacc" and nerfacc_cuda_available()


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
        resolve_backend("nerfacc", torch.device("cuda"))


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
        resolve_backend("auto", torch.device("cuda"))
    assert len(sim.logged) == 1
    assert sim.logged[0].startswith("rendering backend: torch (--pipeline.model.backend auto: nerfacc's CUDA extension")


def test_log_goes_to_nerfstudio_console(capsys: pytest.CaptureFixture) -> None:
    backends._log("rendering backend: torch (test)")
    assert "rendering backend: torch (test)" in capsys.readouterr().out


def test_failed_build_reports_the_compiler_error(sim) -> None:
    sim.build_dir.mkdir(parents=True)
    lock = sim.build_dir / "lock"
    lock.write_text("")

    def failing(timeout_s, log):
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

    def succeeding(timeout_s, log):
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
        (3, "NerfAcc: No CUDA toolkit found. NerfAcc will be disabled.", "no CUDA toolkit"),
        (1, "RuntimeError: The detected CUDA version (12.8) mismatches the version used to compile PyTorch (13.0)",
         "mismatches"),
    ],
)  # fmt: skip
def test_build_failures_say_why(sim, code: int, output: str, expected: str) -> None:
    result = build_nerfacc(60, sim.build_dir, run=lambda timeout_s, log: (code, output))
    assert not result.ok and expected in result.message


def test_old_torch_young_unheld_lock_is_not_removed(sim, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "torch_takes_os_lock", lambda: False)
    sim.build_dir.mkdir(parents=True)
    lock = sim.build_dir / "lock"
    lock.write_text("")
    result = build_nerfacc(60, sim.build_dir, run=_no_build)
    assert not result.ok and "maybe a build is running" in result.message and lock.exists()
    old = time.time() - 2 * backends.STALE_LOCK_AGE_S
    os.utime(lock, (old, old))
    assert "removed the stale lock" in backends.remove_stale_lock(sim.build_dir) and not lock.exists()


def test_this_torch_locks_with_an_os_lock() -> None:
    assert backends.torch_takes_os_lock()  # torch 2.14: FileLock, so an unheld lock file is stale at once


def test_child_build_is_killed_at_the_timeout(tmp_path: Path) -> None:
    start = time.perf_counter()
    code, _ = backends._run_child([sys.executable, "-c", "import time; time.sleep(60)"], 1.0, tmp_path / "log")
    assert code == -1 and time.perf_counter() - start < 10.0


def test_child_build_output_is_logged(tmp_path: Path) -> None:
    code, output = backends._run_child([sys.executable, "-c", "print('ninja: no work to do')"], 30.0, tmp_path / "l")
    assert code == 0 and "no work to do" in output and (tmp_path / "l").read_text() == output


def test_cli_reports_a_failed_build(tmp_path: Path) -> None:
    # a real child build in an empty extensions root, with no nvcc on PATH: nerfacc disables itself, the CLI says so
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
    lines = backends.error_lines(REAL_BUILD_OUTPUT)
    assert lines == [
        "FAILED: [code=2] scan.cuda.o",
        '/venv/site-packages/nerfacc/cuda/csrc/scan.cu(28): error: namespace "cub" has no member "Equality"',
        "/venv/site-packages/nerfacc/cuda/csrc/include/utils_math.cuh:1145:44: error: 'float lerp(float, float, "
        "float)' conflicts with a previous declaration",
        "ninja: build stopped: subcommand failed.",
    ]
    mismatch = "Traceback ...\nRuntimeError: The detected CUDA version (12.8) mismatches the version (13.0)\n"
    assert backends.error_lines(mismatch) == [
        "RuntimeError: The detected CUDA version (12.8) mismatches the version (13.0)"
    ]
    assert len(backends.error_lines("x" * 1000)[0]) == 300


def test_the_model_decides_its_backend_at_start_up(tiny_dataset) -> None:
    data = tiny_dataset(num_scenes=2)
    with pytest.raises(ValueError, match="--pipeline.model.backend"):  # on the CPU: when the model is built
        tiny_pipeline(rgb_method(), data, backend="nerfacc")
