"""Camera rays of a render batch, and what the host knows about the batch without asking the device.

A training step must not read device values back (on a GPU each read drains the queue). Two things a render needs
on the host are the image size (to shape the pixel grid) and the scenes of the cameras (to gather their planes and
keep the occupancy bookkeeping): the datamanager knows both when it draws the batch and attaches them to the
cameras as a :class:`BatchLayout` (``cameras.metadata[BATCH_LAYOUT]``). Cameras without one (viewer, ns-render,
ns-eval) get theirs read from their tensors (:func:`batch_layout`), which is allowed outside training steps.

:func:`pinhole_rays` generates the rays of undistorted perspective cameras in a handful of tensor operations (the same
rays as nerfstudio's ``Cameras.generate_rays``, which dispatches some three hundred operators and several host reads
for a batch); :func:`camera_rays` uses it where the layout says the cameras are pinholes, nerfstudio otherwise.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras, CameraType
from torch import Tensor

from nerfstudio_3dae.data.dataparser import SCENE_ID

BATCH_LAYOUT = "batch_layout"
"""Key of the :class:`BatchLayout` in ``Cameras.metadata`` (a plain object: tensor ops carry it along untouched)."""


@dataclass(frozen=True)
class BatchLayout:
    """What the host knows about a flat batch of cameras."""

    height: int
    """Image height of every camera (a batch has one resolution)."""
    width: int
    """Image width of every camera."""
    scene_ids: Tuple[int, ...]
    """Scene id of each camera, in camera order."""
    pinhole: bool
    """Every camera is an undistorted perspective camera (:func:`pinhole_rays` applies)."""


def batch_layout(cameras: Cameras, default_scene: int) -> BatchLayout:
    """The layout attached to a flat ``cameras`` batch, or one read from its tensors (host reads: outside training
    steps only). Cameras without scene ids are of ``default_scene``."""
    count = cameras.shape[0] if cameras.shape else 1
    attached = (cameras.metadata or {}).get(BATCH_LAYOUT)
    if isinstance(attached, BatchLayout) and len(attached.scene_ids) == count:
        return attached
    heights, widths = cameras.height.reshape(-1), cameras.width.reshape(-1)
    height, width = int(heights[0]), int(widths[0])
    if not (bool(torch.all(heights == height)) and bool(torch.all(widths == width))):
        raise ValueError("all cameras of a render batch need the same resolution")
    if cameras.metadata and SCENE_ID in cameras.metadata:
        ids = tuple(int(i) for i in cameras.metadata[SCENE_ID].reshape(-1).tolist())
    else:
        ids = (default_scene,) * count
    return BatchLayout(height, width, ids, is_pinhole(cameras))


def is_pinhole(cameras: Cameras) -> bool:
    """Whether every camera is perspective without distortion (reads the camera tensors)."""
    perspective = bool(torch.all(cameras.camera_type == CameraType.PERSPECTIVE.value))
    distortion = cameras.distortion_params
    return perspective and (distortion is None or not bool(torch.any(distortion != 0)))


def latent_size(height: int, width: int, downscale: int) -> Tuple[int, int]:
    """The rendered grid of an image: ``1/downscale`` of it, rounded up."""
    return math.ceil(height / downscale), math.ceil(width / downscale)


def pinhole_rays(
    camera_to_worlds: Float[Tensor, "K 3 4"],
    intrinsics: Float[Tensor, "K 4"],
    image_size: Tuple[int, int],
    downscale: int,
    pixel_shift: Optional[Float[Tensor, "K 2"]] = None,
) -> Tuple[Float[Tensor, "K HW 3"], Float[Tensor, "K HW 3"]]:
    """Rays through the pixel centres of an ``h × w`` grid spanning each image (``image_size`` ``(H, W)``, the grid
    ``1/downscale`` of it, rounded up) of undistorted perspective cameras (nerfstudio's convention: the camera looks
    down its −z axis, image y grows downwards).

    ``intrinsics`` are ``fx, fy, cx, cy`` in image pixels. ``pixel_shift`` ``[K, 2]`` (image pixels, ``(x, y)``) moves
    every ray of camera ``k`` to pass through pixel centre + shift. Returns origins and unit directions ``[K, h·w, 3]``
    (row-major over the grid)."""
    h, w = latent_size(*image_size, downscale)
    grid, flip = _grid(h, w, image_size, intrinsics.device, intrinsics.dtype)  # [1, hw, 2], [3]
    per_camera = intrinsics.unsqueeze(1)  # [K, 1, 4]
    focal, centre = per_camera[..., :2], per_camera[..., 2:]
    if pixel_shift is not None:
        centre = centre - pixel_shift.unsqueeze(1)
    plane = torch.nn.functional.pad((grid - centre) / focal, (0, 1), value=1.0)  # [K, hw, 3]
    # camera frame: x right, y up, looking down -z; |z| = 1, so the norm is never 0
    directions = plane @ (camera_to_worlds[..., :3] * flip).transpose(1, 2)
    directions = directions / torch.linalg.vector_norm(directions, dim=-1, keepdim=True)
    origins = camera_to_worlds[..., 3].unsqueeze(1).expand(-1, h * w, -1)
    return origins, directions


@functools.lru_cache(maxsize=16)
def _grid(
    h: int, w: int, image_size: Tuple[int, int], device: torch.device, dtype: torch.dtype
) -> Tuple[Float[Tensor, "1 HW 2"], Float[Tensor, "3"]]:
    """The grid's pixel centres in image pixels ``(x, y)`` (row-major), and the axis flips from image to camera
    coordinates (made once per size and device)."""
    height, width = image_size
    ys, xs = torch.meshgrid(torch.arange(h, dtype=dtype), torch.arange(w, dtype=dtype), indexing="ij")
    centres = (torch.stack([xs, ys], dim=-1).reshape(1, h * w, 2) + 0.5) * torch.tensor([width / w, height / h])
    return centres.to(device), torch.tensor([1.0, -1.0, -1.0], dtype=dtype, device=device)


def intrinsics_of(cameras: Cameras) -> Float[Tensor, "K 4"]:
    """``fx, fy, cx, cy`` of a flat camera batch, one row per camera."""
    return _float32(torch.cat([cameras.fx, cameras.fy, cameras.cx, cameras.cy], dim=-1), 4)


def _float32(values: Tensor, *row_shape: int) -> Tensor:
    """``values`` as float32 rows of ``row_shape`` (camera paths may hold float64 poses); no operator where they are
    already (a training step's cameras are)."""
    if tuple(values.shape[1:]) != row_shape or values.ndim != 1 + len(row_shape):
        values = values.reshape(-1, *row_shape)
    return values if values.dtype == torch.float32 else values.float()


def camera_rays(
    cameras: Cameras, layout: BatchLayout, downscale: int, pixel_shift: Optional[Float[Tensor, "K 2"]] = None
) -> Tuple[Float[Tensor, "K HW 3"], Float[Tensor, "K HW 3"], Tuple[int, int]]:
    """Rays through the pixel centres of a flat ``cameras`` batch at ``1/downscale`` of its resolution: origins,
    unit directions ``[K, h·w, 3]`` and ``(h, w)``. Pinhole batches use :func:`pinhole_rays`; others (fisheye,
    distortion, ...) nerfstudio's ``generate_rays`` on cameras whose intrinsics are scaled to the grid."""
    size = (layout.height, layout.width)
    if layout.pinhole:
        c2w, intrinsics = _float32(cameras.camera_to_worlds, 3, 4), intrinsics_of(cameras)
        origins, directions = pinhole_rays(c2w, intrinsics, size, downscale, pixel_shift)
        return origins, directions, latent_size(*size, downscale)
    if pixel_shift is not None:
        cameras = shifted(cameras, pixel_shift)
    return _nerfstudio_rays(cameras, size, downscale)


def shifted(cameras: Cameras, pixel_shift: Float[Tensor, "K 2"]) -> Cameras:
    """``cameras`` whose rays pass through pixel + ``pixel_shift`` (image pixels, ``(x, y)``) for every pixel."""
    moved = copy.copy(cameras)
    moved.cx = cameras.cx - pixel_shift[:, :1]
    moved.cy = cameras.cy - pixel_shift[:, 1:]
    return moved


def _nerfstudio_rays(
    cameras: Cameras, size: Tuple[int, int], downscale: int
) -> Tuple[Float[Tensor, "K HW 3"], Float[Tensor, "K HW 3"], Tuple[int, int]]:
    (height, width), (h, w) = size, latent_size(*size, downscale)
    cams = Cameras(  # intrinsics scaled so that the h x w grid spans exactly the original image plane
        camera_to_worlds=cameras.camera_to_worlds.reshape(-1, 3, 4),
        fx=cameras.fx.reshape(-1, 1) * (w / width),
        fy=cameras.fy.reshape(-1, 1) * (h / height),
        cx=cameras.cx.reshape(-1, 1) * (w / width),
        cy=cameras.cy.reshape(-1, 1) * (h / height),
        width=torch.full_like(cameras.width.reshape(-1, 1), w),
        height=torch.full_like(cameras.height.reshape(-1, 1), h),
        distortion_params=cameras.distortion_params,
        camera_type=cameras.camera_type.reshape(-1, 1),
    )
    k = cams.shape[0]
    rays = cams.generate_rays(camera_indices=torch.arange(k, device=cams.device)[:, None])  # [h, w, K, 3]
    origins = rays.origins.permute(2, 0, 1, 3).reshape(k, h * w, 3)
    directions = rays.directions.permute(2, 0, 1, 3).reshape(k, h * w, 3)
    return origins, directions, (h, w)


def distinct(values: Sequence[int]) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """The sorted distinct ``values`` and, for each value, its position among them (host ints)."""
    unique = tuple(sorted(set(values)))
    position = {v: i for i, v in enumerate(unique)}
    return unique, tuple(position[v] for v in values)


def scene_runs(positions: Sequence[int]) -> Optional[Tuple[int, ...]]:
    """Whether the cameras of a batch come scene after scene, the same number of each, every scene once: the scenes'
    positions (:func:`distinct`) run by run (``(0, 1, …)`` when they come in order), or None."""
    count, scenes = len(positions), max(positions, default=-1) + 1
    if scenes == 0 or count % scenes:
        return None
    per_run = count // scenes
    runs = tuple(positions[::per_run])
    if sorted(runs) != list(range(scenes)) or tuple(positions) != tuple(r for r in runs for _ in range(per_run)):
        return None
    return runs
