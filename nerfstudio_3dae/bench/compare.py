"""Latent tri-planes (``3dae-latent``) against the paper's baseline, RGB Tri-Planes (``3dae-rgb``), on the same scenes.

One run of :func:`run_compare`:

1. the data: with ``data``, two disjoint selections of any 3dae-scenes dataset (``stage1_scenes`` and the compared
   ``scenes``); without, two sets of procedural cars (``stage1`` scenes and ``N`` new ``scenes``, other seeds);
2. **stage 1**: ``3dae-autoencoder`` on the stage-1 scenes (from ``autoencoder``, the embedded weights by default),
   which exports a 3D-aware autoencoder and bases; its wall time is the cost that ``N`` scenes share;
3. **RGB**: ``3dae-rgb`` trains the ``N`` scenes at full resolution: RGB Tri-Planes, 32 scene-specific channels per
   plane, no bases (optionally also the ablation: the latent method's micro/macro bank rendered in RGB);
4. **latent**: ``3dae-latent`` trains the same ``N`` scenes in the stage-1 latent space (latents encoded into a fresh
   cache, so encoding is paid), then fine-tunes the decoder.

Each method is the registered nerfstudio method config with the preset's sizes, set up and stepped exactly as
``ns-train`` steps it (training callbacks, then ``Trainer.train_iteration``). The clock counts set-up (image decoding
and, for the latent method, encoding) and training steps; every ``eval_every`` steps the clock stops while all test
views are rendered and scored (decoded RGB for the latent method). The figures (:func:`summarise`):

* time per scene to reach the target PSNR (the RGB run's final test PSNR − ``target_margin_db``) and their ratio;
* final test PSNR / SSIM of both;
* per-scene memory: parameters + optimiser state of one scene (what stays resident per scene), and the autograd
  activations a training step saves per scene of its batch (tensors kept for backward: device-independent);
* effective per-scene memory, the paper's accounting (:mod:`nerfstudio_3dae.bench.memory`): a scene's parameters
  + the shared ones (bases, MLP, the whole autoencoder) / N, for N = 1 … 10 000, with and without Adam state;
* time to render one ``render_size``² view (the latent method: a latent image and its decoding);
* stage-1 time amortised over 1 … 1000 scenes: the "effective per-scene" cost of the latent method;
* the plateau rule's verdict on each curve (:mod:`nerfstudio_3dae.bench.plateau`): had it stopped rising?

In **convergence mode** (``--mode convergence``, the ``paper50`` preset) the RGB and latent runs go on past their
equal-budget steps until their test PSNR plateaus or their step cap, and compare.json leads with the figures at
convergence (:mod:`nerfstudio_3dae.bench.convergence`); the figures above become the second row, cut from the same
curves at the equal-budget steps.

The seconds are those of ``clock`` (:mod:`nerfstudio_3dae.bench.measure`: the process's CPU seconds on the CPU, wall
seconds on CUDA, by default). Each finished stage (stage 1, RGB, latent, ablation) writes its figures to
``runs/<stage>.measured.json``; with ``resume`` a stage whose file is there, made with the same settings, is not run
again, so a compare stopped part-way (a session's end, a crash) goes on at the stage it was in. The settings hold
fingerprints of the autoencoder's files and of the data (:mod:`nerfstudio_3dae.bench.fingerprint`), so new weights
or an edited dataset under the same names run the stages again.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Tuple

import torch

from nerfstudio_3dae.autoencoder_source import RUN_EXPORT
from nerfstudio_3dae.bench.convergence import budget_prefix, stop_at_plateau, summarise_convergence
from nerfstudio_3dae.bench.fingerprint import compare_fingerprints
from nerfstudio_3dae.bench.measure import (
    CLOCK_NAMES,
    Clock,
    MethodRun,
    default_clock,
    method_run_from_dict,
    read_clock,
    seed_like_ns_train,
    train_and_measure,
)
from nerfstudio_3dae.bench.memory import effective_memory
from nerfstudio_3dae.bench.plateau import plateau, time_to_reach
from nerfstudio_3dae.bench.presets import PRESETS, ComparePreset
from nerfstudio_3dae.bench.scaling import describe_device, resolve_device
from nerfstudio_3dae.data.dataparser import parse_scene_selection
from nerfstudio_3dae.data.layout import DatasetError, read_scene_names
from nerfstudio_3dae.data.synth.generate import generate_dataset
from nerfstudio_3dae.method_configs import RGB_BANK_ABLATION, autoencoder_method, latent_method, rgb_method


@dataclass(frozen=True)
class Selection:
    """Where the scenes of a comparison come from."""

    data: Path
    """A 3dae-scenes dataset root."""
    scenes: str = ":"
    """Its scenes to use (a --scenes spec)."""
    downscale_factor: int = 1
    """The dataparser's downscale_factor."""


