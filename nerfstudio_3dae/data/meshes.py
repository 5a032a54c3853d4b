"""Render real textured meshes (OBJ+MTL with UV textures, vertex colours or plain material colours) into the layout.

Each mesh becomes one scene, seen by the generator's camera rig (:mod:`nerfstudio_3dae.data.synth.cameras`: the
upper hemisphere band at radius 1.3, the SRN-like 52-degree field of view), so real data is framed like
``ns-3dae-synth``'s cars:

* **loading** (:func:`load_mesh`): trimesh reads the file as a scene; every triangle keeps its material: an image
  sampled at the hit point's UV (bilinear, wrapping, image row 0 at v = 1 as in OBJ), else its vertex colours
  (interpolated), else the material's diffuse colour. Degenerate triangles are dropped.
* **orientation and normalisation**: the file's coordinates are first rotated by an optional 3x3 ``rotation``
  (row-major, applied as ``R @ p``; Sweet Home 3D's ``modelRotation``), then turned from ``up`` (OBJ's +Y by
  default) to the project's +Z up, centred on the bounding box and scaled like the generator's objects
  (:func:`~nerfstudio_3dae.data.synth.shapes.build_object`): the largest side 0.9, no vertex farther than 0.55 from
  the origin.
* **rendering** (:func:`render_mesh`): one Embree ray per pixel centre (the rays and lighting of
  :mod:`nerfstudio_3dae.data.synth.raycast`), shading normals interpolated from the vertex normals (a face normal
  where they disagree by more than 60 degrees), missed rays white, and the generator's adaptive anti-aliasing
  (four more rays in pixels whose colour or triangle differs from a neighbour's).
* **writing** (:func:`convert_meshes`): ``<output>/<name>/images/NNNN.png`` and ``transforms.json`` (the first
  ``test_views`` views are test views), ``scenes.json`` last. A scene's cameras depend only on ``(seed, name)``.

A mesh may have a sidecar ``<file>.meta.json`` (e.g. ``chair.obj.meta.json``): its optional ``rotation`` is used as
above and the whole object is kept in the scene's ``transforms.json`` (provenance: catalogue name, licence...).
Nothing is skipped silently: a file that cannot be read or has no faces raises a :class:`DatasetError` naming it,
or, with ``skip_bad``, is listed in the result and in ``<output>/skipped.json``.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np
import trimesh

from nerfstudio_3dae.data.layout import (
    SCENES_INDEX,
    TRANSFORMS,
    DatasetError,
    Intrinsics,
    write_scene,
    write_scenes_index,
)
from nerfstudio_3dae.data.synth.cameras import (
    CAMERA_RADIUS,
    FAR,
    FOV_DEG,
    NEAR,
    check_in_view,
    sample_hemisphere_rig,
    square_intrinsics,
)
from nerfstudio_3dae.data.synth.raycast import (
    BACKGROUND,
    Render,
    cast_views,
    make_intersector,
    shade,
)
from nerfstudio_3dae.data.synth.shapes import DEFAULT_EXTENT, DEFAULT_MAX_RADIUS

MESH_SUFFIXES = (".obj", ".ply", ".glb", ".gltf", ".off", ".stl")
"""File endings a folder given as input is searched for (recursively); files named directly may have any ending."""
META_SUFFIX = ".meta.json"
MAX_TEXTURE_SIDE = 1024
"""Larger texture images are reduced (area average) to this side on loading: enough for 128² renders, less memory."""
SMOOTH_COS = 0.5  # shading normals farther than 60 degrees from the face normal fall back to the face normal
DEFAULT_COLOR = np.array([0.7, 0.7, 0.7])
UP_ROTATIONS: Dict[str, np.ndarray] = {
    "y": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]),  # (x, y, z) -> (x, -z, y): +Y up -> +Z up
    "z": np.eye(3),
}


@dataclass
class TexturedMesh:
    """A triangle mesh with a colour source for every face, in the scene box (+Z up)."""

    mesh: trimesh.Trimesh
    """Triangles in normalised coordinates."""
    corner_colors: np.ndarray
    """[F, 3, 3] float RGB in [0, 1] at each face's corners (material or vertex colours), used without a texture."""
    face_texture: np.ndarray
    """[F] int index into ``textures``, -1 for faces without a texture."""
    corner_uv: np.ndarray
    """[F, 3, 2] texture coordinates of each face's corners (zeros for untextured faces)."""
    textures: List[np.ndarray] = field(default_factory=list)
    """[H, W, 3] float32 RGB images in [0, 1]."""
    source: Optional[Path] = None
    scale: float = 1.0
    """Normalisation: ``mesh point = (oriented file point - centre) * scale``."""
    centre: np.ndarray = field(default_factory=lambda: np.zeros(3))


