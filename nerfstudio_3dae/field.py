"""Tri-plane scenes rendered from nerfstudio cameras: the bank, the shared MLP and the volume renderer together.

``TriplaneField.render`` takes a batch of cameras (any mix of scenes) and returns whole images at the cameras'
resolution divided by ``downscale`` (the autoencoder factor in latent space, 1 in RGB): one ray per output pixel.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass
from typing import Dict, Literal, Optional, Tuple

import torch
from jaxtyping import Float, Int
from nerfstudio.cameras.cameras import Cameras
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from nerfstudio_3dae.occupancy import OccupancyGrids, decode_masked
from nerfstudio_3dae.rendering import render_rays
from nerfstudio_3dae.triplanes import TriplaneBank, TriplaneMLP, decode_points


@dataclass
class RenderSettings:
    """How rays are sampled, built by the model from its config (``near``, ``far``, ``num_coarse_samples``,
    ``num_fine_samples``, ``backend``) and its scene box (``scene_bound``)."""

    near: float = 0.5
    """Near plane of every ray."""
    far: float = 2.1
    """Far plane of every ray."""
    num_coarse: int = 48
    """Stratified samples per ray (the model's ``num_coarse_samples``)."""
    num_fine: int = 48
    """Importance samples per ray (the model's ``num_fine_samples``)."""
    scene_bound: float = 1.0
    """Points outside ``[-scene_bound, scene_bound]^3`` get density 0 (the largest |coordinate| of the scene box)."""
    backend: Literal["auto", "torch", "nerfacc"] = "auto"
    """Sampling/compositing backend: nerfacc on CUDA ('auto'), or pure torch."""


def camera_rays(
    cameras: Cameras, downscale: int
) -> Tuple[Float[Tensor, "K HW 3"], Float[Tensor, "K HW 3"], Tuple[int, int]]:
    """Rays through the pixel centres of ``cameras`` at ``1/downscale`` of their resolution (rounded up).

    All cameras of the batch must share one resolution. Returns origins, unit directions and ``(h, w)``.
    """
    cams = copy.copy(cameras)
    height, width = int(cams.height.reshape(-1)[0]), int(cams.width.reshape(-1)[0])
    if not (torch.all(cams.height == height) and torch.all(cams.width == width)):
        raise ValueError("all cameras of a render batch need the same resolution")
    h, w = math.ceil(height / downscale), math.ceil(width / downscale)
    # Scale the intrinsics so that the h x w grid spans exactly the original image plane.
    cams = Cameras(
        camera_to_worlds=cams.camera_to_worlds.reshape(-1, 3, 4),
        fx=cams.fx.reshape(-1, 1) * (w / width),
        fy=cams.fy.reshape(-1, 1) * (h / height),
        cx=cams.cx.reshape(-1, 1) * (w / width),
        cy=cams.cy.reshape(-1, 1) * (h / height),
        width=torch.full_like(cams.width.reshape(-1, 1), w),
        height=torch.full_like(cams.height.reshape(-1, 1), h),
        camera_type=cams.camera_type.reshape(-1, 1),
    )
    k = cams.shape[0]
    rays = cams.generate_rays(camera_indices=torch.arange(k, device=cams.device)[:, None])  # [h, w, K, 3]
    origins = rays.origins.permute(2, 0, 1, 3).reshape(k, h * w, 3)
    directions = rays.directions.permute(2, 0, 1, 3).reshape(k, h * w, 3)
    return origins, directions, (h, w)


class TriplaneField(nn.Module):
    """Per-scene Tri-Planes (shared bases) + the shared MLP, rendered along camera rays.

    With ``occupancy`` (per-scene grids, one row per row of the bank) the field is evaluated only at samples in
    occupied cells, and every training render updates the grids of its scenes (:mod:`nerfstudio_3dae.occupancy`).
    ``points_decoded`` counts the samples the field evaluated (all renders of this process)."""

    def __init__(
        self,
        bank: TriplaneBank,
        mlp: TriplaneMLP,
        settings: RenderSettings,
        occupancy: Optional[OccupancyGrids] = None,
    ):
        super().__init__()
        self.bank = bank
        self.mlp = mlp
        self.settings = settings
        self.occupancy = occupancy
        self.points_decoded = 0
        """Samples (points) the field has evaluated so far: what skipping empty space saves."""

    def render(
        self,
        cameras: Cameras,
        scene_ids: Int[Tensor, "K"],
        downscale: int,
        background: Float[Tensor, "c"],
        deterministic: bool,
        max_rays: Optional[int] = None,
        checkpoint_rays: Optional[int] = None,
    ) -> Dict[str, Tensor]:
        """Render K cameras of (possibly different) scenes: ``features [K, c, h, w]``, ``depth`` and
        ``accumulation`` ``[K, 1, h, w]``, and the composed ``planes [K, 3, C, R, R]`` (for regularisers).

        ``max_rays`` renders in chunks of pixels (all K cameras together) to bound memory; meant for renders without
        gradients. ``checkpoint_rays`` bounds the memory of renders that autograd records (training): the rays are
        rendered in chunks of at most this many, and each chunk keeps only its inputs and outputs for the backward
        pass, which recomputes the chunk (activation checkpointing, with the chunk's random samples replayed), so the
        saved activations are those of one chunk whatever the image size and sample count. The gradients are those of
        the unchunked render; the price is a second forward pass of the field during backward. A batch that fits in
        one chunk renders as one graph."""
        origins, directions, (h, w) = camera_rays(cameras, downscale)  # [K, hw, 3]
        k, n = origins.shape[:2]
        planes = self.bank.planes(scene_ids)  # [K, 3, C, R, R]
        if self.occupancy is not None and self.training and torch.is_grad_enabled():
            dense = origins.shape[0] * origins.shape[1] * (self.settings.num_coarse + self.settings.num_fine)
            self.occupancy.train_batch(scene_ids, lambda first: self._density_fn(planes[first].detach()), dense)
        recorded = bool(checkpoint_rays) and torch.is_grad_enabled()
        limit = checkpoint_rays if recorded else max_rays
        step = n if not limit else max(1, limit // k)
        render_chunk = self._render_rays
        if recorded and step < n:
            render_chunk = functools.partial(checkpoint, self._render_rays, use_reentrant=False)
        chunks = [
            render_chunk(
                planes, scene_ids, origins[:, i : i + step], directions[:, i : i + step], background, deterministic
            )
            for i in range(0, n, step)
        ]

        def image(key: str) -> Tensor:  # chunks of [K, m, c] -> [K, c, h, w]
            return torch.cat([c[key] for c in chunks], dim=1).reshape(k, h, w, -1).permute(0, 3, 1, 2)

        return {
            "features": image("features"),
            "depth": image("depth"),
            "accumulation": image("accumulation"),
            "planes": planes,
        }

    def _density_fn(self, planes: Float[Tensor, "U 3 C R R"]):
        """Points ``[U, P, 3]`` of these scenes → their density ``[U, P, 1]`` (0 outside the box)."""
        return lambda points: decode_points(planes, self.mlp, points, True)[0]

    def _decode(
        self, planes: Float[Tensor, "K 3 C R R"], points: Float[Tensor, "K P 3"]
    ) -> Tuple[Float[Tensor, "K P 1"], Float[Tensor, "K P c"]]:
        self.points_decoded += points.shape[0] * points.shape[1]
        return decode_points(planes, self.mlp, points, False)

    def _render_rays(
        self,
        planes: Float[Tensor, "K 3 C R R"],
        rows: Int[Tensor, "K"],
        origins: Float[Tensor, "K m 3"],
        directions: Float[Tensor, "K m 3"],
        background: Float[Tensor, "c"],
        deterministic: bool,
    ) -> Dict[str, Tensor]:
        s = self.settings
        k, m = origins.shape[:2]

        def field_fn(points: Float[Tensor, "R S 3"]) -> Tuple[Tensor, Tensor]:
            num_samples = points.shape[1]  # rays are camera-major: R = K * m
            flat = points.reshape(k, m * num_samples, 3)
            if self.occupancy is None:
                density, values = self._decode(planes, flat)
            else:
                mask = self.occupancy.mask(rows, flat)
                density, values = decode_masked(lambda p: self._decode(planes, p), flat, mask)
            return density.reshape(k * m, num_samples, 1), values.reshape(k * m, num_samples, -1)

        out = render_rays(
            origins.reshape(-1, 3),
            directions.reshape(-1, 3),
            field_fn,
            near=s.near,
            far=s.far,
            num_coarse=s.num_coarse,
            num_fine=s.num_fine,
            background=background,
            deterministic=deterministic,
            backend=s.backend,
            box_bound=s.scene_bound,
        )
        return {key: out[key].reshape(k, m, -1) for key in ("features", "depth", "accumulation")}