def configure_method(
    config, data: Selection, out: Path, preset: ComparePreset, steps: int, name: str, bases: bool = True
):
    """``config`` with the preset's sizes on ``data``; ``bases=False`` keeps the model's own channels and no bases
    (RGB Tri-Planes)."""
    config.pipeline.datamanager.data = data.data
    config.pipeline.datamanager.dataparser.scenes = data.scenes
    config.pipeline.datamanager.dataparser.downscale_factor = data.downscale_factor
    config.output_dir = out
    config.experiment_name = name
    config.timestamp = "bench"
    config.vis = "tensorboard"
    config.max_num_iterations = steps
    config.steps_per_eval_image = config.steps_per_eval_all_images = config.steps_per_save = 10**9
    config.logging.local_writer.enable = False
    config.pipeline.datamanager.scenes_per_step = preset.batch_for(config.method_name)
    config.pipeline.datamanager.latent_cache_dir = out / "latent-cache" / name
    model = config.pipeline.model
    model.resolution = preset.triplane_resolution
    if bases:
        model.num_bases = preset.num_bases
    model.num_coarse_samples = model.num_fine_samples = preset.samples
    return config


def summarise(
    preset_name: str,
    preset: ComparePreset,
    stage1_s: float,
    rgb: MethodRun,
    latent: MethodRun,
    device: str,
    target_margin_db: float,
    num_scenes: Optional[int] = None,
    ablation: Optional[MethodRun] = None,
    source: Optional[Dict] = None,
) -> Dict:
    """The compare.json figures of the curves of ``rgb`` and ``latent`` as they are (``num_scenes``: N, the preset's
    by default; ``ablation``: the micro/macro bank in RGB, a third run; ``source``: where the scenes came from);
    ``plateau`` is the plateau rule's verdict on each curve (did it stop rising before its last step?)."""
    n = num_scenes or preset.scenes
    runs = {"rgb": rgb, "latent": latent}
    psnr_rgb, ssim_rgb = rgb.curve[-1][2], rgb.curve[-1][3]
    psnr_latent, ssim_latent = latent.curve[-1][2], latent.curve[-1][3]
    target = psnr_rgb - target_margin_db
    rgb_t, latent_t = time_to_reach(rgb.curve, target), time_to_reach(latent.curve, target)
    rgb_per_scene = rgb_t / n if rgb_t is not None else None
    latent_per_scene = latent_t / n if latent_t is not None else None
    latent_full = latent.curve[-1][1] / n  # the whole latent schedule, per scene
    # a PSNR both runs reach (the lower of their best): how fast each gets there, even when the target is missed
    common = min(max(p for _, _, p, _ in rgb.curve), max(p for _, _, p, _ in latent.curve))
    rgb_common, latent_common = time_to_reach(rgb.curve, common), time_to_reach(latent.curve, common)
    counts = sorted({1, 10, 100, 1000, n})
    result = {
        "preset": preset_name,
        "device": device,
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "settings": {**asdict(preset), "scenes": n},
        "source": source or {"data": "generated"},
        "baseline": "RGB Tri-Planes (3dae-rgb: 32 scene-specific channels per plane, no bases)",
        "psnr_target": target,
        "time_ratio": rgb_per_scene / latent_per_scene if rgb_per_scene and latent_per_scene else None,
        "latent_reached_target": latent_t is not None,
        "common_psnr": common,
        "time_ratio_at_common_psnr": rgb_common / latent_common if rgb_common and latent_common else None,
        "time_per_scene_s": {"rgb": rgb_per_scene, "latent": latent_per_scene},
        "full_schedule_time_per_scene_s": {"rgb": rgb.curve[-1][1] / n, "latent": latent_full},
        "memory_ratio": rgb.bytes_per_scene / latent.bytes_per_scene,
        "bytes_per_scene": {"rgb": rgb.bytes_per_scene, "latent": latent.bytes_per_scene},
        "shared_bytes": {"rgb": rgb.shared_bytes, "latent": latent.shared_bytes},
        "activation_memory_ratio": rgb.activation_bytes_per_scene / latent.activation_bytes_per_scene,
        "activation_bytes_per_scene": {
            "rgb": rgb.activation_bytes_per_scene,
            "latent": latent.activation_bytes_per_scene,
        },
        "render_ratio": rgb.render_s / latent.render_s,
        "render_time_s": {"rgb": rgb.render_s, "latent": latent.render_s, "size": preset.render_size},
        "psnr_rgb": psnr_rgb,
        "psnr_latent": psnr_latent,
        "best_psnr_latent": max(p for _, _, p, _ in latent.curve),
        "autoencoded_psnr": latent.autoencoded_psnr,
        "ssim_rgb": ssim_rgb,
        "ssim_latent": ssim_latent,
        "stage1_time_s": stage1_s,
        "effective_time_per_scene_s": {
            str(k): {
                "rgb": rgb_per_scene,
                "latent": None if latent_per_scene is None else latent_per_scene + stage1_s / k,
                "latent_full_schedule": latent_full + stage1_s / k,
            }
            for k in counts
        },  # fmt: skip
        "profile_s": {
            "rgb": {"setup": rgb.setup_s, **rgb.phase_s},
            "latent": {"setup": latent.setup_s, **latent.phase_s},
        },
        "curves": {"rgb": rgb.curve, "latent": latent.curve},
        "plateau": {name: asdict(plateau(run.curve, preset.plateau_rule())) for name, run in runs.items()},
        "runs": {"rgb": rgb.run_dir, "latent": latent.run_dir},
    }
    if rgb.parameters is not None and latent.parameters is not None:
        memory = effective_memory(rgb.parameters, latent.parameters)
        result["effective_memory_ratio"] = memory["ratio"]
        result["effective_memory_ratio_with_adam"] = memory["ratio_with_adam"]
        result["effective_memory"] = memory
    if ablation is not None:
        result["ablation"] = {
            "method": "3dae-rgb with the latent method's micro/macro bank (" + ", ".join(
                f"{k} {v}" for k, v in {**RGB_BANK_ABLATION, "num_bases": preset.num_bases}.items()) + ")",
            "psnr": ablation.curve[-1][2],
            "ssim": ablation.curve[-1][3],
            "bytes_per_scene": ablation.bytes_per_scene,
            "memory_ratio": ablation.bytes_per_scene / latent.bytes_per_scene,
            "time_per_scene_s": (lambda t: None if t is None else t / n)(time_to_reach(ablation.curve, target)),
            "full_schedule_time_per_scene_s": ablation.curve[-1][1] / n,
            "render_ratio": ablation.render_s / latent.render_s,
            "curve": ablation.curve,
            "run": ablation.run_dir,
        }  # fmt: skip
    return result


