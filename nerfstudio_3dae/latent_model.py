"""Tri-plane scenes in the latent space of an image autoencoder: the model of ``3dae-autoencoder`` and
``3dae-latent``.

Phases (switched by the training step, see :func:`phase_at`):

* ``3dae-autoencoder`` (stage 1, ``stage="autoencoder"``): ``ae_pretrain`` (optional: only ``‖D(E(x))−x‖²``, for an
  autoencoder trained from scratch) → ``warmup`` (E and D frozen, cached latents, planes learn) → ``joint`` (latent,
  RGB, autoencoder and TV losses; E, D and the scenes learn together: the latent space becomes 3D-aware).
* ``3dae-latent`` (``stage="scenes"``): ``latent`` (cached latents only: no encoder or decoder in the step) →
  ``finetune`` from ``finetune_start``: the decode-scene loss ``‖D(R(T_s)) − x‖²`` (RGB through the decoder), with
  ``finetune_latent_weight`` × the latent loss beside it; the planes learn, and the decoder too unless
  ``finetune_decoder`` is off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor
from torch.nn import Parameter

from nerfstudio_3dae.autoencoder import LatentAutoencoder, NormaliserConfig, is_encoder_tensor
from nerfstudio_3dae.autoencoder_source import bases_beside_autoencoder, load_bases, resolve_autoencoder
from nerfstudio_3dae.image_layout import crop_images, first_to_hwc, hwc_to_nchw, random_crop_corners, shift_images
from nerfstudio_3dae.metrics import batch_psnr, image_metrics, rgb_metrics
from nerfstudio_3dae.model import PARAM_GROUP, TriplaneModel, TriplaneModelConfig
from nerfstudio_3dae.transfer import on_device

Phase = Literal["ae_pretrain", "warmup", "joint", "latent", "finetune"]


def phase_at(step: int, stage: str, ae_pretrain_steps: int, warmup_steps: int, finetune_start: int) -> Phase:
    """The training phase at ``step``."""
    if stage == "autoencoder":
        if step < ae_pretrain_steps:
            return "ae_pretrain"
        return "warmup" if step < ae_pretrain_steps + warmup_steps else "joint"
    return "latent" if finetune_start < 0 or step < finetune_start else "finetune"


def latent_range(normaliser: NormaliserConfig, raw_bound: float) -> Tuple[float, float]:
    """``(lo, hi)`` of the normalised latents a field renders: ``(-1, 1)`` for ``tanh``; for the unbounded
    ``linear`` and ``none`` normalisers, ``±normalise(raw_bound)``. Latent PSNR uses ``hi - lo`` as its data range."""
    if not (math.isfinite(raw_bound) and raw_bound > 0):
        raise ValueError(f"--pipeline.model.raw-latent-bound must be finite and > 0, got {raw_bound}")
    if normaliser.kind == "tanh":
        return (-1.0, 1.0)
    hi = float(normaliser.normalise(torch.tensor(float(raw_bound))))
    return (-hi, hi)


@dataclass
class LatentTriplaneModelConfig(TriplaneModelConfig):
    """Tri-planes rendered as latent images (64x fewer rays at factor 8), decoded by the autoencoder."""

    _target: Type = field(default_factory=lambda: LatentTriplaneModel)
    micro_channels: int = 10
    """Scene-specific channels per plane (C_mic)."""
    macro_channels: int = 22
    """Channels mixed from the shared bases (C_mac); 0 disables the bases."""
    num_bases: int = 50
    """Number of shared basis planes M."""
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
    raw_latent_bound: float = 40.0
    """Largest |raw latent| the field can render with the unbounded 'linear' and 'none' normalisers (rendered range:
    ±normalise(bound); tanh always gives (-1, 1)). 40 is ~7 standard deviations of SD 1.5's raw latents (its scaling
    factor 0.18215 is 1/std); a warning says when cached latents fall outside."""
    scratch_width: int = 32
    """Base width of the 'scratch' autoencoder."""
    bases: Optional[Path] = None
    """Initialise the shared bases from a 3dae-autoencoder run (folder or its autoencoder/bases.pt). Unset: from the
    autoencoder's run when `autoencoder` names one (see `bases_from_autoencoder`), else random."""
    bases_from_autoencoder: bool = True
    """When `bases` is unset and `autoencoder` is a 3dae-autoencoder run (or its autoencoder/ export), start the
    shared bases from that run's bases.pt (said in the log). False: random bases."""
    latent_weight: float = 1.0
    """Weight of ‖render − E(x)‖² (latent space)."""
    rgb_weight: float = 1.0
    """Weight of ‖D(render) − x‖² (stage-1 joint phase and decoder fine-tune)."""
    ae_weight: float = 10.0
    """Weight of ‖D(E(x)) − x‖² (stage 1's joint phase) against the latent and RGB losses. The paper's 0.1 lets a
    short joint phase cost 2.6 dB of D(E(x)) on new scenes. From the autoencoder-only export, the recipe's joint
    phase keeps 29.32 dB of held-out D(E(x)) at 10 against 28.02 at 1.0, and its latents decode as well or better
    (24.08 vs 24.01 dB on the medium cars; docs/autoencoder.md). The embedded autoencoder was made at 10."""
    ae_pretrain_steps: int = 0
    """Stage 1: steps that train only the autoencoder (useful from 'scratch')."""
    warmup_steps: int = 500
    """Stage 1: steps with E and D frozen and cached latents before the joint phase."""
    finetune_start: int = 750
    """Stage 'scenes': step at which the decoded phase (the decoder fine-tune) starts: a quarter of 3dae-latent's
    3000 steps on cached latents alone first (-1: never, latents only; docs/quality.md measures the share)."""
    finetune_plane_lr_factor: float = 1.0
    """Stage 'scenes': the plane/MLP learning rates are multiplied by this when the fine-tune starts (the paper's
    stage 3: 0.1, 1e-2 → 1e-3; 1: the scenes keep learning at their rate, the decoded phase is a scene fit)."""
    finetune_latent_weight: float = 1.0
    """Stage 'scenes': weight of the latent loss ‖render − E(x)‖² kept beside the RGB loss in the fine-tune (0: RGB
    through the decoder only, as the paper's stage 3). Keeps the rendered latents near ones the decoder knows."""
    pixel_jitter: bool = True
    """Training rays pass through a random point of their latent pixel (one offset per view) instead of its centre,
    and the RGB loss compares with the image shifted alike. A 16² render samples a view at 256 points only; the
    jitter constrains the field between them (the latent of a pixel summarises its whole 8x8 footprint); without
    it the scenes over-fit their training views (docs/quality.md). Evaluation and viewer renders never jitter.
    ``3dae-autoencoder`` turns it off: its joint phase was made and measured without."""
    shift_latent_target: bool = False
    """With ``pixel_jitter``: the latent loss compares the jittered render with the target latents resampled
    (bilinearly) at the same shift, as the RGB loss does with the image; False: with the latent of the pixel the ray
    passed through, which summarises the pixel's whole footprint (a box filter). Measured in docs/quality.md."""
    decode_every: int = 2
    """Decoded phase: decode every n-th view of a training batch (whole views, as evaluation decodes them; the batch
    is laid out scene after scene, so with 2 views a scene each scene has one decoded); the other views keep their
    latent loss. 2 halves the decoder's work, which is most of a decoded step (docs/quality.md); 1: every view."""
    decode_crop: int = 0
    """Decoded phase: decode only a random square of this side (latent pixels) of each decoded view, the RGB loss on
    the matching image patch (shifted alike when rays are jittered); 0, or at least the latent image's side: whole
    views. A quarter of the decoder's work at 8 of 16, but measured 0.86 dB lower on the medium scenes than whole
    views (docs/quality.md): the decoder learns on statistics and borders it never meets in evaluation."""
    finetune_decoder: bool = True
    """Stage 'scenes': the decoder learns in the fine-tune (shared by every scene of the run). False: the decoder
    stays frozen and only the scenes learn from the RGB loss (the paper's decode-scene loss with D fixed)."""
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
        self._init_bases()
        # the fixed background: the latent of a white image (followed while stage 1 changes the encoder)
        self.register_buffer("background_latent", self._white_latent())
        self.step = 0
        self._set_trainable(self.phase)

    def _init_bases(self) -> None:
        """Shared bases from ``bases``, else from the autoencoder's stage-1 run, else the random initialisation."""
        c, shape = self.config, tuple(self.field.bank.bases.shape)
        if c.bases is not None:
            source, given_by = Path(c.bases), "--pipeline.model.bases"
        elif c.bases_from_autoencoder and (beside := bases_beside_autoencoder(str(c.autoencoder))) is not None:
            source = beside
            given_by = (
                "--pipeline.model.autoencoder, a stage-1 run (--pipeline.model.bases-from-autoencoder False: random)"
            )
        else:
            return
        with torch.no_grad():
            self.field.bank.bases.copy_(load_bases(source, shape, option=given_by))
        CONSOLE.log(f"shared bases from {source}, given by {given_by}")

    # -------------------------------------------------------------------------------- space

    @property
    def output_channels(self) -> int:
        return self.autoencoder.latent_channels

    @property
    def output_range(self) -> Tuple[float, float]:
        return latent_range(self.autoencoder.normaliser, self.config.raw_latent_bound)

    @property
    def latent_data_range(self) -> float:
        """Data range of latent PSNR/SSIM: the width of :attr:`output_range`."""
        lo, hi = self.output_range
        return hi - lo

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
    def active_phase(self) -> Phase:
        """What a forward pass computes now: the training phase in training mode; in eval mode ``"joint"`` (render
        and decode). ``get_outputs`` and ``get_loss_dict`` both read it, so they always agree."""
        return self.phase if self.training else "joint"

    @property
    def uses_cached_latents(self) -> bool:
        """Whether the current phase reads latents from the datamanager's cache (the fine-tune does when it keeps a
        latent loss)."""
        return self.phase in ("warmup", "latent") or (
            self.phase == "finetune" and self.config.finetune_latent_weight > 0
        )

    def _set_trainable(self, phase: Phase) -> None:
        ae = self.autoencoder.model
        learns_decoder = phase in ("ae_pretrain", "joint") or (phase == "finetune" and self.config.finetune_decoder)
        learns_encoder = phase in ("ae_pretrain", "joint")
        for name, p in ae.named_parameters():
            p.requires_grad_(learns_encoder if is_encoder_tensor(name) else learns_decoder)

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        groups = super().get_param_groups()
        named = list(self.autoencoder.model.named_parameters())
        groups[PARAM_GROUP.decoder] = [p for n, p in named if not is_encoder_tensor(n)]
        if self.config.stage == "autoencoder":
            groups[PARAM_GROUP.encoder] = [p for n, p in named if is_encoder_tensor(n)]
        return groups

    def get_training_callbacks(self, attrs: TrainingCallbackAttributes) -> List[TrainingCallback]:
        c, g = self.config, PARAM_GROUP
        lr_changes = {  # phase -> (groups, factor)
            "joint": ((g.micro, g.mlp), c.joint_plane_lr_factor),
            "finetune": ((g.micro, g.mixing, g.bases, g.mlp), c.finetune_plane_lr_factor),
        }

        def before_step(step: int) -> None:
            self.step = step
            phase = self.phase
            self._set_trainable(phase)
            if phase in lr_changes and attrs.optimizers is not None:
                groups, factor = lr_changes[phase]
                for group in groups:
                    enter_lr_phase(attrs.optimizers, group, phase, factor)

        return [TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], before_step)]

    # -------------------------------------------------------------------------------- training

    def get_outputs(self, cameras) -> Dict[str, Tensor]:
        phase = self.active_phase
        out: Dict[str, Tensor] = {}
        if phase != "ae_pretrain":
            if self.training and self.config.pixel_jitter:
                out["pixel_shift"] = pixel_jitter(math.prod(cameras.shape), self.downscale, self.device)
            rendered = self.render(cameras, pixel_shift=out.get("pixel_shift"))
            out.update(
                latent=rendered["features"],
                depth=rendered["depth"],
                accumulation=rendered["accumulation"],
                planes=rendered["planes"],
            )
            if phase in ("joint", "finetune"):
                out.update(self.decode_for_loss(rendered["features"], phase))
        return out

    def decode_for_loss(self, latents: Tensor, phase: Phase) -> Dict[str, Tensor]:
        """``rgb``: the decoded ``latents`` ``[K, c, h, w]``. In a training step of the decoded phase only every
        ``decode_every``-th view (their indices in ``decoded_views``), and with ``decode_crop`` smaller than the view
        only a random ``decode_crop``² square of each (its top-left latent pixel in ``decode_crop``, ``[k, 2]``):
        :meth:`seen_by_rays` cuts the images alike."""
        c = self.config
        if phase != "finetune" or not self.training:
            return {"rgb": self.autoencoder.decode(latents)}
        out: Dict[str, Tensor] = {}
        if c.decode_every > 1:
            out["decoded_views"] = torch.arange(0, latents.shape[0], c.decode_every, device=latents.device)
            latents = latents[:: c.decode_every]
        if 0 < c.decode_crop < min(latents.shape[-2:]):
            out["decode_crop"] = random_crop_corners(latents.shape[0], tuple(latents.shape[-2:]), c.decode_crop,
                                                     latents.device)  # fmt: skip
            latents = crop_images(latents, out["decode_crop"], c.decode_crop)
        out["rgb"] = self.autoencoder.decode(latents)
        return out

    def target_latents(self, batch, phase: str, image: Optional[Tensor]) -> Tensor:
        """The latents the render is compared with: the cached ones, or (stage 1's joint phase) the encoded
        ``image``, the batch's images as :meth:`batch_images` gives them."""
        if phase in ("warmup", "latent", "finetune") and "latent" in batch:
            return on_device(batch["latent"], self.device)
        if phase in ("warmup", "latent", "finetune"):
            raise RuntimeError(f"phase {phase!r} needs cached latents; the pipeline attaches them to the datamanager")
        return self.autoencoder.encode(image)

    def latent_seen_by_rays(self, outputs, latents: Tensor) -> Tensor:
        """Target ``latents`` ``[K, c, h, w]`` resampled where jittered rays passed (``shift_latent_target``): the
        image shift in latent pixels; unchanged otherwise (each latent stands for its pixel's whole footprint)."""
        if not self.config.shift_latent_target or "pixel_shift" not in outputs:
            return latents
        return shift_images(latents, outputs["pixel_shift"] / self.downscale)

    def seen_by_rays(self, outputs, image: Tensor) -> Tensor:
        """``image`` ``[K, 3, H, W]`` as the rendered rays saw it (resampled alike when they were jittered), only the
        decoded views, cut to the decoded square when only a crop of each was decoded: what ``outputs["rgb"]`` is
        compared with."""
        shift = outputs.get("pixel_shift")
        if "decoded_views" in outputs:
            image = image[outputs["decoded_views"]]
            shift = None if shift is None else shift[outputs["decoded_views"]]
        if shift is not None:
            image = shift_images(image, shift)
        if "decode_crop" in outputs:
            f = self.downscale
            image = crop_images(image, outputs["decode_crop"] * f, self.config.decode_crop * f)
        return image

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        c, phase = self.config, self.active_phase
        needs_image = phase in ("ae_pretrain", "joint") or "rgb" in outputs
        image = self.batch_images(batch) if needs_image else None  # once, for the losses that compare with it
        losses: Dict[str, Tensor] = {}
        if phase in ("ae_pretrain", "joint"):
            losses["ae_loss"] = c.ae_weight * F.mse_loss(self.autoencoder(image), image)
        if phase == "ae_pretrain":
            return losses
        latent_weight = c.finetune_latent_weight if phase == "finetune" else c.latent_weight
        if latent_weight > 0:
            target = self.latent_seen_by_rays(outputs, self.target_latents(batch, phase, image))
            losses["latent_loss"] = latent_weight * F.mse_loss(outputs["latent"], target)
        if "rgb" in outputs:
            losses["rgb_loss"] = c.rgb_weight * F.mse_loss(outputs["rgb"], self.seen_by_rays(outputs, image))
        losses.update(self.regularisers(outputs))
        return losses

    def get_metrics_dict(self, outputs, batch) -> Dict[str, Tensor]:
        metrics: Dict[str, Tensor] = {}
        if "latent" in outputs and "latent" in batch:
            metrics["latent_psnr"] = batch_psnr(
                outputs["latent"].detach(), batch["latent"].to(self.device), data_range=self.latent_data_range
            )
        if "rgb" in outputs:
            image = self.seen_by_rays(outputs, self.batch_images(batch))
            metrics["psnr"] = batch_psnr(outputs["rgb"].detach().clamp(0, 1), image, data_range=1.0)
        return metrics

    # -------------------------------------------------------------------------------- eval / viewer

    def images_for_cameras(self, out: Dict[str, Tensor], height: int, width: int) -> List[Dict[str, Tensor]]:
        rgb = self.autoencoder.decode(out["features"], clamp=True)  # [K, 3, h*f, w*f]: one decode for every camera
        return [
            {
                "rgb": first_to_hwc(rgb[k : k + 1], height, width),
                # a latent pixel covers f x f pixels
                "latent": first_to_hwc(out["features"][k : k + 1], height, width, mode="nearest"),
                "depth": first_to_hwc(out["depth"][k : k + 1], height, width),
                "accumulation": first_to_hwc(out["accumulation"][k : k + 1], height, width),
            }
            for k in range(rgb.shape[0])
        ]

    def get_image_metrics_and_images(self, outputs, batch):
        gt = batch["image"].to(self.device)
        metrics = rgb_metrics(outputs["rgb"], gt)
        if "latent" in batch:  # the nearest-upsampled latent, averaged back over each f x f block: exact
            h, w = batch["latent"].shape[-2:]
            pred = F.interpolate(hwc_to_nchw(outputs["latent"]), size=(h, w), mode="area")
            target = batch["latent"].to(self.device).permute(1, 2, 0)
            metrics.update(image_metrics(first_to_hwc(pred, h, w), target, self.latent_data_range, prefix="latent_"))
        autoencoded = first_to_hwc(
            self.autoencoder.decode(self.autoencoder.encode(hwc_to_nchw(gt)), clamp=True), *gt.shape[:2]
        )
        metrics.update(rgb_metrics(autoencoded, gt, prefix="autoencoded_"))
        # ground truth | decoded render | the autoencoder alone, D(E(x)): where the decoded render loses its dB
        images = {"img": torch.cat([gt, outputs["rgb"], autoencoded], dim=1), "depth": outputs["depth"]}
        return metrics, images


