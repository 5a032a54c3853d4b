"""``3dae-scenes``: the multi-scene dataparser.

Reads the layout of :mod:`nerfstudio_3dae.data.layout`, selects scenes, splits views and returns nerfstudio
``Cameras`` whose ``metadata["scene_id"]`` holds each camera's scene id (its row in the model's per-scene tables:
the position of the scene in the selection). Files are checked at parse time (existence, image headers, sizes);
pixels are decoded later by the datamanager. In a multi-process run each process parses only the scenes it owns
(:mod:`nerfstudio_3dae.distributed`); ids and names stay those of the whole selection. The parser is where a run
learns its shard (read from the process group once, as it is built, unless it is given one); its outputs carry it
(``metadata["shard"]``) to the datamanager and the model.

This module is loaded by nerfstudio's entry-point discovery while its datamanager module is still importing, so it
must import nothing from datamanagers, pipelines or methods (that would be a circular import).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Type

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from nerfstudio_3dae.data.images import downscale_image, downscaled_path
from nerfstudio_3dae.data.layout import (
    DatasetError,
    Intrinsics,
    Scene,
    blender_intrinsics,
    image_size,
    read_scene,
    read_scene_names,
)
from nerfstudio_3dae.distributed import Shard, owned_scenes, scene_shard

SCENE_ID = "scene_id"
"""Key of the per-camera scene id in ``Cameras.metadata`` ([num_cameras, 1] long)."""
SHARD = "shard"
"""Key of the :class:`~nerfstudio_3dae.distributed.Shard` the outputs were parsed for in their ``metadata``."""


def parse_scene_selection(spec: str, num_scenes: int, option: str = "--scenes") -> List[int]:
    """Scene indices selected by a spec such as ``":"``, ``"0:500"``, ``"500:"``, ``"3,7,9"`` or ``"0:10,20:30"``.

    Ranges follow Python slices (end excluded); the order of the spec is kept; an index may not repeat.
    Raises DatasetError naming ``option`` for malformed specs, empty ranges and out-of-range indices (with the
    number of scenes).
    """
    scenes = f"the dataset has {num_scenes} scenes (indices 0..{num_scenes - 1})"

    def number(text: str, part: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise DatasetError(f"{option} {spec!r}: {part!r} is not an index or a start:stop range") from None

    selected: List[int] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            raise DatasetError(f"{option} {spec!r}: empty item (use e.g. '0:500' or '3,7,9')")
        if ":" in part:
            start_s, _, stop_s = part.partition(":")
            start = number(start_s, part) if start_s.strip() else 0
            stop = number(stop_s, part) if stop_s.strip() else num_scenes
            if not (0 <= start < num_scenes and 0 <= stop <= num_scenes):
                raise DatasetError(f"{option} {spec!r}: range {part!r} is out of bounds: {scenes}")
            if start >= stop:
                raise DatasetError(f"{option} {spec!r}: range {part!r} is empty (start:stop selects start..stop-1)")
            selected.extend(range(start, stop))
        else:
            index = number(part, part)
            if not 0 <= index < num_scenes:
                raise DatasetError(f"{option} {spec!r}: scene {index} is out of bounds: {scenes}")
            selected.append(index)
    if len(set(selected)) != len(selected):
        raise DatasetError(f"{option} {spec!r} selects a scene more than once")
    return selected


@dataclass
class ScenesDataParserConfig(DataParserConfig):
    """Many scenes of one kind: a root with ``scenes.json`` and one nerfstudio/Blender scene folder per scene."""

    _target: Type = field(default_factory=lambda: ScenesDataParser)
    data: Path = field(default_factory=Path)
    """Dataset root: a folder with scenes.json, or a single nerfstudio/Blender scene folder."""
    scenes: str = ":"
    """Scenes to load, by index in scenes.json: 'start:stop' (end excluded), a list '3,7,9', or both '0:10,20'.
    Their position in this selection is the scene id the model uses."""
    test_every: int = 8
    """For scenes whose frames carry no 'split': every test_every-th view (the test_every-th, 2·test_every-th, ...)
    is a test view, the rest train. 0 makes every view a training view (then there is no test split)."""
    image_multiple: int = 8
    """Image sides must be multiples of this: the autoencoder's downsampling factor (1 for RGB-only methods)."""
    check_image_headers: bool = True
    """Read every image's header at parse time (size, readability). Turning it off saves a few seconds on
    thousands of scenes and moves those errors to the moment the images are decoded."""
    scene_bound: float = 1.0
    """Half side of the scene box [-b, b]^3 that holds every object (the paper uses 1)."""
    downscale_factor: int = 1
    """Train on images this many times smaller (nerfstudio's convention): intrinsics are scaled and the images are
    resized once into a cache beside them (scene/images -> scene/images_2 for 2), reused while it is newer than
    its source. Both image sides must divide by it, and the result by image_multiple."""


