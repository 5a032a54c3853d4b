"""The nerfstudio model of many tri-plane scenes, rendered straight in RGB (the ``3dae-rgb`` baseline).

:mod:`nerfstudio_3dae.latent_model` extends it to the latent space of an autoencoder. Both render whole images
from ``Cameras`` (like splatfacto); a camera's scene comes from ``camera.metadata["scene_id"]`` or, for cameras
that carry none (viewer, ns-render paths), from :attr:`TriplaneModel.scene`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.scene_box import OrientedBox
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.viewer.viewer_elements import ViewerDropdown
from torch import Tensor
from torch.nn import Parameter

from nerfstudio_3dae.backends import decide_backend
from nerfstudio_3dae.checkpoints import allow_nerfstudio_checkpoints
from nerfstudio_3dae.data.dataparser import SHARD
from nerfstudio_3dae.distributed import Shard, broadcast_object, owned_scenes, rows_of, scene_table_names
from nerfstudio_3dae.field import RenderSettings, TriplaneField
from nerfstudio_3dae.image_layout import first_to_hwc, hwc_to_nchw
from nerfstudio_3dae.metrics import batch_psnr, rgb_metrics
from nerfstudio_3dae.occupancy import OccupancyGrids, density_threshold
from nerfstudio_3dae.rays import BatchLayout, batch_layout
from nerfstudio_3dae.transfer import on_device
from nerfstudio_3dae.triplanes import TriplaneBank, TriplaneMLP, tv_loss

allow_nerfstudio_checkpoints()


@dataclass(frozen=True)
class ParamGroupNames:
    """The names of the optimiser parameter groups: the keys of ``get_param_groups`` and of the methods' optimizer
    configs (plain strings: nerfstudio writes them into config.yml)."""

    micro: str = "micro"
    """Per-scene micro planes (``TriplaneBank.micro``)."""
    mixing: str = "mixing"
    """Per-scene mixing weights and bias of the shared bases (``TriplaneBank.weights``, ``.bias``)."""
    bases: str = "bases"
    """The shared basis planes."""
    mlp: str = "mlp"
    """The shared decoder MLP of the tri-planes."""
    decoder: str = "decoder"
    """The autoencoder's decoder (latent methods)."""
    encoder: str = "encoder"
    """The autoencoder's encoder (stage 1)."""


PARAM_GROUP = ParamGroupNames()
"""The optimiser parameter-group names, spelled once: ``PARAM_GROUP.micro`` etc."""
SCENE_PARAM_GROUPS = (PARAM_GROUP.micro, PARAM_GROUP.mixing)
"""Optimiser groups of the per-scene tables (their state is per row too)."""
SCENE_ENV = "NS3DAE_SCENE"
"""Environment variable naming the scene (a name or an id in the run's selection) that the stock ``ns-render`` and
``ns-viewer`` show of a 3dae run: read once, when ``eval_setup`` loads the run
(:meth:`TriplaneModel.loaded_for_evaluation`)."""


