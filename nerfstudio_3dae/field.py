"""Tri-plane scenes rendered from nerfstudio cameras: the bank, the shared MLP and the volume renderer together.

``TriplaneField.render`` takes a batch of cameras (any mix of scenes) and returns whole images at the cameras'
resolution divided by ``downscale`` (the autoencoder factor in latent space, 1 in RGB): one ray per output pixel.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Dict, Literal, Optional, Sequence, Tuple, Union

import torch
from jaxtyping import Float, Int
from nerfstudio.cameras.cameras import Cameras
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from nerfstudio_3dae.backends import decide_backend
from nerfstudio_3dae.occupancy import OccupancyGrids, decode_masked, keep_samples
from nerfstudio_3dae.rays import BatchLayout, batch_layout, camera_rays, distinct, scene_runs
from nerfstudio_3dae.rendering import render_rays
from nerfstudio_3dae.transfer import host_to_device
from nerfstudio_3dae.triplane_query import query_triplanes
from nerfstudio_3dae.triplanes import TriplaneBank, TriplaneMLP, decode_points


@dataclass
class RenderSettings:
    """How rays are sampled: built by the model from its config (``near``, ``far``, ``num_coarse_samples``,
    ``num_fine_samples``, ``backend``, ...: the defaults live there) and its scene box (``scene_bound``)."""

    near: float
    """Near plane of every ray."""
    far: float
    """Far plane of every ray."""
    num_coarse: int
    """Stratified samples per ray (the model's ``num_coarse_samples``)."""
    num_fine: int
    """Importance samples per ray (the model's ``num_fine_samples``)."""
    scene_bound: float
    """Points outside ``[-scene_bound, scene_bound]^3`` get density 0 (the largest |coordinate| of the scene box)."""
    backend: Literal["auto", "torch", "nerfacc"] = "auto"
    """Sampling/compositing backend: nerfacc on CUDA ('auto'), or pure torch."""
    compile: bool = False
    """Training renders run through ``torch.compile`` (CUDA graphs on a GPU: ``mode="reduce-overhead"``) where their
    shape is static: the torch backend, no compaction, no checkpointed chunks. Evaluation renders stay eager."""
    compile_backend: str = "inductor"
    """``torch.compile``'s backend ('aot_eager' captures the same graph without generating code: the tests' choice)."""
    compact_min_points: int = 2**18
    """With occupancy grids, a query of at least this many samples evaluates only the occupied ones (moved together:
    one host read of their count); a smaller one evaluates all and zeroes the empty (no host read)."""


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
        self._compiled: Optional[Callable[..., Dict[str, Tensor]]] = None
        """:meth:`_render_rays` through ``torch.compile``, made at the first render that uses it."""

    def render(
        self,
        cameras: Cameras,
        rows: Union[Sequence[int], Int[Tensor, "K"]],
        downscale: int,
        background: Float[Tensor, "c"],
        deterministic: bool,
        max_rays: Optional[int] = None,
        checkpoint_rays: Optional[int] = None,
        pixel_shift: Optional[Float[Tensor, "K 2"]] = None,
        layout: Optional[BatchLayout] = None,
    ) -> Dict[str, Tensor]:
        """Render K cameras (flat) of (possibly different) scenes: ``features [K, c, h, w]``, ``depth`` and
        ``accumulation`` ``[K, 1, h, w]``, and the composed ``planes [U, 3, C, R, R]`` of the U distinct scenes (for
        regularisers).

        ``rows`` are the bank rows of the cameras (host ints; a tensor is read back). ``layout`` is what the host knows
        of the batch (:mod:`nerfstudio_3dae.rays`; read from the cameras when not given). ``pixel_shift`` ``[K, 2]``
        moves each camera's rays by that many image pixels (jittered training rays).

        Cameras that come scene after scene, as many of each (a training batch), are rendered as one query per scene
        (the scene's planes sampled at the points of all its cameras: no planes copied per camera); others as one
        query per camera.

        ``max_rays`` renders in chunks of pixels (all K cameras together) to bound memory; meant for renders without
        gradients. ``checkpoint_rays`` bounds the memory of renders that autograd records (training): the rays are
        rendered in chunks of at most this many, and each chunk keeps only its inputs and outputs for the backward
        pass, which recomputes the chunk (activation checkpointing, with the chunk's random samples replayed), so the
        saved activations are those of one chunk whatever the image size and sample count. The gradients are those of
        the unchunked render; the price is a second forward pass of the field during backward. A batch that fits in
        one chunk renders as one graph.

        Nothing is read back from the device unless the occupancy grids compact a large query
        (:attr:`RenderSettings.compact_min_points`)."""
        if isinstance(rows, Tensor):
            rows = [int(r) for r in rows.reshape(-1).tolist()]
        layout = layout if layout is not None else batch_layout(cameras, default_scene=0)
        origins, directions, (h, w) = camera_rays(cameras, layout, downscale, pixel_shift)  # [K, hw, 3]
        k, n = origins.shape[:2]
        unique, inverse = distinct(rows)
        unique_rows = host_to_device(unique, origins.device)
        scene_planes = self.bank.planes(unique_rows, distinct_sorted=True)  # [U, 3, C, R, R]
        runs = scene_runs(inverse)
        if runs == tuple(range(len(unique))):  # the rays of each scene's cameras, one after the other, are its query
            planes, query_rows = scene_planes, unique_rows
        elif runs is not None:  # the same, the scenes in another order than their rows
            run_of = host_to_device(runs, origins.device)
            planes, query_rows = scene_planes.index_select(0, run_of), unique_rows.index_select(0, run_of)
        else:  # a query per camera
            camera_of = host_to_device(inverse, origins.device)
            planes, query_rows = scene_planes.index_select(0, camera_of), unique_rows.index_select(0, camera_of)
        if self.occupancy is not None and self.training and torch.is_grad_enabled():
            dense = k * n * (self.settings.num_coarse + self.settings.num_fine)
            self.occupancy.train_batch(
                unique, unique_rows, lambda positions: self._density_fn(scene_planes[positions].detach()), dense
            )
        g = planes.shape[0]  # queries, and the rays of each
        rays = k * n // g
        backend = decide_backend(self.settings.backend, origins.device).backend
        recorded = bool(checkpoint_rays) and torch.is_grad_enabled()
        limit = checkpoint_rays if recorded else max_rays
        step = rays if not limit else max(1, limit // g)
        if step >= rays:  # one chunk: the rays flat, query after query
            parts = [(origins.reshape(-1, 3), directions.reshape(-1, 3))]
        else:  # chunks of the rays of every query
            grouped = [x.reshape(g, rays, 3) for x in (origins, directions)]
            parts = [tuple(x[:, i : i + step].reshape(-1, 3) for x in grouped) for i in range(0, rays, step)]
        render_chunk = functools.partial(self._render_rays, count_points=True)
        if recorded and step < rays:
            render_chunk = functools.partial(checkpoint, render_chunk, use_reentrant=False)
        elif self._compiles(backend, k * n):
            render_chunk = self._compiled_renderer(origins.device)
            self.points_decoded += k * n * (self.settings.num_coarse + self.settings.num_fine)
        chunks = [render_chunk(planes, query_rows, o, d, background, deterministic, backend) for o, d in parts]

        def image(key: str) -> Tensor:  # chunks of [g * m, c] -> [K, c, h, w]
            if len(chunks) == 1:
                joined = chunks[0][key]
            else:
                joined = torch.cat([c[key].view(g, -1, c[key].shape[-1]) for c in chunks], dim=1)
            return joined.reshape(k, h, w, -1).permute(0, 3, 1, 2)

        return {
            "features": image("features"),
            "depth": image("depth"),
            "accumulation": image("accumulation"),
            "planes": scene_planes,
        }

    def _compiles(self, backend: str, rays: int) -> bool:
        """Whether this render goes through the compiled renderer: asked for, a training render, the torch backend,
        and no query compacted (static shapes)."""
        s = self.settings
        static = self.occupancy is None or rays * max(s.num_coarse, s.num_fine) < s.compact_min_points
        return s.compile and self.training and torch.is_grad_enabled() and backend == "torch" and static

    def _compiled_renderer(self, device: torch.device) -> Callable[..., Dict[str, Tensor]]:
        """:meth:`_render_rays` compiled once (``fullgraph``: nothing in it may read the device back); on CUDA with
        CUDA graphs, a new graph step begun for every render."""
        cuda = torch.device(device).type == "cuda"
        if self._compiled is None:
            mode = "reduce-overhead" if cuda else None
            self._compiled = torch.compile(
                self._render_rays, fullgraph=True, dynamic=False, mode=mode, backend=self.settings.compile_backend
            )
        if cuda:
            torch.compiler.cudagraph_mark_step_begin()
        return self._compiled

    def _density_fn(self, planes: Float[Tensor, "U 3 C R R"]):
        """Points ``[U, P, 3]`` of these scenes → their density ``[U, P, 1]`` (0 outside the box)."""
        return lambda points: decode_points(planes, self.mlp, points, True)[0]

    def _decode(
        self,
        planes: Float[Tensor, "K 3 C R R"],
        points: Float[Tensor, "K P 3"],
        keep: Optional[Tensor],
        count_points: bool,
    ) -> Tuple[Float[Tensor, "K P 1"], Float[Tensor, "K P c"]]:
        if count_points:  # not in the compiled renderer (its render counts them): a changing attribute would recompile
            self.points_decoded += points.shape[0] * points.shape[1]
        return query_triplanes(planes, points, self.mlp, keep)

    def _render_rays(
        self,
        planes: Float[Tensor, "K 3 C R R"],
        rows: Int[Tensor, "K"],
        origins: Float[Tensor, "K*m 3"],
        directions: Float[Tensor, "K*m 3"],
        background: Float[Tensor, "c"],
        deterministic: bool,
        backend: Literal["torch", "nerfacc"],
        count_points: bool = False,
    ) -> Dict[str, Tensor]:
        """Render ``K`` queries of ``m`` rays each (the rays flat, query after query), query ``k`` of the scene of
        ``planes[k]`` and grid row ``rows[k]`` (a query is one camera, or all the cameras of a scene): ``features``,
        ``depth`` and ``accumulation`` ``[K * m, ·]``."""
        s = self.settings
        k = planes.shape[0]
        m = origins.shape[0] // k

        grids = self.occupancy
        cells = None if grids is None else grids.cells(rows)  # [K, G³, 1], unpacked once for both passes

        def field_fn(points: Float[Tensor, "R S 3"]) -> Tuple[Tensor, Tensor]:
            num_samples = points.shape[1]  # rays are query-major: R = K * m
            flat = points.reshape(k, m * num_samples, 3)
            if cells is None:  # the box alone
                keep = (flat.abs() <= s.scene_bound).all(dim=-1, keepdim=True)
            else:
                keep = keep_samples(cells, flat, grids.bound, grids.resolution)
            if cells is not None and flat.shape[0] * flat.shape[1] >= s.compact_min_points:
                decode = functools.partial(self._decode, planes, keep=None, count_points=count_points)
                density, values = decode_masked(decode, flat, keep[..., 0] > 0, True)
            else:  # every sample evaluated, the density of those not kept zeroed (no host read)
                density, values = self._decode(planes, flat, keep, count_points)
            return density.reshape(k * m, num_samples, 1), values.reshape(k * m, num_samples, -1)

        out = render_rays(
            origins,
            directions,
            field_fn,
            near=s.near,
            far=s.far,
            num_coarse=s.num_coarse,
            num_fine=s.num_fine,
            background=background,
            deterministic=deterministic,
            backend=backend,
            box_bound=None,  # field_fn zeroes the density outside the box (and in empty cells)
        )
        return {key: out[key] for key in ("features", "depth", "accumulation")}  # [K * m, c], rays query-major
