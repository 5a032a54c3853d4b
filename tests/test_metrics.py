"""Metrics in every space: PSNR/SSIM on tiny latent images, aggregation per scene, LPIPS only with local weights."""

from __future__ import annotations

import math

import pytest
import torch

from nerfstudio_3dae import metrics
from nerfstudio_3dae.metrics import batch_psnr, psnr_per_image


@pytest.mark.parametrize("side", [4, 5, 8, 16, 64])
def test_image_metrics_on_small_latents(side):
    image = torch.rand(side, side, 4) * 2 - 1
    same = metrics.image_metrics(image, image, data_range=2.0, prefix="latent_")
    assert same["latent_ssim"] == pytest.approx(1.0) and math.isinf(same["latent_psnr"])
    noisy = metrics.image_metrics(image, image + 0.1, data_range=2.0)
    assert noisy["psnr"] == pytest.approx(10 * math.log10(4 / 0.01), rel=1e-4)


def test_aggregate_means_per_scene():
    per_view = [("a", {"psnr": 10.0}), ("a", {"psnr": 20.0}), ("b", {"psnr": 30.0})]
    overall, per_scene = metrics.aggregate(per_view)
    assert overall["psnr"] == pytest.approx(20.0) and overall["psnr_std"] == pytest.approx(math.sqrt(200 / 3))
    assert per_scene == {"a": {"psnr": 15.0}, "b": {"psnr": 30.0}}


def test_lpips_is_skipped_without_local_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    metrics.lpips_model.cache_clear()
    try:
        assert str(tmp_path) in metrics.lpips_unavailable_reason()
        assert metrics.lpips_model() is None
        result = metrics.rgb_metrics(torch.rand(8, 8, 3), torch.rand(8, 8, 3))
        assert set(result) == {"psnr", "ssim"}, "never an LPIPS from untrained weights"
    finally:
        metrics.lpips_model.cache_clear()


def test_batch_and_per_image_psnr_on_known_pairs():
    target = torch.full((2, 3, 4, 4), 0.5)
    off = target.clone()
    off[1] += 0.1  # image 1 is off by 0.1 everywhere: 20 dB; image 0 exact: capped at 100 dB
    torch.testing.assert_close(psnr_per_image(off, target), torch.tensor([100.0, 20.0]))
    # the batch PSNR takes one mean squared error over both images: 0.01 / 2
    torch.testing.assert_close(batch_psnr(off, target, data_range=1.0), torch.tensor(10 * math.log10(200.0)))
    torch.testing.assert_close(batch_psnr(2 * off, 2 * target, data_range=2.0), batch_psnr(off, target, 1.0))