@dataclass
class TriplaneModelConfig(ModelConfig):
    """Tri-planes of many scenes rendered in RGB at full resolution: the defaults are ``3dae-rgb``'s, RGB Tri-Planes
    without shared bases (``RGB_BANK_ABLATION`` of the method configs: the latent method's bank in RGB)."""

    _target: Type = field(default_factory=lambda: TriplaneModel)
    enable_collider: bool = False
    """Unused: rays are clipped by near/far and the scene box of the renderer (whole-image rendering)."""
    resolution: int = 64
    """Tri-plane resolution R (each plane is R x R)."""
    micro_channels: int = 32
    """Scene-specific channels per plane (C_mic): the RGB Tri-Planes baseline's C = 32, all of them the scene's own
    (``LatentTriplaneModelConfig``: 10 + 22 from the bases)."""
    macro_channels: int = 0
    """Channels mixed from the shared bases (C_mac); 0 disables the bases (the baseline has none)."""
    num_bases: int = 0
    """Number of shared basis planes M (0 with ``macro_channels`` 0)."""
    sparse_scene_gradients: bool = True
    """Per-scene tables (micro planes, mixing weights) get row-sparse gradients: with the methods' row-sparse Adam a
    step's cost does not grow with the number of scenes. Off: dense table-sized gradients (any optimizer works; the
    row-sparse Adam then updates the rows whose gradient is not all zero). Multi-process runs need it on."""
    plane_init_std: float = 0.1
    """Standard deviation of the initial plane values."""
    hidden_dim: int = 64
    """Width of the shared MLP (C -> hidden -> 1 + c)."""
    near: float = 0.5
    """Near plane of every ray."""
    far: float = 2.1
    """Far plane of every ray."""
    num_coarse_samples: int = 48
    """Stratified samples per ray."""
    num_fine_samples: int = 48
    """Importance samples per ray, drawn from the coarse weights."""
    random_samples: bool = True
    """Training rays get jittered stratified samples and randomly drawn importance samples. False: the samples along
    a ray are fixed, as in evaluation. The rays themselves may still be drawn: 3dae-latent's ``pixel_jitter`` moves
    each training view's rays by a random shift, so a step is reproducible from its batch only with that off too (or
    torch's generator seeded alike)."""
    background: float = 1.0
    """Background colour (grey level in [0, 1]); white matches the generator and SRN."""
    tv_weight: float = 1e-4
    """Weight of the plane total-variation regulariser."""
    backend: Literal["auto", "torch", "nerfacc"] = "auto"
    """Sampling/compositing backend: nerfacc on CUDA ('auto'), or pure torch."""
    occupancy_resolution: int = 32
    """Cells per side of each scene's occupancy grid over the scene box: the field is evaluated only at samples in
    cells where the scene's own density was found (empty space is skipped; 4 KiB per scene at 32, a bit per cell).
    Capped at the tri-plane resolution (finer cells than texels tell nothing more). 0: no grids, every sample inside
    the box is evaluated."""
    occupancy_alpha: float = 0.01
    """A cell is empty when its density would make less than this opacity over one coarse sample interval."""
    occupancy_warmup: int = 50
    """Training batches that must have held a scene before its grid is used (a fresh scene has no empty space yet)."""
    occupancy_update_share: float = 0.1
    """Share of the field evaluations spent on updating the grids of the batch's scenes (an update evaluates every
    cell once): every batch at 128² in RGB, about every 13th batch in latent space."""
    compile_renderer: bool = False
    """Training renders go through ``torch.compile`` where their shapes are static (the latent method's small
    queries: no compaction, no checkpointed chunks, the torch backend); on CUDA with CUDA graphs
    (``mode="reduce-overhead"``), which replay the whole render as one launch. Compiling takes about half a minute per
    graph on a CPU; evaluation renders stay eager. Off by default until measured on a GPU (scripts/gpu_check.sh)."""
    occupancy_compact_min_points: int = 2**18
    """A field query of at least this many samples (rays x samples of one pass) evaluates only the samples in occupied
    cells, moved together, which needs one host read of their count; a smaller query evaluates every sample in the box
    and zeroes those in empty cells, without reading anything back (on a GPU a read drains the queue: at 16² latent
    views the evaluations saved are worth less than that). Both give the same image."""
    max_rays_per_chunk: int = 16384
    """Rays rendered at once when rendering for eval/viewer (bounds memory on large images)."""
    train_rays_per_chunk: int = 32768
    """Training renders with more rays than this are split into chunks of at most this many rays, each recomputed
    in the backward pass (activation checkpointing): a step's activation memory is bounded by the chunk (measured
    ~760 bytes per sample at the 3dae-rgb sizes: 32768 rays x 96 samples ~ 2.4 GB), not by images x pixels x samples
    (the paper's batch of 16 views of 128² in RGB: ~19 GB). Costs one more forward pass of the field per chunked
    step. 0: one graph for the whole batch (fastest where memory allows)."""


