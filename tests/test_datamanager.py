"""The multi-scene datamanager: batches over several scenes, compact images (copied as stored, made float on the
device), the latent cache."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from nerfstudio_3dae import datamanager
from nerfstudio_3dae.data.dataparser import SCENE_ID, ScenesDataParserConfig
from nerfstudio_3dae.data.images import decode_image
from nerfstudio_3dae.data.layout import DatasetError
from nerfstudio_3dae.datamanager import MultiSceneDatamanagerConfig, auto_scenes_per_step
from nerfstudio_3dae.transfer import rows_to_device, wants_pinned


def manager(root, **kwargs):
    parser = ScenesDataParserConfig(data=root, image_multiple=1, test_every=4)
    return MultiSceneDatamanagerConfig(dataparser=parser, **kwargs).setup(device="cpu")


def test_batches_mix_scenes_and_visit_each_equally(tiny_dataset):
    dm = manager(tiny_dataset(num_scenes=4, views=8), scenes_per_step=2, views_per_scene=3)
    assert dm.train_images.dtype == torch.uint8 and dm.train_images.shape == (24, 16, 16, 3)
    seen = Counter()
    for step in range(4):  # two passes over the 4 scenes
        cameras, batch = dm.next_train(step)
        ids = batch["scene_id"]
        assert cameras.shape == (6,) and batch["image"].shape == (6, 16, 16, 3)
        assert torch.equal(cameras.metadata[SCENE_ID].squeeze(-1), ids)
        assert len(set(ids.tolist())) == 2 and all(c == 3 for c in Counter(ids.tolist()).values())
        assert torch.equal(batch["image"], dm.train_images[batch["image_idx"]].float() / 255)
        seen.update(set(ids.tolist()))
    assert seen == {0: 2, 1: 2, 2: 2, 3: 2}


def test_eval_views_are_lazy_and_complete(tiny_dataset):
    dm = manager(tiny_dataset(num_scenes=3, views=8))
    loader = dm.fixed_indices_eval_dataloader
    assert len(loader) == 6
    camera, batch = loader[5]
    assert camera.shape == (1,) and batch["image"].shape == (16, 16, 3) and int(batch["scene_id"]) == 2
    assert len(list(loader)) == 6


def test_latent_cache_is_keyed_by_autoencoder_identity(tiny_dataset, tmp_path):
    root = tiny_dataset(num_scenes=2, views=4)
    calls = []

    def encode(images):  # [B, H, W, 3] uint8 -> fake latents [B, 4, 2, 2]
        calls.append(len(images))
        return images.float().mean(dim=(1, 2, 3))[:, None, None, None].expand(-1, 4, 2, 2) / 255

    first = manager(root, latent_cache_dir=tmp_path)
    first.attach_latents("ae-one", encode)
    assert sum(calls) == 8 and first.train_latents.shape == (6, 4, 2, 2)
    second = manager(root, latent_cache_dir=tmp_path)
    second.attach_latents("ae-one", encode)
    assert sum(calls) == 8, "same autoencoder, same images: read from disk, no encoding"
    assert torch.equal(first.train_latents, second.train_latents)
    _, batch = second.next_train(0)
    assert batch["latent"].shape == (4, 4, 2, 2)
    second.attach_latents("ae-two", encode)
    assert sum(calls) == 16, "another autoencoder encodes again"


def test_rgba_is_composited_on_white_and_bad_pixels_are_named(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    rgb = decode_image(tmp_path / "a.png")
    assert rgb[0, 0].tolist() == [255, 0, 0] and rgb[3, 0].tolist() == [255, 255, 255]
    good = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DatasetError, match=r"cut\.png cannot be decoded"):
        decode_image(tmp_path / "cut.png")


def test_evaluating_does_not_change_the_training_batches(tiny_dataset):
    root = tiny_dataset(num_scenes=3, views=8)
    quiet, busy = manager(root, scenes_per_step=2), manager(root, scenes_per_step=2)
    for step in range(6):
        if step % 2:
            busy.next_eval_image(step)  # a run that evaluates one test view every other step
            busy.next_eval(step)
        _, expected = quiet.next_train(step)
        _, got = busy.next_train(step)
        assert torch.equal(got["image_idx"], expected["image_idx"]), f"step {step}: other training views"
    views = [int(busy.next_eval_image(s)[1]["image_idx"]) for s in range(20)]
    assert set(views) == set(range(len(busy.eval_dataset))), "single test views are still drawn from all of them"


def test_pinned_copies_only_from_the_cpu_to_a_gpu():
    assert wants_pinned("cpu", "cuda:0") and wants_pinned(torch.device("cpu"), torch.device("cuda"))
    assert not wants_pinned("cpu", "cpu"), "a CPU run copies nothing"
    assert not wants_pinned("cuda:0", "cuda:0"), "images cached on the GPU are gathered there"


def test_batches_travel_as_stored_and_are_made_float_after_the_copy(tiny_dataset, tmp_path, monkeypatch):
    dm = manager(tiny_dataset(num_scenes=2, views=4), latent_cache_dir=tmp_path)
    dm.attach_latents("ae", lambda images: images[:, :2, :2, :2].permute(0, 3, 1, 2).float() / 255)
    copied = []

    def recording(store, indices, device):
        rows = rows_to_device(store, indices, device)
        copied.append(rows.dtype)
        return rows

    def no_pinning(*args, pin_memory=False, **kwargs):
        assert not pin_memory, "no pinned memory on a CPU run"
        return empty(*args, **kwargs)

    empty = torch.empty
    monkeypatch.setattr(datamanager, "rows_to_device", recording)
    monkeypatch.setattr(torch, "empty", no_pinning)
    _, batch = dm.next_train(0)
    assert copied == [torch.uint8, torch.float32], "images copied as uint8, then the latents"
    assert batch["image"].dtype == torch.float32
    assert torch.equal(batch["image"], dm.train_images[batch["image_idx"]].float() / 255), "the values of before"
    assert torch.equal(batch["latent"], dm.train_latents[batch["image_idx"]])
    _, view = dm.fixed_indices_eval_dataloader[1]
    assert copied[2] == torch.uint8 and torch.equal(view["image"], dm.eval_images[1].float() / 255)


def test_the_batch_is_sized_for_the_device():
    # 128² views: 256 rays in latent space (factor 8), 16384 in RGB; 2 views per scene; 2^16 rays a step on a GPU
    assert auto_scenes_per_step("cuda", 256, 2, 2**16, 1000) == 128
    assert auto_scenes_per_step("cuda", 16384, 2, 2**16, 1000) == 2
    assert auto_scenes_per_step("cuda", 256, 2, 2**16, 50) == 50, "never more than the scenes there are"
    assert auto_scenes_per_step("cuda", 512 * 512, 2, 2**16, 1000) == 1, "at least one"
    assert auto_scenes_per_step("cpu", 256, 2, 2**16, 1000) == 4 and auto_scenes_per_step("cpu", 256, 2, 2**16, 3) == 3


def test_fit_batch_keeps_a_configured_size_and_chooses_one_otherwise(tiny_dataset):
    root = tiny_dataset(num_scenes=6, views=4)
    assert manager(root, scenes_per_step=5).fit_batch(downscale=8) == 5
    auto = manager(root, scenes_per_step=0)
    assert auto.fit_batch(downscale=8) == 4  # on the CPU
    cameras, _ = auto.next_train(0)
    assert cameras.shape[0] == 4 * auto.config.views_per_scene
