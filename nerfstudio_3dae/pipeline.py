"""The 3dae pipeline: nerfstudio's VanillaPipeline plus the two things that tie data and autoencoder together:
filling the datamanager's latent cache with the model's encoder, and exporting a stage-1 autoencoder + bases.

In a multi-process run (``world_size > 1``) the pipeline does not wrap the model in DDP: DDP would all-reduce the
per-scene tables, which are rank-local (:mod:`nerfstudio_3dae.distributed`). Shared parameters start from rank 0's
values here and are averaged by :class:`~nerfstudio_3dae.trainer.ShardedOptimizers`. The run's shard is the one its
dataparser parsed the scenes for (:attr:`ThreeDAEPipeline.shard`, from the model, which has it from the dataparser's
outputs); the trainer takes it from here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Type, Union

import torch
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils import comms
from nerfstudio.utils.misc import step_check
from nerfstudio.utils.rich_utils import CONSOLE
from PIL import Image

from nerfstudio_3dae.accounting import memory_report
from nerfstudio_3dae.autoencoder import encode_in_batches
from nerfstudio_3dae.autoencoder_source import RUN_EXPORT, export_stage1
from nerfstudio_3dae.data.dataparser import SCENE_ID
from nerfstudio_3dae.datamanager import MultiSceneDatamanager
from nerfstudio_3dae.distributed import Shard, broadcast_from_main, gather_scene_rows, own_rows
from nerfstudio_3dae.latent_model import LatentTriplaneModel
from nerfstudio_3dae.metrics import aggregate, lpips_unavailable_reason
from nerfstudio_3dae.viewer_start import StartAtTrainingCamera

MODEL_PREFIX = "_model."
"""Prefix of the model's entries in the pipeline's state dict."""


@dataclass
class ThreeDAEPipelineConfig(VanillaPipelineConfig):
    """VanillaPipeline + latent caching + stage-1 export."""

    _target: Type = field(default_factory=lambda: ThreeDAEPipeline)
    export_every: int = 2000
    """Stage 1: write <run>/autoencoder/ (diffusers folder + bases.pt) every this many steps and at the end."""
    eval_views_per_batch: int = 8
    """Test views rendered together when all of them are evaluated (ns-eval, the all-images evaluation): one render
    and, in latent space, one decode per batch instead of per view."""


def synchronize(device: Union[torch.device, str]) -> None:
    """Wait until ``device`` finished its queued work when it is a CUDA device (kernels run asynchronously: a clock
    read without this times their launch, not their run); nothing for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ThreeDAEPipeline(VanillaPipeline):
    config: ThreeDAEPipelineConfig

    def __init__(self, config: ThreeDAEPipelineConfig, device: str, test_mode="val", world_size: int = 1, **kwargs):
        if world_size > 1:
            _check_sparse_gradients(config)
            if str(device).startswith("cuda"):  # NCCL's object collectives use the current device
                torch.cuda.set_device(torch.device(device))
        # world_size=1: no DDP wrapper (see the module docstring); the scenes are sharded by the process group
        super().__init__(config, device, test_mode=test_mode, world_size=1, **kwargs)
        self.shard: Shard = self.model.shard
        """``(rank, world_size)`` of this process, as the dataparser parsed the scenes for it."""
        if world_size > 1:
            _check_world_size(world_size, self.shard)
        if isinstance(self.datamanager, MultiSceneDatamanager):
            self.datamanager.fit_batch(self.model.downscale)
        self._latents_of: Optional[str] = None
        self._metrics_every: Optional[int] = None
        """Training metrics are computed every this many steps (the trainer's logging interval); None: every step."""
        scene_tables = {id(t) for t in self._scene_tables().values()}
        shared_state = (t for t in self.model.state_dict(keep_vars=True).values() if id(t) not in scene_tables)
        broadcast_from_main(shared_state, self.shard)
        per_scene, shared = memory_report(self.model)
        rank, world = self.shard
        CONSOLE.log(
            f"{self.model.num_scenes} scenes"
            + (f" ({len(self.model.owned_scenes)} on rank {rank} of {world})" if world > 1 else "")
            + f": {per_scene / 1024:.1f} KiB per scene (parameters + Adam state), {shared / 2**20:.1f} MiB shared"
        )
        self.viewer_start = StartAtTrainingCamera(self.start_camera)
        """The viewer opens at a training camera of the shown scene (its default pose is inside the object box)."""
        if test_mode != "inference" and self._is_latent and self.model.uses_cached_latents:
            self.refresh_latents()

    def start_camera(self) -> torch.Tensor:
        """``[3, 4]`` camera-to-world of the first training view of ``model.scene`` (of any view if it has none)."""
        cameras = self.datamanager.train_dataset.cameras
        of_scene = (cameras.metadata[SCENE_ID].reshape(-1) == self.model.scene).nonzero().reshape(-1)
        return cameras.camera_to_worlds[int(of_scene[0]) if len(of_scene) else 0]

    def _scene_tables(self) -> Dict[str, torch.Tensor]:
        """The per-scene parameters and buffers (occupancy grids) by their key in the pipeline's state dict."""
        return {MODEL_PREFIX + name: tensor for name, tensor in self.model.scene_state().items()}

    def checkpoint_state(self) -> Dict[str, Any]:
        """``state_dict()`` with whole per-scene tables (collective in a multi-process run: rows gathered from every
        rank into rank 0's CPU memory, in blocks), so a checkpoint loads in any number of processes."""
        state = self.state_dict()
        for key in self._scene_tables():
            state[key] = gather_scene_rows(state[key], self.model.num_scenes, self.shard)
        return state

    def load_pipeline(self, loaded_state: Dict[str, Any], step: int) -> None:
        """Load a checkpoint; each process keeps the rows of its own scenes."""
        state = dict(loaded_state)
        for key in self._scene_tables():
            if key in state:
                state[key] = own_rows(state[key], self.model.num_scenes, *self.shard)
        super().load_pipeline(state, step)

    @property
    def _is_latent(self) -> bool:
        return isinstance(self.model, LatentTriplaneModel) and isinstance(self.datamanager, MultiSceneDatamanager)

    def refresh_latents(self) -> None:
        """Give the datamanager the latents of the model's current encoder (from the disk cache when it has them)."""
        ae = self.model.autoencoder
        identity = ae.encoder_identity  # latents depend on the encoder only: a decoder fine-tune keeps them
        if identity == self._latents_of:
            return

        def encode(images_uint8: torch.Tensor) -> torch.Tensor:
            was_training = ae.training
            ae.eval()
            latents = encode_in_batches(ae, images_uint8, self.datamanager.config.encode_batch_size)
            ae.train(was_training)
            return latents

        self.datamanager.attach_latents(identity, encode)
        self._latents_of = identity
        self._check_latent_range()

    def _check_latent_range(self) -> None:
        """Warn when cached latents lie outside the range the field can render (unbounded normalisers)."""
        lo, hi = self.model.output_range
        for split, latents in (("training", self.datamanager.train_latents), ("test", self.datamanager.eval_latents)):
            if latents is None or latents.numel() == 0:
                continue
            outside = float(((latents < lo) | (latents > hi)).float().mean())
            if outside > 0:
                CONSOLE.print(
                    f"[yellow]{outside:.2%} of the {split} latents lie outside ({lo:.4g}, {hi:.4g}), the range the "
                    f"field renders with the {self.model.autoencoder.normaliser.kind!r} normaliser: raise "
                    "--pipeline.model.raw-latent-bound (or use the tanh normaliser)"
                )

    def export_autoencoder(self, run_dir: Path) -> Path:
        """Write the (3D-aware) autoencoder and the shared bases under ``run_dir/autoencoder``."""
        folder = export_stage1(run_dir / RUN_EXPORT, self.model.autoencoder, self.model.field.bank.bases)
        CONSOLE.log(f"exported the autoencoder and bases to {folder}")
        return folder

    @torch.no_grad()
    def get_average_eval_image_metrics(
        self, step: Optional[int] = None, output_path: Optional[Path] = None, get_std: bool = False
    ) -> Dict[str, Any]:
        """Metrics over every test view: means (and stds) in each space, and, for ns-eval (``step`` None), the
        means per scene under ``per_scene`` and a note when LPIPS could not be computed."""
        self.eval()
        names = self.model.scene_names
        per_view = []
        seconds = 0.0
        count, size = len(self.datamanager.eval_dataset), max(1, self.config.eval_views_per_batch)
        for first in range(0, count, size):
            cameras, views = self.datamanager.views("eval", range(first, min(first + size, count)))
            synchronize(self.device)
            start = time.perf_counter()
            outputs = self.model.get_outputs_for_cameras(cameras)
            synchronize(self.device)
            seconds += time.perf_counter() - start
            for offset, output in enumerate(outputs):
                index, batch = first + offset, {k: v[offset] for k, v in views.items()}
                metrics, images = self.model.get_image_metrics_and_images(output, batch)
                scene = names[self.datamanager.eval_scene_of(index)]
                per_view.append((scene, metrics))
                if output_path is not None:
                    output_path.mkdir(parents=True, exist_ok=True)
                    picture = (images["img"].clamp(0, 1) * 255).byte().cpu().numpy()
                    Image.fromarray(picture).save(output_path / f"{scene}_{index:05d}.png")
        overall, per_scene = aggregate(per_view, with_std=get_std)
        overall["fps"] = len(per_view) / max(seconds, 1e-9)
        self.train()
        if step is None:  # ns-eval: JSON output; the training loop's writer takes only numbers
            overall["per_scene"] = per_scene  # type: ignore[assignment]
            reason = lpips_unavailable_reason()
            if reason is not None:
                overall["lpips"] = reason  # type: ignore[assignment]
                CONSOLE.print(f"[yellow]{reason}")
        return overall

    def get_train_loss_dict(self, step: int):
        """VanillaPipeline's, except that the training metrics (PSNRs) are computed only at the steps whose metrics the
        trainer writes (``--logging.steps-per-log``, once known from the training callbacks): nerfstudio drops the
        others, and the operators that compute them are a training step's overhead. The losses never use them."""
        cameras, batch = self.datamanager.next_train(step)
        model_outputs = self._model(cameras)
        every = self._metrics_every
        wanted = every is None or step_check(step, every, run_at_zero=True)
        metrics_dict = self.model.get_metrics_dict(model_outputs, batch) if wanted else {}
        loss_dict = self.model.get_loss_dict(model_outputs, batch, metrics_dict)
        return model_outputs, loss_dict, metrics_dict

    def get_training_callbacks(self, attrs: TrainingCallbackAttributes) -> List[TrainingCallback]:
        if attrs.trainer is not None:
            self._metrics_every = attrs.trainer.config.logging.steps_per_log
        callbacks = super().get_training_callbacks(attrs)
        if not self._is_latent:
            return callbacks

        def latents_for_phase(step: int) -> None:  # runs after the model switched phase
            if self.model.uses_cached_latents:
                self.refresh_latents()

        callbacks.append(TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], latents_for_phase))
        if self.model.config.stage == "autoencoder" and attrs.trainer is not None:
            run_dir = attrs.trainer.base_dir

            def export(step: int) -> None:
                if step > 0 and comms.is_main_process():
                    self.export_autoencoder(run_dir)

            callbacks.append(
                TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], export, self.config.export_every)
            )
            callbacks.append(
                TrainingCallback(
                    [TrainingCallbackLocation.AFTER_TRAIN],
                    lambda step: self.export_autoencoder(run_dir) if comms.is_main_process() else None,
                )
            )
        return callbacks


def _check_world_size(world_size: int, shard: Shard) -> None:
    """A clear error for a multi-process run launched without its process group."""
    if shard.world_size != world_size:
        raise RuntimeError(
            f"world_size={world_size} but the torch.distributed process group has {shard.world_size} processes: "
            "launch multi-process runs with ns-train --machine.num-devices (CUDA), ns-3dae-train or torchrun "
            "(docs/scaling.md)"
        )


def _check_sparse_gradients(config: ThreeDAEPipelineConfig) -> None:
    """A clear error for a multi-process run that cannot work, before any data is read."""
    if not getattr(config.model, "sparse_scene_gradients", True):
        raise ValueError(
            "multi-process runs need --pipeline.model.sparse-scene-gradients True (row-sparse Adam keeps one step "
            "count per scene row, which is what lets each process hold its own rows)"
        )