def find_meshes(inputs: Sequence[Path]) -> List[Path]:
    """Mesh files of ``inputs``: files as given, folders searched recursively for :data:`MESH_SUFFIXES`; sorted
    within each folder, duplicates removed, in the order of ``inputs``."""
    found: List[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_file():
            found.append(item)
        elif item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in MESH_SUFFIXES)
            if not files:
                raise DatasetError(f"--input {item} holds no mesh files ({', '.join(MESH_SUFFIXES)})")
            found += files
        else:
            raise DatasetError(f"--input {item} does not exist")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise DatasetError("--input names no mesh files")
    return unique


def scene_names(files: Sequence[Path], inputs: Sequence[Path]) -> List[str]:
    """A scene folder name per mesh file: its path below the ``inputs`` folder it was found in, without the ending,
    with a last part equal to its folder's name dropped (``scopia-chair/scopia-chair.obj`` -> ``scopia-chair``) and
    other characters than letters, digits, ``-``, ``_`` and ``.`` replaced by ``_``; a file named directly gives its
    stem. Two files with the same name raise a DatasetError naming both."""
    folders = [Path(i).resolve() for i in inputs if Path(i).is_dir()]
    names: Dict[str, Path] = {}
    result = []
    for file in files:
        parts = [file.stem]
        for folder in folders:
            if folder in file.parents:
                parts = list(file.relative_to(folder).with_suffix("").parts)
                break
        if len(parts) > 1 and parts[-1] == parts[-2]:
            parts = parts[:-1]
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join(parts)).strip(".") or "mesh"
        if name in names:
            raise DatasetError(f"{names[name]} and {file} would both be scene {name!r}; rename one of them")
        names[name] = file
        result.append(name)
    return result


def read_meta(path: Path) -> dict:
    """The sidecar ``<path>.meta.json`` of a mesh file ({} when there is none)."""
    meta_path = path.with_name(path.name + META_SUFFIX)
    if not meta_path.is_file():
        return {}
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise DatasetError(f"{meta_path} is not valid JSON: {err}") from err
    if not isinstance(meta, dict):
        raise DatasetError(f"{meta_path} must hold a JSON object")
    if "rotation" in meta:
        rotation = np.asarray(meta["rotation"], dtype=np.float64)
        if rotation.size != 9 or not np.isfinite(rotation).all():
            raise DatasetError(f"{meta_path}: 'rotation' must be 9 numbers (a 3x3 matrix, row-major)")
    return meta


