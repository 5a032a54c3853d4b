"""The plateau rule of ``ns-3dae-bench compare``: has a test-PSNR curve stopped rising?

The rule, stated (:func:`plateau`): after ``S`` training steps the *window* is the last ``W`` = max(``window_fraction``
· S, ``min_window_steps``) of them, the evaluations at steps > S − W. The minimum keeps the rule from judging a short
run on a few noisy evaluations (at 400 steps, 20 % is 80 steps: two evaluations 50 steps apart, which a curve
wobbling by ±0.2 dB passes as flat). The curve has **plateaued** when its best PSNR rose by less
than ``min_gain_db`` over the window: best PSNR of all evaluations − best PSNR of those before the window
< ``min_gain_db``. Telling needs at least one evaluation before the window and :data:`MIN_WINDOW_EVALS` inside it
(one lucky or unlucky evaluation must not decide); a shorter curve is *too short to tell*, which counts as not
plateaued. The **plateau PSNR** is the best PSNR of the curve, and it was **reached** at the first evaluation within
``min_gain_db`` of it (that evaluation's step and clock seconds).

A pure function of the recorded curve: the compare applies it after every evaluation (convergence mode: stop when it
says plateaued, or at the step cap) and to the finished curves it reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

MIN_WINDOW_EVALS = 2
"""Evaluations the window must hold before the rule can call a curve plateaued."""

Curve = Sequence[Tuple[float, ...]]
"""Evaluations in step order: (step, clock seconds, test PSNR, ...); anything after the PSNR is ignored."""


@dataclass(frozen=True)
class PlateauRule:
    """The parameters of the plateau rule (see the module)."""

    window_fraction: float = 0.2
    """The window: this last fraction of the steps trained so far."""
    min_gain_db: float = 0.1
    """Plateaued when the best PSNR rose by less than this (dB) over the window; also the tolerance within which the
    plateau PSNR counts as reached."""
    min_window_steps: int = 200
    """The window is at least this many steps (0: the fraction alone)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.window_fraction < 1.0:
            raise ValueError(f"--plateau-window must be in (0, 1), got {self.window_fraction}")
        if not self.min_gain_db > 0.0:
            raise ValueError(f"--plateau-min-gain-db must be > 0 dB, got {self.min_gain_db}")
        if not self.min_window_steps >= 0:
            raise ValueError(f"--plateau-min-window-steps must be >= 0, got {self.min_window_steps}")

    def window_start(self, last_step: int) -> float:
        """The window after ``last_step`` steps holds the evaluations at steps above this."""
        return last_step - max(self.window_fraction * last_step, float(self.min_window_steps))

    def statement(self) -> str:
        """The rule in one sentence, with its parameters."""
        return (
            f"plateaued when the best test PSNR rose by less than {self.min_gain_db:g} dB over the last "
            f"{100 * self.window_fraction:g} % of the steps trained, or the last {self.min_window_steps} steps if "
            f"that is more (at least {MIN_WINDOW_EVALS} evaluations in that window and one before it); the plateau "
            f"PSNR is the best, reached at the first evaluation within {self.min_gain_db:g} dB of it"
        )


@dataclass(frozen=True)
class Plateau:
    """What the rule says of one curve."""

    plateaued: bool
    """The best PSNR rose by less than the rule's min gain over the window (False when too short to tell)."""
    psnr: float
    """The best test PSNR of the curve (the plateau PSNR when plateaued)."""
    step: int
    """Step of the first evaluation within the rule's min gain of ``psnr``."""
    seconds: float
    """Clock seconds at that evaluation."""
    gain_db: Optional[float]
    """Best PSNR gained over the window (None: too short to tell)."""
    window_start: float
    """The window holds the evaluations at steps above this."""
    last_step: int
    """Steps trained (the curve's last evaluation)."""
    verdict: str
    """The verdict in words: 'plateaued: …', 'still rising: +x dB over the last window (steps a–b)' or 'too short
    to tell: …'."""


def plateau(curve: Curve, rule: PlateauRule) -> Plateau:
    """The plateau rule (module docstring) on ``curve``: plateaued?, plateau PSNR, and when it was first reached."""
    if not curve:
        raise ValueError("the plateau rule needs at least one evaluation")
    steps = [int(point[0]) for point in curve]
    if steps != sorted(steps) or len(set(steps)) != len(steps):
        raise ValueError(f"a curve's evaluations must be in increasing step order, got steps {steps}")
    psnrs = [float(point[2]) for point in curve]
    best = max(psnrs)
    first = next(i for i, p in enumerate(psnrs) if p >= best - rule.min_gain_db)
    last = steps[-1]
    start = rule.window_start(last)
    before = [p for s, p in zip(steps, psnrs, strict=True) if s <= start]
    inside = [p for s, p in zip(steps, psnrs, strict=True) if s > start]
    span = f"steps {start:.0f}–{last}"
    if not before or len(inside) < MIN_WINDOW_EVALS:
        gain = None
        verdict = (
            f"too short to tell: {len(inside)} evaluation(s) in the last window ({span}) and {len(before)} before "
            f"it; the rule needs {MIN_WINDOW_EVALS} and 1"
        )
    else:
        gain = max(0.0, best - max(before))
        state = "plateaued" if gain < rule.min_gain_db else "still rising"
        verdict = f"{state}: +{gain:.2f} dB over the last window ({span})"
    plateaued = gain is not None and gain < rule.min_gain_db
    return Plateau(plateaued, best, steps[first], float(curve[first][1]), gain, start, last, verdict)


def time_to_reach(curve: Curve, target: float) -> Optional[float]:
    """Clock seconds at the first evaluation whose PSNR reaches ``target`` (None if none does)."""
    return next((float(point[1]) for point in curve if point[2] >= target), None)
