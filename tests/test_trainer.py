"""ThreeDAETrainer: the all-test-views evaluation at the end of a run, the CPU thread count it measures, a resumed
learning-rate phase, and training steps that never make the host wait for the device in this package's code."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_run_config, train_recording_evaluations
from nerfstudio.engine.callbacks import TrainingCallbackLocation

import nerfstudio_3dae
from nerfstudio_3dae.latent_model import LR_PHASE
from nerfstudio_3dae.method_configs import autoencoder_method, latent_method, rgb_method
from nerfstudio_3dae.model import PARAM_GROUP
from nerfstudio_3dae.trainer import ThreadProbe, evaluates_all_images_at_end

HOST_READS = ("item", "tolist", "__int__", "__float__", "__bool__", "__index__")
"""Tensor methods that copy a value to the host: on a GPU each waits for every queued kernel."""
HOT_PATH = ("trainer.py", "pipeline.py", "datamanager.py", "distributed.py", "latent_model.py", "image_layout.py")
"""This package's modules that run in every training step (model.py and field.py are checked by their own tests)."""


def tiny_trainer(data, out, steps: int, eval_all_every: int, config=None):
    config = tiny_run_config(config or rgb_method(), data, out, steps)
    config.steps_per_eval_all_images = eval_all_every
    config.set_timestamp()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


def test_the_final_evaluation_rule():
    assert evaluates_all_images_at_end(step=2999, total_steps=3000, interval=3000)  # the methods' "at the end"
    assert evaluates_all_images_at_end(step=2999, total_steps=3000, interval=1000)
    assert not evaluates_all_images_at_end(step=2998, total_steps=3000, interval=3000)
    assert not evaluates_all_images_at_end(step=11, total_steps=12, interval=1000)  # tests: never
    assert not evaluates_all_images_at_end(step=11, total_steps=12, interval=0)  # disabled
    assert not evaluates_all_images_at_end(step=12, total_steps=13, interval=1), "nerfstudio's own check fires"
    assert evaluates_all_images_at_end(step=0, total_steps=1, interval=1), "nerfstudio skips step 0"


@pytest.mark.parametrize("interval, expected", [(4, [3]), (2, [2, 3]), (3, [3]), (1000, [])])
def test_a_run_evaluates_every_test_view_at_its_end(tiny_dataset, tmp_path, one_thread, interval, expected):
    trainer = tiny_trainer(tiny_dataset(num_scenes=2), tmp_path, steps=4, eval_all_every=interval)
    assert train_recording_evaluations(trainer) == expected


def test_thread_probe_keeps_the_faster_count():
    probe = ThreadProbe((1, 2), rounds=3, warmup=1)
    assert probe.next_threads() is None  # warm-up: not timed
    probe.record(100.0)
    times = {1: [0.01, 0.5, 0.01], 2: [0.3, 0.3, 0.002]}  # one outlier each: the median decides
    for r in range(3):
        for threads in (1, 2):
            assert probe.next_threads() == threads, "the candidates alternate"
            probe.record(times[threads][r])
    assert probe.done and probe.best() == 1
    tie = ThreadProbe((1, 2), rounds=1, warmup=0)
    tie.record(0.1)
    tie.record(0.1)
    assert tie.best() == 1, "fewer threads on a tie"
    with pytest.raises(ValueError):
        ThreadProbe((0, 2))


def test_cpu_training_measures_its_thread_count(tiny_dataset, tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        trainer = tiny_trainer(tiny_dataset(num_scenes=2), tmp_path, steps=9, eval_all_every=0)
        trainer.train()
        assert "CPU training on" in capsys.readouterr().out
        assert torch.get_num_threads() in (1, 2)
        trainer = tiny_trainer(tiny_dataset(num_scenes=2, name="again"), tmp_path / "fixed", steps=2,
                               eval_all_every=0)  # fmt: skip
        trainer.config.cpu_threads = 1
        trainer.train()
        assert torch.get_num_threads() == 1 and "CPU training on" not in capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)


