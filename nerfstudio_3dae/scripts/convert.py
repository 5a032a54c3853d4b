"""``ns-3dae-convert``: bring existing multi-scene datasets into the 3dae layout (docs/converters.md)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

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


def entrypoint() -> None:
    command = tyro.extras.subcommand_cli_from_dict({"srn": ConvertSrn}, description=__doc__)
    try:
        command.main()
    except DatasetError as err:
        Console(stderr=True).print(f"[bold red]error:[/] {err}")
        sys.exit(2)


if __name__ == "__main__":
    entrypoint()
