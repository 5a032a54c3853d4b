"""Where the decoded dB of ``3dae-latent`` go, stage by stage, and what each lever buys: ``ns-3dae-bench quality``.

One run on the scenes of a comparison (:func:`nerfstudio_3dae.bench.compare.prepare_scenes`: generated cars or two
disjoint selections of a dataset):

1. **stage 1** (``3dae-autoencoder`` on the stage-1 scenes) from ``autoencoder``;
2. **RGB Tri-Planes** (``3dae-rgb``) on the compared scenes: the reference;
3. one ``3dae-latent`` run per **lever** (:data:`LEVERS`: a schedule or option set) on the same scenes, all with the
   preset's number of steps. Each is scored on all test views every ``eval_every`` steps and at the switch to the
   decoded phase (the "fine-tune").

The stage table (:func:`stage_row`) follows the decoded PSNR through the pipeline: the autoencoder alone before and
after stage 1 (D(E(x)) on the test views), how well the rendered latents match E(x) on training views (the fit) and
on test views (multi-view consistency: the held-out latent error), the decoded render before and after the decoded
phase, on training and test views. ``D(E(x))`` on the test views is the *latent oracle*: what the same decoder gives
from the encoder's latents of those views, against the render's latents.

Every finished run is written to ``quality.json`` as soon as it ends: a stopped bench run again with the same
``output`` reuses stage 1 and every finished run (resumable), unless the settings changed.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from nerfstudio_3dae.autoencoder_source import RUN_EXPORT, resolve_autoencoder
from nerfstudio_3dae.bench.compare import configure_method, prepare_scenes, run_stage1, time_to_reach
from nerfstudio_3dae.bench.measure import MeasuredRun
from nerfstudio_3dae.bench.presets import PRESETS, ComparePreset
from nerfstudio_3dae.bench.scaling import describe_device, resolve_device
from nerfstudio_3dae.data.dataparser import parse_scene_selection
from nerfstudio_3dae.data.layout import read_scene_names
from nerfstudio_3dae.image_layout import first_to_hwc, hwc_to_nchw
from nerfstudio_3dae.method_configs import latent_method, rgb_method
from nerfstudio_3dae.metrics import rgb_metrics
from nerfstudio_3dae.model import PARAM_GROUP


@dataclass(frozen=True)
class Lever:
    """One way of training ``3dae-latent`` on the compared scenes (same number of steps for every lever)."""

    what: str
    """What it changes, in words (the table's first column)."""
    decoded_share: Optional[float] = None
    """Share of the steps in the decoded phase (RGB through the decoder, the fine-tune); None: the preset's."""
    model: Dict[str, Any] = field(default_factory=dict)
    """Model options (``--pipeline.model.*``) set on the method's defaults."""
    decoder_lr: Optional[float] = None
    """Learning rate of the decoder (None: the method's)."""


PAPER_STAGE3 = {"finetune_plane_lr_factor": 0.1, "finetune_latent_weight": 0.0, "finetune_decoder": True,
                "pixel_jitter": False}  # fmt: skip
"""The decoded phase as the paper's stage 3: RGB loss only, planes at a tenth of their rate, the decoder learns."""
DECODE_SCENE = {"finetune_plane_lr_factor": 1.0, "finetune_latent_weight": 1.0, "finetune_decoder": True,
                "pixel_jitter": False}  # fmt: skip
"""The decoded phase as a scene fit: RGB through the decoder beside the latent loss, planes at their full rate."""

LEVERS: Dict[str, Lever] = {
    "stage3-late": Lever(
        "latent loss, then a paper-style fine-tune for the last 1/6 (the schedule before 2026-12-04)",
        1 / 6,
        PAPER_STAGE3,
    ),  # fmt: skip
    "stage3-half": Lever("latent loss, then the paper-style fine-tune for half the steps", 0.5, PAPER_STAGE3),
    "decode-scene-half": Lever(
        "latent loss, then RGB through D + latent loss, planes at full rate (half)", 0.5, DECODE_SCENE
    ),  # fmt: skip
    "decode-scene-early": Lever("as decode-scene-half, the decoded phase from 1/4 of the steps", 0.75, DECODE_SCENE),
    "decode-scene-frozen": Lever(
        "as decode-scene-early with the decoder frozen", 0.75, {**DECODE_SCENE, "finetune_decoder": False}
    ),  # fmt: skip
    "decode-scene-rgb-only": Lever(
        "as decode-scene-early without the latent loss", 0.75, {**DECODE_SCENE, "finetune_latent_weight": 0.0}
    ),  # fmt: skip
    "decode-scene-start": Lever("RGB through D + latent loss from the first step", 1.0, DECODE_SCENE),
    "decode-scene-dlr1e-3": Lever("as decode-scene-early, decoder learning rate 1e-3", 0.75, DECODE_SCENE, 1e-3),
    "capacity-r32": Lever(
        "as decode-scene-early with R = 32 planes (own random bases)",
        0.75,
        {**DECODE_SCENE, "resolution": 32, "bases_from_autoencoder": False},
    ),  # fmt: skip
    "capacity-micro20": Lever(
        "as decode-scene-early with 20 scene-specific channels instead of 10",
        0.75,
        {**DECODE_SCENE, "micro_channels": 20},
    ),  # fmt: skip
    "decode-scene-jitter": Lever(
        "as decode-scene-early, rays through random points of their latent pixels",
        0.75,
        {**DECODE_SCENE, "pixel_jitter": True},
    ),  # fmt: skip
    "jitter-r32": Lever(
        "decode-scene-jitter with R = 32 planes (own random bases)",
        0.75,
        {**DECODE_SCENE, "pixel_jitter": True, "resolution": 32, "bases_from_autoencoder": False},
    ),  # fmt: skip
    "defaults": Lever("the method's defaults (its own fine-tune share)", -1.0),
    "decode-every-view": Lever(
        "the method's defaults, the decoded phase decoding every view of a batch (the defaults before 2026-12-07)",
        -1.0,
        {"decode_every": 1, "decode_crop": 0},
    ),  # fmt: skip
    "latent-target-shifted": Lever(
        "the method's defaults, the latent target resampled at the jittered rays' shift",
        -1.0,
        {"shift_latent_target": True},
    ),  # fmt: skip
    "defaults-decoder-frozen": Lever(
        "the method's defaults with the decoder frozen in the decoded phase", -1.0, {"finetune_decoder": False}
    ),  # fmt: skip
    "decode-crop8": Lever(
        "the method's defaults, the decoded phase decoding a random 8² latent square of every view",
        -1.0,
        {"decode_every": 1, "decode_crop": 8},
    ),  # fmt: skip
}
"""The levers ``--levers`` chooses from. ``decoded_share`` -1: the share the method's defaults give (finetune_start
of ``3dae-latent`` over its steps)."""


def decoded_start(lever: Lever, preset: ComparePreset) -> int:
    """The step at which the lever's decoded phase starts."""
    if lever.decoded_share is None:
        return preset.finetune_start
    share = lever.decoded_share
    if share < 0:  # the method's defaults, scaled to the preset's length
        defaults = latent_method()
        share = 1.0 - defaults.pipeline.model.finetune_start / defaults.max_num_iterations
    return int(round(preset.latent_steps * (1.0 - share)))


@torch.no_grad()
def split_metrics(pipeline, split: str, max_views: int) -> Dict[str, float]:
    """Mean decoded PSNR, latent PSNR and D(E(x)) over the first ``max_views`` views of ``split`` (train or eval),
    scored as ns-eval scores test views."""
    manager, model = pipeline.datamanager, pipeline.model
    count = len(manager.train_dataset if split == "train" else manager.eval_dataset)
    # spread the views over the scenes (training views are stored scene after scene)
    indices = sorted({round(i * count / min(count, max_views)) for i in range(min(count, max_views))})
    model.eval()
    sums: Dict[str, float] = {}
    for index in indices:
        camera, batch = manager.views(split, [index])
        batch = {k: v[0] for k, v in batch.items()}
        metrics, _ = model.get_image_metrics_and_images(model.get_outputs_for_camera(camera), batch)
        for key in ("psnr", "latent_psnr", "autoencoded_psnr"):
            if key in metrics:
                sums[key] = sums.get(key, 0.0) + float(metrics[key])
    model.train()
    return {key: value / len(indices) for key, value in sums.items()}


@torch.no_grad()
def autoencoded_psnr(source: str, pipeline) -> float:
    """D(E(x)) PSNR of the autoencoder ``source`` (as loaded by the methods) on the test views of ``pipeline``."""
    ae = resolve_autoencoder(source, "auto", None, 32).to(pipeline.device).eval()
    total = 0.0
    for _, batch in pipeline.datamanager.fixed_indices_eval_dataloader:
        gt = batch["image"].to(pipeline.device)
        out = ae.decode(ae.encode(hwc_to_nchw(gt)), clamp=True)
        total += rgb_metrics(first_to_hwc(out, *gt.shape[:2]), gt)["psnr"]
    return total / len(pipeline.datamanager.fixed_indices_eval_dataloader)


def train_lever(
    name: str,
    lever: Lever,
    preset: ComparePreset,
    compared,
    runs: Path,
    autoencoder: str,
    stage1_dir: Optional[Path],
    max_views: int,
    log: Callable[[str], None],
    on_pipeline: Callable[[Any], None] = lambda pipeline: None,
) -> Dict[str, Any]:
    """Train one lever in the latent space of ``autoencoder`` (with the bases of ``stage1_dir`` when given); its
    curve, the figures at the switch and at the end, and its clock. ``on_pipeline`` sees the trained pipeline."""
    config = configure_method(latent_method(), compared, runs, preset, preset.latent_steps, f"latent-{name}")
    model = config.pipeline.model
    model.autoencoder = autoencoder
    model.bases = stage1_dir if lever.model.get("bases_from_autoencoder", True) else None
    for key, value in lever.model.items():
        if not hasattr(model, key):
            raise ValueError(f"lever {name!r}: 3dae-latent has no model option {key!r}")
        setattr(model, key, value)
    start = decoded_start(lever, preset)
    model.finetune_start = start
    if lever.decoder_lr is not None:
        config.optimizers[PARAM_GROUP.decoder]["optimizer"].lr = lever.decoder_lr
    log(f"3dae-latent, lever {name}: {preset.latent_steps} steps, the decoded phase from step {start}")
    run = MeasuredRun(
        config, preset, lambda m, step, s, psnr: log(f"  {name:<22} step {step:>6} {s:8.1f} s {psnr:6.2f} dB")
    )
    switch: Dict[str, Any] = {}
    for step in range(run.steps):
        if step == start and start > 0:
            test = run.evaluate(step)
            switch = {"step": step, "seconds": run.clock, "test": _pick(test),
                      "train": split_metrics(run.trainer.pipeline, "train", max_views)}  # fmt: skip
        run.step(step)
    final = run.evaluate(run.steps)
    result = run.finish()
    on_pipeline(run.trainer.pipeline)
    return {
        "what": lever.what,
        "decoded_start": start,
        "settings": {**lever.model, "decoder_lr": lever.decoder_lr},
        "at_switch": switch,
        "final": {"test": _pick(final), "train": split_metrics(run.trainer.pipeline, "train", max_views)},
        "curve": result.curve,
        "seconds": result.curve[-1][1],
        "phase_s": result.phase_s,
        "run": result.run_dir,
    }


def _pick(metrics: Dict) -> Dict[str, float]:
    return {k: float(metrics[k]) for k in ("psnr", "ssim", "latent_psnr", "autoencoded_psnr") if k in metrics}


@dataclass
class QualitySettings:
    """What a quality run was asked for (a resumed run reuses finished runs only when these match)."""

    preset: str
    levers: List[str]
    autoencoder: str
    data: Optional[str]
    stage1_scenes: Optional[str]
    scenes: Optional[str]
    downscale_factor: int
    seed: int
    stage1_ae_weight: Optional[float] = None
    """Weight of ‖D(E(x)) − x‖² in stage 1's joint phase (None: the method's)."""
    stage1_steps: Optional[int] = None
    """Steps of stage 1, half of them warm-up (None: the preset's); 0: no stage 1, the levers train in the latent
    space of ``autoencoder`` as it is (as ``ns-train 3dae-latent`` does with the embedded autoencoder)."""


RGB_KEYS = ("preset", "downscale_factor")
"""Settings besides the compared scenes that decide the RGB Tri-Planes run: ``rgb_from`` reuses it when they match
and so do the compared scenes (their names in a dataset; the seed of generated scenes)."""


def compared_names(selection) -> List[str]:
    """The names of a selection's scenes, in its order."""
    names = read_scene_names(selection.data)
    return [names[i] for i in parse_scene_selection(selection.scenes, len(names))]


def rgb_run_of(path: Path, result: Dict[str, Any]) -> Dict[str, Any]:
    """The RGB Tri-Planes run of the quality.json at ``path`` when it trained the same scenes as ``result``."""
    other = json.loads(path.read_text())
    mine, theirs = result["settings"], other.get("settings", {})
    if mine["data"] is None:  # generated: the preset and the seed make the scenes
        same = _same(theirs, mine, RGB_KEYS) and theirs.get("data") is None and theirs.get("seed") == mine["seed"]
    else:
        same = _same(theirs, mine, RGB_KEYS) and other.get("compared_scenes") == result["compared_scenes"]
    if "rgb" not in other or not same:
        raise ValueError(
            f"--rgb-from {path}: no RGB Tri-Planes run on the same scenes (compared scenes, {', '.join(RGB_KEYS)}, "
            "and the seed of generated scenes must match)"
        )
    return other["rgb"]


def run_quality(
    settings: QualitySettings,
    output: Path,
    max_views: int = 16,
    target_margin_db: float = 0.5,
    log: Callable[[str], None] = print,
    rgb_from: Optional[Path] = None,
) -> Dict[str, Any]:
    """Stage 1, RGB Tri-Planes and every lever on the same scenes; writes ``output/quality.json`` after each run and
    ``quality.md`` at the end, and returns the result. ``rgb_from``: a quality.json on the same scenes whose RGB
    Tri-Planes run is reused."""
    unknown = [name for name in settings.levers if name not in LEVERS]
    if unknown or not settings.levers:
        raise ValueError(f"--levers: unknown {unknown} (choose from {', '.join(LEVERS)})")
    preset = PRESETS[settings.preset]
    if settings.stage1_steps is not None:
        if settings.stage1_steps < 0:
            raise ValueError(f"--stage1-steps must be >= 0, got {settings.stage1_steps}")
        half = settings.stage1_steps // 2
        preset = dataclasses.replace(preset, stage1_steps=settings.stage1_steps, stage1_warmup=half)
    output = Path(output)
    path = output / "quality.json"
    asked = dataclasses.asdict(settings)
    result: Dict[str, Any] = {}
    if path.is_file():
        previous = json.loads(path.read_text())
        if _same(previous.get("settings", {}), asked, [k for k in asked if k != "levers"]):
            result = previous
            done = [part for part in ("stage1", "rgb") if part in result] + list(result.get("levers", {}))
            log(f"resuming {path}: reusing {', '.join(done) or 'nothing yet'}")
    result.update(settings=asked, device=describe_device(resolve_device("auto")), margin_db=target_margin_db)
    result.setdefault("levers", {})

    def save() -> None:
        output.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.partial")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(path)

    def autoencoders_scored(pipeline) -> None:  # D(E(x)) on the compared test views, once
        if "autoencoder_psnr" not in result:
            after = None if stage1_dir is None else autoencoded_psnr(str(stage1_dir), pipeline)
            result["autoencoder_psnr"] = {"input": autoencoded_psnr(settings.autoencoder, pipeline), "stage1": after}

    data = settings.data and Path(settings.data)
    chosen = prepare_scenes(preset, output, settings.seed, data, settings.stage1_scenes, settings.scenes,
                            settings.downscale_factor)  # fmt: skip
    result["compared_scenes"] = compared_names(chosen.compared)
    if rgb_from is not None and "rgb" not in result:
        result["rgb"] = rgb_run_of(Path(rgb_from), result)
        log(f"RGB Tri-Planes from {rgb_from}")
    runs = output / "runs"
    stage1_dir: Optional[Path] = None
    if preset.stage1_steps > 0:
        if "stage1" not in result or not (Path(result["stage1"]["run"]) / RUN_EXPORT / "config.json").is_file():
            log(f"stage 1: 3dae-autoencoder on {chosen.num_stage1} other scenes, {preset.stage1_steps} steps")
            run_dir, seconds = run_stage1(preset, chosen.stage1, runs, settings.autoencoder, settings.stage1_ae_weight)
            result["stage1"] = {"run": str(run_dir), "seconds": seconds}
            save()
        stage1_dir = Path(result["stage1"]["run"])
    if "rgb" not in result:
        log(f"3dae-rgb (RGB Tri-Planes) on {chosen.num_compared} scenes, {preset.rgb_steps} steps")
        config = configure_method(rgb_method(), chosen.compared, runs, preset, preset.rgb_steps, "rgb", bases=False)
        run = MeasuredRun(
            config, preset, lambda m, step, s, psnr: log(f"  rgb step {step:>6} {s:8.1f} s {psnr:6.2f} dB")
        )
        for step in range(run.steps):
            run.step(step)
        final = run.evaluate(run.steps)
        pipeline = run.trainer.pipeline
        result["rgb"] = {"final": {"test": _pick(final), "train": split_metrics(pipeline, "train", max_views)},
                         "curve": run.finish().curve}  # fmt: skip
        result["rgb"]["seconds"] = result["rgb"]["curve"][-1][1]
        autoencoders_scored(pipeline)
        save()
    for name in settings.levers:
        if name in result["levers"]:
            continue
        begin = time.perf_counter()
        source = settings.autoencoder if stage1_dir is None else str(stage1_dir)
        row = train_lever(name, LEVERS[name], preset, chosen.compared, runs, source, stage1_dir, max_views, log,
                          autoencoders_scored)  # fmt: skip
        row["wall_s"] = time.perf_counter() - begin
        result["levers"][name] = row
        save()
    (output / "quality.md").write_text(quality_tables(result))
    return result


def _same(a: Dict[str, Any], b: Dict[str, Any], keys: Sequence[str]) -> bool:
    return all(a.get(k) == b.get(k) for k in keys)


def stage_row(result: Dict[str, Any], lever: str) -> List[str]:
    """The stage-by-stage figures of one lever (cells of :func:`quality_tables`' first table)."""
    row = result["levers"][lever]
    ae, switch, final = result["autoencoder_psnr"], row["at_switch"], row["final"]

    def cell(part: Dict, split: str, key: str) -> str:
        value = part.get(split, {}).get(key) if part else None
        return "–" if value is None else f"{value:.2f}"

    return [
        lever,
        f"{ae['input']:.2f}",
        "no stage 1" if ae["stage1"] is None else f"{ae['stage1']:.2f}",
        cell(switch, "train", "latent_psnr"),
        cell(switch, "test", "latent_psnr"),
        cell(switch, "train", "psnr"),
        cell(switch, "test", "psnr"),
        cell(final, "train", "psnr"),
        cell(final, "test", "psnr"),
        f"{result['rgb']['final']['test']['psnr']:.2f}",
    ]


def lever_row(result: Dict[str, Any], lever: str) -> List[str]:
    """One lever's final decoded PSNR, gap to RGB, time and time to RGB − margin (cells of the second table)."""
    row, rgb = result["levers"][lever], result["rgb"]
    psnr_rgb = rgb["final"]["test"]["psnr"]
    target = psnr_rgb - result["margin_db"]
    t_rgb, t_latent = time_to_reach(rgb["curve"], target), time_to_reach(row["curve"], target)
    best = max(p for _, _, p, _ in row["curve"])
    ratio = "–" if t_rgb is None or t_latent is None else f"×{t_rgb / t_latent:.1f}"
    return [
        lever,
        row["what"],
        str(row["decoded_start"]),
        f"{row['final']['test']['psnr']:.2f}",
        f"{best:.2f}",
        f"{row['final']['test']['psnr'] - psnr_rgb:+.2f}",
        f"{row['seconds']:.0f}",
        f"{rgb['seconds'] / row['seconds']:.1f}",
        ratio,
    ]


def _markdown(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def quality_tables(result: Dict[str, Any]) -> str:
    """Markdown: the stage-by-stage table and the lever table."""
    levers = list(result["levers"])
    stages = _markdown(
        ["lever", "D(E(x)) input AE", "D(E(x)) after stage 1", "latent fit (train)", "latent held-out (test)",
         "decoded at switch (train)", "decoded at switch (test)", "decoded final (train)", "decoded final (test)",
         "RGB Tri-Planes (test)"],
        [stage_row(result, name) for name in levers],
    )  # fmt: skip
    table = _markdown(
        ["lever", "what", "decoded from step", "final dB", "best dB", "vs RGB", "train s", "RGB s ÷ this",
         f"time to RGB − {result['margin_db']:g} dB, RGB ÷ this"],
        [lever_row(result, name) for name in levers],
    )  # fmt: skip
    return stages + "\n" + table