def load_mesh(
    path: Path,
    up: Literal["y", "z"] = "y",
    rotation: Optional[np.ndarray] = None,
    extent: float = DEFAULT_EXTENT,
    max_radius: float = DEFAULT_MAX_RADIUS,
) -> TexturedMesh:
    """Read a mesh file with its materials and normalise it into the scene box (see the module docstring).

    Raises:
        DatasetError: naming ``path`` when the file cannot be read as a mesh or has no (non-degenerate) faces.
    """
    path = Path(path)
    if up not in UP_ROTATIONS:
        raise DatasetError(f"--up must be one of {sorted(UP_ROTATIONS)}, got {up!r}")
    try:
        scene = trimesh.load(str(path), force="scene", process=False)
        parts = [g for g in scene.dump(concatenate=False) if isinstance(g, trimesh.Trimesh)]
    except Exception as err:  # noqa: BLE001 - trimesh raises many kinds; all mean "not a readable mesh"
        raise DatasetError(f"mesh {path} cannot be read: {type(err).__name__}: {err}") from err
    parts = [p for p in parts if len(p.faces)]
    if not parts:
        raise DatasetError(f"mesh {path} has no faces")
    textures: List[np.ndarray] = []
    image_ids: Dict[int, int] = {}
    vertices, faces, colors, tex, uvs, normals = [], [], [], [], [], []
    offset = 0
    for part in parts:
        f = np.asarray(part.faces, dtype=np.int64)
        part_colors, part_tex, part_uv = _part_colors(part, textures, image_ids)
        vertices.append(np.asarray(part.vertices, dtype=np.float64))
        normals.append(np.asarray(part.vertex_normals, dtype=np.float64))
        faces.append(f + offset)
        colors.append(part_colors)
        tex.append(part_tex)
        uvs.append(part_uv)
        offset += len(part.vertices)
    verts, all_faces = np.concatenate(vertices), np.concatenate(faces)
    if not np.isfinite(verts).all():
        raise DatasetError(f"mesh {path} has non-finite vertex coordinates")
    turn = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64).reshape(3, 3)
    orient = UP_ROTATIONS[up] @ turn
    verts = verts @ orient.T
    vertex_normals = np.concatenate(normals) @ orient.T
    tri = verts[all_faces]  # [F, 3, 3]
    area2 = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=-1)
    keep = area2 > 1e-12 * max(float(np.ptp(verts, axis=0).max()), 1e-12) ** 2
    if not keep.any():
        raise DatasetError(f"mesh {path} has no faces with a non-zero area")
    lo, hi = verts[all_faces[keep]].reshape(-1, 3).min(0), verts[all_faces[keep]].reshape(-1, 3).max(0)
    centre = (lo + hi) / 2.0
    verts = verts - centre
    used = verts[np.unique(all_faces[keep])]
    scale = min(extent / float((hi - lo).max()), max_radius / float(np.linalg.norm(used, axis=1).max()))
    mesh = trimesh.Trimesh(vertices=verts * scale, faces=all_faces[keep], process=False)
    norms = np.linalg.norm(vertex_normals, axis=-1, keepdims=True)
    mesh.vertex_normals = np.where(norms > 1e-12, vertex_normals / np.maximum(norms, 1e-12), 0.0)
    return TexturedMesh(
        mesh=mesh,
        corner_colors=np.concatenate(colors)[keep],
        face_texture=np.concatenate(tex)[keep],
        corner_uv=np.concatenate(uvs)[keep],
        textures=textures,
        source=path,
        scale=float(scale),
        centre=centre,
    )


def _part_colors(
    part: trimesh.Trimesh, textures: List[np.ndarray], image_ids: Dict[int, int]
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(corner colours [F, 3, 3], texture index [F], corner uv [F, 3, 2])`` of one trimesh part."""
    n = len(part.faces)
    faces = np.asarray(part.faces)
    corner = np.broadcast_to(DEFAULT_COLOR, (n, 3, 3)).copy()
    tex, uv = np.full(n, -1, dtype=np.int64), np.zeros((n, 3, 2))
    visual = part.visual
    if isinstance(visual, trimesh.visual.TextureVisuals):
        material = visual.material
        if hasattr(material, "to_simple") and not isinstance(material, trimesh.visual.material.SimpleMaterial):
            material = material.to_simple()
        diffuse = getattr(material, "diffuse", None)
        if diffuse is not None:
            corner[:] = np.asarray(diffuse, dtype=np.float64)[:3] / 255.0
        image = getattr(material, "image", None)
        if image is not None and visual.uv is not None and len(visual.uv) == len(part.vertices):
            key = id(image)
            if key not in image_ids:
                image_ids[key] = len(textures)
                textures.append(_texture_array(image))
            tex[:] = image_ids[key]
            uv = np.asarray(visual.uv, dtype=np.float64)[faces]
    elif isinstance(visual, trimesh.visual.ColorVisuals) and visual.kind in ("vertex", "face"):
        if visual.kind == "vertex":
            corner = np.asarray(visual.vertex_colors, dtype=np.float64)[faces, :3] / 255.0
        else:
            corner[:] = np.asarray(visual.face_colors, dtype=np.float64)[:, None, :3] / 255.0
    return corner, tex, uv


def _texture_array(image) -> np.ndarray:
    """A PIL image as [H, W, 3] float32 RGB in [0, 1], reduced to :data:`MAX_TEXTURE_SIDE` if larger."""
    from PIL import Image

    image = image.convert("RGB")
    if max(image.size) > MAX_TEXTURE_SIDE:
        factor = MAX_TEXTURE_SIDE / max(image.size)
        size = (max(1, round(image.size[0] * factor)), max(1, round(image.size[1] * factor)))
        image = image.resize(size, Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float32) / 255.0


def sample_texture(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup of ``image`` [H, W, 3] at texture coordinates ``uv`` [N, 2] (wrapping; v = 1 is row 0)."""
    h, w = image.shape[:2]
    x = np.mod(uv[:, 0], 1.0) * w - 0.5
    y = (1.0 - np.mod(uv[:, 1], 1.0)) * h - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.astype(np.int64) % w, y0.astype(np.int64) % h
    x1, y1 = (x0 + 1) % w, (y0 + 1) % h
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float64)


