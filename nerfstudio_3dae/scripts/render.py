"""``ns-3dae-render``: nerfstudio's ns-render for 3dae runs, one scene or one output per scene.

The stock ``ns-render`` works on 3dae runs too (``camera-path``, ``interpolate``, ``dataset``); it renders the scene
named by the ``NS3DAE_SCENE`` environment variable (a name or an id; default: the first scene), read once when the
run is loaded (:meth:`nerfstudio_3dae.model.TriplaneModel.loaded_for_evaluation`). This wrapper adds ``--scenes``
(``0:4``, ``car_0003,car_0007``, …: one output per scene, named after it; the run is loaded once and ``model.scene``
is set for each) and a ``spiral`` mode that works with full-image datamanagers (the stock one accepts only ray-based
datamanagers). A damaged checkpoint ends it with a message naming the file and the older checkpoint to use
(:func:`nerfstudio_3dae.checkpoints.checked_eval_load_checkpoint`), not a traceback.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import nerfstudio.scripts.render as ns_render
import tyro
from nerfstudio.cameras.camera_paths import get_spiral_path
from nerfstudio.scripts.render import (
    DatasetRender,
    RenderCameraPath,
    RenderInterpolated,
    SpiralRender,
    _render_trajectory_video,
)
from nerfstudio.utils import install_checks
from nerfstudio.utils.eval_utils import eval_setup
from nerfstudio.utils.rich_utils import CONSOLE
from typing_extensions import Annotated

from nerfstudio_3dae.checkpoints import DamagedCheckpointError, use_checked_eval_loading
from nerfstudio_3dae.data.dataparser import SCENE_ID, parse_scene_selection


def scene_names_of_run(load_config: Path) -> List[str]:
    """The scene names a run was trained on (from its dataparser, without decoding images)."""
    import yaml

    datamanager = yaml.load(load_config.read_text(), Loader=yaml.Loader).pipeline.datamanager
    parser = datamanager.dataparser
    if datamanager.data is not None:  # as the datamanager does: its data option wins
        parser.data = datamanager.data
    parser.check_image_headers = False
    outputs = parser.setup().get_dataparser_outputs("train")
    return list(outputs.metadata["scene_names"])


def select_scenes(load_config: Path, spec: str) -> List[str]:
    """Scene names from a spec of ids/ranges (``0:4``, ``1,3``) or names (``car_0003,car_0007``)."""
    names = scene_names_of_run(load_config)
    items = [s.strip() for s in spec.split(",")]
    if all(item in names for item in items):
        return items
    return [names[i] for i in parse_scene_selection(spec, len(names), option="--scenes")]


class RunLoader:
    """``eval_setup`` once per test mode: every scene of a ``--scenes`` render shares one loaded run, and each call
    hands it out with ``model.scene`` set to the scene being rendered."""

    def __init__(self) -> None:
        self.scene: Optional[str] = None
        """The scene name the next pipeline is handed out with (None: the model's own default)."""
        self._loaded: Dict[str, Tuple] = {}

    def __call__(
        self,
        config_path: Path,
        eval_num_rays_per_chunk: Optional[int] = None,
        test_mode: str = "test",
        update_config_callback: Optional[Callable] = None,
    ) -> Tuple:
        if test_mode not in self._loaded:
            self._loaded[test_mode] = eval_setup(
                config_path, eval_num_rays_per_chunk, test_mode, update_config_callback
            )
        loaded = self._loaded[test_mode]
        if self.scene is not None:
            loaded[1].model.scene = self.scene
        return loaded


class PerScene:
    """Runs a render mode once per scene in ``--scenes`` (one loaded run, ``model.scene`` set for each), or once for
    the model's default scene.

    nerfstudio's render modes call ``eval_setup`` (a name in ``nerfstudio.scripts.render``) inside their ``main()``:
    while this ``main()`` runs, that name is a :class:`RunLoader`, which is how the scene reaches the model they
    render with; it is restored afterwards, also when a render fails."""

    scenes: str
    load_config: Path
    output_path: Path

    def main(self) -> None:
        loader = RunLoader()
        original = ns_render.eval_setup
        ns_render.eval_setup = loader
        try:
            if not self.scenes:
                return self.render_one(loader)
            base = self.output_path
            for name in select_scenes(self.load_config, self.scenes):
                loader.scene = name
                self.output_path = base.parent / f"{base.stem}_{name}{base.suffix}" if base.suffix else base / name
                self.render_one(loader)
            self.output_path = base
        finally:
            ns_render.eval_setup = original

    def render_one(self, load: RunLoader) -> None:
        super().main()  # type: ignore[misc]


@dataclass
class CameraPath(PerScene, RenderCameraPath):
    """Render a camera path (viewer export) of one scene, or of each scene in --scenes."""

    scenes: str = ""
    """Render once per scene: ids/ranges ('0:4', '1,3') or names. Empty: the first scene (or NS3DAE_SCENE's)."""


@dataclass
class Interpolate(PerScene, RenderInterpolated):
    """Fly through the test cameras, rendering one scene, or each scene in --scenes."""

    scenes: str = ""
    """Render once per scene: ids/ranges ('0:4', '1,3') or names. Empty: the first scene (or NS3DAE_SCENE's)."""


@dataclass
class Spiral(PerScene, SpiralRender):
    """A spiral around a test camera of the rendered scene, or of each scene in --scenes."""

    scenes: str = ""
    """Render once per scene: ids/ranges ('0:4', '1,3') or names. Empty: the first scene (or NS3DAE_SCENE's)."""

    def render_one(self, load: RunLoader) -> None:
        _, pipeline, _, _ = load(self.load_config, eval_num_rays_per_chunk=None, test_mode="test")
        install_checks.check_ffmpeg_installed()
        cameras = pipeline.datamanager.eval_dataset.cameras
        of_scene = (cameras.metadata[SCENE_ID].squeeze(-1) == pipeline.model.scene).nonzero()
        start = cameras[int(of_scene[0]) if len(of_scene) else 0 : None][:1]
        start.metadata = None  # the path's cameras render the chosen scene
        path = get_spiral_path(start, steps=int(self.frame_rate * self.seconds), radius=self.radius)
        _render_trajectory_video(
            pipeline,
            path,
            output_filename=self.output_path,
            rendered_output_names=self.rendered_output_names,
            rendered_resolution_scaling_factor=1.0 / self.downscale_factor,
            seconds=self.seconds,
            output_format=self.output_format,
            image_format=self.image_format,
            depth_near_plane=self.depth_near_plane,
            depth_far_plane=self.depth_far_plane,
            colormap_options=self.colormap_options,
        )


@dataclass
class Dataset(DatasetRender):
    """Render every train/test view with its own scene (outputs go to one folder per scene)."""


Commands = tyro.conf.FlagConversionOff[
    Union[
        Annotated[CameraPath, tyro.conf.subcommand(name="camera-path")],
        Annotated[Interpolate, tyro.conf.subcommand(name="interpolate")],
        Annotated[Spiral, tyro.conf.subcommand(name="spiral")],
        Annotated[Dataset, tyro.conf.subcommand(name="dataset")],
    ]
]


def entrypoint() -> None:
    command = tyro.cli(Commands, description=__doc__)
    use_checked_eval_loading()  # eval_setup loads through it (done on importing a 3dae model too)
    try:
        command.main()
    except DamagedCheckpointError as err:
        CONSOLE.print(f"ns-3dae-render: {err}", style="bold red", markup=False)
        sys.exit(1)


if __name__ == "__main__":
    entrypoint()
