"""Render textured triangle meshes by ray casting on the CPU (trimesh + Embree).

One ray per pixel centre (pixel (i, j) has its centre at (i + 0.5, j + 0.5), x right, y down; OpenGL camera axes)
gives the geometry (hit mask, exact hit points, distances, face ids). Colour: the hit face's material
(:mod:`nerfstudio_3dae.data.synth.textures`, solid textures evaluated at the hit point) lit by a point key light,
a weaker fill light and a sky/ground ambient term, plus a mild Blinn-Phong highlight and, for glass and chrome, a
reflected sky gradient; lights emit. Missed rays are white (1.0), like SRN. Anti-aliasing is adaptive: pixels whose
colour or face differs from a neighbour's get four more rays at (+-1/4, +-1/4) and the mean of the five samples.
All rays of a pass go to Embree in one call; hit points are recomputed in float64 from the hit triangle's plane, so
they are exact to ~1e-12.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Tuple

import numpy as np
import trimesh

from nerfstudio_3dae.data.layout import Intrinsics

if TYPE_CHECKING:  # pragma: no cover
    from nerfstudio_3dae.data.synth.shapes import SynthObject

KEY_LIGHT = np.array([0.35, 0.55, 0.76])  # world direction towards the key light (up, a little to the side)
KEY_DISTANCE = 3.0  # the key light is a point light this far away: diffuse light varies over flat faces
FILL_LIGHT = np.array([-0.6, -0.4, 0.2])
KEY, FILL = 0.6, 0.2
SKY_AMBIENT, GROUND_AMBIENT = 0.34, 0.22  # ambient light on upward / downward facing surfaces
SKY, HORIZON, GROUND = np.array([0.62, 0.75, 0.92]), np.array([0.95, 0.95, 0.95]), np.array([0.3, 0.28, 0.26])
EDGE_THRESHOLD = 0.06  # colour difference (max over channels, in [0, 1]) that marks a pixel for supersampling
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
    coverage: Optional[np.ndarray] = None
    """[V, H, W] float fraction of the pixel's samples that hit (1 or 0 unless the pixel was supersampled)."""


def rays_through(
    camera_to_world: np.ndarray, intrinsics: Intrinsics, view: np.ndarray, x: np.ndarray, y: np.ndarray
) -> Tuple[np.ndarray, np.ndarray]:
    """Rays through image points ``(x, y)`` (pixels, x right, y down) of views ``view``.

    Args:
        camera_to_world: [V, 4, 4] OpenGL axes.
        view, x, y: [N] view index and image coordinates of every ray.
    Returns:
        origins [N, 3] and unit directions [N, 3] in world coordinates.
    """
    cam = np.stack([(x - intrinsics.cx) / intrinsics.fx, -(y - intrinsics.cy) / intrinsics.fy, -np.ones_like(x)], -1)
    cam /= np.linalg.norm(cam, axis=-1, keepdims=True)
    rot = camera_to_world[view, :3, :3]  # [N, 3, 3]
    return camera_to_world[view, :3, 3], np.einsum("nij,nj->ni", rot, cam)


def pixel_rays(camera_to_world: np.ndarray, intrinsics: Intrinsics) -> Tuple[np.ndarray, np.ndarray]:
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


def shade(
    albedo: np.ndarray,
    normals: np.ndarray,
    directions: np.ndarray,
    points: np.ndarray,
    specular: np.ndarray,
    shininess: np.ndarray,
    reflect: np.ndarray,
    emissive: np.ndarray,
) -> np.ndarray:
    """Two-sided shading of hit points.

    Args:
        albedo: [N, 3] surface colours in [0, 1].
        normals: [N, 3] unit face normals (flipped towards the camera here).
        directions: [N, 3] unit ray directions.
        points: [N, 3] world hit points (the key light is a point light).
        specular, shininess, reflect: [N] material terms; emissive: [N] bool (output = albedo).
    Returns:
        [N, 3] colours in [0, 1].
    """
    facing = np.where((normals * directions).sum(-1, keepdims=True) > 0, -normals, normals)
    to_key = KEY_DISTANCE * KEY_LIGHT / np.linalg.norm(KEY_LIGHT) - points
    to_key /= np.linalg.norm(to_key, axis=-1, keepdims=True)
    key = np.clip((facing * to_key).sum(-1), 0.0, None)
    fill = np.clip(facing @ (FILL_LIGHT / np.linalg.norm(FILL_LIGHT)), 0.0, None)
    up = 0.5 * (1.0 + facing[:, 2])
    light = GROUND_AMBIENT + (SKY_AMBIENT - GROUND_AMBIENT) * up + KEY * key + FILL * fill  # [N]
    half = to_key - directions
    half /= np.maximum(np.linalg.norm(half, axis=-1, keepdims=True), 1e-12)
    highlight = specular * np.clip((facing * half).sum(-1), 0.0, None) ** shininess * (key > 0)
    mirrored = directions - 2.0 * (directions * facing).sum(-1, keepdims=True) * facing
    t = np.clip(mirrored[:, 2:3], -1.0, 1.0)
    env = HORIZON + np.where(t > 0, SKY - HORIZON, GROUND - HORIZON) * np.sqrt(np.abs(t))
    rgb = albedo * light[:, None] * (1.0 - reflect[:, None]) + reflect[:, None] * env + highlight[:, None]
    return np.clip(np.where(emissive[:, None], albedo, rgb), 0.0, 1.0)


