"""Where a model's autoencoder (and stage-1 bases) come from: the embedded weights, a fresh small autoencoder,
a diffusers folder, a ``3dae-autoencoder`` run, or a model-hub id."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Tuple

import torch

from nerfstudio_3dae.autoencoder import (
    LatentAutoencoder,
    NormaliserConfig,
    build_autoencoder,
    load_autoencoder,
    small_autoencoder_config,
)

EMBEDDED_AUTOENCODER = Path(__file__).parent / "weights" / "autoencoder"
"""The project's own small autoencoder, trained by its stage 1 on generated cars (docs/autoencoder.md)."""
RUN_EXPORT = "autoencoder"
"""Sub-folder of a 3dae-autoencoder run holding its exported autoencoder and bases."""
BASES_FILE = "bases.pt"
SCRATCH_TANH_SCALE = 0.5
"""Normaliser scale of autoencoders trained from scratch (saved with them, so the embedded one carries it)."""


def resolve_autoencoder(
    source: str, kind: str = "auto", normaliser: Optional[NormaliserConfig] = None, scratch_width: int = 32
) -> LatentAutoencoder:
    """Load the autoencoder named by a model's ``autoencoder`` option (see LatentTriplaneModelConfig)."""
    if source == "scratch":
        # A fresh autoencoder's raw latents are O(1), not SD's O(10): tanh(0.02 z) would squash them to ±0.02.
        scratch_normaliser = normaliser or NormaliserConfig(kind="tanh", scale=SCRATCH_TANH_SCALE)
        return build_autoencoder(small_autoencoder_config(width=scratch_width), "kl", scratch_normaliser, seed=0)
    if source == "embedded":
        if not (EMBEDDED_AUTOENCODER / "config.json").is_file():
            raise FileNotFoundError(
                f"the embedded autoencoder is missing from {EMBEDDED_AUTOENCODER}; reinstall the package or remake it "
                "(docs/autoencoder.md), or pass --pipeline.model.autoencoder FOLDER|HUB_ID"
            )
        return load_autoencoder(EMBEDDED_AUTOENCODER, kind, normaliser)  # type: ignore[arg-type]
    folder = autoencoder_folder(source)  # None: a hub id (or a path that is not there: load_autoencoder names it)
    return load_autoencoder(source if folder is None else folder, kind, normaliser)  # type: ignore[arg-type]


def autoencoder_folder(source: str) -> Optional[Path]:
    """The local folder of the autoencoder a model's ``autoencoder`` option names: the embedded weights, a
    3dae-autoencoder run's ``autoencoder/`` export, or a diffusers folder; None for ``scratch`` (built by code) and
    for anything that is no folder here (a hub id)."""
    if source == "scratch":
        return None
    if source == "embedded":
        return EMBEDDED_AUTOENCODER
    path = Path(source).expanduser()
    if (path / RUN_EXPORT / "config.json").is_file():  # a 3dae-autoencoder run folder
        return path / RUN_EXPORT
    return path if path.is_dir() else None


def bases_beside_autoencoder(source: str) -> Optional[Path]:
    """The ``bases.pt`` that comes with an autoencoder named by a 3dae-autoencoder run folder or by its
    ``autoencoder/`` export (None for anything else: embedded, scratch, diffusers folders, hub ids)."""
    if source in ("embedded", "scratch"):
        return None
    path = Path(source).expanduser()
    for candidate in (path / RUN_EXPORT / BASES_FILE, path / BASES_FILE):
        if candidate.is_file():
            return candidate
    return None


def load_bases(source: Path, shape: Tuple[int, ...], option: str = "--pipeline.model.bases") -> torch.Tensor:
    """Shared bases saved by a 3dae-autoencoder run: ``source`` is the run, its autoencoder/ folder or the file.
    Errors name ``option``, the setting that pointed here."""
    path = Path(source)
    for candidate in (path, path / BASES_FILE, path / RUN_EXPORT / BASES_FILE):
        if candidate.is_file():
            bases = torch.load(candidate, map_location="cpu", weights_only=True)
            if tuple(bases.shape) != tuple(shape):
                raise ValueError(
                    f"{option} {candidate}: bases of shape {tuple(bases.shape)}, but this model needs "
                    f"{tuple(shape)} (num_bases, 3, macro_channels, resolution, resolution must match the stage-1 run)"
                )
            return bases
    raise FileNotFoundError(f"{option} {source}: no {BASES_FILE} there (nor in {RUN_EXPORT}/)")


def export_stage1(folder: Path, autoencoder: LatentAutoencoder, bases: torch.Tensor) -> Path:
    """Write a stage-1 result (autoencoder + bases) atomically enough: into a temp folder, then swap it in."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    autoencoder.save(tmp)
    torch.save(bases.detach().cpu().clone(), tmp / BASES_FILE)
    if folder.exists():
        old = folder.with_name(folder.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old)
    else:
        tmp.rename(folder)
    return folder
