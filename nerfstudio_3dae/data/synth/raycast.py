"""Render coloured triangle meshes by ray casting on the CPU (trimesh + Embree).

One ray per pixel centre (pixel (i, j) has its centre at (i + 0.5, j + 0.5), x right, y down; OpenGL camera axes).
The first triangle hit gives the colour: face colour x Lambertian shading from a fixed key light, a weaker fill
light and an ambient term. Missed rays are white (1.0), like SRN. All rays of all views of a scene go to Embree in
one call; hit points are recomputed in float64 from the hit triangle's plane, so they are exact to ~1e-12.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import trimesh

from nerfstudio_3dae.data.layout import Intrinsics

KEY_LIGHT = np.array([0.35, 0.55, 0.76])  # world direction towards the light (up, a little to the side)
FILL_LIGHT = np.array([-0.6, -0.4, 0.2])
KEY, FILL, AMBIENT = 0.6, 0.2, 0.3
BACKGROUND = 1.0


@dataclass
class Render:
    """Rendered views of one mesh."""

    images: np.ndarray
    """[V, H, W, 3] uint8 RGB."""
    hit: np.ndarray
    """[V, H, W] bool, True where the pixel's ray hit the mesh."""
    points: np.ndarray
    """[V, H, W, 3] float64 world hit points; NaN where the ray missed."""
    distance: np.ndarray
    """[V, H, W] float64 distance from the camera centre along the (unit) ray; inf where the ray missed."""
    face: np.ndarray
    """[V, H, W] int64 index of the hit triangle; -1 where the ray missed."""


def pixel_rays(camera_to_world: np.ndarray, intrinsics: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """Origins and unit directions of the rays through every pixel centre of every view.

    Args:
        camera_to_world: [V, 4, 4] OpenGL axes.
    Returns:
        origins [V, H, W, 3] and directions [V, H, W, 3] in world coordinates.
    """
    h, w = intrinsics.height, intrinsics.width
    u = (np.arange(w) + 0.5 - intrinsics.cx) / intrinsics.fx  # [W]
    v = -(np.arange(h) + 0.5 - intrinsics.cy) / intrinsics.fy  # [H], image y down = camera -Y
    cam = np.stack(np.broadcast_arrays(u[None, :], v[:, None], -1.0), axis=-1).reshape(-1, 3)  # [H*W, 3]
    cam /= np.linalg.norm(cam, axis=-1, keepdims=True)  # a rotation keeps them unit length
    dirs = (cam @ camera_to_world[:, :3, :3].transpose(0, 2, 1)).reshape(len(camera_to_world), h, w, 3)
    origins = np.broadcast_to(camera_to_world[:, None, None, :3, 3], dirs.shape)
    return origins, dirs


def make_intersector(mesh: trimesh.Trimesh):
    """Embree's intersector for ``mesh``; trimesh's slow pure-Python one (with a warning) if embreex is missing."""
    try:
        from trimesh.ray.ray_pyembree import RayMeshIntersector
    except ImportError:  # pragma: no cover - depends on the environment
        warnings.warn("embreex is not installed: falling back to trimesh's slow pure-Python ray casting", stacklevel=2)
        from trimesh.ray.ray_triangle import RayMeshIntersector
    return RayMeshIntersector(mesh)


def shade(normals: np.ndarray, directions: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Two-sided Lambertian shading.

    Args:
        normals: [N, 3] unit face normals of the hit triangles.
        directions: [N, 3] unit ray directions (flips normals that face away from the camera).
        colors: [N, 3] face colours in [0, 1].
    Returns:
        [N, 3] shaded colours in [0, 1].
    """
    facing = np.where((normals * directions).sum(-1, keepdims=True) > 0, -normals, normals)
    key = np.clip(facing @ (KEY_LIGHT / np.linalg.norm(KEY_LIGHT)), 0.0, None)
    fill = np.clip(facing @ (FILL_LIGHT / np.linalg.norm(FILL_LIGHT)), 0.0, None)
    light = AMBIENT + KEY * key + FILL * fill  # [N]
    return np.clip(colors * light[:, None], 0.0, 1.0)


def render_views(mesh: trimesh.Trimesh, camera_to_world: np.ndarray, intrinsics: Intrinsics) -> Render:
    """Ray cast every pixel of every view of ``mesh`` in one batch.

    Args:
        mesh: triangles with per-face colours (``mesh.visual.face_colors``).
        camera_to_world: [V, 4, 4] OpenGL axes.
    """
    origins, dirs = pixel_rays(camera_to_world, intrinsics)  # [V, H, W, 3] each
    shape = dirs.shape[:-1]
    flat_o, flat_d = origins.reshape(-1, 3), dirs.reshape(-1, 3)  # [R, 3]
    face = np.asarray(make_intersector(mesh).intersects_first(flat_o, flat_d), dtype=np.int64)  # [R]
    hit = face >= 0
    hit_face = face[hit]  # [N]
    normals = mesh.face_normals[hit_face]  # [N, 3]
    # Exact hit point: intersect the ray with the hit triangle's plane in float64.
    plane_point = mesh.vertices[mesh.faces[hit_face, 0]]  # [N, 3]
    o, d = flat_o[hit], flat_d[hit]
    t = ((plane_point - o) * normals).sum(-1) / (d * normals).sum(-1)  # [N]
    colors = mesh.visual.face_colors[hit_face, :3].astype(np.float64) / 255.0  # [N, 3]
    rgb = np.full(flat_d.shape, BACKGROUND)  # [R, 3]
    rgb[hit] = shade(normals, d, colors)
    points = np.full(flat_d.shape, np.nan)
    points[hit] = o + t[:, None] * d
    distance = np.full(len(flat_d), np.inf)
    distance[hit] = t
    return Render(
        images=np.round(rgb * 255.0).astype(np.uint8).reshape(*shape, 3),
        hit=hit.reshape(shape),
        points=points.reshape(*shape, 3),
        distance=distance.reshape(shape),
        face=face.reshape(shape),
    )
