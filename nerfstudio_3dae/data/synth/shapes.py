"""Parametric object builders: many look-alike but different objects of one category.

Every builder takes a ``numpy.random.Generator``, draws the object's parameters from it and returns a
:class:`SynthObject`: a ``trimesh.Trimesh`` with one RGBA colour per face plus the parameters (JSON-friendly) for
provenance. Objects are built from convex pieces (boxes, extruded profiles, cylinders) in metre-like units with the
ground at z = 0 and +Z up, then centred on their bounding box and scaled so their largest side is ``extent``
(default 0.9) and no vertex is farther than ``max_radius`` (0.55) from the origin: they sit well inside [-1, 1]^3
and stay wholly in frame in every view of :mod:`nerfstudio_3dae.data.synth.cameras`.

Categories: ``car`` (body, glass cabin, roof, 4 wheels with hubs, head/tail lights, grille, optional bumpers,
mirrors, spoiler, roof box), ``chair`` (seat, solid or slatted back, 4 legs or a pedestal with a star base, optional
armrests) and ``table`` (rectangular or round top, 4 legs or a pedestal, optional apron and shelf).

Each face also names a :class:`~nerfstudio_3dae.data.synth.textures.Material` (car paint with a per-scene livery,
tinted glass, rims, tyres, lights, wood, fabric...): the renderer evaluates those solid textures at every hit point.
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Sequence, Tuple, Union

import numpy as np
import trimesh

from nerfstudio_3dae.data.synth.textures import (
    CarBody,
    Material,
    draw_livery,
    fabric_material,
    material_table,
    metal_material,
    wood_material,
)

Color = Tuple[float, float, float]
DEFAULT_EXTENT = 0.9
# 1.3 * sin(26 deg) = 0.57: a ball of this radius stays inside the SRN-like 52-degree view from 1.3 away.
DEFAULT_MAX_RADIUS = 0.55
CYLINDER_SECTIONS = 16


@dataclass
class SynthObject:
    """One generated object."""

    mesh: trimesh.Trimesh
    """Triangles with per-face colours (``mesh.visual.face_colors``, uint8 RGBA), inside [-1, 1]^3, +Z up."""
    params: Dict[str, object]
    """The drawn parameters (before normalisation), the category and the normalisation scale."""
    face_material: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """[F] index into ``materials`` of every face."""
    materials: List[Material] = field(default_factory=list)
    """The object's materials (solid textures evaluated in build coordinates)."""
    centre: np.ndarray = field(default_factory=lambda: np.zeros(3))
    """[3] build-coordinate point that normalisation moved to the origin."""
    scale: float = 1.0
    """Normalisation scale: ``mesh point = (build point - centre) * scale``."""

    def to_build(self, points: np.ndarray) -> np.ndarray:
        """Mesh (normalised) coordinates [N, 3] -> build coordinates [N, 3], where the textures are defined."""
        return points / self.scale + self.centre