def select_scenes(data: Path, stage1_scenes: Optional[str], scenes: Optional[str]) -> Tuple[List[int], List[int]]:
    """The stage-1 and compared scene indices of ``data``; both specs are needed and must not overlap (stage 1
    must never see a compared scene). Errors are DatasetErrors naming the options."""
    if not stage1_scenes or not scenes:
        raise DatasetError(
            f"compare --data {data}: give both --stage1-scenes and --scenes (disjoint selections, e.g. "
            "--stage1-scenes 0:4 --scenes 4:10)"
        )
    names = read_scene_names(data)
    first = parse_scene_selection(stage1_scenes, len(names), "--stage1-scenes")
    second = parse_scene_selection(scenes, len(names), "--scenes")
    shared = sorted(set(first) & set(second))
    if shared:
        shown = ", ".join(f"{i} ({names[i]!r})" for i in shared[:5]) + (", ..." if len(shared) > 5 else "")
        raise DatasetError(
            f"compare --data {data}: --stage1-scenes {stage1_scenes!r} and --scenes {scenes!r} overlap in "
            f"{len(shared)} scene(s): {shown}. The compared scenes must be new to the stage-1 autoencoder"
        )
    return first, second


@dataclass(frozen=True)
class ComparedScenes:
    """The two disjoint scene sets of a comparison."""

    stage1: Selection
    """The scenes of the 3dae-autoencoder run."""
    compared: Selection
    """The N scenes both methods train."""
    num_stage1: int
    num_compared: int
    source: Optional[Dict]
    """Where they came from (None: generated)."""
    indices: Tuple[int, ...] = ()
    """The positions in ``scenes.json`` of both selections (with ``data``; empty for generated scenes)."""