def pixel_jitter(count: int, downscale: int, device: torch.device) -> Tensor:
    """A random shift ``[count, 2]`` (image pixels, ``(x, y)``) of each camera's latent pixel grid, within a latent
    pixel: the rays of camera ``k`` pass through pixel centre + shift, and its image must be resampled at the same
    shift to match (:func:`nerfstudio_3dae.image_layout.shift_images`)."""
    return (torch.rand(count, 2, device=device) - 0.5) * downscale


LR_PHASE = "3dae_lr_phase"
"""Key of an optimiser parameter group naming the training phase whose learning-rate factor the group's rate carries:
saved and loaded with the optimiser's state, so a resumed run never applies a factor twice."""


def enter_lr_phase(optimizers, group: str, phase: str, factor: float) -> bool:
    """Multiply the learning rate of the parameter group ``group`` (its scheduler's base rates too: they recompute the
    rate every step) by ``factor``, once per ``phase``: the group records the phase it entered. Whether it scaled."""
    if group not in optimizers.optimizers:
        return False
    param_groups = optimizers.optimizers[group].param_groups
    if all(pg.get(LR_PHASE) == phase for pg in param_groups):
        return False
    for pg in param_groups:
        pg["lr"] *= factor
        pg[LR_PHASE] = phase
    scheduler = optimizers.schedulers.get(group)
    if scheduler is not None:
        scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
    return True
