"""Damaged checkpoints and full disks: every load names the damaged file and what to do (``--load-dir`` falls back
to the newest intact checkpoint), every save checks the free space first and says what it needs."""

from __future__ import annotations

import errno
import io
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_run_config
from nerfstudio.utils import eval_utils
from nerfstudio.utils.rich_utils import CONSOLE

import nerfstudio_3dae.model  # noqa: F401  (a 3dae model module: installs the checked eval loader)
from nerfstudio_3dae import autoencoder_training, checkpoints
from nerfstudio_3dae.autoencoder_training import AutoencoderTrainingConfig, load_state
from nerfstudio_3dae.checkpoints import (
    DamagedCheckpointError,
    NotEnoughSpaceError,
    atomic_save,
    checked_eval_load_checkpoint,
    load_checkpoint_file,
    save_size_estimate,
)
from nerfstudio_3dae.method_configs import rgb_method


class NotAllowListed:
    """A class ``torch.load(weights_only=True)`` refuses."""


def cut_short(path: Path, keep: float = 0.5) -> None:
    """Truncate ``path`` to ``keep`` of its size, as a crash or a full disk mid-write leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ----------------------------------------------------------------------------------------------- loading
@pytest.mark.parametrize("keep", [0.0, 0.02, 0.5, 0.999])
def test_a_cut_short_file_is_named_as_damaged(tmp_path, keep):
    folder = tmp_path / "nerfstudio_models"
    folder.mkdir()
    for step in (10, 20):
        torch.save({"step": step, "w": torch.randn(500)}, folder / f"step-{step:09d}.ckpt")
    newest = folder / "step-000000020.ckpt"
    cut_short(newest, keep)
    with pytest.raises(DamagedCheckpointError) as caught:
        load_checkpoint_file(newest)
    message = str(caught.value)
    assert caught.value.path == newest and str(newest) in message and "is damaged" in message
    assert "empty" in message if keep == 0 else "cut short" in message
    assert "step-000000010.ckpt" in message, f"the older checkpoint beside it is named: {message}"
    assert load_checkpoint_file(folder / "step-000000010.ckpt")["step"] == 10


def test_a_bad_crc_is_damage_and_other_failures_are_torchs(tmp_path):
    path = tmp_path / "flipped.ckpt"
    torch.save({"w": torch.zeros(4000)}, path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the tensor's bytes: the archive's directory is intact
    path.write_bytes(bytes(data))
    assert "fails its CRC check" in checkpoints.zip_damage(path)  # torch.load may not notice: it skips CRC checks

    intact = tmp_path / "custom.ckpt"
    torch.save({"x": NotAllowListed()}, intact)
    with pytest.raises(pickle.UnpicklingError):  # weights_only refuses the class: not damage, torch's own error
        load_checkpoint_file(intact, weights_only=True)
    with pytest.raises(FileNotFoundError):
        load_checkpoint_file(tmp_path / "missing.ckpt")


def tiny_trainer(data, out, load_dir=None, load_checkpoint=None, load_step=None):
    config = tiny_run_config(rgb_method(), data, out, steps=8)
    config.save_only_latest_checkpoint = False
    config.load_dir, config.load_checkpoint, config.load_step = load_dir, load_checkpoint, load_step
    config.timestamp = "run"
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


@pytest.fixture
def saved_run(tiny_dataset, tmp_path, one_thread):
    """A run folder with checkpoints of steps 3, 5 and 6; returns (data, out, checkpoint folder)."""
    data, out = tiny_dataset(num_scenes=2), tmp_path / "out"
    trainer = tiny_trainer(data, out)
    for step in (3, 5, 6):
        trainer.save_checkpoint(step)
    trainer.config.save_config()
    return data, out, trainer.checkpoint_dir


@pytest.fixture
def wide_console():
    """nerfstudio's console without line wrapping (rich wraps long paths anywhere)."""
    width = CONSOLE._width
    CONSOLE.width = 2000
    yield
    CONSOLE._width = width


def test_load_dir_falls_back_to_the_newest_intact_checkpoint(saved_run, capsys, wide_console):
    data, out, ckpts = saved_run
    cut_short(ckpts / "step-000000006.ckpt")
    (ckpts / "step-000000005.ckpt").write_bytes(b"")
    resumed = tiny_trainer(data, out, load_dir=ckpts)
    assert resumed._start_step == 4, "resumed from step 3, the newest checkpoint that loads"
    log = capsys.readouterr().out
    for skipped in ("step-000000006.ckpt", "step-000000005.ckpt"):
        assert f"skipping damaged checkpoint {ckpts / skipped}: " in log, log
    assert "the newest intact checkpoint (skipped step-000000006.ckpt, step-000000005.ckpt)" in log, log

    # named explicitly: an error naming the file, and how to resume from the intact one
    with pytest.raises(DamagedCheckpointError, match="step-000000006.ckpt is damaged.*use --load-dir"):
        tiny_trainer(data, out, load_checkpoint=ckpts / "step-000000006.ckpt")
    with pytest.raises(DamagedCheckpointError, match="step-000000005.ckpt is damaged.*drop --load-step"):
        tiny_trainer(data, out, load_dir=ckpts, load_step=5)

    cut_short(ckpts / "step-000000003.ckpt")
    with pytest.raises(DamagedCheckpointError, match="every checkpoint there is damaged") as caught:
        tiny_trainer(data, out, load_dir=ckpts)
    assert all(f"step-00000000{s}.ckpt" in str(caught.value) for s in (3, 5, 6))