def prepare_scenes(
    preset: ComparePreset,
    output: Path,
    seed: int = 0,
    data: Optional[Path] = None,
    stage1_scenes: Optional[str] = None,
    scenes: Optional[str] = None,
    downscale_factor: int = 1,
) -> ComparedScenes:
    """Two disjoint selections of ``data``, or two sets of generated cars (other seeds) under ``output/data``."""
    if data is not None:
        first, second = select_scenes(Path(data), stage1_scenes, scenes)
        source = {"data": str(data), "stage1_scenes": stage1_scenes, "scenes": scenes,
                  "downscale_factor": downscale_factor}  # fmt: skip
        return ComparedScenes(
            Selection(Path(data), stage1_scenes, downscale_factor),  # type: ignore[arg-type]
            Selection(Path(data), scenes, downscale_factor),  # type: ignore[arg-type]
            len(first),
            len(second),
            source,
            tuple(sorted(set(first) | set(second))),
        )
    if stage1_scenes or scenes:
        raise DatasetError(
            "--stage1-scenes and --scenes select scenes of --data; without --data the scenes are generated"
        )
    workers = min(os.cpu_count() or 1, 8) if preset.scenes >= 100 else 1
    common = dict(test_views=preset.test_views, workers=workers, progress=False, overwrite=True)

    def generated(name: str, count: int, data_seed: int) -> Selection:
        path = output / "data" / name
        path = generate_dataset(path, count, preset.views_per_scene, preset.image_size, seed=data_seed, **common)
        return Selection(path, ":", downscale_factor)

    stage1 = generated("stage1", preset.stage1_scenes, seed + 1000)
    return ComparedScenes(stage1, generated("scenes", preset.scenes, seed), preset.stage1_scenes, preset.scenes, None)


def run_stage1(
    preset: ComparePreset,
    data: Selection,
    runs: Path,
    autoencoder: str,
    ae_weight: Optional[float] = None,
    clock: Clock = "wall",
) -> Tuple[Path, float]:
    """``3dae-autoencoder`` on the stage-1 scenes from ``autoencoder`` (``ae_weight``: the joint phase's weight of
    ‖D(E(x)) − x‖², None: the method's): its run folder (holding the exported autoencoder and bases) and its
    seconds on ``clock``."""
    stage1 = configure_method(autoencoder_method(), data, runs, preset, preset.stage1_steps, "stage1")
    stage1.pipeline.model.autoencoder = autoencoder
    if ae_weight is not None:
        stage1.pipeline.model.ae_weight = ae_weight
    stage1.pipeline.model.warmup_steps = preset.stage1_warmup
    seed_like_ns_train(stage1.machine.seed)
    start = read_clock(clock)
    trainer = stage1.setup(local_rank=0, world_size=1)
    trainer.setup()
    trainer.train()
    seconds = read_clock(clock) - start
    run_dir = Path(trainer.base_dir)
    if not (run_dir / RUN_EXPORT / "config.json").is_file():
        raise RuntimeError(f"stage 1 did not export its autoencoder to {run_dir / RUN_EXPORT}")
    return run_dir, seconds


