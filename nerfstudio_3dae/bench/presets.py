"""Sizes and schedules of ``ns-3dae-bench compare`` (``--preset``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict


@dataclass(frozen=True, kw_only=True)
class ComparePreset:
    """Sizes and schedules of one comparison. With ``--data`` the dataset gives the scenes, views and image size
    (``scenes``, ``views_per_scene``, ``test_views`` and ``image_size`` only shape generated data)."""

    stage1_scenes: int
    """Scenes of the 3dae-autoencoder run (not the compared ones)."""
    scenes: int
    """N: new scenes trained by both methods."""
    views_per_scene: int
    """Views per generated scene."""
    test_views: int
    """Of which test views (the PSNR/SSIM figures)."""
    image_size: int
    """Image side (a multiple of 8)."""
    triplane_resolution: int
    """R of every method."""
    num_bases: int
    """M of the latent method (and of the micro/macro RGB ablation; RGB Tri-Planes have no bases)."""
    samples: int
    """Coarse and fine samples per ray, both methods."""
    scenes_per_step: int
    """Scenes in a training batch, both methods."""
    stage1_steps: int
    """Steps of the 3dae-autoencoder run."""
    stage1_warmup: int
    """Of which warm-up steps (E, D frozen)."""
    rgb_steps: int
    """Steps of 3dae-rgb."""
    latent_steps: int
    """Steps of 3dae-latent."""
    finetune_start: int
    """Step of 3dae-latent at which the decoded phase (the fine-tune) starts: a quarter of its steps, as the
    method's defaults."""
    eval_every: int
    """Steps between two evaluations of all test views."""
    render_size: int = 128
    """Side of the views timed for the render ratio."""
    render_repeats: int = 5
    """Timed renders per method (the median is kept)."""


PRESETS: Dict[str, ComparePreset] = {
    # code path only (tests): a few seconds of training
    "tiny": ComparePreset(
        stage1_scenes=2,
        scenes=2,
        views_per_scene=5,
        test_views=1,
        image_size=16,
        triplane_resolution=8,
        num_bases=2,
        samples=8,
        scenes_per_step=2,
        stage1_steps=10,
        stage1_warmup=4,
        rgb_steps=16,
        latent_steps=16,
        finetune_start=4,
        eval_every=8,
        render_size=32,
        render_repeats=2,
    ),
    # about 15 minutes on a 2-core CPU
    "small": ComparePreset(
        stage1_scenes=4,
        scenes=6,
        views_per_scene=24,
        test_views=4,
        image_size=64,
        triplane_resolution=32,
        num_bases=10,
        samples=24,
        scenes_per_step=2,
        stage1_steps=120,
        stage1_warmup=40,
        rgb_steps=400,
        latent_steps=1500,
        finetune_start=375,
        eval_every=50,
    ),
    # the paper's image size and R with few scenes and short schedules: estimated ~25 min on an idle 2-core CPU
    # (per-step costs of the small run scaled by pixels and samples); not yet measured
    "medium": ComparePreset(
        stage1_scenes=4,
        scenes=4,
        views_per_scene=20,
        test_views=4,
        image_size=128,
        triplane_resolution=64,
        num_bases=10,
        samples=16,
        scenes_per_step=2,
        stage1_steps=60,
        stage1_warmup=30,
        rgb_steps=300,
        latent_steps=1200,
        finetune_start=300,
        eval_every=50,
    ),
    # the paper's sizes (128², R = 64, 1000 scenes; stage 1 on 500 others): for a GPU
    "paper": ComparePreset(
        stage1_scenes=500,
        scenes=1000,
        views_per_scene=50,
        test_views=10,
        image_size=128,
        triplane_resolution=64,
        num_bases=50,
        samples=48,
        scenes_per_step=8,
        stage1_steps=20000,
        stage1_warmup=2000,
        rgb_steps=30000,
        latent_steps=30000,
        finetune_start=7500,
        eval_every=2500,
    ),
}
