"""``ns-3dae-bench compare`` in convergence mode: when a method's run stops, and the figures at convergence.

Each method trains its equal-budget steps, then on, evaluated every ``eval_every`` steps, until the plateau rule
(:mod:`nerfstudio_3dae.bench.plateau`) says its test-PSNR curve has plateaued or its step cap is hit
(:func:`stop_at_plateau`). Nothing in a run depends on its length (the learning-rate schedules and the latent
method's decoded phase are fixed in steps), so the first ``rgb_steps`` / ``latent_steps`` of these runs are the
equal-budget runs: :func:`budget_prefix` cuts those figures from the same curves.

:func:`summarise_convergence` reports per method the plateau PSNR, the step and clock time at which it was first
reached, whether the curve plateaued (or was still rising when the cap stopped it), and the time ratio at RGB's
plateau − ``margin_db``: seconds RGB needs to reach that PSNR ÷ seconds the latent method needs to reach it (null,
with the reason, when the latent run never does).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Callable, Dict, List, Optional, Tuple

from nerfstudio_3dae.bench.measure import MethodRun
from nerfstudio_3dae.bench.plateau import MIN_WINDOW_EVALS, PlateauRule, plateau, time_to_reach

METHODS = ("rgb", "latent")


def stop_at_plateau(rule: PlateauRule, min_steps: int) -> Callable[[List[Tuple[int, float, float, float]]], bool]:
    """The stop test of a convergence run: after ``min_steps`` (the equal-budget steps), stop once ``rule`` says the
    curve so far has plateaued."""
    return lambda curve: curve[-1][0] >= min_steps and plateau(curve, rule).plateaued


def budget_prefix(run: MethodRun, steps: int) -> MethodRun:
    """``run`` as its first ``steps`` steps: the evaluations up to ``steps`` (the last of them is at ``steps``)."""
    curve = [point for point in run.curve if point[0] <= steps]
    if not curve or curve[-1][0] != steps:
        raise ValueError(f"{run.run_dir}: no evaluation at step {steps} to cut the equal-budget figures at")
    return replace(run, curve=curve)


def summarise_convergence(
    runs: Dict[str, MethodRun],
    rule: PlateauRule,
    caps: Dict[str, int],
    budgets: Dict[str, int],
    margin_db: float,
    num_scenes: int,
) -> Dict:
    """The convergence figures of compare.json from the whole curves of ``runs`` ('rgb' and 'latent')."""
    methods: Dict[str, Dict] = {}
    for name in METHODS:
        verdict = plateau(runs[name].curve, rule)
        methods[name] = {
            **asdict(verdict),
            "time_per_scene_s": verdict.seconds / num_scenes,
            "step_cap": caps[name],
            "cap_hit": not verdict.plateaued and verdict.last_step >= caps[name],
            "equal_budget_steps": budgets[name],
        }
    rgb, latent = methods["rgb"], methods["latent"]
    target = rgb["psnr"] - margin_db
    rgb_t, latent_t = time_to_reach(runs["rgb"].curve, target), time_to_reach(runs["latent"].curve, target)
    reason: Optional[str] = None
    if latent_t is None:
        reason = (
            f"3dae-latent never reached {target:.2f} dB (RGB plateau {rgb['psnr']:.2f} − {margin_db:g} dB): its "
            f"best was {latent['psnr']:.2f} dB in {latent['last_step']} steps ({latent['verdict']})"
        )
    caveats = [
        f"3dae-{name} had not plateaued when it stopped ({methods[name]['verdict']}): its plateau PSNR and time are "
        "a lower bound and a guess"
        for name in METHODS
        if not methods[name]["plateaued"]
    ]
    return {
        "rule": {**asdict(rule), "min_window_evals": MIN_WINDOW_EVALS, "statement": rule.statement()},
        "both_plateaued": rgb["plateaued"] and latent["plateaued"],
        "caveats": caveats,
        "rgb": rgb,
        "latent": latent,
        "psnr_target": target,
        "time_ratio": rgb_t / latent_t if rgb_t is not None and latent_t is not None and latent_t > 0 else None,
        "time_ratio_reason": reason,
        "time_to_target_s": {"rgb": rgb_t, "latent": latent_t},
        "time_per_scene_to_target_s": {
            "rgb": None if rgb_t is None else rgb_t / num_scenes,
            "latent": None if latent_t is None else latent_t / num_scenes,
        },
        "curves": {name: runs[name].curve for name in METHODS},
    }
