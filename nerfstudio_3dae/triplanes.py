"""Tri-Plane bank with shared macro bases, and the shared decoder MLP.

Every scene ``s`` is a Tri-Plane ``T_s = concat(micro_s, macro_s)`` of shape ``[3, C, R, R]`` with
``C = C_mic + C_mac``. ``micro_s`` is scene specific; ``macro_s = sum_m W[s, m] * B_m + b_s`` mixes
``M`` shared bases ``B`` with per-scene weights ``W`` and a per-scene scalar bias ``b``.

Plane / coordinate convention (see :func:`project_to_planes`)::

    plane 0 = xy: grid_sample x (width, column index) <- world x, grid_sample y (height, row index) <- world y
    plane 1 = xz: grid_sample x (width, column index) <- world x, grid_sample y (height, row index) <- world z
    plane 2 = yz: grid_sample x (width, column index) <- world y, grid_sample y (height, row index) <- world z

so ``planes[s, 1, :, i, j]`` is the texel at world ``x = centre(j)``, ``z = centre(i)`` for any ``y``.
Sampling uses ``align_corners=False``: the plane covers the world box ``[-1, 1]`` edge to edge, and
texel ``k`` (row or column) has its centre at ``-1 + (2k + 1) / R``. Within half a texel of the box
border, bilinear interpolation blends with the zero padding; points outside ``[-1, 1]^3`` get zero
features (and :func:`decode_points` then zeroes their density by default).
"""

import functools
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

WIDENED_SIGMOID_EPS = 1e-3
"""MipNeRF's widened sigmoid margin: outputs lie in ``[-eps, 1 + eps]`` before the range mapping."""


def compose_planes(
    micro: Float[Tensor, "S 3 Cmic R R"],
    weights: Float[Tensor, "S M"],
    bias: Float[Tensor, "S"],
    bases: Float[Tensor, "M 3 Cmac R R"],
) -> Float[Tensor, "S 3 C R R"]:
    """Mix the shared bases into each scene's macro planes and append them to the micro planes.

    ``macro[s] = sum_m weights[s, m] * bases[m] + bias[s]``; the result is
    ``concat(micro, macro)`` along the channel axis (micro channels first), ``C = Cmic + Cmac``.
    With ``M = 0`` the macro planes are the bias alone.
    """
    macro = torch.addmm(bias[:, None], weights, bases.view(bases.shape[0], -1))  # [S, 3 * Cmac * R * R]
    return torch.cat([micro, macro.view(weights.shape[0], *bases.shape[1:])], dim=2)


def project_to_planes(points: Float[Tensor, "*bs 3"]) -> Float[Tensor, "3 *bs 2"]:
    """Project points onto the xy, xz and yz planes, as ``grid_sample`` (x, y) coordinates.

    Output ``[p, ..., 0]`` is grid_sample's x (the width axis, i.e. the column index of a
    ``[.., H, W]`` plane) and ``[p, ..., 1]`` its y (height axis, row index):

    - plane 0 (xy): (x, y)  -> column <- world x, row <- world y
    - plane 1 (xz): (x, z)  -> column <- world x, row <- world z
    - plane 2 (yz): (y, z)  -> column <- world y, row <- world z
    """
    x, y, z = points.unbind(dim=-1)
    return torch.stack([torch.stack([x, y], dim=-1), torch.stack([x, z], dim=-1), torch.stack([y, z], dim=-1)], dim=0)


def sample_triplanes(
    planes: Float[Tensor, "S 3 C R R"],
    points: Float[Tensor, "S P 3"],
) -> Float[Tensor, "S P C"]:
    """Bilinearly sample each scene's three planes at its points and sum over the planes.

    One ``grid_sample`` call serves all scenes and planes (``align_corners=False``, zero padding):
    scene ``s`` samples only ``planes[s]`` with ``points[s]``. Points are world coordinates in
    ``[-1, 1]^3``; see the module docstring for the texel-centre convention.
    """
    num_scenes, _, channels, res_h, res_w = planes.shape
    num_points = points.shape[1]
    coords = project_to_planes(points)  # [3, S, P, 2]
    coords = coords.permute(1, 0, 2, 3).reshape(num_scenes * 3, 1, num_points, 2)  # [S*3, 1, P, 2]
    flat = planes.reshape(num_scenes * 3, channels, res_h, res_w)  # [S*3, C, R, R]
    feats = F.grid_sample(flat, coords, mode="bilinear", padding_mode="zeros", align_corners=False)  # [S*3, C, 1, P]
    feats = feats.reshape(num_scenes, 3, channels, num_points).sum(dim=1)  # [S, C, P]
    return feats.permute(0, 2, 1)  # [S, P, C]


