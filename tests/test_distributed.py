"""Scenes sharded over processes: the pure helpers, the collectives on 2 gloo processes, and whole runs: 2 processes
(ns-3dae-train --machine.num-devices 2, then torchrun for a resume) against one process on the same scenes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import BIN, free_port, tool_env

from nerfstudio_3dae.data.synth.generate import generate_dataset
from nerfstudio_3dae.distributed import (
    PAUSED,
    STOP,
    TRAIN,
    average_gradients,
    follow_main,
    gather_optimizer_state,
    gather_scene_rows,
    own_optimizer_state,
    own_rows,
    owned_scenes,
    rows_of,
    scene_shard,
    to_device,
    transport_device,
)
from nerfstudio_3dae.model import TriplaneModel  # noqa: F401  (registers the checkpoint loader fix)
from nerfstudio_3dae.triplanes import TriplaneBank

TOLERANCE = 1e-5
"""Largest difference allowed between a parameter trained in 2 processes and in one (float32, 20 Adam steps)."""


def test_scenes_are_dealt_round_robin_and_rows_map_back():
    assert owned_scenes(5, 0, 2) == [0, 2, 4] and owned_scenes(5, 1, 2) == [1, 3]
    assert owned_scenes(3, 0, 1) == [0, 1, 2]
    assert rows_of([1, 3], 1, 2) == [0, 1] and rows_of([2, 0], 0, 1) == [2, 0]
    with pytest.raises(ValueError, match=r"scenes \[2\] belong to other ranks"):
        rows_of([1, 2], 1, 2)
    with pytest.raises(ValueError, match="rank 2 is not in 0..1"):
        owned_scenes(4, 2, 2)
    whole = torch.arange(5.0)[:, None].expand(5, 3)
    assert own_rows(whole, 5, 1, 2)[:, 0].tolist() == [1.0, 3.0]
    assert own_rows(whole, 5, 0, 1) is whole, "a single process keeps the whole table"
    with pytest.raises(ValueError, match=r"has 4 rows; expected one per scene \(5\)"):
        own_rows(whole[:4], 5, 0, 2)
    state = {"state": {0: {"exp_avg": whole, "step": torch.tensor(3.0)}}, "param_groups": []}
    owned = own_optimizer_state(state, 5, 0, 2)["state"][0]
    assert owned["exp_avg"][:, 0].tolist() == [0.0, 2.0, 4.0] and float(owned["step"]) == 3.0


def test_seeded_rows_start_the_same_in_any_table():
    torch.manual_seed(0)
    whole = TriplaneBank(5, 4, 2, 3, 2, row_seeds=[100 + s for s in range(5)])
    part = TriplaneBank(2, 4, 2, 3, 2, row_seeds=[101, 103])
    torch.testing.assert_close(part.micro, whole.micro[[1, 3]], rtol=0, atol=0)
    torch.testing.assert_close(part.weights, whole.weights[[1, 3]], rtol=0, atol=0)
    assert not torch.equal(whole.micro[0], whole.micro[1])
    with pytest.raises(ValueError, match="3 row seeds for 2 scenes"):
        TriplaneBank(2, 4, 2, 3, 2, row_seeds=[1, 2, 3])


def test_collectives_move_tensors_where_the_backend_takes_them():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 1)
    assert transport_device("gloo", gpu) == cpu, "gloo gathers CPU tensors"
    assert transport_device("gloo", cpu) == cpu
    assert transport_device("nccl", gpu) == gpu, "NCCL moves device tensors, on their own device"
    assert transport_device("cpu:gloo,cuda:nccl", cpu) == cpu and transport_device("cpu:gloo,cuda:nccl", gpu) == gpu


def test_to_device_moves_every_tensor_of_a_nested_state():
    state = {"step": 3, "pipeline": {"w": torch.ones(2)}, "optimizers": [{"m": torch.zeros(1)}, ("x", torch.ones(()))]}
    moved = to_device(state, "meta")
    assert moved["step"] == 3 and moved["optimizers"][1][0] == "x"
    tensors = [moved["pipeline"]["w"], moved["optimizers"][0]["m"], moved["optimizers"][1][1]]
    assert all(t.device.type == "meta" for t in tensors) and isinstance(moved["optimizers"][1], tuple)
    assert state["pipeline"]["w"].device.type == "cpu", "the input is left as it was"


def test_follow_main_waits_while_rank_0_is_paused():
    sent, now = [], [0.0]

    def exchange(code):
        sent.append(code)
        return code

    def sleep(seconds):
        now[0] += seconds

    states = iter([PAUSED] * 25 + [TRAIN])  # paused for 25 polls of 0.1 s
    code = follow_main(lambda: next(states), exchange, keepalive_s=1.0, poll_s=0.1, clock=lambda: now[0], sleep=sleep)
    assert code == TRAIN and sent == [PAUSED, PAUSED, PAUSED, TRAIN], "told at once, then every second, then go"
    sent.clear()
    assert follow_main(lambda: TRAIN, exchange) == TRAIN and sent == [TRAIN], "one exchange when nobody pauses"
    assert follow_main(lambda: STOP, exchange) == STOP
    heard = iter([PAUSED, PAUSED, STOP])
    assert follow_main(None, lambda code: next(heard)) == STOP, "the other ranks wait for rank 0's decision"


def _collectives(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=2, rank=rank)
    try:
        mine = torch.tensor(owned_scenes(5, rank, 2), dtype=torch.float32)[:, None] * torch.ones(1, 2)
        whole = gather_scene_rows(mine, 5, scene_shard())
        shared = torch.nn.Parameter(torch.zeros(3))
        only_rank1 = torch.nn.Parameter(torch.zeros(2))
        unused = torch.nn.Parameter(torch.zeros(1))
        shared.grad = torch.full((3,), float(rank + 1))  # 1 and 2: mean 1.5
        if rank == 1:
            only_rank1.grad = torch.full((2,), 4.0)  # rank 0 counts zero: mean 2
        average_gradients([shared, only_rank1, unused], scene_shard())
        results[rank] = (whole.tolist(), shared.grad.tolist(), only_rank1.grad.tolist(), unused.grad)
        # 7 scenes: rank 0 holds 0 2 4 6, rank 1 holds 1 3 5; rows of several dtypes, in blocks of one row per rank
        scenes = torch.tensor(owned_scenes(7, rank, 2))
        tables = {
            "float": scenes[:, None, None].float() + torch.arange(6.0).reshape(1, 2, 3) / 10,
            "int64": scenes * 1000,
            "bool": (scenes % 3 == 0)[:, None].expand(-1, 4).contiguous(),
        }
        blocked = {name: gather_scene_rows(t, 7, scene_shard(), block_bytes=1) for name, t in tables.items()}
        default = {name: gather_scene_rows(t, 7, scene_shard()) for name, t in tables.items()}
        optimizer = {"state": {0: {"exp_avg": tables["float"], "step": torch.tensor(5.0)}}, "param_groups": [0]}
        gathered = gather_optimizer_state(optimizer, 7, scene_shard(), block_bytes=50)
        results[f"blocks{rank}"] = (blocked, default, gathered)
        with pytest.raises(ValueError, match="block_bytes must be >= 1"):
            gather_scene_rows(tables["float"], 7, scene_shard(), block_bytes=0)
    finally:
        dist.destroy_process_group()


def test_gather_and_gradient_averaging_on_two_gloo_processes():
    results = mp.Manager().dict()
    mp.spawn(_collectives, args=(free_port(), results), nprocs=2, join=True)
    for rank in (0, 1):
        whole, shared, only_rank1, unused = results[rank]
        if rank == 0:
            assert whole == [[float(s)] * 2 for s in range(5)], "rows interleaved back into scene order, no padding"
        else:
            assert whole == [[1.0] * 2, [3.0] * 2], "other ranks keep their own rows, never the whole table"
        assert shared == [1.5] * 3 and only_rank1 == [2.0, 2.0] and unused is None
    blocked, default, gathered = results["blocks0"]
    scenes = torch.arange(7)
    expected = {
        "float": scenes[:, None, None].float() + torch.arange(6.0).reshape(1, 2, 3) / 10,
        "int64": scenes * 1000,
        "bool": (scenes % 3 == 0)[:, None].expand(-1, 4),
    }
    for name, table in expected.items():
        for got in (blocked[name], default[name]):
            assert got.device.type == "cpu" and got.dtype == table.dtype, name
            assert torch.equal(got, table), f"{name}: every scene's row in scene order"
    assert torch.equal(gathered["state"][0]["exp_avg"], expected["float"]) and float(gathered["state"][0]["step"]) == 5
    assert gathered["param_groups"] == [0]
    blocked, _, gathered = results["blocks1"]
    assert blocked["int64"].tolist() == [1000, 3000, 5000], "other ranks keep their own rows"


# ------------------------------------------------------------------------------------------------ whole runs


def _train(args, data: Path, out: Path, timestamp: str, launcher, extra=()) -> Path:
    """Train, check it finished once (rank 0 alone reports the end), return the run folder."""
    env = tool_env(one_thread=True)
    command = [*launcher, "3dae-rgb", "--data", str(data), "--output-dir", str(out), "--timestamp", timestamp,
               *args, *extra]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    assert done.stdout.count("Training Finished") == 1, done.stdout[-3000:]
    return out / "data" / "3dae-rgb" / timestamp


def _assert_same_training(a: Path, b: Path) -> None:
    first, second = (torch.load(p, map_location="cpu", weights_only=False) for p in (a, b))
    assert first["step"] == second["step"]
    for key, value in first["pipeline"].items():
        other = second["pipeline"][key]
        assert value.shape == other.shape, f"{key}: checkpoints hold whole tables whatever the number of processes"
        if value.is_floating_point():
            torch.testing.assert_close(other, value, rtol=0, atol=TOLERANCE, msg=lambda m, key=key: f"{key}: {m}")
    for group, state in first["optimizers"].items():
        for index, entry in state["state"].items():
            for name, value in entry.items():
                other = second["optimizers"][group]["state"][index][name]
                torch.testing.assert_close(other.double(), value.double(), rtol=1e-4, atol=1e-9)


def _train_loss(run: Path) -> list:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run)).Reload()
    return [e.value for e in events.Scalars("Train Loss")]


def test_two_processes_match_one_and_resume_under_torchrun(tmp_path):
    """4 scenes with 2 training views each; every step trains every view (one process: 4 scenes per step; two: 2
    each), with fixed ray samples, so the runs must agree to float precision."""
    data = generate_dataset(tmp_path / "data", 4, 3, 16, seed=3, test_views=1, progress=False)
    out = tmp_path / "runs"
    args = ["--vis", "tensorboard", "--max-num-iterations", "20", "--steps-per-save", "10",
            "--save-only-latest-checkpoint", "False", "--logging.steps-per-log", "1",
            "--steps-per-eval-image", "10000", "--steps-per-eval-all-images", "10000",
            "--steps-per-eval-batch", "10000",
            "--pipeline.model.resolution", "8", "--pipeline.model.num-bases", "2",
            "--pipeline.model.num-coarse-samples", "8", "--pipeline.model.num-fine-samples", "8",
            "--pipeline.model.random-samples", "False", "--pipeline.datamanager.views-per-scene", "2",
            "--machine.device-type", "cpu"]  # fmt: skip
    ns_3dae_train = [sys.executable, "-m", "nerfstudio_3dae.scripts.train"]
    one = _train(args, data, out, "one", ns_3dae_train, ["--pipeline.datamanager.scenes-per-step", "4"])
    two = _train(args, data, out, "two", ns_3dae_train,
                 ["--pipeline.datamanager.scenes-per-step", "2", "--machine.num-devices", "2"])  # fmt: skip
    last = "nerfstudio_models/step-000000019.ckpt"
    _assert_same_training(one / last, two / last)
    losses = _train_loss(two)
    assert losses[-1] < 0.7 * losses[0], f"2-process training lowers the loss: {losses[0]:.4f} -> {losses[-1]:.4f}"

    torchrun = [str(BIN / "torchrun"), "--nproc-per-node", "2", "--master-port", str(free_port()),
                "-m", "nerfstudio_3dae.scripts.train"]  # fmt: skip
    resumed = _train(args, data, out, "resumed", torchrun, ["--pipeline.datamanager.scenes-per-step", "2",
                     "--load-dir", str(two / "nerfstudio_models"), "--load-step", "10"])  # fmt: skip
    assert sorted(p.name for p in (resumed / "nerfstudio_models").iterdir()) == ["step-000000019.ckpt"]
    _assert_same_training(two / last, resumed / last)
