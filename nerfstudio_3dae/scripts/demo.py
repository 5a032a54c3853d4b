"""``ns-3dae-demo``: the whole method on the CPU in a few minutes, with the commands a user would type.

1. ``ns-3dae-synth`` generates a small dataset of procedural cars (kept for later runs);
2. the ``3dae-scenes`` dataparser loads it: scenes, ids and views are printed;
3. ``ns-train 3dae-latent`` trains the scenes in the latent space of the embedded autoencoder, first from cached
   latents, then through the decoder (the method's schedule);
4. ``ns-eval`` reports the decoded test PSNR and writes every test view as ground truth | decoded render |
   autoencoder alone; one picture tiles them, a row per scene.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import tyro
from rich.console import Console
from rich.table import Table

from nerfstudio_3dae.preview import tile_test_views

CONSOLE = Console()


@dataclass
class DemoConfig:
    """Generate cars, load them, train 3dae-latent with the embedded autoencoder on the CPU, evaluate."""

    output: Path = Path("outputs/demo")
    """Where the dataset and the runs go."""
    num_scenes: int = 4
    """Generated scenes."""
    views_per_scene: int = 54
    """Views per scene (the first 4 are test views): 50 training views, the paper's count (measured in
    docs/quality.md: with 20, 0.3 dB less decoded test PSNR at 600 steps)."""
    resolution: int = 128
    """Image side (latents are resolution / 8): the embedded autoencoder's native 128²."""
    steps: int = 1200
    """Training steps of 3dae-latent: the first quarter on cached latents, the rest in the decoded phase (RGB through
    the decoder beside the latent loss), as the method's own schedule (600 steps: 1.3 dB less, docs/quality.md)."""
    only_data: bool = False
    """Stop after generating and loading the data."""


def _run(cmd: list) -> None:
    CONSOLE.print(f"[bold]$ {' '.join(str(c) for c in cmd)}")
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    subprocess.run([str(c) for c in cmd], check=True, env=env)


def _tool(name: str) -> str:
    """A console script of this environment (next to the running python)."""
    return str(Path(sys.executable).with_name(name))


def show_dataset(data: Path) -> None:
    from nerfstudio_3dae.data.dataparser import SCENE_ID, ScenesDataParserConfig

    parser = ScenesDataParserConfig(data=data).setup()
    train, test = parser.get_dataparser_outputs("train"), parser.get_dataparser_outputs("test")
    table = Table(title=f"3dae-scenes: {data}")
    for col in ("scene id", "name", "train views", "test views"):
        table.add_column(col)
    train_ids = train.cameras.metadata[SCENE_ID].squeeze(-1).tolist()
    test_ids = test.cameras.metadata[SCENE_ID].squeeze(-1).tolist()
    for i, name in enumerate(train.metadata["scene_names"]):
        table.add_row(str(i), name, str(train_ids.count(i)), str(test_ids.count(i)))
    CONSOLE.print(table)


TEST_VIEWS = 4
"""Test views of every generated scene (the first ones)."""


def main(config: DemoConfig) -> None:
    data = config.output / "cars"
    # the generated cars are kept for later runs, and made again when the demo's settings asked for other ones
    wanted = {"num_scenes": config.num_scenes, "views_per_scene": config.views_per_scene,
              "resolution": config.resolution, "test_views": TEST_VIEWS}  # fmt: skip
    stamp = config.output / "cars.settings.json"
    made = json.loads(stamp.read_text()) if stamp.is_file() and (data / "scenes.json").is_file() else None
    if made is not None and made != wanted:
        CONSOLE.print(f"{data} was generated with {made}: generating it again with {wanted}")
    if made != wanted:
        stamp.unlink(missing_ok=True)
        _run(
            [
                _tool("ns-3dae-synth"),
                "--output",
                data,
                "--num-scenes",
                config.num_scenes,
                "--views-per-scene",
                config.views_per_scene,
                "--resolution",
                config.resolution,
                "--test-views",
                TEST_VIEWS,
                "--overwrite",
            ]
        )
        stamp.write_text(json.dumps(wanted) + "\n")
    show_dataset(data)
    if config.only_data:
        return
    runs = config.output / "runs"
    _run(
        [
            _tool("ns-train"),
            "3dae-latent",
            "--data",
            data,
            "--output-dir",
            runs,
            "--experiment-name",
            "demo",
            "--timestamp",
            "latest",
            "--vis",
            "tensorboard",
            "--max-num-iterations",
            config.steps,
            "--logging.steps-per-log",
            100,
            "--pipeline.model.finetune-start",
            config.steps // 4,
            "--pipeline.model.resolution",
            32,
            "--pipeline.model.num-bases",
            10,
            "--pipeline.model.num-coarse-samples",
            32,
            "--pipeline.model.num-fine-samples",
            32,
        ]
    )
    run = runs / "demo" / "3dae-latent" / "latest"
    metrics, views = config.output / "eval.json", config.output / "test_views"
    _run(
        [_tool("ns-eval"), "--load-config", run / "config.yml", "--output-path", metrics, "--render-output-path", views]
    )
    results = json.loads(metrics.read_text())["results"]
    picture = tile_test_views(views, config.output / "test_views.png")
    CONSOLE.print(f"[bold green]run:[/] {run}")
    CONSOLE.print(
        f"[bold green]decoded test PSNR: {results['psnr']:.2f} dB[/] (SSIM {results['ssim']:.3f}; the autoencoder "
        f"alone reaches {results['autoencoded_psnr']:.2f} dB; latent PSNR {results['latent_psnr']:.2f} dB)"
    )
    CONSOLE.print(f"inspect it: ns-viewer --load-config {run / 'config.yml'} --viewer.websocket-host 127.0.0.1")
    CONSOLE.print(
        f"[bold green]test views[/] (ground truth | decoded render | autoencoder alone, a row per scene): {picture}"
    )


def entrypoint() -> None:
    main(tyro.cli(DemoConfig, description=__doc__))


if __name__ == "__main__":
    entrypoint()