def inside_box(points: Float[Tensor, "*bs 3"], bound: float = 1.0) -> Bool[Tensor, "*bs"]:
    """True where a point lies in the closed box ``[-bound, bound]^3``."""
    return (points.abs() <= bound).all(dim=-1)


def tv_loss(planes: Float[Tensor, "*bs R R"]) -> Float[Tensor, ""]:
    """Total variation of planes: mean squared difference of vertical plus of horizontal neighbours (one autograd
    node: :class:`_TotalVariation`)."""
    return _TotalVariation.apply(planes)


class _TotalVariation(torch.autograd.Function):
    """``mean(Δ_rows²) + mean(Δ_cols²)`` with its gradient written out: a texel gets ``2 g / n`` times its difference
    to each neighbour (``n`` the number of differences of that direction); autograd would record a dozen nodes."""

    @staticmethod
    def forward(ctx, planes: Tensor) -> Tensor:  # type: ignore[override]
        d_rows, d_cols = torch.diff(planes, dim=-2), torch.diff(planes, dim=-1)
        ctx.save_for_backward(d_rows, d_cols)
        return d_rows.square().mean() + d_cols.square().mean()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        d_rows, d_cols = ctx.saved_tensors
        # ∂/∂x_i of Σ (x_{i+1} − x_i)² is 2 (d_{i−1} − d_i), with d = 0 beyond the ends: −2 · diff of the padded d
        rows = torch.diff(F.pad(d_rows, (0, 0, 1, 1)), dim=-2)
        cols = torch.diff(F.pad(d_cols, (1, 1)), dim=-1)
        return torch.addcmul(rows * (grad * (-2.0 / d_rows.numel())), cols, grad * (-2.0 / d_cols.numel()))


def gather_rows(table: Tensor, ids: Int[Tensor, "S"], sparse: bool, distinct_sorted: bool = False) -> Tensor:
    """``table[ids]``; with ``sparse`` the gradient w.r.t. ``table`` is a row-sparse COO tensor (O(S) work)
    instead of a dense tensor of the whole table (O(rows of the table)): :func:`sparse_rows`."""
    if not sparse or not table.requires_grad or not torch.is_grad_enabled():
        return table.index_select(0, ids)
    return sparse_rows((table,), ids, distinct_sorted)[0]


def sparse_rows(tables: Sequence[Tensor], ids: Int[Tensor, "S"], distinct_sorted: bool = False) -> List[Tensor]:
    """``table[ids]`` of each table, as a leaf of the autograd graph: once a backward pass has accumulated the leaf's
    gradient, it becomes the table's row-sparse COO gradient (one sparse dimension, the rows ``ids``; the rest of
    the table's dimensions dense: the layout of ``F.embedding(ids, table, sparse=True)``), added to the gradient the
    table already has, as torch accumulates. ``distinct_sorted``: the caller vouches that ``ids`` are distinct and
    increasing, so the gradient is marked coalesced (coalescing one on a GPU reads its size back to the host).

    The tables themselves are not in the graph: ``backward()`` fills their ``.grad``, ``torch.autograd.grad`` cannot
    be asked for them. A gather that autograd records and a sparse gradient that autograd accumulates dispatch some
    fifteen operators a table; this, three."""
    index = ids[None] if ids.dtype == torch.long else ids.long()[None]
    rows = []
    for table in tables:
        with torch.no_grad():
            leaf = table.index_select(0, ids)
        leaf.requires_grad_()
        leaf.register_post_accumulate_grad_hook(functools.partial(_to_table, table, index, distinct_sorted))
        rows.append(leaf)
    return rows


