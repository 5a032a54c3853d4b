"""Procedural surface appearance of generated objects: materials, liveries and solid textures.

Every face of a generated mesh carries a material index (``SynthObject.face_material``); a :class:`Material` turns
3D hit points into albedo (``evaluate``) and says how the surface reflects light (specular strength, shininess,
a mirror-like environment term, or emission). Patterns are *solid textures*: functions of the hit point in the
object's build coordinates (metre-like units, ground at z = 0, +Z up, before normalisation), so a livery wraps
around the body consistently in every view.

Car paint draws a per-scene **livery**: base colour, optional two-tone split, racing stripes, a side band,
checkers on the hood, a colour gradient along the body, a race number in a disc on both doors and rows of
text-like glyphs (random 3x5 bitmaps), plus a faint low-frequency colour variation. Glass is tinted and reflects a
sky gradient; rims have spokes; tyres have a tread; lights emit; wood has growth rings, fabric a weave and plaid.
Everything is drawn from the scene's random generator, nothing is read from a dataset.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field, fields
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

Color = Tuple[float, float, float]

# 3x5 bitmaps of the digits 0-9, rows top to bottom, 3 bits a row (left bit first).
_DIGITS = np.array(
    [
        [0b111, 0b101, 0b101, 0b101, 0b111], [0b010, 0b110, 0b010, 0b010, 0b111], [0b111, 0b001, 0b111, 0b100, 0b111],
        [0b111, 0b001, 0b011, 0b001, 0b111], [0b101, 0b101, 0b111, 0b001, 0b001], [0b111, 0b100, 0b111, 0b001, 0b111],
        [0b111, 0b100, 0b111, 0b101, 0b111], [0b111, 0b001, 0b010, 0b010, 0b010], [0b111, 0b101, 0b111, 0b101, 0b111],
        [0b111, 0b101, 0b111, 0b001, 0b111],
    ]
)  # fmt: skip
DIGIT_BITMAPS = ((_DIGITS[:, :, None] >> np.array([2, 1, 0])) & 1).astype(bool)  # [10, 5, 3]


def _glyph_ink(bitmaps: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether points fall on ink of a row of 3x5 glyphs with one empty column between them.

    Args:
        bitmaps: [G, 5, 3] bool glyphs, left to right.
        u: [N] horizontal position in glyph cells from the left edge of the row (4 cells a glyph incl. the gap).
        v: [N] vertical position in cells from the top edge.
    Returns:
        [N] bool.
    """
    col, row = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    glyph, x = col // 4, col % 4
    inside = (glyph >= 0) & (glyph < len(bitmaps)) & (x < 3) & (row >= 0) & (row < 5)
    out = np.zeros(len(u), dtype=bool)
    out[inside] = bitmaps[glyph[inside], row[inside], x[inside]]
    return out


def smooth_noise(points: np.ndarray, waves: np.ndarray) -> np.ndarray:
    """A cheap band-limited noise in about [-1, 1]: the mean of a few plane waves.

    Args:
        points: [N, 3] positions.
        waves: [K, 5] rows (dx, dy, dz, frequency, phase) with unit directions.
    Returns:
        [N] values.
    """
    proj = points @ waves[:, :3].T  # [N, K]
    return np.sin(proj * waves[:, 3] + waves[:, 4]).mean(-1) * np.sqrt(2.0)


