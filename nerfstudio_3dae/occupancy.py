"""Per-scene occupancy grids: sampling skips the empty space of each scene.

Every scene keeps a ``G³`` boolean grid over its box ``[-bound, bound]³`` (cell ``(i, j, k)`` spans
``x ∈ [-bound + i·2bound/G, …)``, likewise ``y`` with ``j`` and ``z`` with ``k``). A cell is occupied when the
scene's own density at a random point of the cell exceeds a threshold (one random point per cell and update, as
nerfacc's ``OccGridEstimator`` does for one scene), dilated by ``dilation`` cells so that matter between two update
points is kept, and so that a surface can grow into the cells next to it. The threshold is the density whose opacity
over one coarse sample interval ``δ`` is ``alpha``, ``σ = −ln(1 − alpha) / δ``, or the scene's mean cell density
where that is lower (:func:`occupied_cells`).

The field is queried only at samples inside occupied cells (:func:`decode_masked`); the others get density 0, as
points outside the box always did. A scene's grid is first computed once ``warmup`` training batches held the scene
(a fresh scene's density is near-uniform, and a cell marked empty gets no samples, hence no gradient, until an update
finds density there again); until then every cell counts as occupied.

Pure tensor functions plus :class:`OccupancyGrids`, the per-scene tables (a ``G³``-cell grid packed eight cells a
byte, and int32 counts of visits and updates per scene: 4 KiB + 8 B per scene at G = 32), which live beside the
per-scene planes and are sharded with them.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int, UInt8
from torch import Tensor, nn

from nerfstudio_3dae.transfer import host_to_device

DensityFn = Callable[[Float[Tensor, "S P 3"]], Float[Tensor, "S P 1"]]


def density_threshold(alpha: float, interval: float) -> float:
    """The density ``σ`` whose opacity over an interval of length ``interval`` is ``alpha``: ``−ln(1 − α) / δ``."""
    if not 0.0 < alpha < 1.0 or interval <= 0:
        raise ValueError(f"occupancy threshold needs 0 < alpha < 1 and a positive interval, got {alpha}, {interval}")
    return -math.log1p(-alpha) / interval


def cell_points(
    resolution: int, bound: float, num_scenes: int, jitter: bool, device: torch.device
) -> Float[Tensor, "S G3 3"]:
    """One point in every cell of each of ``num_scenes`` grids: a uniformly random one (``jitter``) or the centre.
    Cell ``(i, j, k)`` is entry ``(i·G + j)·G + k`` of the flattened grid."""
    g = torch.arange(resolution, device=device, dtype=torch.float32)
    i, j, k = torch.meshgrid(g, g, g, indexing="ij")
    corner = torch.stack([i, j, k], dim=-1).reshape(1, -1, 3)  # [1, G³, 3] in cell units
    offset = torch.rand(num_scenes, *corner.shape[1:], device=device) if jitter else torch.full_like(corner, 0.5)
    return (corner + offset) * (2.0 * bound / resolution) - bound


def occupied_cells(
    density: Float[Tensor, "S G3"], resolution: int, threshold: float, dilation: int = 1
) -> Bool[Tensor, "S G G G"]:
    """Cells whose density exceeds the scene's threshold, grown by ``dilation`` cells in every direction
    (26-neighbourhood).

    A scene's threshold is ``threshold`` or, where lower, its mean cell density (as nerfacc's estimator does): while
    a scene's density is still faint everywhere, its densest cells stay occupied. A scene with no cell above its
    threshold (a uniform density) keeps every cell: nothing is known to be empty."""
    per_scene = torch.minimum(density.mean(dim=1, keepdim=True), torch.full_like(density[:, :1], threshold))
    above = density > per_scene
    above |= ~above.any(dim=1, keepdim=True)
    occupied = above.reshape(-1, 1, resolution, resolution, resolution).float()
    if dilation > 0:
        occupied = F.max_pool3d(occupied, kernel_size=2 * dilation + 1, stride=1, padding=dilation)
    return occupied[:, 0] > 0


def pack_cells(grids: Bool[Tensor, "S G G G"]) -> UInt8[Tensor, "S B"]:
    """Grids as bits, eight cells a byte (cell ``c`` is bit ``c % 8`` of byte ``c // 8``; ``B = ⌈G³ / 8⌉``)."""
    flat = grids.reshape(grids.shape[0], -1)
    flat = F.pad(flat.to(torch.uint8), (0, -flat.shape[1] % 8))
    weights = torch.tensor([1 << b for b in range(8)], dtype=torch.int32, device=grids.device)
    return (flat.reshape(flat.shape[0], -1, 8).to(torch.int32) * weights).sum(dim=-1).to(torch.uint8)


def unpack_cells(bits: UInt8[Tensor, "S B"], resolution: int) -> Bool[Tensor, "S G G G"]:
    """The grids of :func:`pack_cells`."""
    shifts = torch.arange(8, device=bits.device)
    flat = (bits[..., None].to(torch.int32) >> shifts) & 1  # [S, B, 8]
    return flat.reshape(bits.shape[0], -1)[:, : resolution**3].bool().reshape(-1, resolution, resolution, resolution)


def lookup(
    bits: UInt8[Tensor, "K B"], points: Float[Tensor, "K P 3"], bound: float, resolution: int
) -> Bool[Tensor, "K P"]:
    """Whether each point of camera ``k`` lies in an occupied cell of its packed grid ``bits[k]``; False outside
    the box."""
    inside = (points.abs() <= bound).all(dim=-1)
    cell = ((points + bound) * (resolution / (2.0 * bound))).long().clamp(0, resolution - 1)  # [K, P, 3]
    flat = (cell * _cell_strides(resolution, cell.device)).sum(dim=-1)  # (i·G + j)·G + k
    byte = bits.gather(1, flat >> 3)  # uint8, shifted as int64 below
    return inside & (((byte >> (flat & 7)) & 1) > 0)


def unpacked_cells(bits: UInt8[Tensor, "K B"], resolution: int) -> Float[Tensor, "K G3 1"]:
    """Packed grids (:func:`pack_cells`) as 1.0 (occupied) or 0.0 per cell, cell ``c`` at row ``c`` (one lookup of
    each byte's eight bits in a table)."""
    cells = F.embedding(bits.long(), _byte_bits(bits.device))  # [K, B, 8]
    cells = cells.view(bits.shape[0], -1, 1)
    return cells if cells.shape[1] == resolution**3 else cells[:, : resolution**3]


@functools.lru_cache(maxsize=8)
def _byte_bits(device: torch.device) -> Float[Tensor, "256 8"]:
    """Row ``b``: the bits of the byte ``b``, lowest first, as floats."""
    return ((torch.arange(256)[:, None] >> torch.arange(8)) & 1).float().to(device)


def keep_samples(
    cells: Float[Tensor, "K G3 1"], points: Float[Tensor, "K P 3"], bound: float, resolution: int
) -> Float[Tensor, "K P 1"]:
    """:func:`lookup` as the factor a sample's density is multiplied by: 1.0 where a point of camera ``k`` lies in an
    occupied cell of ``cells[k]`` (:func:`unpacked_cells`), else 0.0 (outside the box too)."""
    inside = (points.abs() <= bound).all(dim=-1, keepdim=True)
    cell = ((points + bound) * (resolution / (2.0 * bound))).long().clamp(0, resolution - 1)  # [K, P, 3]
    flat = (cell * _cell_strides(resolution, cell.device)).sum(dim=-1, keepdim=True)  # (i·G + j)·G + k
    return cells.gather(1, flat) * inside


@functools.lru_cache(maxsize=8)
def _cell_strides(resolution: int, device: torch.device) -> Int[Tensor, "3"]:
    """``(G², G, 1)``: a cell's ``(i, j, k)`` times these, summed, is its entry in the flattened grid (made once per
    resolution and device: a training step looks cells up twice)."""
    return torch.tensor([resolution * resolution, resolution, 1], dtype=torch.long, device=device)


DENSE_SHARE = 0.9
"""Above this share of selected samples :func:`decode_masked` evaluates every sample and zeroes the others: moving
nearly all of them costs more than the few evaluations it would save."""


def largest_count(mask: Bool[Tensor, "K P"]) -> int:
    """The most selected entries of any row of ``mask`` (read on the host: one sync)."""
    return int(mask.sum(dim=1).max()) if mask.numel() else 0


def compact(mask: Bool[Tensor, "K P"], q: Optional[int] = None) -> Int[Tensor, "K Q"]:
    """The selected entries of each row of ``mask`` moved to the front of it, in order, rows cut to the largest count
    ``Q`` (``q``, or :func:`largest_count`): ``index[k, j]`` is the ``j``-th selected entry of row ``k``, or ``P``
    (one past the row) in the padding of rows with fewer. A running count places each entry (no sort); only the
    padding shares an index."""
    k, p = mask.shape
    q = largest_count(mask) if q is None else q
    slot = torch.where(mask, mask.cumsum(dim=1) - 1, q)  # unselected entries go to a spare column q
    source = torch.arange(p, device=mask.device).expand(k, p)
    index = torch.full((k, q + 1), p, dtype=torch.long, device=mask.device).scatter_(1, slot, source)[:, :q]
    return index


def decode_masked(
    decode: Callable[[Float[Tensor, "K Q 3"]], Tuple[Float[Tensor, "K Q 1"], Float[Tensor, "K Q c"]]],
    points: Float[Tensor, "K P 3"],
    mask: Bool[Tensor, "K P"],
    compact_points: bool = True,
) -> Tuple[Float[Tensor, "K P 1"], Float[Tensor, "K P c"]]:
    """``decode`` evaluated where ``mask`` holds: density and values are 0 elsewhere (gradients flow to the selected
    points only).

    With ``compact_points`` each camera's selected points are moved to the front of its row (:func:`compact`: one
    host read of their largest count), so one batched ``decode`` call serves every camera, and the results are
    scattered back; the padding of rows with fewer points is evaluated at the row's last point and dropped. Where more
    than :data:`DENSE_SHARE` of the samples are selected, or without ``compact_points`` (no host read: small queries,
    where the evaluations saved are worth less than waiting for the device), every sample is evaluated and the others
    zeroed."""
    k, p = mask.shape
    q = largest_count(mask) if compact_points else p
    if q > DENSE_SHARE * p:
        density, values = decode(points)
        keep = mask[..., None].to(density.dtype)
        return density * keep, values * keep
    index = compact(mask, q)
    gathered = points.gather(1, index.clamp(max=p - 1)[..., None].expand(-1, -1, 3))
    density_q, values_q = decode(gathered)
    c = values_q.shape[-1]
    # padding writes to the spare column p, which is dropped: no real entry is written twice
    density = density_q.new_zeros(k, p + 1, 1).scatter(1, index[..., None], density_q)[:, :p]
    values = values_q.new_zeros(k, p + 1, c).scatter(1, index[..., None].expand(-1, -1, c), values_q)[:, :p]
    return density, values


class OccupancyGrids(nn.Module):
    """Occupancy grids of ``num_scenes`` scenes (rows, like the per-scene planes) and how often each was trained.

    Buffers: ``bits [N, ⌈G³/8⌉]`` uint8, the grids packed eight cells a byte (all occupied until a scene's first
    update; :attr:`grid` unpacks them), ``visits [N]`` int32 (training batches that held the scene) and
    ``updates [N]`` int32 (times its grid was computed). :meth:`mask` says which samples the field must evaluate;
    :meth:`update` recomputes grids from density; :meth:`train_batch` decides when.
    """

    scene_tables = ("bits", "visits", "updates")
    """The buffers with one row per scene (all of them)."""

    def __init__(
        self,
        num_scenes: int,
        resolution: int,
        bound: float,
        threshold: float,
        warmup: int,
        update_share: float = 0.1,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        if resolution < 1 or not 0 < update_share <= 1 or warmup < 0 or dilation < 0:
            raise ValueError(
                f"occupancy grids need resolution >= 1, 0 < update_share <= 1, warmup >= 0 and dilation >= 0, got "
                f"{resolution}, {update_share}, {warmup}, {dilation}"
            )
        self.update_share = update_share
        self.budget = 0.0
        """Field evaluations the updates may still spend (not saved: it sets the cadence of :meth:`train_batch`)."""
        self.resolution = resolution
        self.bound = bound
        self.threshold = threshold
        self.warmup = warmup
        self.dilation = dilation
        full = torch.ones(num_scenes, resolution, resolution, resolution, dtype=torch.bool)
        self.register_buffer("bits", pack_cells(full))
        self.register_buffer("visits", torch.zeros(num_scenes, dtype=torch.int32))
        self.register_buffer("updates", torch.zeros(num_scenes, dtype=torch.int32))
        self._visits: List[int] = [0] * num_scenes
        """Host copy of ``visits`` (the training step decides from it without reading the device)."""
        self._updates: List[int] = [0] * num_scenes
        """Host copy of ``updates``."""
        self.register_load_state_dict_post_hook(lambda module, keys: module.refresh_counts())

    def bytes_per_scene(self) -> int:
        """Bytes of one scene's rows of the buffers (the grid and its two counts)."""
        return sum(b[0].numel() * b.element_size() for b in (self.bits, self.visits, self.updates))

    def mask(self, rows: Int[Tensor, "K"], points: Float[Tensor, "K P 3"]) -> Bool[Tensor, "K P"]:
        """Samples to evaluate: inside the box and in an occupied cell of the camera's scene (until a scene's first
        update, every cell is)."""
        return lookup(self.bits[rows], points, self.bound, self.resolution)

    def cells(self, rows: Int[Tensor, "K"]) -> Float[Tensor, "K G3 1"]:
        """The grids of ``rows`` unpacked, 1.0 per occupied cell (:func:`keep_samples` looks samples up in them)."""
        return unpacked_cells(self.bits[rows], self.resolution)

    def visit(self, rows: Sequence[int], rows_device: Int[Tensor, "U"]) -> None:
        """Count one training batch for each of the distinct scene rows ``rows`` (host ints; ``rows_device`` the same
        on the grids' device)."""
        self.visits.index_add_(0, rows_device, torch.ones_like(rows_device, dtype=self.visits.dtype))
        for row in rows:
            self._visits[row] += 1

    @torch.no_grad()
    def update(self, rows: Int[Tensor, "U"], density_fn: DensityFn) -> None:
        """Recompute the grids of the distinct scenes ``rows`` from ``density_fn`` (points ``[U, G³, 3]`` of each
        scene → its density), at one random point per cell."""
        points = cell_points(self.resolution, self.bound, rows.shape[0], True, self.bits.device)
        density = density_fn(points)[..., 0]
        self.bits[rows] = pack_cells(occupied_cells(density, self.resolution, self.threshold, self.dilation))
        self.updates.index_add_(0, rows, torch.ones_like(rows, dtype=self.updates.dtype))

    @property
    def grid(self) -> Bool[Tensor, "N G G G"]:
        """The grids, unpacked."""
        return unpack_cells(self.bits, self.resolution)

    def train_batch(
        self,
        rows: Sequence[int],
        rows_device: Int[Tensor, "U"],
        density_of: Callable[[Union[Tensor, slice]], DensityFn],
        dense_points: int,
    ) -> None:
        """Bookkeeping of one training batch: ``rows`` are its distinct scene rows (host ints; ``rows_device`` the
        same rows on the grids' device) and ``dense_points`` the samples its render has before any skipping. Counts
        the visits and updates grids (``density_of(positions)`` gives the density function of the scenes at those
        positions of ``rows``).

        Only scenes past their warm-up are updated (before it their grids are not computed: a fresh run pays
        nothing). A scene's first update comes at the batch that ends its warm-up. Later updates, of all the batch's
        warm scenes, cost ``G³`` evaluations per scene, paid from a budget that every batch fills with
        ``update_share`` of its dense samples: they cost about that share of the rendering whatever the image size
        (every batch for 128² RGB views, every ~13th for their 16² latents). First updates are paid from the same
        budget, which may go into debt for them (one grid per scene and run).

        The decisions are taken on the host, from a copy of the visit and update counts kept beside the buffers (the
        step never waits for the device); the copy is refreshed whenever a state dict is loaded."""
        if len(set(rows)) != len(rows):
            raise ValueError(f"OccupancyGrids.train_batch needs distinct rows, got {list(rows)}")
        self.visit(rows, rows_device)
        cost = len(rows) * self.resolution**3
        self.budget = min(self.budget + self.update_share * dense_points, float(cost))
        warm = [i for i, row in enumerate(rows) if self._visits[row] >= self.warmup]
        if self.budget < cost:  # only the first updates are due
            warm = [i for i in warm if self._updates[rows[i]] == 0]
        if not warm:
            return
        self.budget -= len(warm) * self.resolution**3
        if len(warm) == len(rows):
            self.update(rows_device, density_of(slice(None)))
        else:
            which = host_to_device(warm, rows_device.device)
            self.update(rows_device[which], density_of(which))
        for i in warm:
            self._updates[rows[i]] += 1

    def make_update_due(self) -> None:
        """Fill the update budget: the next training batch updates the grids of its warm scenes, as one batch in every
        few does in a run (``ns-3dae-bench step-profile`` profiles such a batch)."""
        self.budget = float(len(self._updates) * self.resolution**3)

    def refresh_counts(self) -> None:
        """Copy the visit and update counts to the host (one read; after a state dict was loaded)."""
        self._visits = [int(v) for v in self.visits.tolist()]
        self._updates = [int(v) for v in self.updates.tolist()]

    def occupied_fraction(self) -> Float[Tensor, "N"]:
        """Share of occupied cells of each scene."""
        grid = self.grid
        return grid.reshape(grid.shape[0], -1).float().mean(dim=1)
