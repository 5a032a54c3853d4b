"""The decoded phase decodes every n-th view of a batch (``decode_every``), optionally only a random square of each
(``decode_crop``), and compares it with the matching views and patches of the images (shifted alike when the rays
are jittered); evaluation always decodes whole views."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import scratch_latent_trainer

from nerfstudio_3dae.image_layout import crop_images, random_crop_corners, shift_images


def test_crop_images_cuts_each_image_at_its_own_corner():
    images = torch.rand(3, 4, 9, 11)
    corners = torch.tensor([[0, 0], [2, 5], [6, 8]])
    out = crop_images(images, corners, 3)
    assert out.shape == (3, 4, 3, 3)
    for k, (y, x) in enumerate(corners.tolist()):
        assert torch.equal(out[k], images[k, :, y : y + 3, x : x + 3])


def test_random_corners_cover_every_position_and_stay_inside():
    torch.manual_seed(0)
    corners = random_crop_corners(4000, (6, 9), 4, torch.device("cpu"))
    assert corners.shape == (4000, 2) and corners.dtype == torch.long
    assert set(corners[:, 0].tolist()) == {0, 1, 2} and set(corners[:, 1].tolist()) == set(range(6))
    with pytest.raises(ValueError, match="does not fit"):
        random_crop_corners(1, (6, 9), 7, torch.device("cpu"))


def _trainer(data, out, **model):
    return scratch_latent_trainer(data, out, steps=2, finetune_start=0, **model)


def test_the_decoded_phase_compares_the_decoded_crop_with_the_matching_shifted_patch(
    tiny_dataset, tmp_path, one_thread
):
    data = tiny_dataset(num_scenes=2, size=32)  # 4² latent images at factor 8
    trainer = _trainer(data, tmp_path / "run", decode_crop=2, decode_every=1, pixel_jitter=True)
    pipeline, model = trainer.pipeline, trainer.pipeline.model
    trainer.train()
    model.train()
    assert model.phase == "finetune"
    cameras, batch = pipeline.datamanager.next_train(2)
    torch.manual_seed(1)
    outputs = model.get_outputs(cameras)
    k = outputs["latent"].shape[0]
    assert outputs["latent"].shape[-2:] == (4, 4), "the whole latent image is rendered (its latent loss)"
    assert outputs["rgb"].shape == (k, 3, 16, 16), "only a 2² latent square (16² pixels) is decoded"
    corners = outputs["decode_crop"]
    torch.manual_seed(1)  # the same draws: jitter, then corners
    again = model.get_outputs(cameras)
    assert torch.equal(again["decode_crop"], corners) and torch.equal(again["pixel_shift"], outputs["pixel_shift"])
    # the decoded square is the decoder's output of that square of the rendered latents ...
    assert torch.allclose(outputs["rgb"], model.autoencoder.decode(crop_images(outputs["latent"], corners, 2)))
    # ... and the loss compares it with the same square of the image, shifted as the rays were
    image = model.batch_images(batch)
    patch = crop_images(shift_images(image, outputs["pixel_shift"]), corners * 8, 16)
    losses = model.get_loss_dict(outputs, batch)
    assert torch.allclose(losses["rgb_loss"], model.config.rgb_weight * F.mse_loss(outputs["rgb"], patch))
    unshifted = crop_images(image, corners * 8, 16)
    assert not torch.allclose(losses["rgb_loss"], model.config.rgb_weight * F.mse_loss(outputs["rgb"], unshifted))

    model.eval()  # evaluation, ns-render and the viewer decode whole views, unjittered
    views = model.get_outputs_for_cameras(cameras)
    assert views[0]["rgb"].shape == (32, 32, 3)


def test_a_crop_as_large_as_the_view_decodes_the_whole_view(tiny_dataset, tmp_path, one_thread):
    data = tiny_dataset(num_scenes=2, size=32)
    trainer = _trainer(data, tmp_path / "run", decode_crop=8, decode_every=1)
    trainer.train()
    cameras, _ = trainer.pipeline.datamanager.next_train(2)
    trainer.pipeline.model.train()
    outputs = trainer.pipeline.model.get_outputs(cameras)
    assert "decode_crop" not in outputs and outputs["rgb"].shape[-2:] == (32, 32)


def test_every_other_view_is_decoded_whole_and_compared_with_its_own_shifted_image(tiny_dataset, tmp_path, one_thread):
    data = tiny_dataset(num_scenes=2, size=32)
    trainer = _trainer(data, tmp_path / "run", decode_every=2, pixel_jitter=True)
    trainer.train()
    model = trainer.pipeline.model
    model.train()
    cameras, batch = trainer.pipeline.datamanager.next_train(2)
    outputs = model.get_outputs(cameras)
    k = outputs["latent"].shape[0]
    assert k == 4 and outputs["rgb"].shape == (2, 3, 32, 32), "views 0 and 2 of 4 (one of each scene), whole"
    assert torch.allclose(outputs["rgb"], model.autoencoder.decode(outputs["latent"][::2]), atol=1e-6)
    image = model.batch_images(batch)
    target = shift_images(image[::2], outputs["pixel_shift"][::2])
    losses = model.get_loss_dict(outputs, batch)
    assert torch.allclose(losses["rgb_loss"], model.config.rgb_weight * F.mse_loss(outputs["rgb"], target))
    wrong = shift_images(image[1::2], outputs["pixel_shift"][1::2])
    assert not torch.allclose(losses["rgb_loss"], model.config.rgb_weight * F.mse_loss(outputs["rgb"], wrong))
