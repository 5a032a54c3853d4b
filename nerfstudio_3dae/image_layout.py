"""Image layouts and conversions used across the package: one place for uint8 -> float and channels-last <-> NCHW.

Two layouts meet in this project: nerfstudio's channels-last images (``[H, W, c]`` from ``get_outputs_for_camera``,
``[K, H, W, 3]`` batches from the datamanager) and torch's ``[K, c, H, W]`` (renderer, autoencoder, torchmetrics).
Pure tensor functions, no nerfstudio.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int, Shaped
from torch import Tensor


def to_float(images: Shaped[Tensor, "*shape"]) -> Float[Tensor, "*shape"]:
    """uint8 in [0, 255] -> float32 in [0, 1]; floating-point input is taken as already in [0, 1] (made float32)."""
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise TypeError(f"expected uint8 images in [0, 255] or floats in [0, 1], got dtype {images.dtype}")
    return images if images.dtype == torch.float32 else images.float()


def hwc_to_nchw(images: Shaped[Tensor, "*k H W c"]) -> Shaped[Tensor, "K c H W"]:
    """Channels-last ``[K, H, W, c]`` or one ``[H, W, c]`` image -> ``[K, c, H, W]`` (``K = 1`` for one image)."""
    if images.ndim not in (3, 4):
        raise ValueError(f"expected images of shape [H, W, c] or [K, H, W, c], got {tuple(images.shape)}")
    if images.ndim == 3:
        images = images[None]
    return images.permute(0, 3, 1, 2)


def first_to_hwc(
    images: Float[Tensor, "K c h w"], height: int, width: int, mode: str = "bilinear"
) -> Float[Tensor, "H W c"]:
    """The first image of a ``[K, c, h, w]`` batch as ``[H, W, c]`` at ``height x width`` (resampled with ``mode``,
    e.g. ``"bilinear"`` or ``"nearest"``, when the size differs; unchanged otherwise)."""
    if images.ndim != 4:
        raise ValueError(f"expected images of shape [K, c, h, w], got {tuple(images.shape)}")
    first = images[:1]
    if first.shape[-2:] != (height, width):
        align = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
        first = F.interpolate(first, size=(height, width), mode=mode, **align)
    return first[0].permute(1, 2, 0)


def shift_images(images: Float[Tensor, "K c H W"], shift: Float[Tensor, "K 2"]) -> Float[Tensor, "K c H W"]:
    """Each image resampled at ``p + shift`` (pixels, ``(x, y)``, sub-pixel by bilinear interpolation; the border
    pixels repeat outside): what a camera whose principal point moved by ``-shift`` would see."""
    k, _, h, w = images.shape
    theta = torch.zeros(k, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 2.0 * shift[:, 0].to(images.dtype) / w  # normalised coordinates span 2 over the image
    theta[:, 1, 2] = 2.0 * shift[:, 1].to(images.dtype) / h
    grid = F.affine_grid(theta, [k, 1, h, w], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_crop_corners(count: int, size: Tuple[int, int], crop: int, device: torch.device) -> Int[Tensor, "K 2"]:
    """Top-left corners ``(y, x)`` of ``count`` random ``crop x crop`` squares inside an image of ``size`` ``(H, W)``,
    drawn on ``device`` (no host read)."""
    height, width = size
    if not 0 < crop <= min(height, width):
        raise ValueError(f"a crop of side {crop} does not fit an image of {height}x{width}")
    rows = torch.randint(0, height - crop + 1, (count,), device=device)
    cols = torch.randint(0, width - crop + 1, (count,), device=device)
    return torch.stack([rows, cols], dim=1)


def crop_images(images: Shaped[Tensor, "K c H W"], corners: Int[Tensor, "K 2"], crop: int) -> Shaped[Tensor, "K c s s"]:
    """The ``crop x crop`` square of each image whose top-left pixel is ``corners[k] = (y, x)`` (one gather for the
    whole batch: the corners stay on the device)."""
    k = images.shape[0]
    steps = torch.arange(crop, device=images.device)
    rows = (corners[:, 0:1] + steps)[:, :, None]  # [K, s, 1]
    cols = (corners[:, 1:2] + steps)[:, None, :]  # [K, 1, s]
    batch = torch.arange(k, device=images.device)[:, None, None]
    return images.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # [K, s, s, c] -> [K, c, s, s]
