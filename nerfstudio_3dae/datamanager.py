"""The multi-scene datamanager: whole views from several scenes per step, uint8 images, cached latents.

Derives from nerfstudio's ``FullImageDatamanager`` (ns-render's dataset mode and ns-eval expect it). A training
batch is ``scenes_per_step × views_per_scene`` views: a ``Cameras`` of that many cameras (their ``metadata``
carries the scene ids) and a dict with ``image`` ([K, H, W, 3] float in [0, 1]), ``image_idx`` [K], ``scene_id`` [K]
and, once :meth:`attach_latents` ran, ``latent`` [K, c, h, w].

A batch's rows travel to the training device as they are stored (uint8 images: a quarter of float32's bytes) and
are made float there; from CPU memory to a GPU through pinned memory, without blocking
(:func:`nerfstudio_3dae.transfer.rows_to_device`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Dict, List, Literal, Optional, Sequence, Tuple, Type, Union

import torch
from jaxtyping import Int
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.configs.dataparser_configs import AnnotatedDataParserUnion
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager, FullImageDatamanagerConfig
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from nerfstudio_3dae.data.dataparser import SCENE_ID, SHARD, ScenesDataParserConfig
from nerfstudio_3dae.data.images import cached_latents, load_images, views_by_scene
from nerfstudio_3dae.distributed import Shard, owned_scenes
from nerfstudio_3dae.image_layout import to_float
from nerfstudio_3dae.rays import BATCH_LAYOUT, BatchLayout, is_pinhole
from nerfstudio_3dae.transfer import host_to_device, rows_to_device


@dataclass
class MultiSceneDatamanagerConfig(FullImageDatamanagerConfig):
    """Whole views of many scenes; images kept as uint8, latents encoded once and cached on disk."""

    _target: Type = field(default_factory=lambda: MultiSceneDatamanager)
    dataparser: AnnotatedDataParserUnion = field(default_factory=ScenesDataParserConfig)
    """The multi-scene dataparser: the ``3dae-scenes`` subcommand of ns-train, as stock methods take theirs
    (``ns-train 3dae-latent --data DIR 3dae-scenes --scenes 0:500``); the 3dae models need this one."""
    scenes_per_step: int = 0
    """Scenes in one training batch (fewer if the selection has fewer scenes); per process in a multi-process run,
    where each process draws from the scenes it owns. 0: chosen for the device (:func:`auto_scenes_per_step`): 4 on
    the CPU; on a GPU enough for about ``rays_per_step`` rendered rays a step (a 128² view is 256 rays in latent space,
    16384 in RGB: 128 scenes of 2 views a step for 3dae-latent, 2 for 3dae-rgb)."""
    rays_per_step: int = 2**16
    """Rendered rays a step aims at on a GPU when ``scenes_per_step`` is 0 (a GPU runs a small step in the time of a
    large one: the step's cost is launches, not arithmetic, until it is this large)."""
    views_per_scene: int = 2
    """Views of each of those scenes in one training batch."""
    latent_cache_dir: Optional[Path] = None
    """Where encoded latents are cached, keyed by the autoencoder's identity and the image files.
    Default: <data>/.3dae_cache/latents. Remove the folder to force re-encoding."""
    encode_batch_size: int = 16
    """Images per encoder call when filling the latent cache."""
    cache_images: Literal["cpu", "gpu"] = "cpu"
    """Where the uint8 images live."""
    seed: int = 0
    """Seed of the scene/view sampler (the test views drawn for single-image evaluation have their own generator)."""


def auto_scenes_per_step(
    device: Union[torch.device, str], rays_per_view: int, views_per_scene: int, rays_per_step: int, scenes: int
) -> int:
    """The scenes of a training batch for ``scenes_per_step`` 0: 4 on the CPU (its arithmetic is the cost); on CUDA
    as many as render about ``rays_per_step`` rays (``rays_per_view`` at the model's rendered resolution), at least
    1; never more than the ``scenes`` there are."""
    if torch.device(device).type != "cuda":
        return max(1, min(4, scenes))
    return max(1, min(scenes, rays_per_step // max(1, rays_per_view * views_per_scene)))


def gather_cameras(cameras: Cameras, index: Int[Tensor, "K"]) -> Cameras:
    """``cameras[index]`` of a flat camera batch (its fields broadcast to ``[n, ...]``, as nerfstudio's ``Cameras``
    keeps them): each tensor field and metadata entry gathered with one ``index_select``. Indexing a ``Cameras``
    builds and checks a new one from scratch (some thirty operators a batch); the rows of a valid flat batch need no
    checking."""
    if len(cameras.shape) != 1:
        raise ValueError(f"gather_cameras takes a flat camera batch, got shape {tuple(cameras.shape)}")
    picked = copy.copy(cameras)
    for spec in dataclasses.fields(cameras):
        value = getattr(cameras, spec.name)
        if isinstance(value, Tensor):
            object.__setattr__(picked, spec.name, value.index_select(0, index))
    if cameras.metadata:
        picked.metadata = {
            key: value.index_select(0, index) if isinstance(value, Tensor) else value
            for key, value in cameras.metadata.items()
        }
    object.__setattr__(picked, "_shape", torch.Size([index.shape[0]]))
    return picked


class MultiSceneDatamanager(FullImageDatamanager):
    """Samples several views of several scenes per step; images decoded once into a uint8 tensor."""

    config: MultiSceneDatamanagerConfig

    def __init__(self, config: MultiSceneDatamanagerConfig, device="cpu", test_mode="val", **kwargs):
        super().__init__(config=config, device=device, test_mode=test_mode, **kwargs)
        self.num_scenes: int = self.train_dataparser_outputs.metadata["num_scenes"]
        self.train_scene_ids = self.train_dataset.cameras.metadata[SCENE_ID].squeeze(-1)  # [n]
        self.eval_scene_ids = self.eval_dataset.cameras.metadata[SCENE_ID].squeeze(-1)  # [m]
        self._train_scene_list: List[int] = self.train_scene_ids.tolist()
        self._eval_scene_list: List[int] = self.eval_scene_ids.tolist()
        self._train_views: List[List[int]] = [
            v.tolist() for v in views_by_scene(self.train_scene_ids.tolist(), self.num_scenes)
        ]
        """Training view indices of each scene, as Python lists (drawn from every step)."""
        self.shard: Shard = self.train_dataparser_outputs.metadata[SHARD]
        """The shard the dataparser parsed the scenes of (:mod:`nerfstudio_3dae.distributed`)."""
        self.owned_scenes: List[int] = owned_scenes(self.num_scenes, *self.shard)
        """The scenes this process trains (all of them in a single process)."""
        self._rng = random.Random(config.seed)
        """Draws the training batches (scene order, views) only."""
        self._eval_rng = random.Random(f"{config.seed}/eval")
        """Draws the single test views: how often a run evaluates never changes its training batches."""
        self._scene_queue: List[int] = []
        self.scenes_per_step: int = self.config.scenes_per_step or 4
        """Scenes of a training batch: the configured number, or the device's choice once :meth:`fit_batch` knows
        the model's rendered resolution."""
        self.train_latents: Optional[Tensor] = None  # [n, c, h, w]
        self.eval_latents: Optional[Tensor] = None  # [m, c, h, w]

    # ------------------------------------------------------------------------------------------------ images

    @cached_property
    def train_images(self) -> Tensor:
        """[n, H, W, 3] uint8, decoded once."""
        CONSOLE.log(f"decoding {len(self.train_dataset)} training images")
        return load_images(self.train_dataset.image_filenames).to(self._image_device)

    @cached_property
    def eval_images(self) -> Tensor:
        """[m, H, W, 3] uint8, decoded once."""
        return load_images(self.eval_dataset.image_filenames).to(self._image_device)

    @property
    def _image_device(self):
        return self.device if self.config.cache_images == "gpu" else "cpu"

    @cached_property
    def cached_train(self) -> List[Dict[str, Tensor]]:  # nerfstudio's view of the data (no copies)
        return [{"image": img, "image_idx": i} for i, img in enumerate(self.train_images)]

    @cached_property
    def cached_eval(self) -> List[Dict[str, Tensor]]:
        return [{"image": img, "image_idx": i} for i, img in enumerate(self.eval_images)]

    def attach_latents(self, identity: str, encode: Callable[[Tensor], Tensor]) -> None:
        """Fill ``train_latents``/``eval_latents`` from the disk cache, encoding only what the cache does not hold
        for this autoencoder ``identity``: ``encode(uint8 [N, H, W, 3]) -> [N, c, h, w]`` gets a whole split (the
        pipeline encodes it in batches of ``encode_batch_size``)."""
        cache_dir = self.config.latent_cache_dir or Path(self.config.dataparser.data) / ".3dae_cache" / "latents"

        def encoded(images_of: Callable[[], Tensor]) -> Callable[[], Tensor]:
            def run() -> Tensor:
                images = images_of()
                CONSOLE.log(f"encoding {len(images)} images into latents (cached in {cache_dir})")
                return encode(images).cpu()

            return run

        self.train_latents = cached_latents(
            cache_dir, identity, self.train_dataset.image_filenames, encoded(lambda: self.train_images)
        )
        self.eval_latents = cached_latents(
            cache_dir, identity, self.eval_dataset.image_filenames, encoded(lambda: self.eval_images)
        )

    # ------------------------------------------------------------------------------------------------ batches

    @cached_property
    def _pinhole(self) -> Dict[str, bool]:
        """Whether each split's cameras are undistorted perspective cameras (read once)."""
        return {"train": is_pinhole(self.train_dataset.cameras), "eval": is_pinhole(self.eval_dataset.cameras)}

    @cached_property
    def _device_cameras(self) -> Dict[str, Cameras]:
        """Each split's cameras on the training device, moved once (a batch indexes them there)."""
        return {"train": self.train_dataset.cameras.to(self.device), "eval": self.eval_dataset.cameras.to(self.device)}

    def views(
        self, split: Literal["train", "eval"], indices: Union[Sequence[int], Tensor]
    ) -> Tuple[Cameras, Dict[str, Tensor]]:
        """The views ``indices`` of a split: cameras carrying their :class:`~nerfstudio_3dae.rays.BatchLayout` (what
        the model must know on the host: image size, scene ids, pinhole or not), and their images (and latents).
        Nothing is read back from the device."""
        train = split == "train"
        picked = [int(i) for i in (indices.tolist() if isinstance(indices, Tensor) else indices)]
        index = host_to_device(picked, self.device)
        rows = index if index.device.type == "cpu" else torch.tensor(picked, dtype=torch.long)
        store = self.train_images if train else self.eval_images
        ids = [(self._train_scene_list if train else self._eval_scene_list)[i] for i in picked]
        cameras = gather_cameras(self._device_cameras[split], index)
        layout = BatchLayout(int(store.shape[1]), int(store.shape[2]), tuple(ids), self._pinhole[split])
        cameras.metadata = {**(cameras.metadata or {}), BATCH_LAYOUT: layout}
        batch: Dict[str, Tensor] = {
            "image": to_float(rows_to_device(store, rows, self.device)),  # uint8 copied, made float on the device
            "image_idx": rows,
            "scene_id": cameras.metadata[SCENE_ID].view(-1),  # [K] int64, gathered with the cameras
        }
        latents = self.train_latents if train else self.eval_latents
        if latents is not None:
            batch["latent"] = to_float(rows_to_device(latents, rows, self.device))
        return cameras, batch

    def _next_scenes(self, count: int) -> List[int]:
        """Scenes cycle in shuffled order, so every scene is visited equally often."""
        chosen: List[int] = []
        while len(chosen) < count:
            if not self._scene_queue:
                self._scene_queue = list(self.owned_scenes)
                self._rng.shuffle(self._scene_queue)
            scene = self._scene_queue.pop()
            if scene not in chosen:
                chosen.append(scene)
        return chosen

    def fit_batch(self, downscale: int) -> int:
        """Choose :attr:`scenes_per_step` for a model that renders at ``1/downscale`` of the images (when the config
        leaves it to the device); returns it."""
        if self.config.scenes_per_step > 0:
            return self.scenes_per_step
        cameras = self.train_dataset.cameras
        height, width = int(cameras.height.reshape(-1)[0]), int(cameras.width.reshape(-1)[0])
        rays = math.ceil(height / downscale) * math.ceil(width / downscale)
        self.scenes_per_step = auto_scenes_per_step(
            self.device, rays, self.config.views_per_scene, self.config.rays_per_step, len(self.owned_scenes)
        )
        CONSOLE.log(
            f"{self.scenes_per_step} scenes of {self.config.views_per_scene} views a step ({rays} rays a view; "
            f"--pipeline.datamanager.scenes-per-step 0 chose it for {self.device})"
        )
        return self.scenes_per_step

    def next_train(self, step: int) -> Tuple[Cameras, Dict]:
        scenes = self._next_scenes(min(self.scenes_per_step, len(self.owned_scenes)))
        picked: List[int] = []
        for scene in scenes:
            views = self._train_views[scene]
            picked += self._rng.sample(views, min(self.config.views_per_scene, len(views)))
        return self.views("train", picked)

    def next_eval(self, step: int) -> Tuple[Cameras, Dict]:
        return self.next_eval_image(step)

    def next_eval_image(self, step: int) -> Tuple[Cameras, Dict]:
        """One random test view; its batch holds single images ([H, W, 3], [c, h, w])."""
        return self.fixed_indices_eval_dataloader[self._eval_rng.randrange(len(self.eval_dataset))]

    @property
    def fixed_indices_eval_dataloader(self) -> "_EvalViews":
        """Every test view, one at a time (ns-eval). Each item is sliced from the split's decoded uint8 images (held
        in memory once) and made float only when it is read, so no float copy of the test set is ever kept."""
        return _EvalViews(self)

    def eval_scene_of(self, index: int) -> int:
        """The scene id of test view ``index``."""
        return self._eval_scene_list[index]

    def get_train_rays_per_batch(self) -> int:
        h, w = self.train_images.shape[1:3]
        return h * w * self.scenes_per_step * self.config.views_per_scene


class _EvalViews:
    """A lazy sequence of ``(camera, batch)`` for every test view."""

    def __init__(self, manager: MultiSceneDatamanager):
        self.manager = manager

    def __len__(self) -> int:
        return len(self.manager.eval_dataset)

    def __getitem__(self, index: int) -> Tuple[Cameras, Dict]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        camera, batch = self.manager.views("eval", [index])
        return camera, {k: v[0] for k, v in batch.items()}

    def __iter__(self):
        return (self[i] for i in range(len(self)))
