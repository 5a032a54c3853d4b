"""Skipping empty space (per-scene occupancy grids) against evaluating every sample, both methods, side by side.

One run of :func:`run_skipping` trains the same generated scenes four times, with the preset's sizes and schedules
(:mod:`nerfstudio_3dae.bench.presets`): ``3dae-rgb`` and ``3dae-latent`` (the embedded autoencoder, decoder fine-tune
included), each once without grids (``occupancy_resolution 0``: every sample inside the box is evaluated) and once
with them. Each run is set up and stepped as ``ns-train`` steps it, the two runs of a method one step each in turn
(:func:`~nerfstudio_3dae.bench.measure.train_interleaved`), so that the other jobs of a shared machine slow both
alike. The figures, per method: training seconds and their ratio (without / with), samples the field
evaluated per training step, final test PSNR of both and the occupied share of
the grid cells at the end.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

from nerfstudio_3dae.bench.compare import Selection, configure_method
from nerfstudio_3dae.bench.measure import MethodRun, train_interleaved
from nerfstudio_3dae.bench.presets import PRESETS, ComparePreset
from nerfstudio_3dae.bench.scaling import describe_device, resolve_device
from nerfstudio_3dae.data.synth.generate import generate_dataset
from nerfstudio_3dae.method_configs import latent_method, rgb_method


def _training_seconds(run: MethodRun) -> float:
    return sum(run.phase_s.values())


def summarise_pair(without: MethodRun, with_grids: MethodRun) -> Dict:
    """Ratios and figures of one method trained without and with occupancy grids."""
    seconds = {"without": _training_seconds(without), "with": _training_seconds(with_grids)}
    return {
        "training_s": seconds,
        "time_ratio": seconds["without"] / seconds["with"],
        "points_per_step": {"without": without.points_per_step, "with": with_grids.points_per_step},
        "points_ratio": without.points_per_step / max(with_grids.points_per_step, 1e-9),
        "psnr": {"without": without.curve[-1][2], "with": with_grids.curve[-1][2]},
        "psnr_change_db": with_grids.curve[-1][2] - without.curve[-1][2],
        "render_ratio": without.render_s / with_grids.render_s,
        "occupied_fraction": with_grids.occupied_fraction,
        "curves": {"without": without.curve, "with": with_grids.curve},
    }


def skipping_preset(
    preset_name: str,
    occupancy_resolution: int,
    methods: Sequence[str],
    rgb_steps: Optional[int] = None,
    latent_steps: Optional[int] = None,
    occupancy_warmup: Optional[int] = None,
) -> ComparePreset:
    """The preset :func:`run_skipping` trains with (``rgb_steps`` / ``latent_steps`` shorten or lengthen its
    schedules; the decoder fine-tune starts at the same share of the latent schedule), after checking the options:
    a ValueError names the option that is wrong."""
    if preset_name not in PRESETS:
        raise ValueError(f"--preset: unknown preset {preset_name!r}; choose from {sorted(PRESETS)}")
    if occupancy_resolution < 1:
        raise ValueError(f"--occupancy-resolution must be >= 1 (the grids being measured), got {occupancy_resolution}")
    unknown = sorted(set(methods) - {"rgb", "latent"})
    if unknown or not methods:
        raise ValueError(f"--methods: unknown method(s) {unknown or 'none given'}; choose from 'rgb' and 'latent'")
    for name, steps in (("--rgb-steps", rgb_steps), ("--latent-steps", latent_steps)):
        if steps is not None and steps < 1:
            raise ValueError(f"{name} must be >= 1, got {steps}")
    if occupancy_warmup is not None and occupancy_warmup < 0:
        raise ValueError(f"--occupancy-warmup must be >= 0, got {occupancy_warmup}")
    preset = PRESETS[preset_name]
    if rgb_steps is not None:
        preset = replace(preset, rgb_steps=rgb_steps)
    if latent_steps is not None:
        share = preset.finetune_start / preset.latent_steps
        preset = replace(preset, latent_steps=latent_steps, finetune_start=round(latent_steps * share))
    return preset


def run_skipping(
    preset_name: str,
    output: Path,
    occupancy_resolution: int = 32,
    seed: int = 0,
    log: Callable[[str], None] = print,
    methods: Sequence[str] = ("rgb", "latent"),
    rgb_steps: Optional[int] = None,
    latent_steps: Optional[int] = None,
    occupancy_warmup: Optional[int] = None,
) -> Dict:
    """Generate the preset's scenes and train each method without and with grids; return the figures (the options
    as :func:`skipping_preset` takes them; ``occupancy_warmup``: training batches a scene's grid waits for, default
    the model's)."""
    preset = skipping_preset(preset_name, occupancy_resolution, methods, rgb_steps, latent_steps, occupancy_warmup)
    path = generate_dataset(
        output / "data",
        preset.scenes,
        preset.views_per_scene,
        preset.image_size,
        seed=seed,
        test_views=preset.test_views,
        workers=1,
        progress=False,
        overwrite=True,
    )
    data, runs = Selection(path), output / "runs"

    def on_eval(method: str, step: int, seconds: float, psnr: float) -> None:
        log(f"  {method:<16} step {step:>6}  {seconds:8.1f} s on the clock  test PSNR {psnr:6.2f} dB")

    result: Dict = {
        "preset": preset_name,
        "device": describe_device(resolve_device("auto")),
        "occupancy_resolution": occupancy_resolution,
        "settings": asdict(preset),
    }
    for method in methods:
        configs = []
        for label, resolution in (("without", 0), ("with", occupancy_resolution)):
            if method == "rgb":
                config = configure_method(rgb_method(), data, runs, preset, preset.rgb_steps, f"rgb-{label}", False)
            else:
                config = configure_method(latent_method(), data, runs, preset, preset.latent_steps, f"latent-{label}")
                config.pipeline.model.finetune_start = preset.finetune_start
            config.pipeline.model.occupancy_resolution = resolution
            if occupancy_warmup is not None:
                config.pipeline.model.occupancy_warmup = occupancy_warmup
            configs.append(config)
        log(f"3dae-{method} without and with occupancy grids, {configs[0].max_num_iterations} steps, interleaved")
        result["occupancy_warmup"] = configs[1].pipeline.model.occupancy_warmup
        without, with_grids = train_interleaved(configs, preset, on_eval)
        result[method] = summarise_pair(without, with_grids)
    return result


def format_report(result: Dict) -> str:
    """A markdown table of :func:`run_skipping`'s figures."""
    lines = [
        f"Skipping empty space, preset `{result['preset']}` on {result['device']} "
        f"(grids of {result['occupancy_resolution']}³ cells, used once {result['occupancy_warmup']} batches held a "
        "scene)",
        "",
        "| method | training s without / with | time ratio | samples per step without / with | PSNR without / "
        "with | occupied cells |",
        "|---|---|---|---|---|---|",
    ]
    for method in ("rgb", "latent"):
        if method not in result:
            continue
        r = result[method]
        occupied = "–" if r["occupied_fraction"] is None else f"{r['occupied_fraction']:.1%}"
        lines.append(
            f"| 3dae-{method} | {r['training_s']['without']:.1f} / {r['training_s']['with']:.1f} | "
            f"×{r['time_ratio']:.2f} | {r['points_per_step']['without']:.0f} / {r['points_per_step']['with']:.0f} "
            f"(×{r['points_ratio']:.2f}) | {r['psnr']['without']:.2f} / {r['psnr']['with']:.2f} dB | {occupied} |"
        )
    return "\n".join(lines)