Mode = Literal["convergence", "equal-budget"]


def resumable(path: Path, settings: Dict, resume: bool, log: Callable[[str], None], make: Callable[[], Dict]) -> Dict:
    """The figures of one stage of a compare: read from ``path`` when ``resume`` and it was written with the same
    ``settings`` (logged), else made by ``make`` and written there (atomically: a crash leaves no half file). The
    log names the settings that differ (``fingerprints``: the autoencoder's or the data's contents changed)."""
    if resume and path.is_file():
        saved = json.loads(path.read_text())
        before = saved.get("settings") or {}
        if before == settings:
            log(f"  resumed: {path} (finished earlier with the same settings)")
            return saved["figures"]
        changed = ", ".join(sorted(k for k in {*before, *settings} if before.get(k) != settings.get(k)))
        log(f"  {path} was made with other settings ({changed}): running this stage again")
    figures = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({"settings": settings, "figures": figures}, indent=1) + "\n")
    os.replace(partial, path)
    return figures


def resolve_preset(name: str, mode: Optional[Mode] = None, **overrides: Any) -> ComparePreset:
    """The preset ``name`` with the mode (None: the preset's) and the options ``overrides`` that are not None (any
    ComparePreset field: step caps, plateau rule); a set-up that cannot run is a ValueError naming the option."""
    if name not in PRESETS:
        raise ValueError(f"--preset: unknown preset {name!r}; choose from {sorted(PRESETS)}")
    changes = {key: value for key, value in overrides.items() if value is not None}
    if mode is not None:
        changes["convergence"] = mode == "convergence"
    preset = replace(PRESETS[name], **changes)
    preset.check_convergence()
    return preset


