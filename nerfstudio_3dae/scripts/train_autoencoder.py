"""``ns-3dae-train-autoencoder``: autoencoder-only training on a generated corpus (resumable; docs/autoencoder.md).

A thin CLI over :func:`nerfstudio_3dae.autoencoder_training.train_autoencoder`. Run it again with the same
``--output`` to resume after a stop, on any device: ``--device auto`` (the default) trains on CUDA where
``torch.cuda.is_available()``, with ``--batch-size auto`` crops a step (32 on CUDA, 8 on the CPU).
"""

from __future__ import annotations

import sys


def entrypoint() -> None:
    """Console script ``ns-3dae-train-autoencoder``."""
    import tyro
    from rich.console import Console

    from nerfstudio_3dae.autoencoder_training import AutoencoderTrainingConfig, train_autoencoder

    config = tyro.cli(AutoencoderTrainingConfig)
    console = Console()
    try:
        export = train_autoencoder(config, log=lambda line: console.print(line, soft_wrap=True, highlight=False))
    except (ValueError, FileExistsError) as err:
        console.print(f"[bold red]ns-3dae-train-autoencoder: error:[/bold red] {err}")
        sys.exit(2)
    console.print(f"autoencoder: {export}")


if __name__ == "__main__":
    entrypoint()
