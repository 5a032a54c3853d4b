"""No overhead floor (issues 18, 24, 26): a steady training step reads nothing back from the device and dispatches a
bounded number of operators. The counts come from ``ns-3dae-bench step-profile``'s profiler on the CPU, after the
occupancy grids' warm-up and over a step that updates them; a CUDA test runs the same steps under
``torch.cuda.set_sync_debug_mode("error")``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nerfstudio_3dae.bench import step_profile
from nerfstudio_3dae.bench.step_memory import step_memory_data
from nerfstudio_3dae.datamanager import gather_cameras

LATENT_TOP_LEVEL_OPS = 390
"""Bound on the top-level operators of a steady 3dae-latent step at the defaults, eager (measured 2026-12-08, after
the grids' warm-up: 377 at 32², as this test counts them, 375 at 128² with ``ns-3dae-bench step-profile``; from 615
before issue 24's item 7: the field query, compositing and total variation as autograd nodes with their backward
written out, the bank's rows gathered as leaves whose gradients become the tables' sparse ones, a scene's cameras one
query, no operator for nothing; 704 before the row-sparse Adam's table and the cheaper lookups; 1048 before issue 18):
a regression guard, within issue 24's target of 400 (docs/gpu.md)."""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return step_memory_data(tmp_path_factory.mktemp("overhead") / "data", 32)


@pytest.mark.parametrize("phase", ["latent", "decoded"])
def test_a_steady_latent_step_reads_nothing_back(data: Path, tmp_path: Path, one_thread, phase):
    """Both phases, after the occupancy grids were computed (their warm-up shortened to two batches here), over a
    step that updates them and steady ones."""
    figures = step_profile.profile_method(
        "3dae-latent", data, tmp_path, "cpu", warmup=1, steps=3, phase=phase, occupancy_warmup=2
    )
    assert figures["warmup_steps"] >= 2 and figures["grid_update_steps"] == 1, figures
    assert figures["syncs_per_step"]["total"] == 0, figures["syncs_per_step"]
    if phase == "latent":
        assert figures["ops_per_step"]["top_level"] <= LATENT_TOP_LEVEL_OPS, figures["top_ops"]


def _reads(kind: str, x: torch.Tensor) -> None:
    """One host read of ``x`` of the kind the profile names ``kind``."""
    if kind == "tolist":
        x.tolist()
    elif kind == "cpu":
        x.cpu()
    elif kind == "numpy":
        x.detach().numpy()
    elif kind == "item":
        x.sum().item()
    elif kind == "equal":
        torch.equal(x, x)
    elif kind == "coalesce":  # not marked coalesced: the new size is read back
        torch.sparse_coo_tensor(torch.tensor([[1, 0]]), x[:2], (3,)).coalesce()


@pytest.mark.parametrize("kind", ["tolist", "cpu", "numpy", "item", "equal", "coalesce"])
def test_host_reads_without_an_operator_of_their_own_are_counted(kind: str):
    """``tolist``, ``cpu`` and ``numpy`` of a CPU tensor dispatch no reading operator: the profile wraps them; a
    read inside another counts once."""
    x = torch.arange(6.0)
    with (
        step_profile.counted_host_reads(x.device),
        torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof,
    ):
        _reads(kind, x)
    assert step_profile.count_ops(prof.events())["syncs"] == {kind: 1}
    assert torch.Tensor.tolist is torch._C.TensorBase.tolist  # unwrapped again


def test_a_read_added_to_the_training_step_is_counted(data: Path, tmp_path: Path, one_thread, monkeypatch):
    """A ``.tolist()`` of a device result inside the step (here of the rendered latents) is a sync of the step."""
    original = step_profile.one_step

    def with_a_read(trainer, step, clock=None):
        original(trainer, step, clock)
        trainer.pipeline.model.field.bank.bias.detach().tolist()

    monkeypatch.setattr(step_profile, "one_step", with_a_read)
    figures = step_profile.profile_method("3dae-latent", data, tmp_path, "cpu", 1, 2, occupancy_warmup=1)
    assert figures["syncs_per_step"] == {"tolist": 1, "total": 1}


def test_camera_rows_are_nerfstudios_indexing(data: Path, tmp_path: Path):
    """The datamanager gathers a batch's cameras field by field; the result is nerfstudio's ``cameras[index]``."""
    from nerfstudio_3dae.bench.step_memory import configure_defaults

    config = configure_defaults("3dae-rgb", data, tmp_path, "cpu", 1)
    cameras = config.pipeline.datamanager.setup(device="cpu").train_dataset.cameras
    index = torch.tensor([3, 0, 3])
    picked, expected = gather_cameras(cameras, index), cameras[index]
    assert picked.shape == expected.shape == (3,)
    for name in ("camera_to_worlds", "fx", "fy", "cx", "cy", "width", "height", "camera_type"):
        assert torch.equal(getattr(picked, name), getattr(expected, name)), name
    assert picked.metadata.keys() == expected.metadata.keys()
    assert all(torch.equal(picked.metadata[k], expected.metadata[k]) for k in expected.metadata)
    assert torch.equal(picked.generate_rays(0).directions, expected.generate_rays(0).directions)


@pytest.mark.cuda
def test_cuda_steps_never_synchronise(data: Path, tmp_path: Path):
    trainer, step = step_profile.prepared_trainer("3dae-latent", data, tmp_path, "cuda", 3, occupancy_warmup=3)
    trainer.pipeline.model.field.occupancy.make_update_due()  # the first checked step updates the grids
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for index in range(step, step + 3):
            step_profile.one_step(trainer, index)
    finally:
        torch.cuda.set_sync_debug_mode("default")
