"""Shared fixtures: tiny datasets written by the tests themselves (no network, no downloads)."""

from __future__ import annotations

import math
import os
import socket
import sys
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from nerfstudio_3dae.autoencoder import small_autoencoder_config  # noqa: E402
from nerfstudio_3dae.backends import decide_backend  # noqa: E402
from nerfstudio_3dae.data.layout import Intrinsics, write_scene, write_scenes_index  # noqa: E402

REQUIRE_CUDA_ENV = "NS3DAE_REQUIRE_CUDA"
"""Set to 1 (scripts/gpu_check.sh does), a ``cuda`` test that cannot run errors instead of skipping."""
BIN = Path(sys.executable).parent
"""The folder of this environment's console scripts (ns-train, ns-3dae-*, torchrun)."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free now (the operating system's pick), for a process group or a server."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tool_env(one_thread: bool = False, bin_on_path: bool = False, **extra: str) -> Dict[str, str]:
    """The environment of a tool a test runs in a subprocess: this process's, offline (no wandb, no model hub), with
    ``OMP_NUM_THREADS=1`` when ``one_thread``, then ``extra``, then :data:`BIN` first on ``PATH`` when
    ``bin_on_path`` (for tools that start other console scripts)."""
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    if one_thread:
        env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    if bin_on_path:
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_in_one_process(
    commands: List[Dict[str, Any]], cwd: Path, env: Dict[str, str], scratch: Path, timeout: float = 900
) -> List[Dict[str, Any]]:
    """Run tool ``commands`` (``{"argv": [...], "env": {...}}``) one after another in one Python process
    (tests/doc_runner.py: nerfstudio's imports, most of a tiny command's time, paid once); the runner must get
    through all of them (each one's ``code``, ``seconds`` and ``output`` is returned, in order)."""
    import json
    import subprocess

    spec, results_file = scratch / "commands.json", scratch / "results.json"
    spec.write_text(json.dumps([{"argv": [str(a) for a in c["argv"]], "env": c["env"]} for c in commands]))
    results_file.unlink(missing_ok=True)
    runner = [sys.executable, str(Path(__file__).with_name("doc_runner.py")), str(spec), str(results_file)]
    proc = subprocess.run(runner, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    results = json.loads(results_file.read_text()) if results_file.exists() else []
    assert proc.returncode == 0 and len(results) == len(commands), (
        f"the command runner stopped after {len(results)} of {len(commands)} commands:\n{proc.stdout[-3000:]}\n"
        f"{proc.stderr[-3000:]}")  # fmt: skip
    for result in results:
        result["runner_log"] = f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    return results


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers",
        f"cuda(nerfacc=False): needs a CUDA device (with nerfacc=True also nerfacc's built extension); skips where it "
        f"cannot run, errors instead under {REQUIRE_CUDA_ENV}=1. Select them with -m cuda.",
    )


def cuda_unavailable_reason(nerfacc: bool = False) -> Optional[str]:
    """Why a CUDA test cannot run here (None when it can): no CUDA device, or nerfacc's extension not usable (the
    reason of :func:`nerfstudio_3dae.backends.decide_backend`, which never compiles)."""
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    if nerfacc:
        decision = decide_backend("auto", "cuda")
        if decision.backend != "nerfacc":
            return f"nerfacc cannot be used: {decision.reason}"
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    """The policy of the ``cuda`` marker: skip a test that cannot run, or fail it under NS3DAE_REQUIRE_CUDA=1."""
    marker = item.get_closest_marker("cuda")
    if marker is None:
        return
    reason = cuda_unavailable_reason(bool(marker.kwargs.get("nerfacc", False)))
    if reason is None:
        return
    if os.environ.get(REQUIRE_CUDA_ENV) == "1":
        pytest.fail(f"{REQUIRE_CUDA_ENV}=1 and this CUDA test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def tiny_test_config(kind: Literal["kl", "tiny"] = "kl", latent_channels: int = 4, factor: int = 8) -> Dict[str, Any]:
    """Minimal-width diffusers config of either autoencoder class (width 8: builds and runs in milliseconds)."""
    if kind == "kl":
        cfg = small_autoencoder_config(latent_channels, factor, width=8)
        cfg.update(block_out_channels=[8] * len(cfg["block_out_channels"]), norm_num_groups=4)
        return cfg
    levels = int(math.log2(factor)) + 1
    return {
        "_class_name": "AutoencoderTiny", "latent_channels": latent_channels,
        "encoder_block_out_channels": [8] * levels, "decoder_block_out_channels": [8] * levels,
        "num_encoder_blocks": [1] * levels, "num_decoder_blocks": [1] * levels,
    }  # fmt: skip


def look_at_c2w(eye: np.ndarray, target: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """[4, 4] OpenGL camera-to-world looking from ``eye`` at ``target`` with world +Z up."""
    forward = np.asarray(target, dtype=float) - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -forward, eye
    return c2w


def ring_poses(num: int, radius: float = 1.3, height: float = 0.5) -> List[np.ndarray]:
    angles = np.linspace(0, 2 * np.pi, num, endpoint=False)
    return [look_at_c2w(np.array([radius * np.cos(a), radius * np.sin(a), height])) for a in angles]


def write_tiny_scene(
    scene_dir: Path,
    views: int = 4,
    size: int = 16,
    splits: Optional[Sequence[Optional[str]]] = None,
    seed: int = 0,
) -> Path:
    rng = np.random.default_rng(seed)
    (scene_dir / "images").mkdir(parents=True, exist_ok=True)
    frames = []
    for i, c2w in enumerate(ring_poses(views)):
        name = f"images/{i:04d}.png"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(scene_dir / name)
        frames.append((name, c2w, None if splits is None else splits[i]))
    intr = Intrinsics(fx=size * 1.2, fy=size * 1.2, cx=size / 2, cy=size / 2, width=size, height=size)
    return write_scene(scene_dir, intr, frames)


TINY_MODEL = {"resolution": 8, "num_bases": 2, "micro_channels": 4, "macro_channels": 4, "hidden_dim": 16,
              "num_coarse_samples": 8, "num_fine_samples": 8}  # fmt: skip
"""Model sizes for in-process pipelines that build and render in well under a second."""


def tiny_run_config(config, data: Path, out: Path, steps: int, scenes_per_step: int = 2):
    """A method config (``rgb_method()``, ...) for a trainer of ``steps`` steps on a ``tiny_dataset`` with
    :data:`TINY_MODEL` sizes, writing to ``out``: no local writer, no evaluations or saves unless a test sets them."""
    config.pipeline.datamanager.data = data
    config.pipeline.datamanager.dataparser.test_every = 4  # the tiny datasets' 4 views: 3 train, 1 test per scene
    config.pipeline.datamanager.scenes_per_step = scenes_per_step
    for key, value in TINY_MODEL.items():
        setattr(config.pipeline.model, key, value)
    config.output_dir = out
    config.vis = "tensorboard"  # nerfstudio evaluates only with a metrics writer
    config.logging.local_writer.enable = False
    config.max_num_iterations = steps
    config.steps_per_eval_image = config.steps_per_eval_batch = config.steps_per_eval_all_images = 10**6
    config.steps_per_save = 10**6
    return config


def scratch_latent_trainer(data: Path, out: Path, steps: int, **model):
    """A set-up trainer of ``3dae-latent`` on a ``tiny_dataset`` (:func:`tiny_run_config`) in the latent space of a
    small scratch autoencoder; ``model`` overrides model config fields."""
    from nerfstudio_3dae.method_configs import latent_method

    config = tiny_run_config(latent_method(), data, out, steps=steps)
    config.pipeline.model.autoencoder, config.pipeline.model.scratch_width = "scratch", 8
    for key, value in model.items():
        setattr(config.pipeline.model, key, value)
    config.set_timestamp()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


def tiny_pipeline(config, data: Path, **model):
    """The pipeline of a method config (``rgb_method()``, ...) on a ``tiny_dataset``, built in this process on the
    CPU with :data:`TINY_MODEL` sizes; ``model`` overrides model config fields."""
    config.pipeline.datamanager.data = data
    config.pipeline.datamanager.dataparser.test_every = 4  # the tiny datasets' 4 views: 3 train, 1 test per scene
    config.pipeline.datamanager.scenes_per_step = 2
    for key, value in {**TINY_MODEL, **model}.items():
        setattr(config.pipeline.model, key, value)
    return config.pipeline.setup(device="cpu", test_mode="val")


def train_recording_evaluations(trainer) -> List[Optional[int]]:
    """Train ``trainer`` to its end; the steps at which it evaluated every test view, in order."""
    evaluated: List[Optional[int]] = []
    average = trainer.pipeline.get_average_eval_image_metrics

    def recording(step=None, **kwargs):
        evaluated.append(step)
        return average(step=step, **kwargs)

    trainer.pipeline.get_average_eval_image_metrics = recording
    trainer.train()
    return evaluated


@pytest.fixture
def tiny_dataset(tmp_path: Path):
    """A factory: ``tiny_dataset(num_scenes=3, views=4, size=16)`` writes a dataset and returns its root."""

    def make(num_scenes: int = 3, views: int = 4, size: int = 16, name: str = "data") -> Path:
        root = tmp_path / name
        names = [f"obj_{i:03d}" for i in range(num_scenes)]
        for i, scene in enumerate(names):
            write_tiny_scene(root / scene, views=views, size=size, seed=i)
        write_scenes_index(root, names)
        return root

    return make


@pytest.fixture
def one_thread():
    """Small CPU workloads run fastest (and steadiest on a shared 2-core machine) on one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
