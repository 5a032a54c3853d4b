"""Camera poses on the upper view hemisphere and SRN-like intrinsics.

Camera centres lie on a sphere of radius ``radius`` (1.3, like SRN cars) around the origin, at an elevation above the
horizon drawn uniformly over the sphere's area between ``min_elevation_deg`` and ``max_elevation_deg``, and a uniform
random azimuth. Every camera looks at the origin with world up +Z. Matrices are camera-to-world in OpenGL axes
(camera looks down -Z, +Y up, +X right), as nerfstudio's ``transforms.json`` expects. Pixel (i, j) has its centre at
(i + 0.5, j + 0.5), x right, y down, exactly :func:`nerfstudio_3dae.data.layout.project_points`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from nerfstudio_3dae.data.layout import Intrinsics, project_points

CAMERA_RADIUS = 1.3
NEAR = 0.5
FAR = 2.1
# SRN cars: focal 131.25 px at 128 px, a field of view of about 52 degrees.
FOV_DEG = 2.0 * math.degrees(math.atan(64.0 / 131.25))


@dataclass(frozen=True)
class CameraRig:
    """The drawn views of one scene."""

    camera_to_world: np.ndarray
    """[V, 4, 4] camera-to-world matrices, OpenGL axes."""
    elevation_deg: np.ndarray
    """[V] elevation of each camera centre above the horizon (the XY plane)."""
    azimuth_deg: np.ndarray
    """[V] azimuth of each camera centre, counter-clockwise from +X."""
    radius: float


def square_intrinsics(resolution: int, fov_deg: float = FOV_DEG) -> Intrinsics:
    """Square pixels, principal point at the image centre, horizontal (= vertical) field of view ``fov_deg``."""
    if resolution <= 0:
        raise ValueError(f"--resolution must be positive, got {resolution}")
    focal = 0.5 * resolution / math.tan(math.radians(fov_deg) / 2.0)
    return Intrinsics(fx=focal, fy=focal, cx=resolution / 2.0, cy=resolution / 2.0, width=resolution, height=resolution)


def look_at(centres: np.ndarray, target: Optional[np.ndarray] = None) -> np.ndarray:
    """Camera-to-world matrices [V, 4, 4] (OpenGL axes, world up +Z) for cameras at ``centres`` [V, 3].

    Cameras must not look straight up or down (their viewing direction must not be parallel to +Z).
    """
    target = np.zeros(3) if target is None else np.asarray(target, dtype=np.float64)
    forward = target - centres  # [V, 3]
    forward /= np.linalg.norm(forward, axis=-1, keepdims=True)
    right = np.cross(forward, np.array([0.0, 0.0, 1.0]))  # [V, 3]
    norm = np.linalg.norm(right, axis=-1, keepdims=True)
    if np.any(norm < 1e-6):
        raise ValueError("a camera looks straight up or down; keep elevations strictly inside (-90, 90) degrees")
    right /= norm
    back = -forward
    up = np.cross(back, right)
    c2w = np.tile(np.eye(4), (len(centres), 1, 1))  # [V, 4, 4]
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, up, back, centres
    return c2w


def sample_hemisphere_rig(
    rng: np.random.Generator,
    num_views: int,
    radius: float = CAMERA_RADIUS,
    min_elevation_deg: float = 5.0,
    max_elevation_deg: float = 65.0,
) -> CameraRig:
    """``num_views`` cameras on the upper hemisphere band, area-uniform in elevation, uniform in azimuth."""
    if num_views <= 0:
        raise ValueError(f"--views-per-scene must be positive, got {num_views}")
    if not -90.0 < min_elevation_deg <= max_elevation_deg < 90.0:
        raise ValueError(f"elevation band [{min_elevation_deg}, {max_elevation_deg}] must lie inside (-90, 90)")
    lo, hi = math.sin(math.radians(min_elevation_deg)), math.sin(math.radians(max_elevation_deg))
    draws = rng.random((num_views, 2))  # [V, 2], one row per view: view k is the same for any num_views > k
    elevation = np.arcsin(lo + (hi - lo) * draws[:, 0])  # [V]
    azimuth = 2.0 * np.pi * draws[:, 1]  # [V]
    centres = radius * np.stack(
        [np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)], axis=-1
    )  # [V, 3]
    return CameraRig(
        camera_to_world=look_at(centres),
        elevation_deg=np.degrees(elevation),
        azimuth_deg=np.degrees(azimuth),
        radius=float(radius),
    )


def check_in_view(
    points: np.ndarray, camera_to_world: np.ndarray, intrinsics: Intrinsics, near: float = NEAR, far: float = FAR
) -> None:
    """Raise ValueError unless every point [P, 3] lies strictly between the near and far planes and inside the
    image of every view [V, 4, 4]."""
    for i, c2w in enumerate(camera_to_world):
        uv, depth = project_points(points, c2w, intrinsics)  # [P, 2], [P]
        if depth.min() <= near or depth.max() >= far:
            raise ValueError(
                f"view {i}: object depths span [{depth.min():.3f}, {depth.max():.3f}], outside ({near}, {far})"
            )
        if uv.min() < 0.0 or uv[:, 0].max() > intrinsics.width or uv[:, 1].max() > intrinsics.height:
            raise ValueError(f"view {i}: the object leaves the image (pixels {uv.min():.1f}..{uv.max():.1f})")
