"""``ns-3dae-bench reconstruction``: D(E(x)) of autoencoders on datasets' views, side by side."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import BIN, tool_env, write_tiny_scene

from nerfstudio_3dae.autoencoder import build_autoencoder, small_autoencoder_config
from nerfstudio_3dae.autoencoder_training import reconstruction_psnr
from nerfstudio_3dae.bench.reconstruction import dataset_views, run_reconstruction
from nerfstudio_3dae.data.images import load_images
from nerfstudio_3dae.data.layout import DatasetError, write_scenes_index


def _dataset(root, splits=("test", None, None, "test")):
    for i in range(2):
        write_tiny_scene(root / f"s{i}", views=4, size=16, splits=list(splits), seed=i)
    write_scenes_index(root, ["s0", "s1"])
    return root


def test_views_by_split_and_spread(tmp_path):
    root = _dataset(tmp_path / "data")
    assert len(dataset_views(root)) == 8
    test = dataset_views(root, "test")
    assert [p.parent.parent.name for p in test] == ["s0", "s0", "s1", "s1"]
    assert len(dataset_views(root, "train")) == 4, "views without a split are training views"
    assert len(dataset_views(root, max_views=3)) == 3
    with pytest.raises(DatasetError, match="no test views"):
        dataset_views(_dataset(tmp_path / "none", splits=(None,) * 4), "test")


def test_each_autoencoder_is_scored_on_each_dataset(tmp_path, one_thread):
    cars, chairs = _dataset(tmp_path / "cars"), _dataset(tmp_path / "chairs", splits=("test",) * 4)
    folders = []
    for seed in (0, 1):  # two different (untrained) autoencoders written as diffusers folders
        ae = build_autoencoder(small_autoencoder_config(width=8), "kl", seed=seed)
        folders.append(str(ae.save(tmp_path / f"ae{seed}")))
    result = run_reconstruction(folders, [cars, chairs], split="test", log=lambda _: None)
    assert result["views"] == {str(cars): 4, str(chairs): 8}
    expected = reconstruction_psnr(
        build_autoencoder(small_autoencoder_config(width=8), "kl", seed=1),
        load_images(dataset_views(chairs, "test")).permute(0, 3, 1, 2),
    )
    assert result["psnr"][folders[1]][str(chairs)] == pytest.approx(expected, abs=1e-4)
    assert result["psnr"][folders[0]][str(chairs)] != pytest.approx(expected, abs=1e-2), "each its own weights"

    out = tmp_path / "report"
    run = subprocess.run(
        [str(BIN / "ns-3dae-bench"), "reconstruction", "--autoencoders", folders[1], "--data", str(chairs),
         "--split", "test", "--output", str(out)],
        capture_output=True, text=True, env=tool_env(one_thread=True), timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    written = json.loads((out / "reconstruction.json").read_text())
    assert written["psnr"][folders[1]][str(chairs)] == pytest.approx(expected, abs=1e-4)
    assert f"{expected:.2f}" in (out / "reconstruction.md").read_text()
    assert written["views"][str(chairs)] == 8
