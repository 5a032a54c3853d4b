"""Image metrics in the three spaces (latent, decoded, autoencoded) and their aggregation over views and scenes.

LPIPS needs ImageNet AlexNet weights that torchmetrics would download: it is computed only when they are already in
torch's hub cache, never with untrained weights; otherwise the results say why it is missing.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from jaxtyping import Float
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from nerfstudio_3dae.image_layout import hwc_to_nchw

LPIPS_BACKBONE = "alexnet-owt-7be5be79.pth"
"""The torchvision AlexNet checkpoint torchmetrics' LPIPS ('alex') loads from torch's hub cache."""


def psnr_of_mse(mse: Tensor, data_range: float = 1.0) -> Tensor:
    """PSNR in dB of mean squared errors (any shape): ``10 log10(data_range² / mse)``."""
    return 10.0 * torch.log10(data_range**2 / mse)


def batch_psnr(pred: Float[Tensor, "*bs"], target: Float[Tensor, "*bs"], data_range: float) -> Float[Tensor, ""]:
    """PSNR of a whole batch (one mean squared error), as a device tensor: a training step's metric, computed in a
    few operators and never read back (torchmetrics' PSNR takes some fourteen)."""
    return psnr_of_mse(torch.nn.functional.mse_loss(pred, target), data_range)


def psnr_per_image(pred: Float[Tensor, "B c H W"], target: Float[Tensor, "B c H W"]) -> Float[Tensor, "B"]:
    """PSNR in dB of each image of a batch in [0, 1] (the prediction clamped to it; an exact match counts as 100 dB)."""
    return psnr_of_mse(((pred.clamp(0, 1) - target) ** 2).flatten(1).mean(1).clamp_min(1e-10))


def image_metrics(
    pred: Float[Tensor, "H W c"], gt: Float[Tensor, "H W c"], data_range: float, prefix: str = ""
) -> Dict[str, float]:
    """PSNR and SSIM of one image (channels last). The SSIM window shrinks for small (latent) images."""
    p, g = hwc_to_nchw(pred), hwc_to_nchw(gt)
    side = min(p.shape[-2:])
    kernel = max(3, min(11, side - 1 if side % 2 == 0 else side))
    return {
        f"{prefix}psnr": float(peak_signal_noise_ratio(p, g, data_range=data_range)),
        f"{prefix}ssim": float(
            # torchmetrics sizes the Gaussian window from sigma (size = 2 * int(3.5 sigma + 0.5) + 1)
            structural_similarity_index_measure(p, g, data_range=data_range, sigma=(kernel - 1) / 7)
        ),
    }


def rgb_metrics(pred: Float[Tensor, "H W 3"], gt: Float[Tensor, "H W 3"], prefix: str = "") -> Dict[str, float]:
    """PSNR, SSIM (and LPIPS where its weights are present) of an RGB image in [0, 1]."""
    metrics = image_metrics(pred.clamp(0, 1), gt, 1.0, prefix)
    lpips = lpips_model()
    if lpips is not None:
        with torch.no_grad():
            metrics[f"{prefix}lpips"] = float(lpips.to(pred.device)(hwc_to_nchw(pred.clamp(0, 1)), hwc_to_nchw(gt)))
    return metrics


def lpips_unavailable_reason() -> Optional[str]:
    """None when LPIPS can be computed offline, else why not."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONE
    if not path.is_file():
        return f"LPIPS not computed: its AlexNet weights are not in {path.parent} (offline; no untrained stand-in)"
    return None


@lru_cache(maxsize=1)
def lpips_model():
    """torchmetrics' LPIPS (AlexNet) when its weights are present locally, else None."""
    if lpips_unavailable_reason() is not None:
        return None
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    return LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True).eval()


def aggregate(
    per_view: Sequence[Tuple[str, Dict[str, float]]], with_std: bool = True
) -> Tuple[Dict[str, float], Dict[str, Dict[str, float]]]:
    """Means (and standard deviations) over all views, and means per scene.

    ``per_view`` holds ``(scene name, metrics)`` for each view. Returns ``(overall, per_scene)``.
    """
    values: Dict[str, List[float]] = defaultdict(list)
    by_scene: Dict[str, Dict[str, List[float]]] = defaultdict(lambda: defaultdict(list))
    for scene, metrics in per_view:
        for key, value in metrics.items():
            values[key].append(value)
            by_scene[scene][key].append(value)
    overall: Dict[str, float] = {}
    for key, vals in values.items():
        overall[key] = statistics.fmean(vals)
        if with_std:
            overall[f"{key}_std"] = statistics.pstdev(vals)
    per_scene = {s: {k: statistics.fmean(v) for k, v in m.items()} for s, m in by_scene.items()}
    return overall, per_scene