def run_compare(
    preset_name: str,
    output: Path,
    autoencoder: str = "embedded",
    target_margin_db: float = 0.5,
    seed: int = 0,
    log: Callable[[str], None] = print,
    data: Optional[Path] = None,
    stage1_scenes: Optional[str] = None,
    scenes: Optional[str] = None,
    downscale_factor: int = 1,
    ablation: bool = False,
    preset: Optional[ComparePreset] = None,
    clock: Optional[Clock] = None,
    resume: bool = False,
) -> Dict:
    """Get the data (``data`` with two disjoint selections, or generated scenes), run stage 1, the RGB and the
    latent method (and, with ``ablation``, the micro/macro bank in RGB), and return the figures. ``preset``: the
    sizes and schedules (default: ``PRESETS[preset_name]``; :func:`resolve_preset` makes one with options). In
    convergence mode the RGB and latent runs go on past their equal-budget steps to their plateau or cap
    (:mod:`nerfstudio_3dae.bench.convergence`); the ablation trains its equal budget only. ``clock``: what the
    seconds are (None: :func:`default_clock` of the device); ``resume``: stages finished earlier in ``output`` with
    the same settings are read back, not run again."""
    preset = preset or resolve_preset(preset_name)
    rule = preset.plateau_rule()
    device_type = resolve_device("auto")
    clock = clock or default_clock(device_type)

    def on_eval(method: str, step: int, seconds: float, psnr: float) -> None:
        log(f"  {method:<16} step {step:>6}  {seconds:8.1f} s on the clock  test PSNR {psnr:6.2f} dB")

    def train(config, method: str) -> MethodRun:
        if not preset.convergence:
            return train_and_measure(config, preset, on_eval, clock=clock)
        budget = preset.budget_steps(method)
        stop = stop_at_plateau(rule, budget)
        return train_and_measure(config, preset, on_eval, stop, eval_at=[budget], clock=clock)

    steps = {m: preset.step_cap(m) if preset.convergence else preset.budget_steps(m) for m in ("rgb", "latent")}
    until = f" (at least; then to the plateau: {rule.statement()})" if preset.convergence else ""
    chosen = prepare_scenes(preset, output, seed, data, stage1_scenes, scenes, downscale_factor)
    compared, n1, n, source = chosen.compared, chosen.num_stage1, chosen.num_compared, chosen.source
    runs = output / "runs"
    settings = {"preset": asdict(preset), "source": source or {"data": "generated", "seed": seed},
                "autoencoder": autoencoder, "clock": clock, "device": device_type,
                "fingerprints": compare_fingerprints(autoencoder, data, chosen.indices)}  # fmt: skip

    def stage(name: str, make: Callable[[], MethodRun]) -> MethodRun:
        figures = resumable(runs / f"{name}.measured.json", settings, resume, log, lambda: asdict(make()))
        return method_run_from_dict(figures)

    log(f"stage 1: 3dae-autoencoder on {n1} other scenes, {preset.stage1_steps} steps")

    def make_stage1() -> Dict:
        run_dir, seconds = run_stage1(preset, chosen.stage1, runs, autoencoder, clock=clock)
        return {"run_dir": str(run_dir), "seconds": seconds}

    first = resumable(runs / "stage1.measured.json", settings, resume, log, make_stage1)
    if not (Path(first["run_dir"]) / RUN_EXPORT / "config.json").is_file():  # the file outlived its run folder
        first = resumable(runs / "stage1.measured.json", settings, False, log, make_stage1)
    stage1_dir, stage1_s = Path(first["run_dir"]), float(first["seconds"])

    log(f"3dae-rgb (RGB Tri-Planes) on {n} scenes, {preset.rgb_steps} steps{until}, cap {steps['rgb']}")
    rgb_config = configure_method(rgb_method(), compared, runs, preset, steps["rgb"], "rgb", bases=False)
    rgb = stage("rgb", lambda: train(rgb_config, "rgb"))
    bank = None
    if ablation:
        log(f"ablation: 3dae-rgb with the micro/macro bank on the same scenes, {preset.rgb_steps} steps")
        bank_config = configure_method(rgb_method(), compared, runs, preset, preset.rgb_steps, "rgb-bank")
        for key, value in {**RGB_BANK_ABLATION, "num_bases": preset.num_bases}.items():
            setattr(bank_config.pipeline.model, key, value)
        bank = stage("rgb-bank", lambda: train_and_measure(bank_config, preset, on_eval, clock=clock))
    log(
        f"3dae-latent on the same scenes, {preset.latent_steps} steps{until}, cap {steps['latent']} (decoder "
        f"fine-tune from {preset.finetune_start})"
    )
    config = configure_method(latent_method(), compared, runs, preset, steps["latent"], "latent")
    config.pipeline.model.autoencoder = str(stage1_dir)
    config.pipeline.model.bases = stage1_dir
    config.pipeline.model.finetune_start = preset.finetune_start
    latent = stage("latent", lambda: train(config, "latent"))
    device = describe_device(device_type)
    timing = {"clock": clock, "clock_reads": CLOCK_NAMES[clock]}
    if not preset.convergence:
        result = summarise(preset_name, preset, stage1_s, rgb, latent, device, target_margin_db, n, bank, source)
        return {"mode": "equal-budget", **timing, **result}
    budget = {"rgb": budget_prefix(rgb, preset.rgb_steps), "latent": budget_prefix(latent, preset.latent_steps)}
    result = summarise(
        preset_name, preset, stage1_s, budget["rgb"], budget["latent"], device, target_margin_db, n, bank, source
    )
    caps = {m: preset.step_cap(m) for m in ("rgb", "latent")}
    budgets = {m: preset.budget_steps(m) for m in ("rgb", "latent")}
    converged = summarise_convergence({"rgb": rgb, "latent": latent}, rule, caps, budgets, target_margin_db, n)
    return {"mode": "convergence", **timing, "convergence": converged, **result}