class _MeshCaster:
    """Casts and shades batches of rays against one textured mesh (the interface of raycast's caster)."""

    def __init__(self, textured: TexturedMesh) -> None:
        self.t = textured
        self.intersector = make_intersector(textured.mesh)

    def cast(self, o: np.ndarray, d: np.ndarray):
        """``(rgb [R, 3], face [R], points [R, 3], distance [R])`` of rays ``o, d`` [R, 3]."""
        mesh = self.t.mesh
        face = np.asarray(self.intersector.intersects_first(o, d), dtype=np.int64)  # [R]
        hit = face >= 0
        f = face[hit]
        normals = mesh.face_normals[f]  # [N, 3]
        oh, dh = o[hit], d[hit]
        t = ((mesh.vertices[mesh.faces[f, 0]] - oh) * normals).sum(-1) / (dh * normals).sum(-1)  # [N]
        p = oh + t[:, None] * dh
        rgb = np.full(d.shape, BACKGROUND)
        if len(f):
            bary = trimesh.triangles.points_to_barycentric(mesh.triangles[f], p)  # [N, 3]
            albedo = (bary[:, :, None] * self.t.corner_colors[f]).sum(1)
            textured = self.t.face_texture[f]
            for k in np.unique(textured[textured >= 0]):
                sel = textured == k
                uv = (bary[sel, :, None] * self.t.corner_uv[f[sel]]).sum(1)
                albedo[sel] = sample_texture(self.t.textures[k], uv)
            smooth = (bary[:, :, None] * mesh.vertex_normals[mesh.faces[f]]).sum(1)
            smooth /= np.maximum(np.linalg.norm(smooth, axis=-1, keepdims=True), 1e-12)
            agree = np.abs((smooth * normals).sum(-1, keepdims=True)) > SMOOTH_COS
            shading = np.where(agree, np.sign((smooth * normals).sum(-1, keepdims=True)) * smooth, normals)
            zero = np.zeros(len(f))
            rgb[hit] = shade(np.clip(albedo, 0, 1), shading, dh, p, zero, np.ones(len(f)), zero, np.zeros(len(f), bool))
        points = np.full(d.shape, np.nan)
        points[hit] = p
        distance = np.full(len(d), np.inf)
        distance[hit] = t
        return rgb, face, points, distance


def render_mesh(
    textured: TexturedMesh, camera_to_world: np.ndarray, intrinsics: Intrinsics, antialias: bool = True
) -> Render:
    """Ray cast every pixel of every view [V, 4, 4] (OpenGL axes) of a textured mesh; see the module docstring."""
    return cast_views(_MeshCaster(textured), camera_to_world, intrinsics, antialias)


# ----------------------------------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class MeshJob:
    """Everything one worker needs to turn one mesh file into one scene."""

    source: Path
    name: str
    output: Path
    views_per_scene: int
    test_views: int
    resolution: int
    seed: int
    up: str

    def settings(self) -> dict:
        """What a finished scene records; ``resume`` keeps a scene only when these match."""
        return {
            "source": str(self.source),
            "views_per_scene": self.views_per_scene,
            "test_views": self.test_views,
            "resolution": self.resolution,
            "seed": self.seed,
            "up": self.up,
        }