def test_a_training_step_reads_no_tensor_back_to_the_host(tiny_dataset, tmp_path, one_thread, monkeypatch):
    """3dae-latent in its fine-tune phase (the phase whose learning-rate switch is checked every step); any host read
    of a tensor made by the hot-path modules during training is counted, with where it happened."""
    config = latent_method()
    model = config.pipeline.model
    model.autoencoder, model.scratch_width, model.finetune_start = "scratch", 8, 0
    config.pipeline.datamanager.cache_images = "cpu"
    trainer = tiny_trainer(tiny_dataset(num_scenes=2), tmp_path, steps=3, eval_all_every=0, config=config)
    package = Path(nerfstudio_3dae.__file__).parent
    watched = {str(package / name) for name in HOT_PATH}
    reads = []

    def counting(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            caller = sys._getframe(1).f_code
            if caller.co_filename in watched:
                reads.append(f"{name} in {Path(caller.co_filename).name}:{caller.co_name}")
            return original(self, *args, **kwargs)

        return read

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    trainer.train()
    monkeypatch.undo()
    assert lr_phases(trainer) == {"finetune"}
    assert reads == [], f"host reads in training steps: {reads}"


LR_PHASES = {  # phase -> (method, model options that start it at step 1, its factor option, the groups it scales)
    "finetune": (latent_method, {"finetune_start": 1}, "finetune_plane_lr_factor", ("micro", "mixing", "bases", "mlp")),
    "joint": (autoencoder_method, {"warmup_steps": 1}, "joint_plane_lr_factor", ("micro", "mlp")),
}  # fmt: skip


@pytest.mark.parametrize("phase", sorted(LR_PHASES))
def test_the_learning_rate_phase_follows_a_loaded_checkpoint(tiny_dataset, tmp_path, one_thread, phase):
    """The phase whose learning-rate factor a group carries is saved with its optimiser; a resumed run must find it
    there, or it scales its learning rates a second time (3dae-latent's decoded phase and stage 1's joint phase, each
    with a factor that changes the rate)."""
    method, starts, factor_option, scaled = LR_PHASES[phase]
    factor = 0.25

    def config():
        config = method()
        model = config.pipeline.model
        model.autoencoder, model.scratch_width = "scratch", 8
        for key, value in {**starts, factor_option: factor}.items():
            setattr(model, key, value)
        return config

    def rates(trainer) -> dict:
        return {g: o.param_groups[0]["lr"] for g, o in trainer.optimizers.optimizers.items()}

    def enter_step_2(trainer) -> None:
        for callback in trainer.callbacks:
            callback.run_callback_at_location(2, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)

    data = tiny_dataset(num_scenes=2)
    configured = {group: opt["optimizer"].lr for group, opt in config().optimizers.items()}
    fresh = tiny_trainer(data, tmp_path / "fresh", steps=4, eval_all_every=0, config=config())
    assert rates(fresh) == pytest.approx(configured), "before the phase: the configured rates"
    enter_step_2(fresh)
    assert rates(fresh) == pytest.approx({g: r * (factor if g in scaled else 1.0) for g, r in configured.items()})
    assert lr_phases(fresh, scaled) == {phase}
    enter_step_2(fresh)
    assert rates(fresh)["micro"] == pytest.approx(configured["micro"] * factor), "scaled once in a run"

    first = tiny_trainer(data, tmp_path / "first", steps=2, eval_all_every=0, config=config())
    first.train()  # the phase starts at step 1: rates scaled, the phase recorded, saved at step 1
    assert lr_phases(first, scaled) == {phase}
    resumed_config = config()
    resumed_config.load_dir = first.checkpoint_dir
    resumed = tiny_trainer(data, tmp_path / "resumed", steps=4, eval_all_every=0, config=resumed_config)
    assert lr_phases(resumed, scaled) == {phase}, "the phase came back with the optimisers' state"
    loaded = rates(resumed)
    assert loaded["micro"] == pytest.approx(configured["micro"] * factor, rel=0.01), "scaled, as saved (and decayed)"
    enter_step_2(resumed)
    assert rates(resumed) == loaded, "not scaled again after a resume"


def lr_phases(trainer, groups=(PARAM_GROUP.micro, PARAM_GROUP.mixing, PARAM_GROUP.mlp)) -> set:
    """The learning-rate phases recorded by the optimisers of ``groups`` (default: the scene groups')."""
    groups = [trainer.optimizers.optimizers[g] for g in groups]
    return {pg.get(LR_PHASE) for optimizer in groups for pg in optimizer.param_groups}