def test_eval_tools_name_the_damaged_checkpoint(saved_run, monkeypatch, capsys, wide_console):
    _, out, ckpts = saved_run
    config_path = ckpts.parent / "config.yml"
    (ckpts / "notes.txt").write_text("stray files do not confuse the latest-step search")
    _, pipeline, path, step = eval_utils.eval_setup(config_path, test_mode="inference")
    assert (path.name, step) == ("step-000000006.ckpt", 6)
    assert eval_utils.eval_load_checkpoint is checked_eval_load_checkpoint, "ns-eval/ns-render/ns-viewer use it"

    cut_short(ckpts / "step-000000006.ckpt")
    with pytest.raises(DamagedCheckpointError) as caught:
        eval_utils.eval_setup(config_path, test_mode="inference")
    message = str(caught.value)
    assert f"checkpoint {ckpts / 'step-000000006.ckpt'} is damaged" in message
    assert "Move it out of" in message and "step-000000005.ckpt" in message, message

    from nerfstudio_3dae.scripts.render import entrypoint

    monkeypatch.setattr(sys, "argv", ["ns-3dae-render", "spiral", "--load-config", str(config_path)])
    with pytest.raises(SystemExit) as stop:
        entrypoint()
    printed = capsys.readouterr().out
    assert stop.value.code == 1 and "ns-3dae-render: checkpoint" in printed and "step-000000006.ckpt" in printed


def test_a_damaged_autoencoder_state_is_named(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"step": 3, "model": {"w": torch.randn(300)}}, path)
    assert load_state(path)["step"] == 3
    cut_short(path)
    with pytest.raises(DamagedCheckpointError, match=r"state.pt is damaged.*Delete it to start the run"):
        load_state(path)


# ----------------------------------------------------------------------------------------------- saving
def test_a_save_that_does_not_fit_fails_before_writing(tmp_path, monkeypatch):
    folder = tmp_path / "nerfstudio_models"
    folder.mkdir()
    target = folder / "step-000000010.ckpt"
    atomic_save({"step": 10}, target)
    state = {"step": 20, "w": torch.zeros(1 << 20), "view": None, "array": np.zeros(1000)}
    state["view"] = state["w"][:10]  # shares the storage: counted once
    need = save_size_estimate(state)
    assert (4 << 20) + 8000 < need < 6 << 20, "4 MiB of tensor, once, the array and a margin"
    monkeypatch.setattr(checkpoints, "free_bytes", lambda folder: 3 << 20)
    with pytest.raises(NotEnoughSpaceError) as caught:
        atomic_save(state, target)
    message = str(caught.value)
    assert message.startswith(
        f"not enough free space to save {target}: it needs about {need / 2**20:.1f} MiB, {folder} has 3.0 MiB free"
    )
    assert "nothing was written" in message and caught.value.errno == errno.ENOSPC
    assert torch.load(target)["step"] == 10 and sorted(p.name for p in tmp_path.rglob("*")) == [
        "nerfstudio_models",
        "step-000000010.ckpt",
    ]


def test_a_disk_that_fills_during_the_save(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    folder.mkdir()
    target = folder / "state.pt"
    atomic_save({"step": 1}, target)
    real_save = torch.save

    class FillsUp(io.RawIOBase):
        """A file that takes 4 KiB and then fails as a full disk does."""

        def __init__(self, handle) -> None:
            self.handle, self.written = handle, 0

        def writable(self) -> bool:
            return True

        def write(self, data) -> int:
            if self.written + len(data) > 4096:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return self.handle.write(data)

    monkeypatch.setattr(torch, "save", lambda obj, handle: real_save(obj, FillsUp(handle)))
    monkeypatch.setattr(checkpoints, "free_bytes", lambda folder: 2 << 30)  # room enough when the save starts
    with pytest.raises(NotEnoughSpaceError, match=rf"the disk filled up while saving {target}: it needs about") as e:
        atomic_save({"step": 2, "w": torch.zeros(10000)}, target)
    assert "partial file was removed" in str(e.value)
    assert isinstance(e.value.__cause__, RuntimeError), "torch's own error is chained"
    assert sorted(p.name for p in folder.iterdir()) == ["state.pt"] and torch.load(target)["step"] == 1


def test_the_autoencoder_recipe_saves_through_the_same_check(tmp_path, monkeypatch):
    config = AutoencoderTrainingConfig(block_out_channels=(8, 8), latent_channels=4, resolution=32, crop=16)
    run = autoencoder_training._Run(config, tmp_path, torch.device("cpu"))
    run.save()
    run.step = 7
    monkeypatch.setattr(checkpoints, "free_bytes", lambda folder: 1000)
    with pytest.raises(NotEnoughSpaceError, match=r"state.pt: it needs about .* has 1000 bytes free"):
        run.save()
    assert load_state(tmp_path / "state.pt")["step"] == 0, "the state saved before is intact"


def test_a_real_short_write_is_reported_as_no_room(tmp_path):
    """The file size limit makes the kernel refuse writes past it (EFBIG), as a full disk does (ENOSPC): torch's
    writer reports ``unexpected pos``, the save says the disk has no room for it."""
    script = f"""
import resource, signal, torch
from pathlib import Path
from nerfstudio_3dae.checkpoints import NotEnoughSpaceError, atomic_save
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
try:
    atomic_save({{"w": torch.zeros(100_000)}}, Path({str(tmp_path / "big.ckpt")!r}))
except NotEnoughSpaceError as err:
    print("NOROOM", err, "| CAUSE", repr(err.__cause__))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "NOROOM the disk filled up while saving" in done.stdout, done.stdout + done.stderr
    assert "unexpected pos" in done.stdout
    assert list(tmp_path.iterdir()) == []