@dataclass
class ConvertResult:
    """What :func:`convert_meshes` did."""

    names: List[str]
    """Scene names written to ``scenes.json``, in order."""
    rendered: List[str] = field(default_factory=list)
    """Scenes rendered by this run."""
    kept: List[str] = field(default_factory=list)
    """Finished scenes of an earlier run with the same settings, kept (``resume``)."""
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    """``(file, reason)`` of meshes that could not be converted (``skip_bad``)."""


def convert_one(job: MeshJob) -> Tuple[str, str]:
    """Render and write one scene: ``("rendered" | "kept", name)``; ``("skipped", reason)`` for a bad mesh."""
    folder = job.output / job.name
    if _finished(folder, job):
        return "kept", job.name
    try:
        meta = read_meta(job.source)
        textured = load_mesh(job.source, up=job.up, rotation=meta.get("rotation"))  # type: ignore[arg-type]
    except DatasetError as err:
        return "skipped", str(err)
    cameras = np.random.default_rng(np.random.SeedSequence([job.seed, zlib.crc32(job.name.encode())]))
    rig = sample_hemisphere_rig(cameras, job.views_per_scene)
    intrinsics = square_intrinsics(job.resolution)
    check_in_view(np.asarray(textured.mesh.vertices), rig.camera_to_world, intrinsics)
    render = render_mesh(textured, rig.camera_to_world, intrinsics)
    write_mesh_scene(folder, job, render.images, rig.camera_to_world, intrinsics, textured, meta, rig)
    return "rendered", job.name


def write_mesh_scene(folder: Path, job: MeshJob, images, camera_to_world, intrinsics, textured, meta, rig) -> Path:
    """``folder/images/NNNN.png`` and, last, ``folder/transforms.json`` (the mark of a finished scene)."""
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / TRANSFORMS).unlink(missing_ok=True)
    frames = []
    for v, image in enumerate(images):
        rel = f"images/{v:04d}.png"
        Image.fromarray(image).save(folder / rel, compress_level=1)
        frames.append((rel, camera_to_world[v], "test" if v < job.test_views else "train"))
    extra = {
        "mesh": {
            "converter": "ns-3dae-convert meshes",
            **job.settings(),
            "faces": int(len(textured.mesh.faces)),
            "textures": len(textured.textures),
            "textured_faces": int((textured.face_texture >= 0).sum()),
            "normalisation": {"centre": textured.centre.tolist(), "scale": textured.scale},
            "meta": meta,
            "cameras": {
                "radius": CAMERA_RADIUS,
                "fov_deg": FOV_DEG,
                "near": NEAR,
                "far": FAR,
                "elevation_deg": [float(e) for e in rig.elevation_deg],
                "azimuth_deg": [float(a) for a in rig.azimuth_deg],
            },
        }
    }
    return write_scene(folder, intrinsics, frames, extra=extra)