def random_waves(rng: np.random.Generator, count: int, freq: Tuple[float, float]) -> np.ndarray:
    """``count`` plane waves (rows of :func:`smooth_noise`) with random directions and frequencies in ``freq``."""
    d = rng.normal(size=(count, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return np.column_stack([d, rng.uniform(*freq, count), rng.uniform(0, 2 * np.pi, count)])


def _mix(a: np.ndarray, b: Sequence[float], t: np.ndarray) -> np.ndarray:
    """Blend colours ``a`` [N, 3] towards ``b`` [3] by ``t`` [N] in [0, 1]."""
    return a + (np.asarray(b, dtype=np.float64) - a) * t[:, None]


def contrast(rng: np.random.Generator, color: Color) -> Color:
    """A colour that stands out against ``color``: white, black or a rotated hue."""
    lum = 0.3 * color[0] + 0.59 * color[1] + 0.11 * color[2]
    choice = rng.random()
    if choice < 0.4:
        return (0.95, 0.95, 0.93) if lum < 0.55 else (0.06, 0.06, 0.07)
    h, s, v = colorsys.rgb_to_hsv(*color)
    return tuple(float(c) for c in colorsys.hsv_to_rgb((h + rng.uniform(0.3, 0.7)) % 1.0, max(s, 0.6), 0.9))


@dataclass
class Material:
    """How one kind of surface of an object looks. ``kind`` selects the pattern; ``params`` hold its drawn values."""

    kind: str
    """One of ``plain``, ``paint``, ``glass``, ``tyre``, ``rim``, ``light``, ``grille``, ``wood``, ``fabric``."""
    color: Color
    """Base albedo in [0, 1]."""
    specular: float = 0.05
    """Strength of the Blinn-Phong highlight of the key light."""
    shininess: float = 24.0
    """Blinn-Phong exponent."""
    reflect: float = 0.0
    """Weight of the reflected sky gradient (glass, chrome)."""
    emissive: bool = False
    """Lights: the albedo is the output colour, unshaded."""
    params: Union[Dict[str, object], Livery] = field(default_factory=dict)
    """Pattern parameters in build units: JSON-friendly values, or for ``paint`` the car's :class:`Livery`."""

    def evaluate(self, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
        """Albedo of hit points.

        Args:
            points: [N, 3] hit points in build coordinates.
            normals: [N, 3] unit face normals (outward).
        Returns:
            [N, 3] albedo in [0, 1].
        """
        base = np.tile(np.asarray(self.color, dtype=np.float64), (len(points), 1))
        pattern = _PATTERNS.get(self.kind)
        out = base if pattern is None else pattern(self, base, points, normals)
        return np.clip(out, 0.0, 1.0)

    def describe(self) -> Dict[str, object]:
        """JSON-friendly summary for the scene's provenance (arrays such as noise waves and glyphs left out)."""
        return {"kind": self.kind, "color": [float(c) for c in self.color], **_jsonable(self.params)}


def _jsonable(value):
    """Plain Python numbers, lists and dicts; numpy arrays are dropped from dicts."""
    if isinstance(value, Livery):
        return _jsonable(value.as_dict())
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if not isinstance(v, np.ndarray)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


# ------------------------------------------------------------------------------------------------- patterns


def _paint(m: Material, base: np.ndarray, p: np.ndarray, n: np.ndarray) -> np.ndarray:
    livery = m.params
    if not isinstance(livery, Livery):
        raise TypeError(f"a paint material needs a Livery as its params, got {type(livery).__name__}")
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    side = np.abs(n[:, 1]) > 0.6
    top = n[:, 2] > 0.5
    out = base
    if livery.gradient is not None:
        g = livery.gradient
        t = np.clip((x - g.x0) / (g.x1 - g.x0), 0.0, 1.0)
        out = _mix(out, g.color, t)
    if livery.two_tone is not None:
        t2 = livery.two_tone
        out = np.where(((z < t2.z) if t2.below else (z > t2.z))[:, None], np.asarray(t2.color), out)
    if livery.checkers is not None:
        c = livery.checkers
        region = top & (x > c.x0)
        cell = (np.floor(x / c.size) + np.floor(y / c.size)) % 2 == 0
        out = np.where((region & cell)[:, None], np.asarray(c.color), out)
    if livery.stripes is not None:
        s = livery.stripes
        ay = np.abs(y)
        on = (np.abs(ay - s.offset) < s.width / 2) & ~side
        out = np.where(on[:, None], np.asarray(s.color), out)
    if livery.band is not None:
        b = livery.band
        on = side & (z > b.z0) & (z < b.z1)
        out = np.where(on[:, None], np.asarray(b.color), out)
    if livery.number is not None:
        d = livery.number
        u = np.where(n[:, 1] > 0, x - d.x, d.x - x)  # read left to right from outside on both sides
        r = np.hypot(u, z - d.z)
        disc = side & (r < d.radius)
        out = np.where(disc[:, None], np.asarray(d.disc_color), out)
        cell = d.radius * 1.1 / 5.0
        width = (4 * len(d.digits) - 1) * cell
        ink = disc & _glyph_ink(DIGIT_BITMAPS[d.digits], (u + width / 2) / cell, (d.z + 2.5 * cell - z) / cell)
        out = np.where(ink[:, None], np.asarray(d.ink_color), out)
    if livery.text is not None:
        t = livery.text
        u = np.where(n[:, 1] > 0, x - t.x, t.x - x)
        ink = side & _glyph_ink(t.glyphs, u / t.cell, (t.z - z) / t.cell)
        out = np.where(ink[:, None], np.asarray(t.color), out)
    return out * (1.0 + 0.05 * smooth_noise(p, livery.waves))[:, None]


def _glass(m: Material, base: np.ndarray, p: np.ndarray, n: np.ndarray) -> np.ndarray:
    # darker towards the bottom of each window: a tint gradient over the cabin height
    t = np.clip((p[:, 2] - m.params["z0"]) / max(m.params["z1"] - m.params["z0"], 1e-6), 0.0, 1.0)
    return base * (0.75 + 0.45 * t)[:, None]


def _nearest_wheel_centre(m: Material, p: np.ndarray) -> np.ndarray:
    """[N, 3] the centre (of ``m.params["centres"]``, [4, 3]) of the wheel each point [N, 3] belongs to: the nearest
    one in the side view (x, z)."""
    centres = np.asarray(m.params["centres"])
    return centres[np.argmin(((p[:, None, [0, 2]] - centres[None, :, [0, 2]]) ** 2).sum(-1), axis=1)]


def _tyre(m: Material, base: np.ndarray, p: np.ndarray, n: np.ndarray) -> np.ndarray:
    c = _nearest_wheel_centre(m, p)
    ang = np.arctan2(p[:, 2] - c[:, 2], p[:, 0] - c[:, 0])
    rim = np.abs(n[:, 1]) < 0.5  # the rolling surface
    tread = rim & (np.sin(ang * m.params["treads"]) > 0.3)
    return np.where(tread[:, None], base * 0.55, base)


def _rim(m: Material, base: np.ndarray, p: np.ndarray, n: np.ndarray) -> np.ndarray:
    c = _nearest_wheel_centre(m, p)
    dx, dz = p[:, 0] - c[:, 0], p[:, 2] - c[:, 2]
    r = np.hypot(dx, dz) / m.params["radius"]
    spoke = np.cos(np.arctan2(dz, dx) * m.params["spokes"]) > m.params["spoke_cut"]
    hole = (r > 0.28) & (r < 0.85) & ~spoke
    out = np.where(hole[:, None], np.asarray(m.params["dark"]), base)
    return np.where((r < 0.14)[:, None], base * 0.7, out)


def _light(m: Material, base: np.ndarray, p: np.ndarray, n: np.ndarray) -> np.ndarray:
    # a bright lens in a darker housing: distance from the light's own centre along the body's width
    yc = m.params["y"]
    r = np.abs(np.abs(p[:, 1]) - yc) / m.params["half_width"]
    return _mix(base, m.params["housing"], np.clip((r - 0.55) * 3.0, 0.0, 1.0))


def _grille(m: Material, base: np.ndarray, p: np.ndarray, n: np.ndarray) -> np.ndarray:
    slat = np.sin(p[:, 2] * m.params["frequency"]) > 0.0
    return np.where(slat[:, None], base * 2.2 + 0.05, base)


def _wood(m: Material, base: np.ndarray, p: np.ndarray, n: np.ndarray) -> np.ndarray:
    q = m.params
    axis = np.asarray(q["axis"], dtype=np.float64)
    rel = p - np.asarray(q["origin"])
    radial = np.linalg.norm(rel - (rel @ axis)[:, None] * axis, axis=1)
    rings = np.sin(2 * np.pi * q["ring_frequency"] * (radial + 0.04 * smooth_noise(p, q["waves"])))
    streak = 0.5 + 0.5 * smooth_noise(p * np.array(q["stretch"]), q["waves"])
    t = np.clip(0.45 * (rings > 0.2) + 0.35 * streak, 0.0, 1.0)
    return _mix(base, q["dark"], t)


def _fabric(m: Material, base: np.ndarray, p: np.ndarray, n: np.ndarray) -> np.ndarray:
    q = m.params
    f = q["weave_frequency"]
    weave = np.sin(p[:, 0] * f) * np.sin(p[:, 1] * f + p[:, 2] * f)
    out = base * (1.0 + 0.12 * weave)[:, None]
    if "plaid" in q:
        pl = q["plaid"]
        s = pl["spacing"]
        on = (np.abs(((p[:, 0] + p[:, 2]) / s) % 1.0 - 0.5) < pl["width"]) | (
            np.abs(((p[:, 1] + p[:, 2]) / s) % 1.0 - 0.5) < pl["width"]
        )
        out = np.where(on[:, None], 0.5 * out + 0.5 * np.asarray(pl["color"]), out)
    return out


_PATTERNS = {
    "paint": _paint,
    "glass": _glass,
    "tyre": _tyre,
    "rim": _rim,
    "light": _light,
    "grille": _grille,
    "wood": _wood,
    "fabric": _fabric,
}


# ------------------------------------------------------------------------------------------------- drawing


@dataclass(frozen=True)
class CarBody:
    """The build-unit sizes of a car body that place its livery."""

    length: float
    width: float
    clearance: float
    """Height of the body's underside above the ground."""
    body_height: float
    x_front: float
    """x of the front end (the car points along +X)."""
    hood: float
    """Length of the hood, back from ``x_front``."""
    door_x: float
    """x of the middle of the doors (where the race number goes)."""


@dataclass(frozen=True)
class Gradient:
    """The paint blends into ``color`` from ``x0`` to ``x1`` along the body."""

    x0: float
    x1: float
    color: Color


@dataclass(frozen=True)
class TwoTone:
    """Everything below (or above) height ``z`` in ``color``."""

    z: float
    below: bool
    color: Color


@dataclass(frozen=True)
class Checkers:
    """A chequered hood: squares of ``size`` on the upward faces in front of ``x0``."""

    x0: float
    size: float
    color: Color


@dataclass(frozen=True)
class Stripes:
    """Racing stripes along the car on the faces that are not sides: centred ``offset`` off the middle."""

    offset: float
    width: float
    color: Color


@dataclass(frozen=True)
class Band:
    """A band along both sides between heights ``z0`` and ``z1``."""

    z0: float
    z1: float
    color: Color


@dataclass(frozen=True)
class RaceNumber:
    """A number (``digits``) in a disc on both doors, centred at (``x``, ``z``)."""

    x: float
    z: float
    radius: float
    digits: List[int]
    disc_color: Color
    ink_color: Color


@dataclass(frozen=True)
class Lettering:
    """A row of text-like ``glyphs`` ([G, 5, 3] bool bitmaps) of ``cell``-sized pixels on both sides."""

    x: float
    z: float
    cell: float
    glyphs: np.ndarray
    color: Color


@dataclass(frozen=True, eq=False)
class Livery:
    """The decoration of one car's paint: a faint colour variation (``waves``) and the features drawn for it (None:
    not drawn). Iterating gives the names of what it holds, as :meth:`as_dict` (the provenance) lists them."""

    waves: np.ndarray
    """[K, 5] the plane waves (:func:`smooth_noise`) of the low-frequency colour variation."""
    gradient: Optional[Gradient] = None
    two_tone: Optional[TwoTone] = None
    checkers: Optional[Checkers] = None
    stripes: Optional[Stripes] = None
    band: Optional[Band] = None
    number: Optional[RaceNumber] = None
    text: Optional[Lettering] = None

    def as_dict(self) -> Dict[str, object]:
        """``{name: value}`` of ``waves`` and each drawn feature (a dict of its fields), in drawing order."""
        out: Dict[str, object] = {}
        for name in self:
            value = getattr(self, name)
            out[name] = value if name == "waves" else {f.name: getattr(value, f.name) for f in fields(value)}
        return out

    def __iter__(self) -> Iterator[str]:
        return (f.name for f in fields(self) if getattr(self, f.name) is not None)


def draw_livery(rng: np.random.Generator, paint: Color, body: CarBody) -> Livery:
    """A random livery for car ``paint`` on a body of the sizes ``body``."""
    length, width, bottom, height = body.length, body.width, body.clearance, body.body_height
    waves = random_waves(rng, 4, (1.0, 4.0))
    gradient = two_tone = checkers = stripes = band = number = text = None
    if rng.random() < 0.25:
        other = _rotate_hue(rng, paint)
        if rng.random() < 0.5:
            gradient = Gradient(x0=-length / 2, x1=length / 2, color=other)
        else:
            gradient = Gradient(x0=length / 2, x1=-length / 2, color=other)
    if rng.random() < 0.35:
        below = bool(rng.random() < 0.6)
        z = bottom + height * (rng.uniform(0.3, 0.55) if below else rng.uniform(0.85, 1.05))
        two_tone = TwoTone(z=z, below=below, color=contrast(rng, paint))
    if rng.random() < 0.12:
        checkers = Checkers(x0=body.x_front - body.hood, size=rng.uniform(0.08, 0.16), color=contrast(rng, paint))
    if rng.random() < 0.3:
        stripes = Stripes(
            offset=rng.choice([0.0, rng.uniform(0.08, 0.2) * width]),
            width=rng.uniform(0.08, 0.16) * width,
            color=contrast(rng, paint),
        )
    if rng.random() < 0.3:
        z0 = bottom + height * rng.uniform(0.35, 0.7)
        band = Band(z0=z0, z1=z0 + height * rng.uniform(0.06, 0.18), color=contrast(rng, paint))
    if rng.random() < 0.4:
        disc = contrast(rng, paint)
        number = RaceNumber(
            x=body.door_x,
            z=bottom + 0.55 * height,
            radius=height * rng.uniform(0.28, 0.4),
            digits=[int(d) for d in rng.integers(0, 10, int(rng.integers(1, 3)))],
            disc_color=disc,
            ink_color=contrast(rng, disc),
        )
    if rng.random() < 0.35:
        cell = height * rng.uniform(0.045, 0.08)
        count = int(rng.integers(4, 9))
        text = Lettering(
            x=-length * rng.uniform(0.1, 0.35),
            z=bottom + height * rng.uniform(0.25, 0.45),
            cell=cell,
            glyphs=rng.random((count, 5, 3)) < 0.55,
            color=contrast(rng, paint),
        )
    return Livery(waves, gradient, two_tone, checkers, stripes, band, number, text)


def _rotate_hue(rng: np.random.Generator, color: Color) -> Color:
    h, s, v = colorsys.rgb_to_hsv(*color)
    return tuple(float(c) for c in colorsys.hsv_to_rgb((h + rng.uniform(0.1, 0.3)) % 1.0, s, min(1.0, v + 0.1)))


def wood_material(rng: np.random.Generator, color: Color, origin: Sequence[float]) -> Material:
    """Wood with growth rings around a random near-horizontal axis through ``origin``."""
    axis = np.array([1.0, rng.uniform(-0.2, 0.2), rng.uniform(-0.1, 0.1)])
    axis /= np.linalg.norm(axis)
    dark = tuple(float(c) * rng.uniform(0.55, 0.75) for c in color)
    stretch = [0.3, 3.0, 3.0]
    params = {
        "axis": axis.tolist(),
        "origin": [float(o) for o in origin],
        "ring_frequency": rng.uniform(12.0, 30.0),
        "dark": dark,
        "stretch": stretch,
        "waves": random_waves(rng, 4, (4.0, 12.0)),
    }
    return Material("wood", color, specular=0.08, shininess=16.0, params=params)


def fabric_material(rng: np.random.Generator, color: Color) -> Material:
    """Woven fabric, sometimes with a plaid in a second colour."""
    params: Dict[str, object] = {"weave_frequency": rng.uniform(90.0, 160.0)}
    if rng.random() < 0.35:
        params["plaid"] = {
            "spacing": rng.uniform(0.06, 0.14),
            "width": rng.uniform(0.06, 0.15),
            "color": contrast(rng, color),
        }
    return Material("fabric", color, specular=0.0, params=params)


def metal_material(color: Color) -> Material:
    """Painted or brushed metal: a sharper highlight and a little environment reflection."""
    return Material("plain", color, specular=0.25, shininess=40.0, reflect=0.08)


def material_table(materials: List[Material]) -> List[Dict[str, object]]:
    """JSON-friendly description of an object's materials."""
    return [m.describe() for m in materials]
