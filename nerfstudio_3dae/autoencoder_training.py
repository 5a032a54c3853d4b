"""Autoencoder-only training on a large generated corpus: the first half of how the embedded autoencoder is made.

The recipe (docs/autoencoder.md): generate a corpus of many scenes (cars, plus chairs and tables for variety) at the
target resolution, keep every view in one uint8 array, and train a diffusers ``AutoencoderKL`` on random crops
(convolutions are translation-equivariant, so crops are fair and 4x cheaper than whole 128² images) with
``‖D(E(x)) − x‖²`` on the posterior mean. Held-out scenes of other seeds measure ``D(E(x))`` on whole images.
The run resumes from its last checkpoint after a stop (``state.pt`` written atomically every ``save_every`` steps),
logs one JSON line per log step and evaluation, and exports a ``save_pretrained`` folder whose latent normaliser is
set from the latents' spread. The 3D-aware joint phase that follows is ``ns-train 3dae-autoencoder`` on the export.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from jaxtyping import Float, UInt8
from torch import Tensor

from nerfstudio_3dae.autoencoder import LatentAutoencoder, NormaliserConfig, build_autoencoder, kl_autoencoder_config

STATE_FILE = "state.pt"
LOG_FILE = "log.jsonl"
EXPORT_DIR = "autoencoder"


@dataclass
class CorpusPart:
    """One category of generated scenes in a corpus."""

    category: str = "car"
    """Object category (car, chair, table)."""
    num_scenes: int = 100
    """Scenes of this category."""
    seed: int = 0
    """Generator seed of this part (choose seeds no benchmark or test uses)."""


@dataclass
class AutoencoderTrainingConfig:
    """Train an ``AutoencoderKL`` alone on a generated corpus (resumable); see docs/autoencoder.md."""

    output: Path = Path("outputs/embedded-ae")
    """Run folder: checkpoints (state.pt), log.jsonl and the exported autoencoder/ (and the corpus by default)."""
    corpus_dir: Optional[Path] = None
    """Where the generated corpus lives (corpus/ and holdout/ inside it); default: the run folder. Runs that
    compare settings share one."""
    cars: int = 800
    """Generated car scenes of the training corpus."""
    chairs: int = 100
    """Generated chair scenes (variety: wood, fabric)."""
    tables: int = 100
    """Generated table scenes."""
    corpus_seed: int = 5000
    """Generator seed of the cars; chairs and tables use the next two (no benchmark or test uses these)."""
    holdout_cars: int = 16
    """Held-out car scenes (seed ``holdout_seed``) for whole-image D(E(x)) PSNR."""
    holdout_seed: int = 9000
    """Generator seed of the held-out scenes."""
    views_per_scene: int = 16
    """Views rendered per corpus scene."""
    holdout_views: int = 4
    """Views per held-out scene."""
    resolution: int = 128
    """Image size of the corpus (the embedded autoencoder's native size)."""
    block_out_channels: Tuple[int, ...] = (16, 32, 64, 128)
    """AutoencoderKL block widths (one stride-2 stage between blocks: 4 blocks = factor 8). Narrow at full
    resolution: on a CPU the cost of a step is the convolutions at high resolution (docs/autoencoder.md)."""
    layers_per_block: int = 1
    """Resnet layers a block."""
    norm_groups: int = 1
    """GroupNorm groups (must divide every width). 1 (a layer norm over all channels) learns ~8 dB faster here than
    one channel a group (the most groups dividing 16, i.e. instance norm in the full-resolution blocks), where every
    image's features are normalised channel by channel (docs/autoencoder.md)."""
    mid_attention: bool = False
    """Self-attention in the mid block. Off by default: without it the autoencoder is fully convolutional, so
    training on crops is exactly fair to whole images."""
    latent_channels: int = 16
    """Latent channels c."""
    crop: int = 64
    """Side of the random training crops (a multiple of the factor)."""
    batch_size: int = 8
    """Crops a step."""
    full_image_steps: int = 0
    """The last steps train on whole images (``batch_size // 4`` a step): GroupNorm sees whole-image statistics."""
    steps: int = 20000
    """Optimiser steps in all (the cosine schedule runs over them)."""
    lr: float = 1.5e-3
    """Peak Adam learning rate (after a linear warm-up of ``warmup_steps``), cosine-decayed to
    ``lr * final_lr_factor``."""
    warmup_steps: int = 200
    """Linear learning-rate warm-up."""
    final_lr_factor: float = 0.02
    """Learning rate at the end, relative to ``lr``."""
    chroma_weight: float = 0.0
    """Extra weight of the squared error of the colour without its grey part (``x - mean_c(x)``)."""
    latent_penalty: float = 1e-4
    """Weight of ``mean(z²)`` (keeps raw latents O(1), so one normaliser scale suits every channel)."""
    eval_every: int = 500
    """Steps between held-out evaluations."""
    save_every: int = 200
    """Steps between checkpoints."""
    log_every: int = 50
    """Steps between log lines."""
    threads: int = 2
    """Torch CPU threads."""
    max_minutes: float = 0.0
    """Stop (with a checkpoint) after this much wall time in this process; 0: no limit. Resuming continues."""
    seed: int = 0
    """Seed of the weights and the crop sampler."""
    workers: int = 2
    """Generator worker processes for the corpus."""


# ----------------------------------------------------------------------------------------------- corpus
def corpus_parts(c: AutoencoderTrainingConfig) -> Tuple[List[CorpusPart], List[CorpusPart]]:
    """The training and held-out parts of a config (categories with no scenes left out)."""
    counts = (("car", c.cars), ("chair", c.chairs), ("table", c.tables))
    train = [CorpusPart(cat, n, c.corpus_seed + k) for k, (cat, n) in enumerate(counts) if n > 0]
    return train, [CorpusPart("car", c.holdout_cars, c.holdout_seed)]


def _corpus_array(root: Path, parts: Sequence[CorpusPart], views: int, resolution: int, workers: int) -> np.ndarray:
    """Generate (once) every part under ``root`` and return all views as one ``[N, H, W, 3]`` uint8 array.

    The array is cached as ``root/images.npy``; a part's folder is generated only if its ``scenes.json`` is missing.
    """
    from nerfstudio_3dae.data.images import load_images
    from nerfstudio_3dae.data.layout import read_scene, read_scene_names
    from nerfstudio_3dae.data.synth.generate import generate_dataset

    cache, spec_file = root / "images.npy", root / "corpus.json"
    spec = {"parts": [asdict(p) for p in parts], "views_per_scene": views, "resolution": resolution}
    if cache.is_file():
        found = json.loads(spec_file.read_text()) if spec_file.is_file() else None
        if found != spec:
            raise ValueError(
                f"the corpus in {root} was made with other settings ({found}) than asked ({spec}); "
                "use another --corpus-dir or delete that folder"
            )
        return np.load(cache, mmap_mode="r")
    paths: List[Path] = []
    for part in parts:
        folder = root / f"{part.category}-{part.seed}"
        if not (folder / "scenes.json").is_file():
            generate_dataset(
                folder,
                part.num_scenes,
                views,
                resolution,
                seed=part.seed,
                category=part.category,
                test_views=0,
                workers=workers,
                overwrite=True,
                progress=False,
            )
        for name in read_scene_names(folder):
            paths += [v.image for v in read_scene(folder, name).views]
    images = load_images(paths).numpy()
    partial = root / "images.partial.npy"
    np.save(partial, images)
    spec_file.write_text(json.dumps(spec))
    partial.replace(cache)
    return images


def random_crops(
    images: np.ndarray, count: int, size: int, generator: np.random.Generator, min_ink: float = 0.05
) -> UInt8[Tensor, "B 3 s s"]:
    """``count`` random ``size``² crops (random horizontal flips) of random images, channels first.

    A crop that is almost all background (fewer than ``min_ink`` of its pixels away from white) is drawn again
    once, so steps are not wasted on empty white squares.
    """
    n, h, w, _ = images.shape
    out = np.empty((count, size, size, 3), dtype=np.uint8)
    for k in range(count):
        for _ in range(2):
            i, y, x = (
                int(generator.integers(n)),
                int(generator.integers(h - size + 1)),
                int(generator.integers(w - size + 1)),
            )
            crop = images[i, y : y + size, x : x + size]
            if (crop.min(-1) < 250).mean() >= min_ink:
                break
        out[k] = crop[:, ::-1] if generator.random() < 0.5 else crop
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def to_unit(images: UInt8[Tensor, "B 3 H W"]) -> Float[Tensor, "B 3 H W"]:
    """uint8 images -> floats in [0, 1]."""
    return images.float() / 255.0


# ----------------------------------------------------------------------------------------------- model
def psnr_of(a: Float[Tensor, "B 3 H W"], b: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B"]:
    """Per-image PSNR in dB of images in [0, 1]."""
    mse = ((a.clamp(0, 1) - b) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return -10.0 * torch.log10(mse)


@torch.no_grad()
def reconstruction_psnr(ae: LatentAutoencoder, images: UInt8[Tensor, "N 3 H W"], batch: int = 8) -> float:
    """Mean PSNR of ``D(E(x))`` over whole images."""
    ae.eval()
    scores = [
        psnr_of(ae(to_unit(images[i : i + batch])), to_unit(images[i : i + batch]))
        for i in range(0, len(images), batch)
    ]
    return float(torch.cat(scores).mean())


@torch.no_grad()
def fitted_normaliser(ae: LatentAutoencoder, images: UInt8[Tensor, "N 3 H W"], batch: int = 8) -> NormaliserConfig:
    """``tanh(scale z)`` with ``scale = 0.5 / std(z)``: one standard deviation of raw latent maps to tanh(0.5)."""
    z = torch.cat([ae.encode_raw(to_unit(images[i : i + batch])) for i in range(0, len(images), batch)])
    return NormaliserConfig(kind="tanh", scale=float(0.5 / z.std().clamp_min(1e-6)))


def _lr_at(step: int, c: AutoencoderTrainingConfig) -> float:
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    t = min(1.0, (step - c.warmup_steps) / max(1, c.steps - c.warmup_steps))
    return c.lr * (c.final_lr_factor + (1 - c.final_lr_factor) * 0.5 * (1 + math.cos(math.pi * t)))


def _atomic_save(obj: object, path: Path) -> None:
    tmp = path.with_suffix(".partial")
    try:
        torch.save(obj, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------- loop
def train_autoencoder(c: AutoencoderTrainingConfig, log: Callable[[str], None] = print) -> Path:
    """Run (or resume) autoencoder-only training; returns the exported ``save_pretrained`` folder."""
    if c.crop % 2 ** (len(c.block_out_channels) - 1):
        raise ValueError(
            f"--crop {c.crop} is not a multiple of the autoencoder factor {2 ** (len(c.block_out_channels) - 1)}"
        )
    torch.set_num_threads(c.threads)
    out = Path(c.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(c), default=str, indent=1))
    parts, holdout = corpus_parts(c)
    if not parts or c.holdout_cars < 1:
        raise ValueError("the corpus needs scenes (--cars/--chairs/--tables) and --holdout-cars >= 1")
    log(f"corpus: {sum(p.num_scenes for p in parts)} scenes x {c.views_per_scene} views at {c.resolution}²")
    t0 = time.perf_counter()
    data = Path(c.corpus_dir) if c.corpus_dir is not None else out
    train = _corpus_array(data / "corpus", parts, c.views_per_scene, c.resolution, c.workers)
    held = torch.from_numpy(
        np.array(_corpus_array(data / "holdout", holdout, c.holdout_views, c.resolution, c.workers))
    ).permute(0, 3, 1, 2)
    log(f"corpus ready: {len(train)} training views, {len(held)} held-out views ({time.perf_counter() - t0:.0f} s)")

    config = kl_autoencoder_config(
        c.block_out_channels,
        c.latent_channels,
        c.layers_per_block,
        c.norm_groups,
        c.mid_attention,
        sample_size=c.resolution,
    )
    ae = build_autoencoder(config, "kl", seed=c.seed)
    opt = torch.optim.Adam(ae.model.parameters(), lr=c.lr)
    step, rng, elapsed = 0, np.random.default_rng(c.seed), 0.0
    state_path = out / STATE_FILE
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        ae.model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, elapsed = state["step"], state["elapsed_s"]
        rng.bit_generator.state = state["rng"]
        log(f"resumed at step {step} ({elapsed / 60:.1f} min trained so far)")

    def save() -> None:
        _atomic_save(
            {
                "model": ae.model.state_dict(),
                "optimizer": opt.state_dict(),
                "step": step,
                "elapsed_s": elapsed,
                "rng": rng.bit_generator.state,
            },
            state_path,
        )

    started, last, losses = time.perf_counter(), time.perf_counter(), []
    with (out / LOG_FILE).open("a") as logfile:
        while step < c.steps:
            ae.train()
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, c)
            whole = step >= c.steps - c.full_image_steps
            size, count = (c.resolution, max(1, c.batch_size // 4)) if whole else (c.crop, c.batch_size)
            x = to_unit(random_crops(train, count, size, rng))
            z = ae.encode_raw(x)
            err = ae.decode_raw(z) - x
            loss = (err**2).mean() + c.latent_penalty * (z**2).mean()
            if c.chroma_weight > 0:
                loss = loss + c.chroma_weight * ((err - err.mean(1, keepdim=True)) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            now = time.perf_counter()
            elapsed += now - last
            last = now
            record: Dict[str, object] = {}
            if step % c.log_every == 0:
                record = {
                    "step": step,
                    "loss": float(np.mean(losses)),
                    "lr": _lr_at(step - 1, c),
                    "minutes": elapsed / 60,
                }
                losses = []
            if step % c.eval_every == 0 or step == c.steps:
                record = {
                    **record,
                    "step": step,
                    "minutes": elapsed / 60,
                    "holdout_psnr": reconstruction_psnr(ae, held),
                }
                last = time.perf_counter()  # evaluation time is not training time
            if record:
                logfile.write(json.dumps(record) + "\n")
                logfile.flush()
                log(json.dumps(record))
            out_of_time = c.max_minutes > 0 and now - started > 60 * c.max_minutes
            if step % c.save_every == 0 or step == c.steps or out_of_time:
                save()
            if out_of_time:
                log(f"stopped at step {step} after --max-minutes {c.max_minutes}; run again to resume")
                return out / EXPORT_DIR
    ae.normaliser = fitted_normaliser(ae, held)
    export = ae.save(out / EXPORT_DIR)
    final = {
        "step": step,
        "minutes": elapsed / 60,
        "final_holdout_psnr": reconstruction_psnr(ae, held),
        "normaliser": ae.normaliser.to_dict(),
    }
    with (out / LOG_FILE).open("a") as logfile:
        logfile.write(json.dumps(final) + "\n")
    log(json.dumps(final))
    return export


def read_log(run: Path) -> List[Dict[str, object]]:
    """The JSON lines of a run's log."""
    path = Path(run) / LOG_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