def _to_table(table: Tensor, index: Int[Tensor, "1 S"], coalesced: bool, leaf: Tensor) -> None:
    """The gradient of the rows ``leaf`` (gathered at ``index``) as ``table``'s sparse gradient, accumulated."""
    grad = torch.ops.aten._sparse_coo_tensor_unsafe(index, leaf.grad, table.shape, is_coalesced=coalesced)
    leaf.grad = None
    table.grad = grad if table.grad is None else table.grad + grad


def widened_sigmoid(x: Tensor, eps: float = WIDENED_SIGMOID_EPS) -> Tensor:
    """MipNeRF's ``sigmoid(x) * (1 + 2 eps) - eps``: reaches 0 and 1 with finite logits."""
    return torch.sigmoid(x) * (1.0 + 2.0 * eps) - eps


class TriplaneBank(nn.Module):
    """Tri-Planes of ``num_scenes`` scenes: per-scene micro planes plus mixed shared macro bases.

    Parameters: ``micro [N, 3, Cmic, R, R]``, ``bases [M, 3, Cmac, R, R]``, ``weights [N, M]``,
    ``bias [N]``. Initialisation: micro and bases ~ N(0, ``plane_std``); ``weights`` ~
    N(0, 1/sqrt(M)) so that a scene's mixed macro planes have the same per-texel std as its micro
    planes (sum of M products, variance M * (1/M) * std^2) and scenes start different from each
    other; ``bias`` = 0.

    ``M = 0`` or ``Cmac = 0`` means no macro planes (micro only, ``C = Cmic``); ``Cmic = 0`` means
    macro only. At least one of the two must give channels.

    With ``sparse`` :meth:`planes` gives ``micro``, ``weights`` and ``bias`` row-sparse COO gradients
    (one sparse dimension: the scenes of the batch), so a step costs the same for any number of scenes; optimise
    them with :class:`~nerfstudio_3dae.sparse_adam.RowSparseAdam` (``torch.optim.Adam`` rejects sparse
    gradients). ``bases`` are shared and always get dense gradients. ``sparse=False`` (default, what
    ``torch.optim.Adam`` needs) gives dense gradients of the whole tables that are zero outside the batch.

    ``row_seeds`` (one per row) makes each row's initial micro planes and weights a function of its seed alone, so a
    table that holds a subset of the scenes (one rank of a sharded run) starts exactly like those rows of the whole
    table. Without them the rows are drawn from torch's global generator.
    """

    scene_tables = ("micro", "weights", "bias")
    """The parameters with one row per scene (the rest, ``bases``, are shared by every scene)."""

    def __init__(
        self,
        num_scenes: int,
        resolution: int = 64,
        micro_channels: int = 10,
        macro_channels: int = 22,
        num_bases: int = 50,
        plane_std: float = 0.1,
        sparse: bool = False,
        row_seeds: Optional[Sequence[int]] = None,
    ) -> None:
        super().__init__()
        if num_bases == 0 or macro_channels == 0:
            num_bases, macro_channels = 0, 0
        if micro_channels + macro_channels <= 0:
            raise ValueError("TriplaneBank needs micro or macro channels")
        self.num_scenes = num_scenes
        self.resolution = resolution
        self.micro_channels = micro_channels
        self.macro_channels = macro_channels
        self.num_bases = num_bases
        self.sparse = sparse
        res = resolution
        weight_std = 1.0 / math.sqrt(num_bases) if num_bases > 0 else 0.0
        if row_seeds is None:  # global generator, in the order micro, bases, weights
            micro = torch.randn(num_scenes, 3, micro_channels, res, res)
            bases = torch.randn(num_bases, 3, macro_channels, res, res)
            weights = torch.randn(num_scenes, num_bases)
        else:
            if len(row_seeds) != num_scenes:
                raise ValueError(f"TriplaneBank: {len(row_seeds)} row seeds for {num_scenes} scenes")
            micro, weights = _seeded_rows(row_seeds, (3, micro_channels, res, res), (num_bases,))
            bases = torch.randn(num_bases, 3, macro_channels, res, res)
        self.micro = nn.Parameter(micro * plane_std)
        self.bases = nn.Parameter(bases * plane_std)
        self.weights = nn.Parameter(weights * weight_std)
        self.bias = nn.Parameter(torch.zeros(num_scenes))

    @property
    def num_channels(self) -> int:
        """Channels of a composed Tri-Plane, ``C = Cmic + Cmac`` (the decoder's input size)."""
        return self.micro_channels + self.macro_channels

    def planes(self, scene_ids: Int[Tensor, "S"], distinct_sorted: bool = False) -> Float[Tensor, "S 3 C R R"]:
        """Composed Tri-Planes of the given scenes only (gradients reach only their rows; sparse ones with
        ``sparse``, marked coalesced when the caller vouches that ``scene_ids`` are ``distinct_sorted``)."""
        tables = (self.micro,) if self.num_bases == 0 else (self.micro, self.weights, self.bias)
        if self.sparse and torch.is_grad_enabled() and all(t.requires_grad for t in tables):
            rows = sparse_rows(tables, scene_ids, distinct_sorted)
        else:
            rows = [table.index_select(0, scene_ids) for table in tables]
        if self.num_bases == 0:
            return rows[0]  # [S, 3, Cmic, R, R]
        return compose_planes(*rows, self.bases)

    def forward(self, scene_ids: Int[Tensor, "S"]) -> Float[Tensor, "S 3 C R R"]:
        return self.planes(scene_ids)


