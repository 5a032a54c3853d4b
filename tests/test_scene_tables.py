"""The per-scene tables (sharded over ranks, gathered whole into checkpoints) are the ones the tri-plane bank and the
occupancy grids declare, found by walking the model: every name exists, a misdeclared one fails loudly; and the
optimiser parameter groups are spelled once."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_pipeline
from torch import nn

from nerfstudio_3dae.distributed import scene_table_names
from nerfstudio_3dae.method_configs import autoencoder_method, latent_method, rgb_method
from nerfstudio_3dae.model import PARAM_GROUP, SCENE_PARAM_GROUPS
from nerfstudio_3dae.occupancy import OccupancyGrids
from nerfstudio_3dae.pipeline import MODEL_PREFIX
from nerfstudio_3dae.triplanes import TriplaneBank


@pytest.mark.parametrize("occupancy", [32, 0])
def test_the_model_finds_every_declared_table_and_each_exists(tiny_dataset, one_thread, occupancy):
    pipeline = tiny_pipeline(rgb_method(), tiny_dataset(num_scenes=3), occupancy_resolution=occupancy)
    model = pipeline.model
    tables = model.scene_state()
    expected = {"field.bank.micro", "field.bank.weights", "field.bank.bias"}
    if occupancy:
        expected |= {"field.occupancy.bits", "field.occupancy.visits", "field.occupancy.updates"}
    assert set(tables) == expected
    state = model.state_dict(keep_vars=True)
    for name, tensor in tables.items():
        assert state[name] is tensor, f"{name} is the model's own parameter or buffer"
        assert tensor.shape[0] == len(model.owned_scenes), f"{name} has one row per scene of this process"
    # the pipeline's checkpoint keys of the same tables
    assert set(pipeline._scene_tables()) == {MODEL_PREFIX + name for name in expected}
    assert set(pipeline._scene_tables()) <= set(pipeline.state_dict())


def test_a_declared_table_that_does_not_exist_fails_loudly():
    class Renamed(TriplaneBank):  # what renaming bank.weights without its declaration would be
        scene_tables = ("micro", "mixing_weights", "bias")

    holder = nn.Module()
    holder.bank = Renamed(2, resolution=4, micro_channels=2, macro_channels=2, num_bases=2)
    with pytest.raises(AttributeError, match=r"Renamed \(at bank\).*\['mixing_weights'\]"):
        scene_table_names(holder)

    class Spelt(OccupancyGrids):
        scene_tables = "bits"  # a string, not a tuple of names

    with pytest.raises(TypeError, match="tuple of names"):
        scene_table_names(Spelt(2, 4, 1.0, 0.1, 0))


def test_declared_tables_are_found_at_any_depth():
    outer = nn.Module()
    outer.inner = nn.Module()
    outer.inner.grids = OccupancyGrids(3, 4, 1.0, 0.1, 0)
    outer.bank = TriplaneBank(3, resolution=4, micro_channels=2, macro_channels=0, num_bases=0)
    assert scene_table_names(outer) == [
        "inner.grids.bits",
        "inner.grids.visits",
        "inner.grids.updates",
        "bank.micro",
        "bank.weights",
        "bank.bias",
    ]
    assert scene_table_names(outer.bank) == ["micro", "weights", "bias"]
    assert scene_table_names(nn.Linear(2, 2)) == []


def test_param_group_names_are_plain_strings_used_by_every_method():
    names = {PARAM_GROUP.micro, PARAM_GROUP.mixing, PARAM_GROUP.bases, PARAM_GROUP.mlp}
    assert all(type(name) is str for name in (*names, PARAM_GROUP.decoder, PARAM_GROUP.encoder))
    assert set(SCENE_PARAM_GROUPS) == {PARAM_GROUP.micro, PARAM_GROUP.mixing}
    assert set(rgb_method().optimizers) == names
    assert set(latent_method().optimizers) == names | {PARAM_GROUP.decoder}
    assert set(autoencoder_method().optimizers) == names | {PARAM_GROUP.decoder, PARAM_GROUP.encoder}
    with pytest.raises(AttributeError):
        PARAM_GROUP.micro = "planes"  # type: ignore[misc]


def test_the_model_param_groups_match_the_method_optimizers(tiny_dataset, one_thread):
    config = rgb_method()
    model = tiny_pipeline(config, tiny_dataset(num_scenes=2)).model
    groups = model.get_param_groups()
    assert set(groups) == set(config.optimizers)
    bank = model.field.bank
    assert groups[PARAM_GROUP.micro] == [bank.micro]
    assert [id(p) for p in groups[PARAM_GROUP.mixing]] == [id(bank.weights), id(bank.bias)]
    assert all(isinstance(p, torch.nn.Parameter) for ps in groups.values() for p in ps)
