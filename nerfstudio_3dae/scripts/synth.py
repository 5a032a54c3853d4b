"""``ns-3dae-synth``: generate many semantically similar scenes (procedural cars, chairs or tables).

A thin CLI over :func:`nerfstudio_3dae.data.synth.generate.generate_dataset`; see docs/generator.md.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from nerfstudio_3dae.data.synth.generate import DEFAULT_WORKERS, Category, generate_dataset


@dataclass
class SynthConfig:
    """Generate a multi-scene dataset of procedural objects (one object per scene), rendered on the CPU."""

    output: Path
    """Dataset root to write (scenes.json and one folder per scene)."""
    num_scenes: int = 100
    """Number of scenes (objects) to generate."""
    views_per_scene: int = 50
    """Number of views rendered per scene."""
    resolution: int = 128
    """Image width and height in pixels."""
    seed: int = 0
    """Random seed; scene i depends only on (seed, category, i)."""
    category: Category = "car"
    """Object category."""
    test_views: int = 10
    """The first K views of each scene are marked as test views, the others as train views (K < views-per-scene)."""
    workers: int = DEFAULT_WORKERS
    """Worker processes (default: min(2, CPU count)). The output does not depend on it."""
    overwrite: bool = False
    """Allow writing into a non-empty output folder (replaces scenes.json and generated scene folders there)."""


def main(config: SynthConfig) -> None:
    """Run the generator for a parsed config and print a one-line summary."""
    from rich.console import Console

    console = Console()
    start = time.perf_counter()
    try:
        generate_dataset(
            config.output,
            config.num_scenes,
            config.views_per_scene,
            config.resolution,
            config.seed,
            config.category,
            config.test_views,
            config.workers,
            config.overwrite,
            progress=True,
        )
    except (ValueError, FileExistsError) as err:
        console.print(f"[bold red]ns-3dae-synth: error:[/bold red] {err}")
        sys.exit(2)
    seconds = time.perf_counter() - start
    console.print(
        f"Wrote {config.num_scenes} {config.category} scenes x {config.views_per_scene} views "
        f"({config.resolution}x{config.resolution}) to {config.output} in {seconds:.1f} s",
        soft_wrap=True,
    )


def entrypoint() -> None:
    """Console script ``ns-3dae-synth``."""
    import tyro

    main(tyro.cli(SynthConfig))


if __name__ == "__main__":
    entrypoint()
