"""The compiled renderer (``--pipeline.model.compile-renderer``) renders and differentiates what the eager one does.

On the CPU the graph capture runs with ``aot_eager`` (the same graph, no code generated: seconds) and once with
inductor (code generated and compiled: about half a minute); CUDA graphs themselves need a GPU (scripts/gpu_check.sh).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from nerfstudio.cameras.cameras import Cameras

from nerfstudio_3dae.field import RenderSettings, TriplaneField
from nerfstudio_3dae.occupancy import OccupancyGrids
from nerfstudio_3dae.triplanes import TriplaneBank, TriplaneMLP


def field_pair(backend: str):
    """Two identical fields, the second compiling its training renders."""
    fields = []
    for compile_ in (False, True):
        torch.manual_seed(0)
        bank = TriplaneBank(3, 16, 4, 4, 5, sparse=True)
        mlp = TriplaneMLP(bank.num_channels, 4, 16, (-1.0, 1.0))
        grids = OccupancyGrids(3, 8, 1.0, threshold=0.5, warmup=0, update_share=1.0)
        settings = RenderSettings(0.5, 2.1, 8, 8, 1.0, "torch", compile=compile_, compile_backend=backend)
        fields.append(TriplaneField(bank, mlp, settings, grids).train())
    return fields


def cameras(count: int) -> Cameras:
    c2w = torch.eye(4)[:3].repeat(count, 1, 1)
    c2w[:, 2, 3] = 1.6
    return Cameras(camera_to_worlds=c2w, fx=12.0, fy=12.0, cx=4.0, cy=4.0, width=8, height=8)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_the_compiled_renderer_renders_and_learns_like_eager(backend: str, one_thread):
    eager, compiled = field_pair(backend)
    results = []
    for field in (eager, compiled):
        for _ in range(2):  # the second step reuses the graph; its grids were updated by the first
            out = field.render(cameras(4), [0, 2, 2, 1], 1, torch.zeros(4), deterministic=True)
            loss = out["features"].square().mean() + out["depth"].mean()
            loss.backward()
        results.append((out, {n: p.grad.to_dense() for n, p in field.named_parameters()}, field.points_decoded))
    assert compiled._compiled is not None and eager._compiled is None
    (out_e, grads_e, points_e), (out_c, grads_c, points_c) = results
    for key in ("features", "depth", "accumulation", "planes"):
        torch.testing.assert_close(out_c[key], out_e[key], atol=1e-5, rtol=1e-4)
    for name, grad in grads_e.items():
        torch.testing.assert_close(grads_c[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    assert points_c == points_e == 2 * 4 * 64 * 16  # the compiled render counts its (dense) samples


def test_evaluation_and_compacted_renders_stay_eager():
    _, compiled = field_pair("aot_eager")
    with torch.no_grad():
        compiled.render(cameras(1), [0], 1, torch.zeros(4), deterministic=True)
    assert compiled._compiled is None
    compiled.settings = dataclasses.replace(compiled.settings, compact_min_points=16)  # every query compacted
    compiled.render(cameras(2), [0, 1], 1, torch.zeros(4), deterministic=True)
    assert compiled._compiled is None
