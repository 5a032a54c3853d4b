"""``ns-3dae-convert``: bring existing multi-scene datasets into the 3dae layout (docs/converters.md)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Tuple

import tyro
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nerfstudio_3dae.data.layout import DatasetError


@dataclass
class ConvertSrn:
    """Import SRN ShapeNet renderings (<root>/<instance>/{rgb,pose}/, intrinsics.txt), the paper's data."""

    input: Path
    """SRN root folder: one folder per instance (e.g. cars_train/)."""
    output: Path
    """Output dataset root (scenes.json + one scene folder per instance)."""
    min_altitude: Optional[float] = -0.5
    """Keep views whose camera height (camera-to-world [2, 3]) is above this; the paper keeps views from above
    with -0.5. Pass None to keep every view."""
    test_views: int = 10
    """The first K kept views of every instance are test views (the paper holds out 10)."""
    files: Literal["copy", "symlink", "hardlink"] = "copy"
    """How images reach the output: copies, symbolic links or hard links (the latter two save disk space)."""
    overwrite: bool = False
    """Write into a non-empty output folder."""

    def main(self) -> None:
        from nerfstudio_3dae.data.srn import convert_srn

        console = Console()
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        num = sum(1 for p in self.input.iterdir() if p.is_dir()) if self.input.is_dir() else 0
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("converting SRN instances", total=num)
            names = convert_srn(
                self.input,
                self.output,
                min_altitude=self.min_altitude,
                test_views=self.test_views,
                files=self.files,
                overwrite=self.overwrite,
                on_instance=lambda _: progress.advance(task),
            )
        console.print(f"wrote {len(names)} scenes to {self.output} (load them with the 3dae-scenes dataparser)")


@dataclass
class ConvertMeshes:
    """Render textured meshes (OBJ+MTL with UV textures, vertex or material colours; one mesh per scene) with the
    generator's camera rig: the same framing, cameras and lighting as ns-3dae-synth."""

    input: Tuple[Path, ...]
    """Mesh files, or folders searched recursively for .obj/.ply/.glb/.gltf/.off/.stl files."""
    output: Path
    """Output dataset root (scenes.json + one scene folder per mesh)."""
    views_per_scene: int = 24
    """Views rendered per mesh."""
    test_views: int = 4
    """The first K views of every scene are test views (K < views-per-scene)."""
    resolution: int = 128
    """Image width and height in pixels."""
    seed: int = 0
    """Camera seed; a scene's cameras depend only on (seed, scene name)."""
    up: Literal["y", "z"] = "y"
    """The files' up axis (OBJ's convention: +Y); scenes are written +Z up."""
    limit: Optional[int] = None
    """Stop after this many converted scenes (meshes in sorted order)."""
    workers: int = 1
    """Processes rendering at once (the output does not depend on it)."""
    skip_bad: bool = False
    """Go on past meshes that cannot be read or have no faces: they are listed at the end and in skipped.json."""
    resume: bool = False
    """Write into a non-empty output, keeping finished scenes rendered with the same settings."""
    overwrite: bool = False
    """Write into a non-empty output, removing the scenes an earlier conversion wrote there."""

    def main(self) -> None:
        from nerfstudio_3dae.data.meshes import convert_meshes, find_meshes

        console = Console()
        start = time.perf_counter()
        files = find_meshes(self.input)
        total = len(files) if self.limit is None else min(self.limit, len(files))
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("rendering meshes", total=total)

            def report(status: str, what: str) -> None:
                if status == "skipped":
                    console.print(f"[yellow]skipped:[/] {what}")
                else:
                    progress.advance(task)

            result = convert_meshes(
                self.input,
                self.output,
                views_per_scene=self.views_per_scene,
                test_views=self.test_views,
                resolution=self.resolution,
                seed=self.seed,
                up=self.up,
                limit=self.limit,
                workers=self.workers,
                overwrite=self.overwrite,
                resume=self.resume,
                skip_bad=self.skip_bad,
                on_scene=report,
            )
        console.print(
            f"wrote {len(result.names)} scenes x {self.views_per_scene} views of {self.resolution}^2 to {self.output} "
            f"({len(result.rendered)} rendered, {len(result.kept)} kept from an earlier run, "
            f"{len(result.skipped)} meshes skipped) in {time.perf_counter() - start:.1f} s"
        )
        for file, reason in result.skipped:
            console.print(f"  skipped {file}: {reason}")


def entrypoint() -> None:
    command = tyro.extras.subcommand_cli_from_dict({"srn": ConvertSrn, "meshes": ConvertMeshes}, description=__doc__)
    try:
        command.main()
    except DatasetError as err:
        Console(stderr=True).print(f"[bold red]error:[/] {err}")
        sys.exit(2)


if __name__ == "__main__":
    entrypoint()