def _seeded_rows(row_seeds: Sequence[int], *row_shapes: Tuple[int, ...]) -> Tuple[Tensor, ...]:
    """Standard normal tables ``[len(row_seeds), *shape]``, one per shape; row i is drawn from ``row_seeds[i]``."""
    tables = [torch.empty(len(row_seeds), *shape) for shape in row_shapes]
    generator = torch.Generator()
    for i, seed in enumerate(row_seeds):
        generator.manual_seed(int(seed))
        for table in tables:
            table[i] = torch.randn(table.shape[1:], generator=generator)
    return tuple(tables)


class TriplaneMLP(nn.Module):
    """Shared decoder ``C -> hidden -> softplus -> 1 + c``.

    ``density = softplus(raw_density - 1)``; features = widened sigmoid (eps = 1e-3) mapped affinely
    from ``[0, 1]`` to ``output_range`` (``(0, 1)`` for RGB, ``(-1, 1)`` for normalised latents), so
    they lie in ``[lo - eps (hi - lo), hi + eps (hi - lo)]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 4,
        hidden_dim: int = 64,
        output_range: Tuple[float, float] = (0.0, 1.0),
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.output_range = (float(output_range[0]), float(output_range[1]))
        self.hidden = nn.Linear(in_channels, hidden_dim)
        self.head = nn.Linear(hidden_dim, 1 + out_channels)

    def forward(self, features: Float[Tensor, "*bs C"]) -> Tuple[Float[Tensor, "*bs 1"], Float[Tensor, "*bs c"]]:
        raw = self.head(F.softplus(self.hidden(features)))  # [..., 1 + c]
        density = F.softplus(raw[..., :1] - 1.0)
        lo, hi = self.output_range
        values = lo + (hi - lo) * widened_sigmoid(raw[..., 1:])
        return density, values


def decode_points(
    planes: Float[Tensor, "S 3 C R R"],
    mlp: TriplaneMLP,
    points: Float[Tensor, "S P 3"],
    zero_outside: bool = True,
) -> Tuple[Float[Tensor, "S P 1"], Float[Tensor, "S P c"]]:
    """Sample the Tri-Planes and decode: density and output features per point.

    With ``zero_outside`` the density of points outside ``[-1, 1]^3`` is set to 0 (their zero
    features would otherwise decode to a small ``softplus(mlp(0) - 1)``).
    """
    density, values = mlp(sample_triplanes(planes, points))
    if zero_outside:
        density = density * inside_box(points)[..., None].to(density.dtype)
    return density, values