class _Caster:
    """Casts and shades batches of rays against one mesh (and its materials, when it has them)."""

    def __init__(self, mesh: trimesh.Trimesh, obj: Optional["SynthObject"]) -> None:
        self.mesh, self.obj = mesh, obj
        self.intersector = make_intersector(mesh)

    def cast(self, o: np.ndarray, d: np.ndarray):
        """``(rgb [R, 3], face [R], points [R, 3], distance [R])`` of rays ``o, d`` [R, 3]."""
        face = np.asarray(self.intersector.intersects_first(o, d), dtype=np.int64)  # [R]
        hit = face >= 0
        hit_face = face[hit]
        normals = self.mesh.face_normals[hit_face]  # [N, 3]
        plane_point = self.mesh.vertices[self.mesh.faces[hit_face, 0]]  # [N, 3]
        oh, dh = o[hit], d[hit]
        t = ((plane_point - oh) * normals).sum(-1) / (dh * normals).sum(-1)  # [N]
        p = oh + t[:, None] * dh
        rgb = np.full(d.shape, BACKGROUND)
        rgb[hit] = self._shade(hit_face, normals, dh, p)
        points = np.full(d.shape, np.nan)
        points[hit] = p
        distance = np.full(len(d), np.inf)
        distance[hit] = t
        return rgb, face, points, distance

    def _shade(self, face: np.ndarray, normals: np.ndarray, d: np.ndarray, p: np.ndarray) -> np.ndarray:
        n = len(face)
        if self.obj is None or not self.obj.materials:
            albedo = self.mesh.visual.face_colors[face, :3].astype(np.float64) / 255.0
            zero = np.zeros(n)
            return shade(albedo, normals, d, p, zero, np.ones(n), zero, np.zeros(n, dtype=bool))
        mats = self.obj.materials
        index = self.obj.face_material[face]  # [N]
        albedo = np.empty((n, 3))
        build = self.obj.to_build(p)
        for k in np.unique(index):
            sel = index == k
            albedo[sel] = mats[k].evaluate(build[sel], normals[sel])
        table = np.array([[m.specular, m.shininess, m.reflect, float(m.emissive)] for m in mats])[index]  # [N, 4]
        return shade(albedo, normals, d, p, table[:, 0], table[:, 1], table[:, 2], table[:, 3] > 0.5)


def _edges(image: np.ndarray, face: np.ndarray) -> np.ndarray:
    """[V, H, W] bool: pixels whose colour or face differs from one of their 4 neighbours."""
    edge = np.zeros(face.shape, dtype=bool)
    for axis in (1, 2):
        dc = np.abs(np.diff(image, axis=axis)).max(-1) > EDGE_THRESHOLD
        df = np.diff(face, axis=axis) != 0
        e = dc | df
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        edge[tuple(lo)] |= e
        edge[tuple(hi)] |= e
    return edge


def render_views(
    mesh: trimesh.Trimesh,
    camera_to_world: np.ndarray,
    intrinsics: Intrinsics,
    obj: Optional["SynthObject"] = None,
    antialias: bool = True,
) -> Render:
    """Ray cast every pixel of every view of ``mesh``.

    Args:
        mesh: triangles with per-face colours (``mesh.visual.face_colors``), used when ``obj`` has no materials.
        camera_to_world: [V, 4, 4] OpenGL axes.
        obj: the generated object the mesh belongs to: its materials colour the hits.
        antialias: supersample edge pixels (colour or face changes) with four more rays.
    """
    return cast_views(_Caster(mesh, obj), camera_to_world, intrinsics, antialias)


def cast_views(caster, camera_to_world: np.ndarray, intrinsics: Intrinsics, antialias: bool = True) -> Render:
    """Every pixel of every view [V, 4, 4] (OpenGL axes) through ``caster`` (``cast(origins, dirs) -> (rgb, face,
    points, distance)``), edge pixels supersampled with four more rays when ``antialias``."""
    origins, dirs = pixel_rays(camera_to_world, intrinsics)  # [V, H, W, 3] each
    shape = dirs.shape[:-1]
    rgb, face, points, distance = caster.cast(origins.reshape(-1, 3), dirs.reshape(-1, 3))
    image, face = rgb.reshape(*shape, 3), face.reshape(shape)
    coverage = (face >= 0).astype(np.float64)
    if antialias:
        v, y, x = np.nonzero(_edges(image, face))
        if len(v):
            offsets = np.array([[-0.25, -0.25], [0.25, -0.25], [-0.25, 0.25], [0.25, 0.25]])
            xs = np.repeat(x + 0.5, 4) + np.tile(offsets[:, 0], len(v))
            ys = np.repeat(y + 0.5, 4) + np.tile(offsets[:, 1], len(v))
            o, d = rays_through(camera_to_world, intrinsics, np.repeat(v, 4), xs, ys)
            sub_rgb, sub_face, _, _ = caster.cast(o, d)
            image[v, y, x] = (image[v, y, x] + sub_rgb.reshape(-1, 4, 3).sum(1)) / 5.0
            coverage[v, y, x] = (coverage[v, y, x] + (sub_face.reshape(-1, 4) >= 0).sum(1)) / 5.0
    return Render(
        images=np.round(image * 255.0).astype(np.uint8),
        hit=face >= 0,
        points=points.reshape(*shape, 3),
        distance=distance.reshape(shape),
        face=face,
        coverage=coverage,
    )