@dataclass
class _Parts:
    """Accumulates convex pieces with one colour each and joins them into a single coloured mesh."""

    vertices: List[np.ndarray] = field(default_factory=list)
    faces: List[np.ndarray] = field(default_factory=list)
    colors: List[np.ndarray] = field(default_factory=list)
    face_material: List[np.ndarray] = field(default_factory=list)
    materials: List[Material] = field(default_factory=list)
    count: int = 0

    def add(self, piece: Tuple[np.ndarray, np.ndarray], look: Union[Color, Material]) -> None:
        """Add a convex piece with a material (a bare colour is a plain material)."""
        material = look if isinstance(look, Material) else Material("plain", tuple(float(c) for c in look))
        index = next((i for i, m in enumerate(self.materials) if m is material), None)
        if index is None:
            self.materials.append(material)
            index = len(self.materials) - 1
        verts, faces = piece  # [N, 3], [F, 3]
        self.vertices.append(verts)
        self.faces.append(faces + self.count)
        self.colors.append(np.tile(np.asarray(material.color, dtype=np.float64), (len(faces), 1)))
        self.face_material.append(np.full(len(faces), index, dtype=np.int64))
        self.count += len(verts)

    def build(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(vertices [N, 3], faces [F, 3], colours [F, 3] in [0, 1], face materials [F])``."""
        return (
            np.concatenate(self.vertices),
            np.concatenate(self.faces),
            np.concatenate(self.colors),
            np.concatenate(self.face_material),
        )


# ----------------------------------------------------------------------------------------------- convex pieces


def _extrusion(bottom: np.ndarray, top: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """A closed convex solid between two planar convex rings with matching vertex order.

    Args:
        bottom: [N, 3] first ring.
        top: [N, 3] second ring.
    Returns:
        vertices [2N, 3] and faces [4N - 4, 3], wound so that normals point outwards.
    """
    n = len(bottom)
    verts = np.concatenate([bottom, top]).astype(np.float64)
    idx = np.arange(n)
    nxt = (idx + 1) % n
    sides = np.concatenate([np.stack([idx, nxt, nxt + n], 1), np.stack([idx, nxt + n, idx + n], 1)])
    fan = np.arange(1, n - 1)
    caps = np.concatenate(
        [np.stack([np.zeros_like(fan), fan + 1, fan], 1), np.stack([np.full_like(fan, n), fan + n, fan + 1 + n], 1)]
    )
    faces = np.concatenate([sides, caps])
    # Orient every triangle away from the centroid (valid because each piece is convex).
    tri = verts[faces]  # [F, 3, 3]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    outward = np.einsum("fi,fi->f", normal, tri.mean(1) - verts.mean(0)) >= 0
    faces[~outward] = faces[~outward][:, ::-1]
    return verts, faces


def box(center: Sequence[float], size: Sequence[float], yaw: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    """An axis-aligned box (optionally turned by ``yaw`` radians about +Z) of full ``size`` around ``center``."""
    sx, sy, sz = (0.5 * s for s in size)
    ring = np.array([[-sx, -sy], [sx, -sy], [sx, sy], [-sx, sy]])  # [4, 2]
    c, s = np.cos(yaw), np.sin(yaw)
    ring = ring @ np.array([[c, s], [-s, c]])
    ctr = np.asarray(center, dtype=np.float64)
    bottom = np.column_stack([ring, np.full(4, -sz)]) + ctr
    top = np.column_stack([ring, np.full(4, sz)]) + ctr
    return _extrusion(bottom, top)


def cylinder(p0: Sequence[float], p1: Sequence[float], radius: float, sections: int = CYLINDER_SECTIONS):
    """A closed cylinder of ``radius`` with its axis from ``p0`` to ``p1``."""
    a, b = np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64)
    axis = (b - a) / np.linalg.norm(b - a)
    helper = np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(axis, helper)
    u /= np.linalg.norm(u)
    v = np.cross(axis, u)
    ang = np.linspace(0.0, 2 * np.pi, sections, endpoint=False)
    ring = radius * (np.cos(ang)[:, None] * u + np.sin(ang)[:, None] * v)  # [S, 3]
    return _extrusion(ring + a, ring + b)


def side_profile(profile_xz: np.ndarray, half_width_bottom: float, half_width_top: float):
    """A convex side profile (x, z) extruded across Y; the half width varies linearly with z (tumblehome)."""
    z = profile_xz[:, 1]
    frac = (z - z.min()) / max(z.max() - z.min(), 1e-9)
    half = half_width_bottom + (half_width_top - half_width_bottom) * frac  # [N]
    left = np.column_stack([profile_xz[:, 0], -half, z])
    right = np.column_stack([profile_xz[:, 0], half, z])
    return _extrusion(left, right)


# ------------------------------------------------------------------------------------------------------ colours


def _jitter(rng: np.random.Generator, color: Color, amount: float = 0.06) -> Color:
    return tuple(float(c) for c in np.clip(np.asarray(color) + rng.uniform(-amount, amount, 3), 0.0, 1.0))


def _hsv(rng: np.random.Generator, h: Tuple[float, float], s: Tuple[float, float], v: Tuple[float, float]) -> Color:
    return tuple(float(c) for c in colorsys.hsv_to_rgb(rng.uniform(*h) % 1.0, rng.uniform(*s), rng.uniform(*v)))


CAR_PAINTS: Tuple[Color, ...] = (
    (0.80, 0.10, 0.10),
    (0.10, 0.25, 0.70),
    (0.92, 0.92, 0.92),
    (0.15, 0.15, 0.17),
    (0.65, 0.67, 0.70),
    (0.10, 0.50, 0.25),
    (0.95, 0.75, 0.10),
    (0.55, 0.30, 0.15),
    (0.95, 0.45, 0.10),
    (0.35, 0.70, 0.85),
)
WOODS: Tuple[Color, ...] = ((0.55, 0.35, 0.18), (0.72, 0.53, 0.32), (0.35, 0.22, 0.12), (0.85, 0.72, 0.52))
METALS: Tuple[Color, ...] = ((0.15, 0.15, 0.16), (0.70, 0.71, 0.73), (0.90, 0.90, 0.88))


def _pick(rng: np.random.Generator, palette: Sequence[Color]) -> Color:
    return _jitter(rng, palette[int(rng.integers(len(palette)))])


def _frame_material(rng: np.random.Generator, color: Color, origin: Sequence[float]) -> Material:
    """Wood grain for wood-like colours, a metal (or lacquer) finish otherwise."""

    def distance(palette: Sequence[Color]) -> float:
        return min(float(np.abs(np.subtract(color, c)).max()) for c in palette)

    return wood_material(rng, color, origin) if distance(WOODS) <= distance(METALS) else metal_material(color)


# --------------------------------------------------------------------------------------------------------- car


@dataclass(frozen=True)
class CarDesign:
    """The drawn parameters of one car, in build units (metres; +X forward, +Y left, ground at z = 0): they go into
    the scene's provenance as they are."""

    length: float
    width: float
    clearance: float
    """Height of the body's underside above the ground."""
    body_height: float
    wheel_radius: float
    wheel_width: float
    wheelbase: float
    wheel_shift: float
    """How far (+X: forward) the axles sit off the middle of the body."""
    hood: float
    """Length of the hood: from the front end to the foot of the windshield."""
    trunk: float
    """Length of the trunk: from the rear end to the foot of the rear window."""
    cabin_height: float
    windshield_slope: float
    """Run of the windshield per unit of rise."""
    rear_slope: float
    """Run of the rear window per unit of rise."""
    cabin_width: float
    """The cabin's width as a fraction of the body's."""
    tumblehome: float
    """The cabin's width at the roof as a fraction of its width at the bottom."""
    paint: Color
    glass: Color
    hub: Color
    bumpers: bool
    mirrors: bool
    spoiler: bool
    roof_box: bool

    @classmethod
    def draw(cls, rng: np.random.Generator) -> CarDesign:
        length = rng.uniform(3.6, 5.0)
        return cls(  # keyword arguments are evaluated in the order written: the draws keep their order
            length=length,
            width=length * rng.uniform(0.38, 0.46),
            clearance=rng.uniform(0.14, 0.26),
            body_height=rng.uniform(0.45, 0.75),
            wheel_radius=rng.uniform(0.29, 0.40),
            wheel_width=rng.uniform(0.18, 0.28),
            wheelbase=length * rng.uniform(0.56, 0.64),
            wheel_shift=length * rng.uniform(-0.03, 0.03),
            hood=length * rng.uniform(0.18, 0.32),
            trunk=length * rng.uniform(0.04, 0.24),
            cabin_height=rng.uniform(0.38, 0.62),
            windshield_slope=rng.uniform(0.5, 1.4),
            rear_slope=rng.uniform(0.2, 1.2),
            cabin_width=rng.uniform(0.84, 0.96),
            tumblehome=rng.uniform(0.78, 0.92),
            paint=_pick(rng, CAR_PAINTS) if rng.random() < 0.7 else _hsv(rng, (0.0, 1.0), (0.2, 0.95), (0.2, 0.95)),
            glass=_jitter(rng, (0.18, 0.24, 0.30), 0.04),
            hub=_jitter(rng, (0.70, 0.70, 0.72), 0.1),
            bumpers=bool(rng.random() < 0.6),
            mirrors=bool(rng.random() < 0.7),
            spoiler=bool(rng.random() < 0.25),
            roof_box=bool(rng.random() < 0.2),
        )


@dataclass(frozen=True)
class _CarLayout:
    """Where a car's parts go, derived from its :class:`CarDesign` (build units)."""

    x_front: float
    x_rear: float
    belt: float
    """Height of the top of the body, where the cabin starts."""
    nose: float
    """How far behind the front end the hood's top edge starts (the slope of the nose)."""
    tail: float
    """How far ahead of the rear end the trunk's top edge starts."""
    wheel_xs: Tuple[float, float]
    """x of the front and the rear axle."""
    wheel_centres: List[List[float]]
    """[4] (x, y, z) of the wheels' centres: front left, front right, rear left, rear right."""
    cabin_rear: float
    """x of the rear edge of the cabin's bottom (the foot of the rear window)."""
    cabin_front: float
    """x of the front edge of the cabin's bottom (the foot of the windshield)."""
    roof_rear: float
    """x of the rear edge of the cabin's top."""
    roof_front: float
    """x of the front edge of the cabin's top."""
    cabin_half_width: float
    roof_z: float
    """Height of the cabin's top."""

    @classmethod
    def of(cls, car: CarDesign, rng: np.random.Generator) -> _CarLayout:
        """The layout of ``car``; draws the shape of its nose and tail from ``rng``."""
        x_front, x_rear, belt = car.length / 2, -car.length / 2, car.clearance + car.body_height
        nose, tail = 0.5 * car.hood * rng.uniform(0.3, 0.6), 0.3 * rng.uniform(0.2, 0.6)
        wheel_xs = (car.wheelbase / 2 + car.wheel_shift, -car.wheelbase / 2 + car.wheel_shift)
        wheel_y = car.width / 2 + 0.02 - car.wheel_width / 2
        centres = [[x, side * wheel_y, car.wheel_radius] for x in wheel_xs for side in (-1.0, 1.0)]
        cabin_rear, cabin_front = x_rear + car.trunk, x_front - car.hood
        roof_rear = cabin_rear + car.rear_slope * car.cabin_height
        roof_front = max(
            cabin_front - car.windshield_slope * car.cabin_height, roof_rear + 0.25 * (cabin_front - cabin_rear)
        )
        return cls(
            x_front=x_front,
            x_rear=x_rear,
            belt=belt,
            nose=nose,
            tail=tail,
            wheel_xs=wheel_xs,
            wheel_centres=centres,
            cabin_rear=cabin_rear,
            cabin_front=cabin_front,
            roof_rear=roof_rear,
            roof_front=roof_front,
            cabin_half_width=car.cabin_width * car.width / 2,
            roof_z=belt + car.cabin_height,
        )


@dataclass(frozen=True)
class _CarLooks:
    """The materials of a car's parts."""

    paint: Material
    tyre: Material
    glass: Material
    rim: Material
    headlight: Material
    taillight: Material
    grille: Material
    trim: Material

    @classmethod
    def draw(cls, rng: np.random.Generator, car: CarDesign, layout: _CarLayout) -> _CarLooks:
        """The materials of ``car``: its livery, tyre tread, rim spokes and grille slats drawn from ``rng``."""
        body = CarBody(
            length=car.length,
            width=car.width,
            clearance=car.clearance,
            body_height=car.body_height,
            x_front=layout.x_front,
            hood=car.hood,
            door_x=0.5 * (layout.cabin_rear + layout.cabin_front),
        )
        livery = draw_livery(rng, car.paint, body)
        paint = Material("paint", car.paint, specular=0.3, shininess=60.0, reflect=0.05, params=livery)
        treads = int(rng.integers(18, 36))
        tyre = Material(
            "tyre", (0.08, 0.08, 0.09), specular=0.03, params={"centres": layout.wheel_centres, "treads": treads}
        )
        glass = Material(
            "glass",
            car.glass,
            specular=0.5,
            shininess=80.0,
            reflect=0.3,
            params={"z0": layout.belt, "z1": layout.belt + car.cabin_height},
        )
        rim = Material(
            "rim",
            car.hub,
            specular=0.4,
            shininess=50.0,
            reflect=0.15,
            params={
                "centres": layout.wheel_centres,
                "radius": 0.6 * car.wheel_radius,
                "spokes": int(rng.integers(4, 11)),
                "spoke_cut": float(rng.uniform(-0.3, 0.5)),
                "dark": (0.1, 0.1, 0.11),
            },
        )
        width = car.width
        headlight = Material(
            "light",
            (1.0, 0.96, 0.8),
            emissive=True,
            params={"y": 0.32 * width, "half_width": 0.1 * width, "housing": (0.35, 0.35, 0.36)},
        )
        taillight = Material(
            "light",
            (0.9, 0.08, 0.06),
            emissive=True,
            params={"y": 0.34 * width, "half_width": 0.09 * width, "housing": (0.3, 0.05, 0.05)},
        )
        grille = Material("grille", (0.12, 0.12, 0.13), params={"frequency": float(rng.uniform(60.0, 140.0))})
        trim = Material("plain", (0.2, 0.2, 0.21), specular=0.1)
        return cls(paint, tyre, glass, rim, headlight, taillight, grille, trim)


def _add_car_body_and_cabin(parts: _Parts, car: CarDesign, at: _CarLayout, looks: _CarLooks) -> None:
    """The painted body (a side profile with a sloped nose and tail), the glass cabin and its painted roof slab."""
    bottom, height, half_width = car.clearance, car.body_height, car.width / 2
    body = np.array(
        [
            [at.x_rear + 0.15, bottom],
            [at.x_front - 0.2, bottom],
            [at.x_front, bottom + 0.4 * height],
            [at.x_front - at.nose, at.belt],
            [at.x_rear + at.tail, at.belt],
            [at.x_rear, bottom + 0.5 * height],
        ]
    )
    parts.add(side_profile(body, half_width, half_width * 0.97), looks.paint)
    cabin = np.array(
        [
            [at.cabin_rear, at.belt - 0.02],
            [at.cabin_front, at.belt - 0.02],
            [at.roof_front, at.roof_z],
            [at.roof_rear, at.roof_z],
        ]
    )
    roof_half_width = at.cabin_half_width * car.tumblehome
    parts.add(side_profile(cabin, at.cabin_half_width, roof_half_width), looks.glass)
    roof = np.array(
        [
            [at.roof_rear - 0.03, at.roof_z - 0.01],
            [at.roof_front + 0.03, at.roof_z - 0.01],
            [at.roof_front, at.roof_z + 0.05],
            [at.roof_rear, at.roof_z + 0.05],
        ]
    )
    parts.add(side_profile(roof, roof_half_width + 0.01, roof_half_width), looks.paint)


def _add_car_wheels(parts: _Parts, car: CarDesign, at: _CarLayout, looks: _CarLooks) -> None:
    """Four tyres with a hub cap on the outer side of each."""
    radius = car.wheel_radius
    for x in at.wheel_xs:
        for side in (-1.0, 1.0):
            y_out = side * (car.width / 2 + 0.02)
            parts.add(cylinder((x, y_out - side * car.wheel_width, radius), (x, y_out, radius), radius), looks.tyre)
            hub_cap = cylinder((x, y_out - side * 0.01, radius), (x, y_out + side * 0.015, radius), 0.6 * radius)
            parts.add(hub_cap, looks.rim)


def _add_car_lights_and_grille(parts: _Parts, car: CarDesign, at: _CarLayout, looks: _CarLooks) -> None:
    """Head and tail lights on both sides and the grille between the headlights."""
    bottom, height, width = car.clearance, car.body_height, car.width
    for side in (-1.0, 1.0):
        headlight = box(
            (at.x_front - 0.03, side * 0.32 * width, bottom + 0.3 * height), (0.08, 0.2 * width, 0.12 * height)
        )
        parts.add(headlight, looks.headlight)
        taillight = box(
            (at.x_rear + 0.03, side * 0.34 * width, bottom + 0.38 * height), (0.08, 0.18 * width, 0.1 * height)
        )
        parts.add(taillight, looks.taillight)
    parts.add(box((at.x_front - 0.03, 0.0, bottom + 0.26 * height), (0.07, 0.3 * width, 0.12 * height)), looks.grille)


def _add_car_options(parts: _Parts, car: CarDesign, at: _CarLayout, looks: _CarLooks) -> None:
    """The parts a car may or may not have: bumpers, mirrors, a rear spoiler and a roof box."""
    bottom, height, width = car.clearance, car.body_height, car.width
    if car.bumpers:
        for x in (at.x_front - 0.05, at.x_rear + 0.05):
            parts.add(box((x, 0.0, bottom + 0.08 * height), (0.16, 0.98 * width, 0.12 * height)), looks.trim)
    if car.mirrors:
        for side in (-1.0, 1.0):
            mirror = box((at.cabin_front - 0.1, side * (at.cabin_half_width + 0.07), at.belt + 0.08), (0.1, 0.14, 0.08))
            parts.add(mirror, looks.paint)
    if car.spoiler:
        x = at.x_rear + max(at.tail, 0.12) + 0.05
        for side in (-1.0, 1.0):
            parts.add(box((x, side * 0.3 * width, at.belt + 0.06), (0.05, 0.04, 0.14)), looks.trim)
        parts.add(box((x, 0.0, at.belt + 0.14), (0.22, 0.9 * width, 0.035)), looks.paint)
    if car.roof_box:
        centre = ((at.roof_rear + at.roof_front) / 2, 0.0, at.roof_z + 0.12)
        parts.add(box(centre, (0.7 * (at.roof_front - at.roof_rear), 0.55 * width, 0.14)), (0.1, 0.1, 0.1))


def _car(rng: np.random.Generator, parts: _Parts) -> Dict[str, object]:
    """A car: its design, then the layout and materials that follow from it (all draws in this order), then its
    parts; returns the design as the scene's parameters."""
    car = CarDesign.draw(rng)
    layout = _CarLayout.of(car, rng)
    looks = _CarLooks.draw(rng, car, layout)
    _add_car_body_and_cabin(parts, car, layout, looks)
    _add_car_wheels(parts, car, layout, looks)
    _add_car_lights_and_grille(parts, car, layout, looks)
    _add_car_options(parts, car, layout, looks)
    return asdict(car)


# ------------------------------------------------------------------------------------------------------- chair


def _chair(rng: np.random.Generator, parts: _Parts) -> Dict[str, object]:
    p = {
        "seat_width": rng.uniform(0.40, 0.56),
        "seat_depth": rng.uniform(0.40, 0.54),
        "seat_height": rng.uniform(0.40, 0.50),
        "seat_thickness": rng.uniform(0.04, 0.10),
        "back_height": rng.uniform(0.35, 0.60),
        "back_thickness": rng.uniform(0.03, 0.07),
        "back_tilt": rng.uniform(0.0, 0.15),
        "leg_thickness": rng.uniform(0.03, 0.06),
        "round_legs": bool(rng.random() < 0.4),
        "base": "pedestal" if rng.random() < 0.25 else "legs",
        "slatted_back": bool(rng.random() < 0.3),
        "armrests": bool(rng.random() < 0.35),
        "frame": _pick(rng, WOODS + METALS),
        "cushion": _hsv(rng, (0.0, 1.0), (0.3, 0.8), (0.35, 0.9)),
    }
    sw, sd, sh, st = p["seat_width"], p["seat_depth"], p["seat_height"], p["seat_thickness"]
    lt = p["leg_thickness"]
    frame = _frame_material(rng, p["frame"], (0.0, 0.0, sh / 2))
    cushion = fabric_material(rng, p["cushion"])
    parts.add(box((0.0, 0.0, sh - st / 2), (sd, sw, st)), cushion)
    if p["base"] == "legs":
        for sx in (-1.0, 1.0):
            for sy in (-1.0, 1.0):
                x, y = sx * (sd / 2 - lt), sy * (sw / 2 - lt)
                if p["round_legs"]:
                    parts.add(cylinder((x, y, 0.0), (x, y, sh - st), lt / 2, 10), frame)
                else:
                    parts.add(box((x, y, (sh - st) / 2), (lt, lt, sh - st)), frame)
    else:
        parts.add(cylinder((0.0, 0.0, 0.06), (0.0, 0.0, sh - st), 0.03), frame)
        n_feet = int(rng.integers(4, 6))
        p["feet"] = n_feet
        for k in range(n_feet):
            yaw = 2 * np.pi * k / n_feet
            arm = 0.45 * max(sw, sd)
            parts.add(box((0.5 * arm * np.cos(yaw), 0.5 * arm * np.sin(yaw), 0.04), (arm, 0.05, 0.04), yaw), frame)
    # Back: a slab (or posts, slats and a top rail) leaning backwards (-X) by back_tilt.
    bh, bt, tilt = p["back_height"], p["back_thickness"], p["back_tilt"]
    x0 = -sd / 2 + bt / 2

    def leaning(y: float, width: float, z0: float, z1: float, color: Color) -> None:
        ring = np.array([[-bt / 2, -width / 2], [bt / 2, -width / 2], [bt / 2, width / 2], [-bt / 2, width / 2]])
        lo, hi = tilt * (z0 - sh) / bh, tilt * (z1 - sh) / bh
        bottom = np.column_stack([ring[:, 0] + x0 - lo, ring[:, 1] + y, np.full(4, z0)])
        top = np.column_stack([ring[:, 0] + x0 - hi, ring[:, 1] + y, np.full(4, z1)])
        parts.add(_extrusion(bottom, top), color)

    if p["slatted_back"]:
        n_slats = int(rng.integers(2, 5))
        p["slats"] = n_slats
        for y in (-sw / 2 + lt / 2, sw / 2 - lt / 2):
            leaning(y, lt, sh, sh + bh, frame)
        leaning(0.0, sw, sh + 0.8 * bh, sh + bh, frame)
        for y in np.linspace(-sw / 2, sw / 2, n_slats + 2)[1:-1]:
            leaning(float(y), 0.4 * sw / (n_slats + 1), sh, sh + 0.8 * bh, frame)
    else:
        leaning(0.0, sw, sh - 0.01, sh + bh, cushion)
    if p["armrests"]:
        for sy in (-1.0, 1.0):
            y = sy * (sw / 2 - 0.02)
            parts.add(box((0.1 * sd, y, sh + 0.1), (0.04, 0.04, 0.2)), frame)
            parts.add(box((-0.05 * sd, y, sh + 0.21), (0.85 * sd, 0.06, 0.03)), frame)
    return p


# ------------------------------------------------------------------------------------------------------- table


def _table(rng: np.random.Generator, parts: _Parts) -> Dict[str, object]:
    w = rng.uniform(0.8, 1.6)
    p = {
        "top_width": w,
        "top_depth": w * rng.uniform(0.5, 1.0),
        "height": rng.uniform(0.68, 0.80),
        "top_thickness": rng.uniform(0.03, 0.08),
        "round_top": bool(rng.random() < 0.3),
        "base": "pedestal" if rng.random() < 0.3 else "legs",
        "leg_thickness": rng.uniform(0.04, 0.09),
        "apron": bool(rng.random() < 0.5),
        "shelf": bool(rng.random() < 0.25),
        "top_color": _pick(rng, WOODS + ((0.92, 0.92, 0.9), (0.2, 0.2, 0.2))),
        "leg_color": _pick(rng, WOODS + METALS),
    }
    h, tt, lt = p["height"], p["top_thickness"], p["leg_thickness"]
    top = _frame_material(rng, p["top_color"], (0.0, rng.uniform(-1.0, 1.0), h + rng.uniform(0.1, 0.5)))
    legs = _frame_material(rng, p["leg_color"], (0.0, 0.0, h / 2))
    if p["round_top"]:
        p["top_depth"] = p["top_width"]
    tw, td = p["top_width"], p["top_depth"]
    if p["round_top"]:
        parts.add(cylinder((0.0, 0.0, h - tt), (0.0, 0.0, h), tw / 2, 32), top)
    else:
        parts.add(box((0.0, 0.0, h - tt / 2), (tw, td, tt)), top)
    inset = 0.35 if p["round_top"] else 0.5
    lx, ly = inset * tw - lt, inset * td - lt
    if p["base"] == "legs":
        for sx in (-1.0, 1.0):
            for sy in (-1.0, 1.0):
                parts.add(box((sx * lx, sy * ly, (h - tt) / 2), (lt, lt, h - tt)), legs)
        if p["apron"]:
            for sign in (-1.0, 1.0):
                parts.add(box((0.0, sign * ly, h - tt - 0.05), (2 * lx, lt / 2, 0.1)), legs)
                parts.add(box((sign * lx, 0.0, h - tt - 0.05), (lt / 2, 2 * ly, 0.1)), legs)
        if p["shelf"]:
            parts.add(box((0.0, 0.0, 0.2 * h), (2 * lx, 2 * ly, 0.025)), top)
    else:
        parts.add(cylinder((0.0, 0.0, 0.03), (0.0, 0.0, h - tt), 1.2 * lt), legs)
        parts.add(cylinder((0.0, 0.0, 0.0), (0.0, 0.0, 0.03), 0.3 * min(tw, td), 24), legs)
    return p


# ------------------------------------------------------------------------------------------------------ public

BUILDERS: Dict[str, Callable[[np.random.Generator, _Parts], Dict[str, object]]] = {
    "car": _car,
    "chair": _chair,
    "table": _table,
}
CATEGORIES: Tuple[str, ...] = tuple(BUILDERS)


def build_object(
    category: str, rng: np.random.Generator, extent: float = DEFAULT_EXTENT, max_radius: float = DEFAULT_MAX_RADIUS
) -> SynthObject:
    """Draw one object of ``category`` from ``rng``.

    The object is centred on its bounding box and scaled so that its largest side is ``extent`` (< 2), or less if
    needed to keep every vertex within ``max_radius`` of the origin. Up is +Z.
    """
    if category not in BUILDERS:
        raise ValueError(f"--category {category!r} is unknown; choose one of {', '.join(CATEGORIES)}")
    if not 0.0 < extent < 2.0:
        raise ValueError(f"object extent {extent} must lie in (0, 2) to fit inside [-1, 1]^3")
    parts = _Parts()
    params = BUILDERS[category](rng, parts)
    verts, faces, colors, face_material = parts.build()  # [N, 3], [F, 3], [F, 3], [F]
    lo, hi = verts.min(0), verts.max(0)
    centre = (lo + hi) / 2
    verts = verts - centre
    scale = min(extent / float((hi - lo).max()), max_radius / float(np.linalg.norm(verts, axis=1).max()))
    verts = verts * scale
    if not np.all(np.abs(verts) <= 1.0):  # extent < 2 rules it out: a builder or the normalisation is broken
        raise RuntimeError(
            f"a generated {category} left [-1, 1]^3 (largest coordinate {float(np.abs(verts).max()):.4f}) after "
            f"normalising to extent {extent} and max_radius {max_radius}"
        )
    rgba = np.concatenate([np.round(colors * 255), np.full((len(faces), 1), 255.0)], 1).astype(np.uint8)
    mesh = trimesh.Trimesh(vertices=verts, faces=faces, face_colors=rgba, process=False)
    # Builders draw plain Python numbers; the JSON round trip turns tuples into lists and proves it serialises.
    params = {
        "category": category,
        **json.loads(json.dumps(params)),
        "normalisation_scale": scale,
        "materials": material_table(parts.materials),
    }
    return SynthObject(
        mesh=mesh,
        params=params,
        face_material=face_material,
        materials=parts.materials,
        centre=centre,
        scale=float(scale),
    )