def _finished(folder: Path, job: MeshJob) -> bool:
    """A scene of an earlier run with the same settings and all its images."""
    try:
        meta = json.loads((folder / TRANSFORMS).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    mine = meta.get("mesh", {}) if isinstance(meta, dict) else {}
    same = all(mine.get(k) == v for k, v in job.settings().items())
    frames = meta.get("frames", [])
    return same and len(frames) == job.views_per_scene and all((folder / f["file_path"]).is_file() for f in frames)


def convert_meshes(
    inputs: Sequence[Path],
    output: Path,
    views_per_scene: int = 24,
    test_views: int = 4,
    resolution: int = 128,
    seed: int = 0,
    up: Literal["y", "z"] = "y",
    limit: Optional[int] = None,
    workers: int = 1,
    overwrite: bool = False,
    resume: bool = False,
    skip_bad: bool = False,
    on_scene: Optional[Callable[[str, str], None]] = None,
) -> ConvertResult:
    """Render every mesh of ``inputs`` (files, or folders searched recursively) into a scene under ``output``.

    Args:
        limit: stop after this many converted scenes (meshes in sorted order; skipped ones do not count).
        workers: processes rendering scenes at once (the output does not depend on it).
        overwrite: write into a non-empty ``output``, removing the scenes an earlier conversion wrote there.
        resume: keep the finished scenes of an earlier run with the same settings, render the rest.
        skip_bad: list unreadable meshes in the result (and ``output/skipped.json``) instead of stopping.
        on_scene: called with ``(status, name or reason)`` after every mesh.
    Raises:
        DatasetError: an option out of range, a non-empty output without ``overwrite``/``resume``, or (without
            ``skip_bad``) the first mesh that cannot be read or has no faces, by name.
    """
    output = Path(output)
    if views_per_scene < 1:
        raise DatasetError(f"--views-per-scene must be at least 1, got {views_per_scene}")
    if not 0 <= test_views < views_per_scene:
        raise DatasetError(
            f"--test-views ({test_views}) must be >= 0 and smaller than --views-per-scene ({views_per_scene})"
        )
    if resolution < 1:
        raise DatasetError(f"--resolution must be at least 1, got {resolution}")
    if limit is not None and limit < 1:
        raise DatasetError(f"--limit must be at least 1, got {limit}")
    if workers < 1:
        raise DatasetError(f"--workers must be at least 1, got {workers}")
    if up not in UP_ROTATIONS:
        raise DatasetError(f"--up must be one of {sorted(UP_ROTATIONS)}, got {up!r}")
    files = find_meshes(inputs)
    names = scene_names(files, inputs)
    _prepare_output(output, overwrite, resume)
    root = output.resolve()
    settings = (views_per_scene, test_views, resolution, seed, up)
    jobs = [MeshJob(f, n, root, *settings) for f, n in zip(files, names, strict=True)]
    result = ConvertResult(names=[])
    pending = list(jobs)
    pool = None
    try:
        while pending and (limit is None or len(result.names) < limit):
            batch = pending[: len(pending) if limit is None else limit - len(result.names)]
            pending = pending[len(batch) :]
            if workers == 1 or len(batch) == 1:
                outcomes = map(convert_one, batch)
            else:
                if pool is None:  # spawn: safe even when the caller has imported torch or started threads
                    pool = multiprocessing.get_context("spawn").Pool(processes=min(workers, len(jobs)))
                outcomes = pool.imap(convert_one, batch)
            for job, (status, what) in zip(batch, outcomes, strict=True):
                if status == "skipped":
                    if not skip_bad:
                        raise DatasetError(f"{what} (pass --skip-bad to list such meshes and go on)")
                    result.skipped.append((str(job.source), what))
                else:
                    result.names.append(job.name)
                    (result.rendered if status == "rendered" else result.kept).append(job.name)
                if on_scene is not None:
                    on_scene(status, what)
    finally:
        if pool is not None:
            pool.terminate()
    skipped_file = output / "skipped.json"
    if result.skipped:
        skipped_file.write_text(json.dumps([{"file": f, "error": e} for f, e in result.skipped], indent=1))
    else:
        skipped_file.unlink(missing_ok=True)
    if not result.names:
        raise DatasetError(f"no mesh of --input could be converted ({len(result.skipped)} skipped, see above)")
    write_scenes_index(output, result.names)
    return result


def _prepare_output(output: Path, overwrite: bool, resume: bool) -> None:
    """Refuse a non-empty folder unless ``overwrite`` (which removes earlier converted scenes) or ``resume``."""
    if output.exists() and not output.is_dir():
        raise DatasetError(f"--output {output} exists and is not a folder")
    output.mkdir(parents=True, exist_ok=True)
    if not any(output.iterdir()) or resume:
        return
    if not overwrite:
        raise DatasetError(f"--output {output} is not empty; pass --resume to keep finished scenes or --overwrite")
    (output / SCENES_INDEX).unlink(missing_ok=True)
    for child in output.iterdir():
        transforms = child / TRANSFORMS
        if child.is_dir() and transforms.is_file() and '"mesh"' in transforms.read_text():
            shutil.rmtree(child)
