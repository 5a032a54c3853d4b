"""Effective per-scene memory, counted as the paper counts it.

A scene's own parameters (its micro planes, mixing weights ``W_s`` and bias ``b_s``) plus the parameters every scene
shares (bases, MLP and the whole autoencoder) divided by the number of scenes ``N`` that share them. With the
paper's sizes and the 84 M-parameter SD VAE this gives its ×1.79 (−44 %) at N = 1000 against RGB Tri-Planes; a
small autoencoder amortises much sooner. "With Adam state" adds the two Adam moments of every parameter the method
optimises (per-scene tables, bases, MLP, a fine-tuned decoder); a frozen encoder has none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence

SCENE_COUNTS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
"""N of the effective-memory curve."""

REFERENCE_N = 1000
"""N of ``effective_memory_ratio`` (the paper's headline figure)."""

ADAM_MOMENTS = 2
"""Floats of optimiser state per optimised parameter (Adam's first and second moments)."""


@dataclass(frozen=True)
class ParameterCounts:
    """Parameters of one method's model, split the way the paper's accounting needs."""

    per_scene: int
    """Parameters of one scene: its rows of the per-scene tables."""
    shared_trained: int
    """Shared parameters the method optimises (bases, MLP, a fine-tuned decoder)."""
    shared_frozen: int = 0
    """Shared parameters it only uses (a frozen encoder)."""

    def effective(self, num_scenes: int, adam: bool = False) -> float:
        """Parameters (+ Adam moments with ``adam``) per scene when ``num_scenes`` scenes share the shared ones."""
        if num_scenes < 1:
            raise ValueError(f"effective memory needs at least one scene, got N = {num_scenes}")
        state = 1 + ADAM_MOMENTS if adam else 1
        return self.per_scene * state + (self.shared_trained * state + self.shared_frozen) / num_scenes


def parameter_counts(model) -> ParameterCounts:
    """:class:`ParameterCounts` of a 3dae model (``TriplaneModel`` or its latent subclass) in this process."""
    bank = model.field.bank
    tables = [bank.micro, bank.weights, bank.bias]
    rows = max(bank.micro.shape[0], 1)
    table_ids = {id(t) for t in tables}
    optimised = {id(p) for params in model.get_param_groups().values() for p in params}
    shared = [p for p in model.parameters() if id(p) not in table_ids]
    return ParameterCounts(
        per_scene=sum(t.numel() for t in tables) // rows,
        shared_trained=sum(p.numel() for p in shared if id(p) in optimised),
        shared_frozen=sum(p.numel() for p in shared if id(p) not in optimised),
    )


def effective_memory(rgb: ParameterCounts, latent: ParameterCounts, counts: Sequence[int] = SCENE_COUNTS) -> Dict:
    """The curve (RGB and latent per-scene parameters and their ratio, without and with Adam state, for each N)
    and ``ratio`` / ``ratio_with_adam`` at :data:`REFERENCE_N`."""
    counts = sorted(set(counts) | {REFERENCE_N})
    curve: Dict[str, Dict[str, list]] = {}
    for label, adam in (("params", False), ("with_adam", True)):
        r = [rgb.effective(n, adam) for n in counts]
        lat = [latent.effective(n, adam) for n in counts]
        curve[label] = {"rgb": r, "latent": lat, "ratio": [a / b for a, b in zip(r, lat, strict=True)]}
    at = counts.index(REFERENCE_N)
    return {
        "counts": counts,
        "reference_n": REFERENCE_N,
        "ratio": curve["params"]["ratio"][at],
        "ratio_with_adam": curve["with_adam"]["ratio"][at],
        "parameters": {"rgb": rgb.__dict__, "latent": latent.__dict__},
        **curve,
    }
