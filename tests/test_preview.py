"""The demo's one picture of all test views: a row per scene, views side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nerfstudio_3dae.preview import tile_test_views


def _view(path: Path, value: int, size=(8, 24)) -> None:
    Image.fromarray(np.full((*size, 3), value, dtype=np.uint8)).save(path)


def test_rows_are_scenes_and_columns_views(tmp_path: Path):
    for scene, base in (("car_0000", 10), ("car_0001", 100)):
        for index in range(3):
            _view(tmp_path / f"{scene}_{index + 3 * (base > 50):05d}.png", base + index)
    _view(tmp_path / "notes.png", 0)  # not a test view: ignored
    out = tile_test_views(tmp_path, tmp_path / "grid" / "all.png", views_per_scene=2, gap=4)
    grid = np.asarray(Image.open(out))
    assert grid.shape == (2 * 8 + 4, 2 * 24 + 4, 3)
    assert grid[0, 0, 0] == 10 and grid[0, 28, 0] == 11  # scene 0: its first two views
    assert grid[12, 0, 0] == 100 and grid[12, 28, 0] == 101  # scene 1 on the second row
    assert grid[9, 0, 0] == 255  # white gap between rows


def test_errors_name_the_folder(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        tile_test_views(tmp_path, tmp_path / "x.png")
    _view(tmp_path / "a_00000.png", 1)
    _view(tmp_path / "a_00001.png", 1, size=(9, 24))
    with pytest.raises(ValueError, match="different sizes"):
        tile_test_views(tmp_path, tmp_path / "x.png")
