"""3dae-latent's decoded phase (the fine-tune): RGB through the decoder, the latent loss kept beside it
(``finetune_latent_weight``), the decoder learning or frozen (``finetune_decoder``)."""

from __future__ import annotations

import torch
from conftest import scratch_latent_trainer

from nerfstudio_3dae.autoencoder import is_encoder_tensor


def _trainer(data, out, **model):
    return scratch_latent_trainer(data, out, steps=3, **model)


def _decoder(model) -> dict:
    named = model.autoencoder.model.named_parameters()
    return {n: p.detach().clone() for n, p in named if not is_encoder_tensor(n)}


def test_the_decoded_phase_keeps_the_latent_loss_and_can_freeze_the_decoder(tiny_dataset, tmp_path, one_thread):
    data = tiny_dataset(num_scenes=2)
    frozen = _trainer(data, tmp_path / "frozen", finetune_start=0, finetune_latent_weight=0.5, finetune_decoder=False)
    model = frozen.pipeline.model
    before, micro = _decoder(model), model.field.bank.micro.detach().clone()
    frozen.train()
    assert model.phase == "finetune"
    assert frozen.pipeline.datamanager.train_latents is not None, "a kept latent loss reads the cached latents"
    _, losses, _ = frozen.pipeline.get_train_loss_dict(3)
    assert set(losses) >= {"latent_loss", "rgb_loss"}
    assert all(torch.equal(before[n], p) for n, p in _decoder(model).items()), "a frozen decoder does not move"
    assert not torch.equal(micro, model.field.bank.micro), "the scenes learn"
    # the decoded (RGB) loss alone reaches the planes of the batch's scenes, through the frozen decoder
    assert losses["rgb_loss"].requires_grad, "the RGB loss is a function of the render (the decoder is frozen)"
    model.field.bank.micro.grad = None
    losses["rgb_loss"].backward()
    grad = model.field.bank.micro.grad
    grad = grad.to_dense() if grad is not None and grad.is_sparse else grad
    assert grad is not None and float(grad.abs().sum()) > 0, "the RGB loss gives the scenes' planes a gradient"

    # without the latent loss (and the TV loss) the scenes learn from the decoded loss alone
    learning = _trainer(
        data, tmp_path / "learning", finetune_start=0, finetune_latent_weight=0.0, finetune_decoder=True, tv_weight=0.0
    )
    model = learning.pipeline.model
    before, micro = _decoder(model), model.field.bank.micro.detach().clone()
    learning.train()
    _, losses, _ = learning.pipeline.get_train_loss_dict(3)
    assert set(losses) == {"rgb_loss"}
    assert any(not torch.equal(before[n], p) for n, p in _decoder(model).items()), "the decoder learns"
    assert not torch.equal(micro, model.field.bank.micro), "the scenes learn from the decoded loss"
