"""``ns-3dae-train``: ``ns-train`` that also runs multi-process on CPUs (gloo) and under ``torchrun``.

Same arguments as ``ns-train``. ``ns-train --machine.num-devices N`` spawns its processes only on CUDA (its workers
assert a GPU); this entry point launches the same ``train_loop`` in every case:

* under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` in the environment): this process joins the group
  (``env://``: ``MASTER_ADDR``/``MASTER_PORT``) as its rank; ``--machine.*`` sizes are ignored;
* with ``--machine.num-devices D`` (and ``--machine.num-machines M``, ``--machine.machine-rank``,
  ``--machine.dist-url`` on each machine) and ``D * M > 1``: spawns ``D`` processes here, ranks
  ``machine_rank * D ...``;
* otherwise: one process, exactly as ``ns-train``.

The backend is NCCL when ``--machine.device-type cuda`` and gloo otherwise. Scenes are sharded over the ranks
(:mod:`nerfstudio_3dae.distributed`); see docs/scaling.md.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import tyro
import yaml
from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.scripts.train import train_loop
from nerfstudio.utils import comms
from nerfstudio.utils.rich_utils import CONSOLE

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
"""Environment variables torchrun sets in every process it starts."""


def _backend(config: TrainerConfig) -> str:
    return "nccl" if config.machine.device_type == "cuda" else "gloo"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _prepare(config: TrainerConfig) -> TrainerConfig:
    """What ns-train does before launching: the --data alias, --load-config."""
    if config.data:
        config.pipeline.datamanager.data = config.data
    if config.load_config:
        CONSOLE.log(f"Loading pre-set config from: {config.load_config}")
        config = yaml.load(config.load_config.read_text(), Loader=yaml.Loader)
    return config


def _join(
    global_rank: int,
    world_size: int,
    local_size: int,
    backend: str,
    init_method: str,
    device_type: str,
    local_rank: int,
) -> None:
    """Join the process group and make nerfstudio's per-machine group (as ns-train's workers do)."""
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(
        backend, init_method=init_method, world_size=world_size, rank=global_rank, timeout=timedelta(minutes=30)
    )
    for machine in range(world_size // local_size):
        group = dist.new_group(list(range(machine * local_size, (machine + 1) * local_size)))
        if global_rank // local_size == machine:
            comms.LOCAL_PROCESS_GROUP = group


def _rank_main(local_rank: int, config: TrainerConfig, world_size: int, global_rank: int) -> None:
    try:
        train_loop(local_rank, world_size, config, global_rank)
        comms.synchronize()
    finally:
        dist.destroy_process_group()


def _spawned(local_rank: int, config: TrainerConfig, init_method: str) -> None:
    machine = config.machine
    world_size = machine.num_devices * machine.num_machines
    global_rank = machine.machine_rank * machine.num_devices + local_rank
    _join(global_rank, world_size, machine.num_devices, _backend(config), init_method, machine.device_type, local_rank)
    _rank_main(local_rank, config, world_size, global_rank)


def launch(config: TrainerConfig) -> None:
    """Run ``config`` in this process, under torchrun, or in ``--machine.num-devices`` spawned processes."""
    config = _prepare(config)
    machine = config.machine
    if all(var in os.environ for var in TORCHRUN_VARS):
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ["LOCAL_RANK"])
        local_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        _join(rank, world_size, local_size, _backend(config), "env://", machine.device_type, local_rank)
        # one run folder for all ranks: rank 0's timestamp
        if rank == 0:
            config.set_timestamp()
        box = [config.timestamp]
        dist.broadcast_object_list(box, src=0)
        config.timestamp = box[0]
        if rank == 0:
            config.print_to_terminal()
            config.save_config()
        _rank_main(local_rank, config, world_size, rank)
        return
    config.set_timestamp()
    if machine.machine_rank == 0:
        config.print_to_terminal()
        config.save_config()
    world_size = machine.num_devices * machine.num_machines
    if world_size < 1:
        raise ValueError("--machine.num-devices and --machine.num-machines must be at least 1")
    if world_size == 1:
        train_loop(0, 1, config)
        return
    init_method = machine.dist_url
    if init_method == "auto":
        if machine.num_machines > 1:
            raise ValueError("--machine.dist-url auto works on one machine only: give tcp://HOST:PORT of machine 0")
        init_method = f"tcp://127.0.0.1:{_free_port()}"
    CONSOLE.log(f"launching {machine.num_devices} processes ({_backend(config)}, {init_method})")
    mp.spawn(_spawned, args=(config, init_method), nprocs=machine.num_devices, join=True)


def entrypoint() -> None:
    """Entry point of ``ns-3dae-train``."""
    tyro.extras.set_accent_color("bright_yellow")
    launch(tyro.cli(AnnotatedBaseConfigUnion, description=__doc__))


if __name__ == "__main__":
    entrypoint()
