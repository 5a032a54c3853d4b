"""One picture of a run's test views: the per-view images that ``ns-eval --render-output-path`` writes
(``<scene>_<index>.png``; for latent methods each is ground truth | decoded render | the autoencoder alone),
tiled with one row per scene, so a user opens one file and sees where quality goes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List

import numpy as np
from PIL import Image

_VIEW = re.compile(r"^(?P<scene>.+)_(?P<index>\d+)\.png$")


def tile_test_views(folder: Path, output: Path, views_per_scene: int = 4, gap: int = 4) -> Path:
    """Tile the views in ``folder`` into ``output`` (PNG): a row per scene, its first ``views_per_scene`` views.

    Raises:
        FileNotFoundError: ``folder`` holds no ``<scene>_<index>.png`` files.
        ValueError: the views do not all have the same size.
    """
    rows: Dict[str, List[Path]] = {}
    for path in sorted(Path(folder).glob("*.png")):
        match = _VIEW.match(path.name)
        if match:
            rows.setdefault(match["scene"], []).append(path)
    if not rows:
        raise FileNotFoundError(
            f"no test views named <scene>_<index>.png in {folder} (written by ns-eval --render-output-path)"
        )
    tiles = [[np.asarray(Image.open(p).convert("RGB")) for p in paths[:views_per_scene]] for paths in rows.values()]
    shapes = {t.shape for row in tiles for t in row}
    if len(shapes) != 1:
        raise ValueError(f"test views in {folder} have different sizes: {sorted(shapes)}")
    h, w, _ = shapes.pop()
    columns = max(len(row) for row in tiles)
    canvas = np.full((len(tiles) * (h + gap) - gap, columns * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            canvas[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tile
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(output)
    return output
