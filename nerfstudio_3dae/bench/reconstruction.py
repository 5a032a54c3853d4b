"""How well autoencoders reconstruct a dataset's views, side by side: ``ns-3dae-bench reconstruction``.

For each autoencoder (anything ``--pipeline.model.autoencoder`` accepts: ``embedded``, a diffusers folder, a
``3dae-autoencoder`` run, a hub id) and each dataset (the multi-scene layout, docs/layout.md), the mean PSNR of
``D(E(x))`` over whole views (the latent mean, as the methods encode), optionally only the test views. This is the
ceiling of every decoded render in that latent space (docs/quality.md), and the figure docs/autoencoder.md reports
for held-out generated cars and real chairs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Dict, List, Literal, Optional, Sequence

from nerfstudio_3dae.autoencoder_source import resolve_autoencoder
from nerfstudio_3dae.autoencoder_training import reconstruction_psnr
from nerfstudio_3dae.data.images import load_images
from nerfstudio_3dae.data.layout import DatasetError, read_scene, read_scene_names

Split = Literal["all", "test", "train"]


def dataset_views(root: Path, split: Split = "all", max_views: Optional[int] = None) -> List[Path]:
    """The image paths of every scene of ``root`` (scene after scene), only those of ``split`` unless ``all``;
    at most ``max_views``, spread evenly over the list."""
    paths: List[Path] = []
    for name in read_scene_names(root):
        views = read_scene(root, name).views
        paths += [v.image for v in views if split == "all" or (v.split or "train") == split]
    if not paths:
        raise DatasetError(f"{root}: no {split} views (the split of a view is its transforms.json frame's 'split')")
    if max_views is not None and 0 < max_views < len(paths):
        paths = [paths[round(i * len(paths) / max_views)] for i in range(max_views)]
    return paths


def run_reconstruction(
    autoencoders: Sequence[str],
    datasets: Sequence[Path],
    split: Split = "all",
    max_views: Optional[int] = None,
    log: Callable[[str], None] = print,
) -> Dict:
    """D(E(x)) PSNR of every autoencoder on every dataset: ``{"psnr": {autoencoder: {dataset: dB}}, "views": {dataset:
    count}, ...}``."""
    images = {}
    for root in datasets:
        paths = dataset_views(Path(root), split, max_views)
        images[str(root)] = load_images(paths).permute(0, 3, 1, 2).contiguous()  # [N, 3, H, W] uint8
        log(f"{root}: {len(paths)} {split} views of {tuple(images[str(root)].shape[-2:])}")
    psnr: Dict[str, Dict[str, float]] = {}
    seconds: Dict[str, float] = {}
    for source in autoencoders:
        ae = resolve_autoencoder(source)
        start = time.perf_counter()
        psnr[source] = {root: reconstruction_psnr(ae, views) for root, views in images.items()}  # no_grad inside
        seconds[source] = time.perf_counter() - start
        log(f"{source}: " + ", ".join(f"{root} {db:.2f} dB" for root, db in psnr[source].items()))
    return {
        "split": split,
        "views": {root: len(views) for root, views in images.items()},
        "psnr": psnr,
        "seconds": seconds,
    }


def reconstruction_table(result: Dict) -> str:
    """Markdown: one row per autoencoder, one column per dataset (dB)."""
    roots = list(result["views"])
    lines = ["| autoencoder | " + " | ".join(f"{r} ({result['views'][r]} views)" for r in roots) + " |"]
    lines.append("|" + "---|" * (len(roots) + 1))
    for source, row in result["psnr"].items():
        lines.append(f"| {source} | " + " | ".join(f"{row[r]:.2f}" for r in roots) + " |")
    return f"D(E(x)) PSNR, {result['split']} views\n\n" + "\n".join(lines) + "\n"
