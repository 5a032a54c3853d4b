"""Tri-plane scenes in the latent space of an image autoencoder: the model of ``3dae-autoencoder`` and
``3dae-latent``.

Phases (switched by the training step, see :func:`phase_at`):

* ``3dae-autoencoder`` (stage 1, ``stage="autoencoder"``): ``ae_pretrain`` (optional: only ``‖D(E(x))−x‖²``, for an
  autoencoder trained from scratch) → ``warmup`` (E and D frozen, cached latents, planes learn) → ``joint`` (latent,
  RGB, autoencoder and TV losses; E, D and the scenes learn together: the latent space becomes 3D-aware).
* ``3dae-latent`` (``stage="scenes"``): ``latent`` (cached latents only: no encoder or decoder in the step) →
  ``finetune`` from ``finetune_start`` (RGB loss through the decoder; D and the planes learn).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Parameter
from torchmetrics.functional.image import peak_signal_noise_ratio

from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation

from nerfstudio_3dae.autoencoder import LatentAutoencoder, NormaliserConfig, is_encoder_tensor
from nerfstudio_3dae.autoencoder_source import load_bases, resolve_autoencoder
from nerfstudio_3dae.metrics import image_metrics, rgb_metrics
from nerfstudio_3dae.model import TriplaneModel, TriplaneModelConfig, _hwc, _nchw

Phase = Literal["ae_pretrain", "warmup", "joint", "latent", "finetune"]


def phase_at(step: int, stage: str, ae_pretrain_steps: int, warmup_steps: int, finetune_start: int) -> Phase:
    """The training phase at ``step``."""
    if stage == "autoencoder":
        if step < ae_pretrain_steps:
            return "ae_pretrain"
        return "warmup" if step < ae_pretrain_steps + warmup_steps else "joint"
    return "latent" if finetune_start < 0 or step < finetune_start else "finetune"


@dataclass
class LatentTriplaneModelConfig(TriplaneModelConfig):
    """Tri-planes rendered as latent images (64x fewer rays at factor 8), decoded by the autoencoder."""

    _target: Type = field(default_factory=lambda: LatentTriplaneModel)
    stage: Literal["autoencoder", "scenes"] = "scenes"
    """'autoencoder': stage 1, the 3D-aware autoencoder trained with scenes; 'scenes': new scenes in a frozen
    latent space, then a decoder fine-tune."""
    autoencoder: str = "embedded"
    """Where the autoencoder comes from: 'embedded' (the project's own small weights, offline), 'scratch' (random
    small autoencoder, stage 1 only), a diffusers folder (save_pretrained), a 3dae-autoencoder run folder (its
    autoencoder/ is used), or a model-hub id such as 'stabilityai/sd-vae-ft-mse' (needs a hub)."""
    autoencoder_kind: Literal["auto", "kl", "tiny"] = "auto"
    """Class of the autoencoder (auto: from its config.json)."""
    normaliser: Literal["auto", "tanh", "linear", "none"] = "auto"
    """Latent normalisation: tanh(scale z) (the paper), z*scale, none; auto: what the autoencoder folder says
    (else tanh)."""
    normaliser_scale: float = 0.02
    """Scale of the normaliser when it is not 'auto' (paper: tanh(0.02 z))."""
    scratch_width: int = 32
    """Base width of the 'scratch' autoencoder."""
    bases: Optional[Path] = None
    """Initialise the shared bases from a 3dae-autoencoder run (folder or its autoencoder/bases.pt)."""
    latent_weight: float = 1.0
    """Weight of ‖render − E(x)‖² (latent space)."""
    rgb_weight: float = 1.0
    """Weight of ‖D(render) − x‖² (stage-1 joint phase and decoder fine-tune)."""
    ae_weight: float = 0.1
    """Weight of ‖D(E(x)) − x‖² (stage 1)."""
    ae_pretrain_steps: int = 0
    """Stage 1: steps that train only the autoencoder (useful from 'scratch')."""
    warmup_steps: int = 0
    """Stage 1: steps with E and D frozen and cached latents before the joint phase."""
    finetune_start: int = -1
    """Stage 'scenes': step at which the decoder fine-tune starts (-1: never)."""
    finetune_plane_lr_factor: float = 0.1
    """Stage 'scenes': the plane/MLP learning rates are multiplied by this when the fine-tune starts (1e-2 → 1e-3)."""
    joint_plane_lr_factor: float = 0.1
    """Stage 1: the micro-plane and MLP learning rates are multiplied by this in the joint phase (paper: warm-up
    1e-2, joint 1e-3), relative to the rates the optimizers are configured with."""


class LatentTriplaneModel(TriplaneModel):
    config: LatentTriplaneModelConfig

    def populate_modules(self) -> None:
        c = self.config
        normaliser = None if c.normaliser == "auto" else NormaliserConfig(kind=c.normaliser, scale=c.normaliser_scale)
        self.autoencoder: LatentAutoencoder = resolve_autoencoder(
            c.autoencoder, c.autoencoder_kind, normaliser, c.scratch_width
        )
        super().populate_modules()
        if c.bases is not None:
            with torch.no_grad():
                self.field.bank.bases.copy_(load_bases(c.bases, tuple(self.field.bank.bases.shape)))
        # the fixed background: the latent of a white image (followed while stage 1 changes the encoder)
        self.register_buffer("background_latent", self._white_latent())
        self.step = 0
        # Which phase's learning-rate change was applied; saved with checkpoints so a resumed run does not
        # scale the rates twice (0: none, 1: joint, 2: finetune).
        self.register_buffer("lr_phase", torch.zeros((), dtype=torch.long))
        self._set_trainable(self.phase)

    # -------------------------------------------------------------------------------- space

    @property
    def output_channels(self) -> int:
        return self.autoencoder.latent_channels

    @property
    def output_range(self) -> Tuple[float, float]:
        return (-1.0, 1.0) if self.autoencoder.normaliser.kind == "tanh" else (-4.0, 4.0)

    @property
    def downscale(self) -> int:
        return self.autoencoder.factor

    @torch.no_grad()
    def _white_latent(self) -> Tensor:
        p = next(self.autoencoder.parameters())
        white = torch.ones(1, 3, 2 * self.downscale, 2 * self.downscale, device=p.device)
        return self.autoencoder.encode(white).mean(dim=(0, 2, 3))

    def background_value(self) -> Tensor:
        if self.config.stage == "autoencoder" and self.training:
            self.background_latent.copy_(self._white_latent())
        return self.background_latent

    @property
    def phase(self) -> Phase:
        c = self.config
        return phase_at(self.step, c.stage, c.ae_pretrain_steps, c.warmup_steps, c.finetune_start)

    @property
    def uses_cached_latents(self) -> bool:
        """Whether the current phase reads latents from the datamanager's cache."""
        return self.phase in ("warmup", "latent")

    def _set_trainable(self, phase: Phase) -> None:
        ae = self.autoencoder.model
        learns_decoder = phase in ("ae_pretrain", "joint", "finetune")
        learns_encoder = phase in ("ae_pretrain", "joint")
        for name, p in ae.named_parameters():
            p.requires_grad_(learns_encoder if is_encoder_tensor(name) else learns_decoder)

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        groups = super().get_param_groups()
        named = list(self.autoencoder.model.named_parameters())
        groups["decoder"] = [p for n, p in named if not is_encoder_tensor(n)]
        if self.config.stage == "autoencoder":
            groups["encoder"] = [p for n, p in named if is_encoder_tensor(n)]
        return groups

    def get_training_callbacks(self, attrs: TrainingCallbackAttributes) -> List[TrainingCallback]:
        c = self.config
        lr_changes = {  # phase -> (code, groups, factor)
            "joint": (1, ("micro", "mlp"), c.joint_plane_lr_factor),
            "finetune": (2, ("micro", "mixing", "bases", "mlp"), c.finetune_plane_lr_factor),
        }

        def before_step(step: int) -> None:
            self.step = step
            phase = self.phase
            self._set_trainable(phase)
            if phase in lr_changes and attrs.optimizers is not None:
                code, groups, factor = lr_changes[phase]
                if int(self.lr_phase) < code:
                    for group in groups:
                        _scale_lr(attrs.optimizers, group, factor)
                    self.lr_phase.fill_(code)

        return [TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], before_step)]

    # -------------------------------------------------------------------------------- training

    def get_outputs(self, cameras) -> Dict[str, Tensor]:
        phase = self.phase if self.training else "joint"
        out: Dict[str, Tensor] = {"phase": phase}  # type: ignore[dict-item]
        if phase != "ae_pretrain":
            rendered = self.render(cameras)
            out.update(latent=rendered["features"], depth=rendered["depth"],
                       accumulation=rendered["accumulation"], planes=rendered["planes"])
            if phase in ("joint", "finetune"):
                out["rgb"] = self.autoencoder.decode(rendered["features"])
        return out

    def target_latents(self, batch, phase: str) -> Tensor:
        if phase in ("warmup", "latent", "finetune") and "latent" in batch:
            return batch["latent"].to(self.device)
        if phase in ("warmup", "latent"):
            raise RuntimeError(f"phase {phase!r} needs cached latents; the pipeline attaches them to the datamanager")
        return self.autoencoder.encode(_nchw(batch["image"]).to(self.device))

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        c, phase = self.config, outputs["phase"]
        image = _nchw(batch["image"]).to(self.device)
        losses: Dict[str, Tensor] = {}
        if phase in ("ae_pretrain", "joint"):
            losses["ae_loss"] = c.ae_weight * F.mse_loss(self.autoencoder(image), image)
        if phase == "ae_pretrain":
            return losses
        if phase != "finetune":
            losses["latent_loss"] = c.latent_weight * F.mse_loss(outputs["latent"], self.target_latents(batch, phase))
        if "rgb" in outputs:
            losses["rgb_loss"] = c.rgb_weight * F.mse_loss(outputs["rgb"], image)
        losses.update(self.regularisers(outputs))
        return losses

    def get_metrics_dict(self, outputs, batch) -> Dict[str, Tensor]:
        metrics: Dict[str, Tensor] = {}
        if "latent" in outputs and "latent" in batch:
            metrics["latent_psnr"] = peak_signal_noise_ratio(outputs["latent"].detach(), batch["latent"].to(self.device), data_range=2.0)
        if "rgb" in outputs:
            metrics["psnr"] = peak_signal_noise_ratio(outputs["rgb"].detach().clamp(0, 1), _nchw(batch["image"]).to(self.device), data_range=1.0)
        return metrics

    # -------------------------------------------------------------------------------- eval / viewer

    def images_for_camera(self, out: Dict[str, Tensor], height: int, width: int) -> Dict[str, Tensor]:
        rgb = self.autoencoder.decode(out["features"], clamp=True)  # [1, 3, h*f, w*f]
        return {
            "rgb": _hwc(rgb, height, width),
            "latent": _hwc(out["features"], height, width, mode="nearest"),  # a latent pixel covers f x f pixels
            "depth": _hwc(out["depth"], height, width),
            "accumulation": _hwc(out["accumulation"], height, width),
        }

    def get_image_metrics_and_images(self, outputs, batch):
        gt = batch["image"].to(self.device)
        metrics = rgb_metrics(outputs["rgb"], gt)
        if "latent" in batch:  # the nearest-upsampled latent, averaged back over each f x f block: exact
            h, w = batch["latent"].shape[-2:]
            pred = F.interpolate(outputs["latent"].permute(2, 0, 1)[None], size=(h, w), mode="area")
            target = batch["latent"].to(self.device).permute(1, 2, 0)
            metrics.update(image_metrics(pred[0].permute(1, 2, 0), target, data_range=2.0, prefix="latent_"))
        autoencoded = self.autoencoder.decode(self.autoencoder.encode(_nchw(gt)), clamp=True)
        metrics.update(rgb_metrics(autoencoded[0].permute(1, 2, 0), gt, prefix="autoencoded_"))
        images = {"img": torch.cat([gt, outputs["rgb"]], dim=1), "depth": outputs["depth"]}
        return metrics, images


def _scale_lr(optimizers, group: str, factor: float) -> None:
    """Multiply a parameter group's learning rate, scheduler included (it recomputes lr from base_lrs)."""
    if group not in optimizers.optimizers:
        return
    for pg in optimizers.optimizers[group].param_groups:
        pg["lr"] *= factor
    scheduler = optimizers.schedulers.get(group)
    if scheduler is not None:
        scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]

