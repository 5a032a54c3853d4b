"""The three methods, registered with nerfstudio through the ``nerfstudio.method_configs`` entry point:

* ``3dae-autoencoder`` — stage 1: a 3D-aware autoencoder trained jointly with N scenes (exports it + the bases);
* ``3dae-latent`` — new scenes in a frozen latent space from cached latents, then a decoder fine-tune;
* ``3dae-rgb`` — the paper's baseline, RGB Tri-Planes: 32 scene-specific channels per plane and no shared bases,
  rendered directly in RGB at full resolution (the micro/macro bank in RGB is an ablation reached by options:
  :data:`RGB_BANK_ABLATION`).

Learning rates follow the paper (docs/methods.md). The model defaults are the methods' (a bare
``LatentTriplaneModelConfig()`` is 3dae-latent's model, a bare ``TriplaneModelConfig()`` 3dae-rgb's): a method sets only
what differs between the methods. Building these configs only creates dataclasses.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.plugins.types import MethodSpecification

from nerfstudio_3dae.data.dataparser import ScenesDataParserConfig
from nerfstudio_3dae.datamanager import MultiSceneDatamanagerConfig
from nerfstudio_3dae.latent_model import LatentTriplaneModelConfig
from nerfstudio_3dae.model import PARAM_GROUP, TriplaneModelConfig
from nerfstudio_3dae.pipeline import ThreeDAEPipelineConfig
from nerfstudio_3dae.sparse_adam import FusedAdamOptimizerConfig, RowSparseAdamOptimizerConfig
from nerfstudio_3dae.trainer import EVAL_ALL_IMAGES_AT_END, ThreeDAETrainerConfig


def _adam(lr: float, final: Optional[float] = None, steps: int = 30000) -> Dict:
    scheduler = ExponentialDecaySchedulerConfig(lr_final=final, max_steps=steps) if final is not None else None
    return {"optimizer": FusedAdamOptimizerConfig(lr=lr, eps=1e-15), "scheduler": scheduler}


def _scene_groups(plane_lr: float, basis_lr: float, final_factor: Optional[float], steps: int) -> Dict:
    """Optimizers of the scene parameters: row-sparse Adam for the per-scene tables (a step touches only the
    scenes of its batch), Adam for the shared bases and MLP."""

    def adam(lr: float, sparse: bool = False) -> Dict:
        group = _adam(lr, None if final_factor is None else lr * final_factor, steps)
        if sparse:
            group["optimizer"] = RowSparseAdamOptimizerConfig(lr=lr, eps=1e-15)
        return group

    return {
        PARAM_GROUP.micro: adam(plane_lr, sparse=True),
        PARAM_GROUP.mixing: adam(basis_lr, sparse=True),
        PARAM_GROUP.mlp: adam(plane_lr),
        PARAM_GROUP.bases: adam(basis_lr),
    }


def _trainer(method: str, steps: int, model, image_multiple: int, optimizers: Dict) -> ThreeDAETrainerConfig:
    """A method: the 3dae pipeline (multi-scene datamanager, ``image_multiple`` = the autoencoder factor) + model."""
    datamanager = MultiSceneDatamanagerConfig(dataparser=ScenesDataParserConfig(image_multiple=image_multiple))
    pipeline = ThreeDAEPipelineConfig(datamanager=datamanager, model=model)
    return ThreeDAETrainerConfig(
        method_name=method,
        steps_per_eval_batch=0,
        steps_per_eval_image=500,
        steps_per_eval_all_images=EVAL_ALL_IMAGES_AT_END,  # every test view at the last step, whatever the length
        steps_per_save=1000,
        max_num_iterations=steps,
        mixed_precision=False,
        pipeline=pipeline,
        optimizers=optimizers,
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15, websocket_host="127.0.0.1"),
        vis="viewer",
        # CPU where no GPU is visible (a GPU is a bonus here, never a requirement)
        machine=MachineConfig(device_type="cuda" if torch.cuda.is_available() else "cpu"),
    )


def autoencoder_method() -> ThreeDAETrainerConfig:
    steps = 5000
    # stage 1 with the model's stage-1 defaults (a warm-up on cached latents, then the joint phase), its training rays
    # through latent pixel centres: its joint phase was made and measured without jitter
    model = LatentTriplaneModelConfig(stage="autoencoder", pixel_jitter=False)
    # warm-up rates; the joint phase multiplies micro/MLP by joint_plane_lr_factor (1e-2 -> 1e-3)
    optimizers = {
        **_scene_groups(1e-2, 1e-2, None, steps),
        PARAM_GROUP.encoder: _adam(1e-4),
        PARAM_GROUP.decoder: _adam(1e-4),
    }
    return _trainer("3dae-autoencoder", steps, model, 8, optimizers)


def latent_method() -> ThreeDAETrainerConfig:
    steps = 3000
    # the model's defaults: a quarter of the steps on cached latents alone, then the decoded phase (RGB through the
    # decoder beside the latent loss, planes at their rate, the decoder learning); training rays jittered inside their
    # latent pixels (without, the scenes over-fit their training views): docs/quality.md measures each choice
    model = LatentTriplaneModelConfig(stage="scenes")
    optimizers = {**_scene_groups(1e-2, 1e-2, 0.1, steps), PARAM_GROUP.decoder: _adam(1e-4)}
    return _trainer("3dae-latent", steps, model, 8, optimizers)


RGB_BANK_ABLATION = {
    key: getattr(LatentTriplaneModelConfig(), key) for key in ("micro_channels", "macro_channels", "num_bases")
}
"""Model options that turn ``3dae-rgb`` into the ablation: the latent method's micro/macro bank rendered in RGB
(``--pipeline.model.micro-channels 10 --pipeline.model.macro-channels 22 --pipeline.model.num-bases 50``)."""


def rgb_method() -> ThreeDAETrainerConfig:
    """RGB Tri-Planes (the paper's baseline, the model's defaults): per-scene planes of 32 channels (C = C_mic + C_mac
    of the latent method, all scene-specific), no bases; R, MLP, samples, near/far and losses as the latent method."""
    steps = 3000
    model = TriplaneModelConfig()
    return _trainer("3dae-rgb", steps, model, 1, _scene_groups(1e-2, 1e-2, 0.1, steps))


autoencoder_spec = MethodSpecification(
    config=autoencoder_method(),
    description="3dae stage 1: a 3D-aware autoencoder trained jointly with many tri-plane scenes",
)
latent_spec = MethodSpecification(
    config=latent_method(),
    description="3dae: many tri-plane scenes in the latent space of an autoencoder (+ decoder fine-tune)",
)
rgb_spec = MethodSpecification(
    config=rgb_method(),
    description="3dae baseline: RGB Tri-Planes (32 scene-specific channels per plane, no bases) at full resolution",
)
