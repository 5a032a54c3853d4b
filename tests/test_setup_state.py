"""How set-up state reaches the parts that use it: the process shard is read once (by the dataparser) and handed
down through its outputs; the scene of the stock tools (``NS3DAE_SCENE``) is read where ``eval_setup`` loads a
run, not when a model is built."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from conftest import tiny_pipeline

from nerfstudio_3dae.checkpoints import checked_eval_load_checkpoint
from nerfstudio_3dae.data import dataparser
from nerfstudio_3dae.data.dataparser import SCENE_ID, SHARD, ScenesDataParserConfig
from nerfstudio_3dae.datamanager import MultiSceneDatamanagerConfig
from nerfstudio_3dae.distributed import SINGLE_PROCESS, Shard
from nerfstudio_3dae.method_configs import rgb_method
from nerfstudio_3dae.model import SCENE_ENV


def _counting(monkeypatch, shard: Shard) -> list:
    """Make the dataparser's read of the process group return ``shard``; returns the list of its calls."""
    calls: list = []

    def fake() -> Shard:
        calls.append(shard)
        return shard

    monkeypatch.setattr(dataparser, "scene_shard", fake)
    return calls


def test_a_given_shard_is_parsed_and_carried_by_the_outputs(tiny_dataset, monkeypatch):
    calls = _counting(monkeypatch, SINGLE_PROCESS)
    parser = ScenesDataParserConfig(data=tiny_dataset(num_scenes=3), test_every=4).setup(shard=Shard(1, 2))
    train = parser.get_dataparser_outputs("train")
    assert train.metadata[SHARD] == (1, 2) and train.metadata["num_scenes"] == 3
    assert set(train.cameras.metadata[SCENE_ID].reshape(-1).tolist()) == {1}, "only the scenes of rank 1 of 2"
    assert calls == [], "a parser given its shard reads no process group"


def test_the_datamanager_takes_the_shard_the_dataparser_read_once(tiny_dataset, monkeypatch):
    calls = _counting(monkeypatch, Shard(1, 2))
    parser = ScenesDataParserConfig(data=tiny_dataset(num_scenes=5), image_multiple=1, test_every=4)
    dm = MultiSceneDatamanagerConfig(dataparser=parser).setup(device="cpu")
    assert calls == [Shard(1, 2)], "read once, when the dataparser is built"
    assert dm.shard == (1, 2) and dm.owned_scenes == [1, 3]
    assert set(dm.train_scene_ids.tolist()) == {1, 3}


def test_a_pipeline_reads_the_process_group_once_and_hands_the_shard_down(tiny_dataset, monkeypatch, one_thread):
    calls = _counting(monkeypatch, SINGLE_PROCESS)
    pipeline = tiny_pipeline(rgb_method(), tiny_dataset(num_scenes=2))
    assert calls == [SINGLE_PROCESS]
    assert pipeline.shard == pipeline.model.shard == pipeline.datamanager.shard == SINGLE_PROCESS
    assert pipeline.model.owned_scenes == [0, 1]


def test_the_stock_tools_scene_is_read_where_eval_setup_loads_the_run(tiny_dataset, tmp_path, monkeypatch, one_thread):
    data = tiny_dataset(num_scenes=3)
    pipeline = tiny_pipeline(rgb_method(), data)
    folder = tmp_path / "nerfstudio_models"
    folder.mkdir()
    torch.save({"step": 4, "pipeline": pipeline.checkpoint_state()}, folder / "step-000000004.ckpt")
    config = SimpleNamespace(load_dir=folder, load_step=None)

    monkeypatch.delenv(SCENE_ENV, raising=False)
    fresh = tiny_pipeline(rgb_method(), data)
    assert checked_eval_load_checkpoint(config, fresh) == (folder / "step-000000004.ckpt", 4)
    assert fresh.model.scene == 0, "without the variable: the first scene"

    monkeypatch.setenv(SCENE_ENV, "obj_002")
    fresh = tiny_pipeline(rgb_method(), data)
    assert fresh.model.scene == 0, "building the model reads no environment variable"
    checked_eval_load_checkpoint(config, fresh)
    assert fresh.model.scene == 2 and fresh.model.scene_picker.value == "obj_002"
    assert torch.equal(fresh.model.field.bank.micro, pipeline.model.field.bank.micro), "and the run is loaded"