class ScenesDataParser(DataParser):
    """Parses a multi-scene dataset into nerfstudio Cameras carrying their scene id."""

    config: ScenesDataParserConfig

    def __init__(self, config: ScenesDataParserConfig, shard: Optional[Shard] = None):
        super().__init__(config=config)
        self.shard: Shard = scene_shard() if shard is None else Shard(*shard)
        """The scenes this parser reads: those of this process (read from the process group once, here), unless
        it was given another shard (``config.setup(shard=...)``)."""
        self._scenes: Optional[Dict[int, Scene]] = None
        self._selection: Optional[List[int]] = None
        self._names: Optional[List[str]] = None
        self._size: Optional[Tuple[int, int, Path]] = None

    def _load(self) -> Dict[int, Scene]:
        """Read and validate the selected scenes this process owns once (all of them in a single process), by
        scene id; both splits reuse the result."""
        if self._scenes is None:
            names = read_scene_names(self.config.data)
            selection = parse_scene_selection(self.config.scenes, len(names), "--scenes (dataparser option scenes)")
            rank, world = self.shard
            if len(selection) < world:
                raise DatasetError(
                    f"{self.config.data}: {len(selection)} scenes selected (--scenes {self.config.scenes!r}) for "
                    f"{world} processes; every process needs at least one scene"
                )
            factor = self.config.downscale_factor
            if factor < 1:
                raise DatasetError(f"{self.config.data}: downscale_factor must be >= 1, got {factor}")
            scenes = {
                s: read_scene(self.config.data, names[selection[s]]) for s in owned_scenes(len(selection), rank, world)
            }
            if factor > 1:  # resize once into the cache; the views then point at the small copies
                scenes = {s: self._downscaled(scene, factor) for s, scene in scenes.items()}
            if self.config.check_image_headers:
                for scene in scenes.values():
                    for view in scene.views:
                        self._check_size(scene, view.image, *image_size(view.image), view.intrinsics)
            self._names, self._selection, self._scenes = names, selection, scenes
        return self._scenes

    def _downscaled(self, scene: Scene, factor: int) -> Scene:
        """``scene`` with every image replaced by its cached ``factor``-times smaller copy and the intrinsics scaled
        (pixel centres at half-integers stay consistent: u' = u / factor for every image point)."""
        views = []
        for view in scene.views:
            width, height = image_size(view.image)
            intrinsics = view.intrinsics or self._intrinsics_from_fov(view.image, view.camera_angle_x)
            if (intrinsics.width, intrinsics.height) != (width, height):
                raise DatasetError(
                    f"scene {scene.name!r}: image {view.image} is {width}x{height} but its transforms.json says "
                    f"{intrinsics.width}x{intrinsics.height}"
                )
            target = downscaled_path(view.image, scene.root, factor)
            small_w, small_h = downscale_image(view.image, target, factor)
            scaled = Intrinsics(
                fx=intrinsics.fx / factor,
                fy=intrinsics.fy / factor,
                cx=intrinsics.cx / factor,
                cy=intrinsics.cy / factor,
                width=small_w,
                height=small_h,
            )
            views.append(replace(view, image=target, intrinsics=scaled))
        return replace(scene, views=views)

    def _check_size(self, scene: Scene, path: Path, width: int, height: int, intrinsics: Optional[Intrinsics]) -> None:
        if self._size is None:
            m, factor = self.config.image_multiple, self.config.downscale_factor
            if width % m or height % m:
                after = f" after downscale_factor {factor}" if factor > 1 else ""
                raise DatasetError(
                    f"scene {scene.name!r}: image {path} is {width}x{height}{after}; the autoencoder downsamples by "
                    f"a factor of {m}, so both sides must be multiples of {m} (resize or crop the images"
                    f"{', or choose another downscale_factor' if factor > 1 else ''}; option image_multiple)"
                )
            self._size = (width, height, path)
        elif (width, height) != self._size[:2]:
            w0, h0, first = self._size
            raise DatasetError(
                f"images of different sizes in one dataset: {path} (scene {scene.name!r}) is {width}x{height} but "
                f"{first} is {w0}x{h0}"
            )
        if intrinsics is not None and (intrinsics.width, intrinsics.height) != (width, height):
            raise DatasetError(
                f"scene {scene.name!r}: image {path} is {width}x{height} but its transforms.json says "
                f"{intrinsics.width}x{intrinsics.height}"
            )

    def _split_indices(self, scene: Scene, split: str) -> List[int]:
        marked = [v.split for v in scene.views]
        if any(s is not None for s in marked):
            # Frames without a split in a scene that gives splits are training views.
            is_test = [s == "test" for s in marked]
        else:
            k = self.config.test_every
            if k < 0:
                raise DatasetError(f"test_every must be >= 0, got {k}")
            is_test = [k > 0 and (i + 1) % k == 0 for i in range(len(scene.views))]
        want_test = split != "train"
        return [i for i, t in enumerate(is_test) if t == want_test]

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        scenes = self._load()
        assert self._names is not None and self._selection is not None
        images: List[Path] = []
        c2ws: List[np.ndarray] = []
        intrinsics: List[Intrinsics] = []
        scene_ids: List[int] = []
        for scene_id, scene in scenes.items():
            indices = self._split_indices(scene, split)
            if split == "train" and not indices:
                raise DatasetError(
                    f"scene {scene.name!r} ({scene.root}) has no training view: all its views are test views"
                )
            for i in indices:
                view = scene.views[i]
                images.append(view.image)
                c2ws.append(view.camera_to_world[:3, :4])
                intrinsics.append(view.intrinsics or self._intrinsics_from_fov(view.image, view.camera_angle_x))
                scene_ids.append(scene_id)
        if not images:
            raise DatasetError(
                f"{self.config.data}: the {split!r} split of the selected scenes is empty (scenes mark no test "
                f"frames and test_every={self.config.test_every})"
            )

        def column(values, dtype=torch.float32) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype)[:, None]

        cameras = Cameras(
            camera_to_worlds=torch.from_numpy(np.stack(c2ws)).float(),  # [n, 3, 4]
            fx=column([k.fx for k in intrinsics]),
            fy=column([k.fy for k in intrinsics]),
            cx=column([k.cx for k in intrinsics]),
            cy=column([k.cy for k in intrinsics]),
            width=column([k.width for k in intrinsics], torch.long),
            height=column([k.height for k in intrinsics], torch.long),
            camera_type=CameraType.PERSPECTIVE,
            metadata={SCENE_ID: column(scene_ids, torch.long)},  # [n, 1]
        )
        b = self.config.scene_bound
        metadata: Dict = {
            "scene_names": [self._names[i] for i in self._selection],
            "scene_indices": list(self._selection),
            "num_scenes": len(self._selection),
            SHARD: self.shard,
        }
        return DataparserOutputs(
            image_filenames=images,
            cameras=cameras,
            scene_box=SceneBox(aabb=torch.tensor([[-b, -b, -b], [b, b, b]], dtype=torch.float32)),
            metadata=metadata,
        )

    def _intrinsics_from_fov(self, image: Path, camera_angle_x: Optional[float]) -> Intrinsics:
        assert camera_angle_x is not None  # layout guarantees intrinsics or a field of view
        return blender_intrinsics(camera_angle_x, *image_size(image))


scenes_dataparser = DataParserSpecification(
    config=ScenesDataParserConfig(),
    description="3dae: many scenes of one kind (scenes.json + one nerfstudio/Blender scene per folder)",
)
