"""Model state through attributes, not side channels: the training phase, the rendered scene (and how ns-3dae-render
sets it), the bases a stage-1 run brings along, and the latent range derived from the normaliser."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import tiny_pipeline, tiny_test_config

from nerfstudio_3dae.autoencoder import NormaliserConfig, build_autoencoder
from nerfstudio_3dae.autoencoder_source import RUN_EXPORT, export_stage1
from nerfstudio_3dae.latent_model import latent_range
from nerfstudio_3dae.method_configs import latent_method, rgb_method
from nerfstudio_3dae.model import SCENE_ENV
from nerfstudio_3dae.scripts import render as render_script

TANH_HALF = NormaliserConfig("tanh", 0.5)


def tiny_autoencoder_folder(folder: Path, normaliser: NormaliserConfig = TANH_HALF) -> Path:
    return build_autoencoder(tiny_test_config("kl"), normaliser=normaliser, seed=0).save(folder)


# ------------------------------------------------------------------------------------------------ phase


def test_the_phase_is_model_state_not_an_entry_of_the_outputs(tiny_dataset, tmp_path, one_thread):
    pipeline = tiny_pipeline(latent_method(), tiny_dataset(num_scenes=2), autoencoder=str(tiny_autoencoder_folder(
        tmp_path / "ae")), finetune_start=5)  # fmt: skip
    model = pipeline.model
    model.train()
    cameras, batch = pipeline.datamanager.next_train(0)
    outputs = model.get_outputs(cameras)
    assert all(isinstance(v, torch.Tensor) for v in outputs.values()), "only tensors in the outputs"
    assert model.active_phase == "latent" and "rgb" not in outputs
    assert set(model.get_loss_dict(outputs, batch)) == {"latent_loss", "tv_loss"}
    model.step = 5  # what the training callback sets before step 5
    assert model.active_phase == "finetune"
    outputs = model.get_outputs(cameras)
    assert set(model.get_loss_dict(outputs, batch)) == {"latent_loss", "rgb_loss", "tv_loss"}  # the decoded phase
    model.eval()
    assert model.active_phase == "joint"


# ------------------------------------------------------------------------------------------------ scene


def test_the_rendered_scene_is_a_model_attribute(tiny_dataset, monkeypatch, one_thread):
    monkeypatch.delenv(SCENE_ENV, raising=False)
    data = tiny_dataset(num_scenes=3)
    pipeline = tiny_pipeline(rgb_method(), data)
    model = pipeline.model.eval()
    assert model.scene == 0
    with_id = pipeline.datamanager.eval_dataset.cameras[0:1]
    without = copy.copy(with_id)
    without.metadata = None
    per_scene = []
    for s in range(3):
        with_id.metadata = {"scene_id": torch.tensor([[s]])}
        per_scene.append(model.get_outputs_for_camera(with_id)["rgb"])
    assert not torch.allclose(per_scene[1], per_scene[2])

    model.scene = 2
    assert torch.equal(model.get_outputs_for_camera(without)["rgb"], per_scene[2])
    model.scene = "obj_001"  # a name works too, and the viewer's picker follows
    assert model.scene == 1 and model.scene_picker.value == "obj_001"
    assert torch.equal(model.get_outputs_for_camera(without)["rgb"], per_scene[1])
    with pytest.raises(ValueError, match="model.scene='car_9'"):
        model.scene = "car_9"
    with pytest.raises(ValueError, match="model.scene='3'"):
        model.scene = 3

    monkeypatch.setenv(SCENE_ENV, "obj_002")  # the way in for stock ns-render: read once, where eval_setup loads
    fresh = tiny_pipeline(rgb_method(), data).model
    assert fresh.scene == 0, "building a model reads no environment variable"
    fresh.loaded_for_evaluation()
    assert fresh.scene == 2
    monkeypatch.setenv(SCENE_ENV, "nope")
    with pytest.raises(ValueError, match=SCENE_ENV):
        fresh.loaded_for_evaluation()


class _Model:
    scene = "default"


class _Loaded:
    model = _Model()


class _RecordsRender:
    """Stands in for a nerfstudio render mode: its main() builds a pipeline with eval_setup and renders."""

    rendered: list

    def main(self) -> None:
        _, pipeline, _, _ = render_script.ns_render.eval_setup(self.load_config, test_mode="inference")
        self.rendered.append((pipeline.model.scene, self.output_path))


@dataclass
class _PerSceneRender(render_script.PerScene, _RecordsRender):
    scenes: str
    load_config: Path
    output_path: Path
    rendered: list


def test_ns_3dae_render_loads_once_and_sets_the_scene_on_the_model(monkeypatch, tmp_path):
    loads = []

    def fake_eval_setup(config_path, eval_num_rays_per_chunk=None, test_mode="test", update_config_callback=None):
        loads.append(test_mode)
        return None, _Loaded(), None, 0

    monkeypatch.setattr(render_script, "eval_setup", fake_eval_setup)
    monkeypatch.setattr(render_script, "select_scenes", lambda config, spec: ["car_0003", "car_0007"])
    monkeypatch.delenv(SCENE_ENV, raising=False)
    stock = render_script.ns_render.eval_setup
    job = _PerSceneRender("3,7", tmp_path / "config.yml", tmp_path / "video.mp4", [])
    job.main()
    assert job.rendered == [
        ("car_0003", tmp_path / "video_car_0003.mp4"),
        ("car_0007", tmp_path / "video_car_0007.mp4"),
    ]
    assert loads == ["inference"], "one load for every scene"
    assert render_script.ns_render.eval_setup is stock, "nerfstudio's eval_setup is back after the render"
    assert SCENE_ENV not in __import__("os").environ


# ------------------------------------------------------------------------------------------------ bases


def test_a_stage1_run_given_as_the_autoencoder_brings_its_bases(tiny_dataset, tmp_path, capsys, one_thread):
    data = tiny_dataset(num_scenes=2)
    run = tmp_path / "stage1-run"
    ae = build_autoencoder(tiny_test_config("kl"), normaliser=NormaliserConfig("tanh", 0.5), seed=0)
    bases = torch.randn(2, 3, 4, 8, 8)
    export_stage1(run / RUN_EXPORT, ae, bases)

    model = tiny_pipeline(latent_method(), data, autoencoder=str(run)).model
    assert torch.equal(model.field.bank.bases.detach(), bases)
    assert "shared bases from" in capsys.readouterr().out
    export_only = tiny_pipeline(latent_method(), data, autoencoder=str(run / RUN_EXPORT)).model
    assert torch.equal(export_only.field.bank.bases.detach(), bases)
    random = tiny_pipeline(latent_method(), data, autoencoder=str(run), bases_from_autoencoder=False).model
    assert not torch.allclose(random.field.bank.bases.detach(), bases)
    with pytest.raises(ValueError, match="--pipeline.model.autoencoder"):
        tiny_pipeline(latent_method(), data, autoencoder=str(run), num_bases=3)


# ------------------------------------------------------------------------------------------------ latent range


def test_latent_range_follows_the_normaliser():
    assert latent_range(NormaliserConfig("tanh", 0.02), 40.0) == (-1.0, 1.0)
    assert latent_range(NormaliserConfig("linear", 0.5), 40.0) == (-20.0, 20.0)
    assert latent_range(NormaliserConfig("none"), 40.0) == (-40.0, 40.0)
    with pytest.raises(ValueError, match="raw-latent-bound"):
        latent_range(NormaliserConfig("none"), 0.0)


@pytest.mark.parametrize("kind, bound, data_range", [("tanh", 40.0, 2.0), ("none", 10.0, 20.0)])
def test_latent_output_range_and_psnr_come_from_the_normaliser(tiny_dataset, tmp_path, one_thread, kind, bound,
                                                               data_range):  # fmt: skip
    folder = tiny_autoencoder_folder(tmp_path / "ae", NormaliserConfig(kind, 0.5 if kind == "tanh" else 1.0))
    model = tiny_pipeline(latent_method(), tiny_dataset(num_scenes=2), autoencoder=str(folder),
                          raw_latent_bound=bound).model  # fmt: skip
    lo, hi = model.output_range
    assert (lo, hi) == (-data_range / 2, data_range / 2) and model.field.mlp.output_range == (lo, hi)
    target = torch.zeros(2, 4, 2, 2)
    metrics = model.get_metrics_dict({"latent": target + 1.0}, {"latent": target})
    assert float(metrics["latent_psnr"]) == pytest.approx(10 * math.log10(data_range**2), abs=1e-4)


def test_latents_outside_the_rendered_range_are_reported(tiny_dataset, tmp_path, capsys, one_thread):
    folder = tiny_autoencoder_folder(tmp_path / "ae", NormaliserConfig("none"))
    tiny_pipeline(latent_method(), tiny_dataset(num_scenes=2), autoencoder=str(folder), raw_latent_bound=1e-4)
    assert "--pipeline.model.raw-latent-bound" in capsys.readouterr().out