class TriplaneModel(Model):
    """Many scenes; each step renders whole views of several scenes at once."""

    config: TriplaneModelConfig

    def populate_modules(self) -> None:
        super().populate_modules()
        allow_nerfstudio_checkpoints()  # again here: eval_setup builds the model right before torch.load
        metadata = self.kwargs.get("metadata") or {}
        if "num_scenes" not in metadata or SHARD not in metadata:
            raise ValueError("3dae models need the 3dae-scenes dataparser (its outputs carry num_scenes and shard)")
        self.num_scenes: int = int(metadata["num_scenes"])
        self.scene_names: List[str] = list(metadata.get("scene_names") or [str(i) for i in range(self.num_scenes)])
        self.shard = Shard(*metadata[SHARD])
        """``(rank, world_size)``, as the dataparser parsed the scenes: this process holds the rows of the scenes
        ``s % world_size == rank``."""
        self.owned_scenes = owned_scenes(self.num_scenes, *self.shard)
        """Ids of the scenes whose per-scene tables this process holds (all of them in a single process)."""
        owned_names = [self.scene_names[s] for s in self.owned_scenes]
        self._scene = self.owned_scenes[0]  # the dataparser gives every process at least one scene
        self.scene_picker = ViewerDropdown(
            "Scene", self.scene_names[self._scene], owned_names, cb_hook=self._on_scene_picked
        )
        c = self.config
        seed = broadcast_object(int(torch.randint(0, 2**31 - 1, ()).item()), self.shard)  # rank 0's, on every rank
        bank = TriplaneBank(
            len(self.owned_scenes),
            c.resolution,
            c.micro_channels,
            c.macro_channels,
            c.num_bases,
            c.plane_init_std,
            sparse=c.sparse_scene_gradients,
            row_seeds=[seed + s for s in self.owned_scenes],
        )
        mlp = TriplaneMLP(bank.num_channels, self.output_channels, c.hidden_dim, self.output_range)
        # the rendering backend is decided here, once per process (logged with its reason; nothing is compiled, and
        # --pipeline.model.backend nerfacc fails now, not at the first render); renders reuse the cached decision
        decide_backend(c.backend, self.kwargs.get("device") or "cpu")
        bound = float(self.scene_box.aabb.abs().max())
        settings = RenderSettings(
            near=c.near,
            far=c.far,
            num_coarse=c.num_coarse_samples,
            num_fine=c.num_fine_samples,
            scene_bound=bound,
            backend=c.backend,
            compile=c.compile_renderer,
            compact_min_points=c.occupancy_compact_min_points,
        )
        self.field = TriplaneField(bank, mlp, settings, self._occupancy_grids(bound))

    def _occupancy_grids(self, bound: float) -> Optional[OccupancyGrids]:
        c = self.config
        if c.occupancy_resolution <= 0:
            return None
        interval = (c.far - c.near) / max(c.num_coarse_samples, 1)
        try:
            threshold = density_threshold(c.occupancy_alpha, interval)
        except ValueError as error:
            raise ValueError(f"--pipeline.model.occupancy-alpha: {error}") from None
        return OccupancyGrids(
            len(self.owned_scenes),
            min(c.occupancy_resolution, c.resolution),
            bound,
            threshold,
            c.occupancy_warmup,
            c.occupancy_update_share,
        )

    @property
    def scene(self) -> int:
        """The scene rendered for cameras that carry no scene id (viewer, camera paths). Set it to an id or a name:
        ``model.scene = 3`` or ``model.scene = "car_0003"``; the viewer's scene picker follows."""
        return self._scene

    @scene.setter
    def scene(self, value: "int | str") -> None:
        self.set_scene(value)

    def set_scene(self, value: "int | str", where: str = "model.scene") -> None:
        """:attr:`scene` = ``value``; an unknown one raises an error that names ``where`` it came from."""
        self._scene = resolve_scene(str(value), self.scene_names, where=where)
        name = self.scene_names[self._scene]
        if self.scene_picker.value != name and name in self.scene_picker.options:
            self.scene_picker.value = name

    def _on_scene_picked(self, element: ViewerDropdown) -> None:
        self._scene = self.scene_names.index(element.value)

    def loaded_for_evaluation(self) -> None:
        """Called once nerfstudio's ``eval_setup`` has loaded the run (:data:`nerfstudio_3dae.checkpoints.
        LOADED_FOR_EVALUATION`): :attr:`scene` becomes the one :data:`SCENE_ENV` names, when it is set (the way in for
        the stock tools, which build the model themselves); an unknown scene raises an error naming the variable."""
        value = os.environ.get(SCENE_ENV)
        if value:
            self.set_scene(value, where=SCENE_ENV)

    # -------------------------------------------------------------------------------- what is rendered

    @property
    def output_channels(self) -> int:
        return 3

    @property
    def output_range(self) -> Tuple[float, float]:
        return (0.0, 1.0)

    @property
    def downscale(self) -> int:
        """Rendered resolution = camera resolution / downscale."""
        return 1

    def background_value(self) -> Float[Tensor, "c"]:
        return torch.full((3,), self.config.background, device=self.device)

    def layout_of(self, cameras: Cameras) -> BatchLayout:
        """What the host knows of a flat camera batch: attached by the datamanager to training batches, read from
        the cameras otherwise (cameras without scene ids are of :attr:`scene`); its scene ids are checked here, on
        the host."""
        layout = batch_layout(cameras, default_scene=self.scene)
        bad = [s for s in layout.scene_ids if not 0 <= s < self.num_scenes]
        if bad:
            raise ValueError(f"scene id out of range: this model holds {self.num_scenes} scenes, got {bad}")
        return layout

    def render(
        self, cameras: Cameras, chunk: Optional[int] = None, pixel_shift: Optional[Float[Tensor, "K 2"]] = None
    ) -> Dict[str, Tensor]:
        """Render ``cameras`` (a batch, any scenes) in the model's space: ``features [K, c, h, w]`` etc.
        ``pixel_shift`` ``[K, 2]`` moves each camera's rays by that many image pixels."""
        cameras = flat_on(cameras, self.device)
        layout = self.layout_of(cameras)
        return self.field.render(
            cameras,
            rows_of(layout.scene_ids, *self.shard),
            self.downscale,
            self.background_value(),
            deterministic=not (self.training and self.config.random_samples),
            max_rays=chunk,
            checkpoint_rays=self.config.train_rays_per_chunk if self.training else None,
            pixel_shift=pixel_shift,
            layout=layout,
        )

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        bank = self.field.bank
        return {
            PARAM_GROUP.micro: [bank.micro],
            PARAM_GROUP.mixing: [bank.weights, bank.bias],
            PARAM_GROUP.bases: [bank.bases],
            PARAM_GROUP.mlp: list(self.field.mlp.parameters()),
        }

    def scene_state(self) -> Dict[str, Tensor]:
        """The parameters and buffers with one row per scene (sharded over the ranks of a multi-process run) by
        state-dict name: the tables the bank and the occupancy grids declare (:func:`scene_table_names`)."""
        tensors = {**dict(self.named_parameters()), **dict(self.named_buffers())}
        return {name: tensors[name] for name in scene_table_names(self)}

    def batch_images(self, batch: Dict[str, Tensor]) -> Float[Tensor, "K 3 H W"]:
        """A batch's images ``[K, H, W, 3]`` (or one ``[H, W, 3]``) as the renders are laid out, ``[K, 3, H, W]`` on the
        model's device (a view where they already are there): made once per loss or metric computation and passed
        along."""
        return on_device(hwc_to_nchw(batch["image"]), self.device)

    # -------------------------------------------------------------------------------- nerfstudio API

    def get_outputs(self, cameras: Cameras) -> Dict[str, Tensor]:
        out = self.render(cameras)
        return {
            "rgb": out["features"],
            "depth": out["depth"],
            "accumulation": out["accumulation"],
            "planes": out["planes"],
        }

    def get_metrics_dict(self, outputs, batch) -> Dict[str, Tensor]:
        gt = self.batch_images(batch)
        return {"psnr": batch_psnr(outputs["rgb"].detach().clamp(0, 1), gt, data_range=1.0)}

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        gt = self.batch_images(batch)
        return {"rgb_loss": F.mse_loss(outputs["rgb"], gt), **self.regularisers(outputs)}

    def regularisers(self, outputs) -> Dict[str, Tensor]:
        if self.config.tv_weight <= 0:
            return {}
        return {"tv_loss": self.config.tv_weight * tv_loss(outputs["planes"])}

    @torch.no_grad()
    def get_outputs_for_camera(self, camera: Cameras, obb_box: Optional[OrientedBox] = None) -> Dict[str, Tensor]:
        """One camera, any resolution: images ``[H, W, ·]`` at the camera's own resolution."""
        return self.get_outputs_for_cameras(camera.flatten()[:1])[0]

    @torch.no_grad()
    def get_outputs_for_cameras(self, cameras: Cameras) -> List[Dict[str, Tensor]]:
        """Cameras of one resolution rendered together (one render, in chunks of ``max_rays_per_chunk`` rays; in
        latent space one decode): the images ``[H, W, ·]`` of each camera."""
        cameras = flat_on(cameras, self.device)
        layout = self.layout_of(cameras)
        out = self.render(cameras, chunk=self.config.max_rays_per_chunk)
        return self.images_for_cameras(out, layout.height, layout.width)

    def images_for_cameras(self, out: Dict[str, Tensor], height: int, width: int) -> List[Dict[str, Tensor]]:
        """A render's ``[K, c, h, w]`` outputs as images ``[H, W, ·]``, one dict per camera."""
        return [
            {
                "rgb": first_to_hwc(out["features"][k : k + 1], height, width).clamp(0, 1),
                "depth": first_to_hwc(out["depth"][k : k + 1], height, width),
                "accumulation": first_to_hwc(out["accumulation"][k : k + 1], height, width),
            }
            for k in range(out["features"].shape[0])
        ]

    def get_image_metrics_and_images(self, outputs, batch) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        gt = batch["image"].to(self.device)  # [H, W, 3]
        metrics = rgb_metrics(outputs["rgb"], gt)
        images = {"img": torch.cat([gt, outputs["rgb"]], dim=1), "depth": outputs["depth"]}
        return metrics, images


def flat_on(cameras: Cameras, device: torch.device) -> Cameras:
    """``cameras`` as a flat batch on ``device`` (each reshape or move of a ``Cameras`` costs some fifty tensor
    operators: skipped when there is nothing to do)."""
    if len(cameras.shape) != 1:
        cameras = cameras.flatten()
    return cameras if cameras.device == torch.device(device) else cameras.to(device)


def resolve_scene(value: str, names: List[str], where: str = "model.scene") -> int:
    """A scene given by name or by id (its position in the run's selection); errors name ``where`` it came from."""
    if value in names:
        return names.index(value)
    try:
        index = int(value)
    except ValueError:
        index = -1
    if not 0 <= index < len(names):
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise ValueError(f"{where}={value!r} is neither a scene name ({shown}) nor an id in 0..{len(names) - 1}")
    return index
