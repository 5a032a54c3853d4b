"""Every run ends with an evaluation of every test view, whatever --max-num-iterations is; a cadence set with
--steps-per-eval-all-images is kept (and the end evaluated too)."""

from __future__ import annotations

import pytest
from conftest import tiny_run_config, train_recording_evaluations

from nerfstudio_3dae.method_configs import latent_method, rgb_method
from nerfstudio_3dae.trainer import EVAL_ALL_IMAGES_AT_END, evaluates_all_images_at_end

ALL_IMAGES = "Eval Images Metrics Dict (all images)"
"""nerfstudio's tensorboard group of the all-test-views metrics."""


@pytest.fixture
def own_writers():
    """The event writers a trainer sets up (nerfstudio keeps them in a module global) are removed afterwards."""
    from nerfstudio.utils import writer

    before = list(writer.EVENT_WRITERS)
    yield
    writer.EVENT_WRITERS[:] = before


def run(data, out, steps: int, interval=None):
    """Train a tiny 3dae-rgb run of ``steps`` steps with the method's ``steps_per_eval_all_images`` (or
    ``interval``); the steps at which every test view was evaluated."""
    method = rgb_method()
    default = method.steps_per_eval_all_images
    config = tiny_run_config(method, data, out, steps)
    config.steps_per_eval_all_images = default if interval is None else interval
    config.set_timestamp()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer, train_recording_evaluations(trainer)


def test_the_methods_evaluate_at_the_end_whatever_the_length():
    for method in (rgb_method(), latent_method()):
        assert method.steps_per_eval_all_images == EVAL_ALL_IMAGES_AT_END
    assert evaluates_all_images_at_end(step=19, total_steps=20, interval=EVAL_ALL_IMAGES_AT_END)
    assert not evaluates_all_images_at_end(step=18, total_steps=20, interval=EVAL_ALL_IMAGES_AT_END)
    assert evaluates_all_images_at_end(step=19, total_steps=20, interval=7), "a cadence that misses the end"
    assert not evaluates_all_images_at_end(step=19, total_steps=20, interval=21), "a cadence longer than the run"


def test_a_20_step_run_writes_the_all_images_metrics(tiny_dataset, tmp_path, one_thread, own_writers):
    from nerfstudio.utils import writer  # (not at the top: imported first, nerfstudio's modules import circularly)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer, evaluated = run(tiny_dataset(num_scenes=2), tmp_path, steps=20)
    assert evaluated == [19]
    for w in writer.EVENT_WRITERS:
        if isinstance(w, writer.TensorboardWriter):
            w.tb_writer.flush()
    events = EventAccumulator(str(trainer.base_dir)).Reload()
    tags = [t for t in events.Tags()["scalars"] if t.startswith(ALL_IMAGES)]
    assert f"{ALL_IMAGES}/psnr" in tags, tags
    psnr = events.Scalars(f"{ALL_IMAGES}/psnr")
    assert [e.step for e in psnr] == [19] and psnr[0].value > 0


@pytest.mark.parametrize("interval, expected", [(7, [7, 14, 19]), (10, [10, 19]), (0, []), (50, [])])
def test_a_cadence_set_by_the_user_is_kept(tiny_dataset, tmp_path, one_thread, own_writers, interval, expected):
    assert run(tiny_dataset(num_scenes=2), tmp_path, steps=20, interval=interval)[1] == expected
