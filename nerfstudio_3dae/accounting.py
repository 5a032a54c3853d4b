"""What a 3dae model keeps resident: bytes per scene and shared bytes, parameters with their Adam state.

Used by the pipeline (logged at start-up) and by the benchmarks (``ns-3dae-bench compare``), so both report the same
figure. The paper's parameter-only "effective per-scene memory" is :mod:`nerfstudio_3dae.bench.memory`.
"""

from __future__ import annotations

from typing import Tuple

ADAM_COPIES = 3
"""A trained float is resident three times: the value and Adam's two moments."""
ROW_STEP_BYTES = 8
"""Row-sparse Adam keeps one int64 step count per row of a per-scene table."""


def memory_report(model) -> Tuple[int, int]:
    """``(bytes per scene, shared bytes)`` of a 3dae model (``TriplaneModel`` or its latent subclass) in this process.

    Per scene: its rows of the per-scene tables (micro planes, mixing weights and bias), each value with its two Adam
    moments, plus one step count per row, and its occupancy grid and counts where the model has grids. Shared:
    every other trainable parameter with its Adam moments (in a multi-process run, this process's replica of the
    shared parts); frozen parameters (a frozen encoder) count 0.
    """
    bank = model.field.bank
    scene_tensors = [getattr(bank, name) for name in bank.scene_tables]  # what the bank says is per scene
    rows = max(bank.micro.shape[0], 1)
    per_scene = sum(ADAM_COPIES * t.numel() * t.element_size() + ROW_STEP_BYTES * t.shape[0] for t in scene_tensors)
    grids = model.field.occupancy
    if grids is not None:  # per-scene buffers, not trained: stored once
        per_scene += grids.bytes_per_scene() * rows
    scene_ids = {id(t) for t in scene_tensors}
    shared = sum(
        ADAM_COPIES * p.numel() * p.element_size()
        for p in model.parameters()
        if p.requires_grad and id(p) not in scene_ids
    )
    return per_scene // rows, shared
