"""Autoencoder-only training on a large generated corpus: the first half of how the embedded autoencoder is made.

The recipe (docs/autoencoder.md): generate a corpus of many scenes (cars, plus chairs and tables for variety) at the
target resolution, keep every view in one uint8 array, and train a diffusers ``AutoencoderKL`` on random crops
(convolutions are translation-equivariant, so crops are fair and 4x cheaper than whole 128² images) with
``‖D(E(x)) − x‖²`` on the posterior mean. Held-out scenes of other seeds measure ``D(E(x))`` on whole images.
It trains on ``--device`` (CUDA where there is one, by default, with 32 crops a step instead of the CPU's 8).
The run resumes from its last checkpoint after a stop (``state.pt`` written atomically every ``save_every`` steps,
CPU tensors: a run started on a GPU resumes on the CPU and vice versa; a full disk or a damaged ``state.pt`` is an
error that says so: :mod:`nerfstudio_3dae.checkpoints`),
logs one JSON line per log step and evaluation, and exports a ``save_pretrained`` folder whose latent normaliser is
set from the latents' spread. The 3D-aware joint phase that follows is ``ns-train 3dae-autoencoder`` on the export.

The same loop polishes an autoencoder after that joint phase: ``--start-from`` its export with ``--train-part
decoder`` trains the decoder alone to reconstruct, the encoder frozen and its normaliser kept, so the latent space
(and every tri-plane fitted in it) does not change while ``D(E(x))`` recovers what the joint phase cost it.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from jaxtyping import Float, UInt8
from torch import Tensor

from nerfstudio_3dae.autoencoder import (
    LatentAutoencoder,
    NormaliserConfig,
    build_autoencoder,
    is_encoder_tensor,
    kl_autoencoder_config,
)
from nerfstudio_3dae.autoencoder_source import bases_beside_autoencoder, resolve_autoencoder
from nerfstudio_3dae.checkpoints import atomic_save, load_checkpoint_file
from nerfstudio_3dae.image_layout import to_float
from nerfstudio_3dae.metrics import psnr_per_image

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
    batch_size: Union[int, Literal["auto"]] = "auto"
    """Crops a step; auto: 32 on CUDA (a GPU-sized batch: 26.5 ms a step of 32 64² crops on an H200), 8 on the CPU."""
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
    device: str = "auto"
    """Where the model, each step's crops and the optimiser state live: auto (CUDA when torch.cuda.is_available(),
    else the CPU), cpu, cuda or cuda:N. The export and state.pt hold CPU tensors: they load and resume anywhere."""
    start_from: Optional[str] = None
    """Start from this autoencoder instead of fresh weights: 'embedded', a diffusers folder, or a 3dae-autoencoder
    run (or its autoencoder/ export). Its architecture replaces the block, layer, group, attention and channel
    options; its normaliser is kept in the export (not refitted) and a bases.pt beside it is copied along."""
    train_part: Literal["all", "decoder"] = "all"
    """What learns: 'all' (encoder and decoder), or 'decoder' (needs ``start_from``): the encoder is frozen, so the
    latents, the latent space made 3D-aware by the joint phase, and any tri-plane fitted in it stay exactly as they
    were, while the decoder learns to reconstruct again (the polish after the joint phase, docs/autoencoder.md)."""


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


# ----------------------------------------------------------------------------------------------- model
@torch.no_grad()
def reconstruction_psnr(ae: LatentAutoencoder, images: UInt8[Tensor, "N 3 H W"], batch: int = 8) -> float:
    """Mean PSNR of ``D(E(x))`` over whole images."""
    ae.eval()
    device = next(ae.parameters()).device
    scores = []
    for i in range(0, len(images), batch):
        x = to_float(images[i : i + batch].to(device))
        scores.append(psnr_per_image(ae(x), x))
    return float(torch.cat(scores).mean())


@torch.no_grad()
def fitted_normaliser(ae: LatentAutoencoder, images: UInt8[Tensor, "N 3 H W"], batch: int = 8) -> NormaliserConfig:
    """``tanh(scale z)`` with ``scale = 0.5 / std(z)``: one standard deviation of raw latent maps to tanh(0.5)."""
    z = torch.cat([ae.encode_raw(to_float(images[i : i + batch])) for i in range(0, len(images), batch)])
    return NormaliserConfig(kind="tanh", scale=float(0.5 / z.std().clamp_min(1e-6)))


def _lr_at(step: int, c: AutoencoderTrainingConfig) -> float:
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    t = min(1.0, (step - c.warmup_steps) / max(1, c.steps - c.warmup_steps))
    return c.lr * (c.final_lr_factor + (1 - c.final_lr_factor) * 0.5 * (1 + math.cos(math.pi * t)))


# ----------------------------------------------------------------------------------------------- device
CUDA_BATCH_SIZE = 32
"""``--batch-size auto`` on CUDA: the GPU run's 32 crops of 64² (26.5 ms a step on an H200, docs/autoencoder.md)."""
CPU_BATCH_SIZE = 8
"""``--batch-size auto`` on the CPU: the CPU recipe's 8 crops."""


def resolve_device(spec: str) -> torch.device:
    """``--device``: ``auto`` (CUDA when ``torch.cuda.is_available()``, else the CPU), ``cpu``, ``cuda`` or
    ``cuda:N``. A CUDA device that is not there is an error naming the option."""
    name = str(spec).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not re.fullmatch(r"cuda(:\d+)?", name):
        raise ValueError(f"--device {spec!r} is none of auto, cpu, cuda, cuda:N")
    if not torch.cuda.is_available():
        raise ValueError(
            f"--device {spec}: no CUDA device is visible (torch.cuda.is_available() is False); use --device cpu or auto"
        )
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def resolve_batch_size(batch_size: Union[int, str], device: torch.device) -> int:
    """``--batch-size``: an integer as given; ``auto`` is :data:`CUDA_BATCH_SIZE` on CUDA, :data:`CPU_BATCH_SIZE`
    on the CPU."""
    if batch_size == "auto":
        return CUDA_BATCH_SIZE if device.type == "cuda" else CPU_BATCH_SIZE
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"--batch-size {batch_size!r} is neither auto nor a positive integer")
    return batch_size


def describe_device(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H200)`` or ``cpu (1 thread)``."""
    if device.type == "cuda":
        return f"cuda:{device.index or 0} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''})"


def _to_cpu(obj: object) -> object:
    """A (nested) state dict with every tensor on the CPU (tensors already there are kept, not copied)."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def load_state(path: Path) -> Dict[str, object]:
    """A ``state.pt``, whatever device wrote it, with its tensors on the CPU (``map_location="cpu"``): a state made
    on a GPU loads where there is none. ``load_state_dict`` then puts the weights and Adam's moments on the resumed
    run's device, and leaves Adam's step counters on the CPU, where a non-fused Adam wants them (mapped to CUDA,
    every step would read them back to the host). A damaged file (cut short by a crash or a full disk) is a
    :class:`~nerfstudio_3dae.checkpoints.DamagedCheckpointError` naming it."""
    advice = f"Delete it to start the run in {path.parent} over (its corpus is kept), or restore it from a copy."
    return load_checkpoint_file(path, map_location="cpu", weights_only=False, advice=advice)


# ----------------------------------------------------------------------------------------------- loop
class _Run:
    """One run's model, optimiser, progress and files, on one device."""

    def __init__(self, c: AutoencoderTrainingConfig, out: Path, device: torch.device) -> None:
        self.c, self.out, self.device = c, out, device
        self.batch_size = resolve_batch_size(c.batch_size, device)
        if c.start_from is not None:
            self.ae = resolve_autoencoder(c.start_from).to(device)
        else:
            config = kl_autoencoder_config(
                c.block_out_channels,
                c.latent_channels,
                c.layers_per_block,
                c.norm_groups,
                c.mid_attention,
                sample_size=c.resolution,
            )
            self.ae = build_autoencoder(config, "kl", seed=c.seed).to(device)
        if c.crop % self.ae.factor:
            raise ValueError(f"--crop {c.crop} is not a multiple of the autoencoder factor {self.ae.factor}")
        learning = []
        for name, param in self.ae.model.named_parameters():
            param.requires_grad_(c.train_part == "all" or not is_encoder_tensor(name))
            if param.requires_grad:
                learning.append(param)
        self.opt = torch.optim.Adam(learning, lr=c.lr)
        self.step, self.elapsed, self.rng = 0, 0.0, np.random.default_rng(c.seed)

    @property
    def state_path(self) -> Path:
        return self.out / STATE_FILE

    def resume(self) -> bool:
        """Continue from ``state.pt`` if there is one (made on any device)."""
        if not self.state_path.is_file():
            return False
        state = load_state(self.state_path)
        self.ae.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.step, self.elapsed = state["step"], state["elapsed_s"]
        self.rng.bit_generator.state = state["rng"]
        return True

    def save(self) -> None:
        """``state.pt``, atomically (after checking the disk has room), every tensor on the CPU."""
        state = {"model": self.ae.model.state_dict(), "optimizer": self.opt.state_dict()}
        atomic_save(
            {**_to_cpu(state), "step": self.step, "elapsed_s": self.elapsed, "rng": self.rng.bit_generator.state},
            self.state_path,
        )

    def batch(self, train: np.ndarray) -> Float[Tensor, "B 3 s s"]:
        """This step's crops (or whole images in the last ``full_image_steps``) on the device, in [0, 1]."""
        c = self.c
        whole = self.step >= c.steps - c.full_image_steps
        size, count = (c.resolution, max(1, self.batch_size // 4)) if whole else (c.crop, self.batch_size)
        crops = random_crops(train, count, size, self.rng)
        if self.device.type == "cuda":  # uint8 over the bus (4x less than floats), from pinned memory, asynchronously
            crops = crops.pin_memory().to(self.device, non_blocking=True)
        return to_float(crops)

    def train_step(self, x: Float[Tensor, "B 3 s s"]) -> Float[Tensor, ""]:
        """One Adam step on ``x``; the loss, detached, on the device (not read back: no host sync)."""
        c, ae = self.c, self.ae
        ae.train()
        for g in self.opt.param_groups:
            g["lr"] = _lr_at(self.step, c)
        if c.train_part == "decoder":
            with torch.no_grad():
                z = ae.encode_raw(x)
            err = ae.decode_raw(z) - x
            loss = (err**2).mean()  # mean(z²) is a constant: the encoder does not learn
        else:
            z = ae.encode_raw(x)
            err = ae.decode_raw(z) - x
            loss = (err**2).mean() + c.latent_penalty * (z**2).mean()
        if c.chroma_weight > 0:
            loss = loss + c.chroma_weight * ((err - err.mean(1, keepdim=True)) ** 2).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step += 1
        return loss.detach()


def _prepare(c: AutoencoderTrainingConfig) -> Tuple[Path, torch.device]:
    """Check the options, set the threads, write the run folder's config.json; the folder and the device."""
    factor = 2 ** (len(c.block_out_channels) - 1)
    if c.start_from is None and c.crop % factor:
        raise ValueError(f"--crop {c.crop} is not a multiple of the autoencoder factor {factor}")
    if not corpus_parts(c)[0] or c.holdout_cars < 1:
        raise ValueError("the corpus needs scenes (--cars/--chairs/--tables) and --holdout-cars >= 1")
    if c.train_part == "decoder" and c.start_from is None:
        raise ValueError("--train-part decoder polishes a trained autoencoder: name it with --start-from")
    device = resolve_device(c.device)
    resolve_batch_size(c.batch_size, device)
    torch.set_num_threads(c.threads)
    out = Path(c.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(c), default=str, indent=1))
    return out, device


def _corpora(c: AutoencoderTrainingConfig, out: Path, log: Callable[[str], None]) -> Tuple[np.ndarray, Tensor]:
    """The training views (``[N, H, W, 3]`` uint8, host memory) and the held-out views (``[M, 3, H, W]`` uint8)."""
    parts, holdout = corpus_parts(c)
    log(f"corpus: {sum(p.num_scenes for p in parts)} scenes x {c.views_per_scene} views at {c.resolution}²")
    t0 = time.perf_counter()
    data = Path(c.corpus_dir) if c.corpus_dir is not None else out
    train = _corpus_array(data / "corpus", parts, c.views_per_scene, c.resolution, c.workers)
    held = torch.from_numpy(
        np.array(_corpus_array(data / "holdout", holdout, c.holdout_views, c.resolution, c.workers))
    ).permute(0, 3, 1, 2)
    log(f"corpus ready: {len(train)} training views, {len(held)} held-out views ({time.perf_counter() - t0:.0f} s)")
    return train, held


def _write(logfile, record: Dict[str, object], log: Callable[[str], None]) -> None:
    logfile.write(json.dumps(record) + "\n")
    logfile.flush()
    log(json.dumps(record))


def _train_loop(run: _Run, train: np.ndarray, held: Tensor, log: Callable[[str], None]) -> bool:
    """Train to ``c.steps`` (True) or until ``--max-minutes`` (False, with a checkpoint). Losses are summed on the
    device and read back only at log steps."""
    c = run.c
    started = last = time.perf_counter()
    loss_sum, count = torch.zeros((), dtype=torch.float64, device=run.device), 0
    with (run.out / LOG_FILE).open("a") as logfile:
        start = {"device": str(run.device), "batch_size": run.batch_size, "from_step": run.step}
        _write(logfile, start, lambda line: None)
        while run.step < c.steps:
            loss_sum += run.train_step(run.batch(train)).double()
            count += 1
            step, now = run.step, time.perf_counter()
            run.elapsed, last = run.elapsed + now - last, now
            record: Dict[str, object] = {}
            if step % c.log_every == 0:
                record = {"step": step, "loss": float(loss_sum) / count, "lr": _lr_at(step - 1, c)}
                record["minutes"] = run.elapsed / 60
                loss_sum.zero_()
                count = 0
            if step % c.eval_every == 0 or step == c.steps:
                psnr = reconstruction_psnr(run.ae, held)
                record = {**record, "step": step, "minutes": run.elapsed / 60, "holdout_psnr": psnr}
                last = time.perf_counter()  # evaluation time is not training time
            if record:
                _write(logfile, record, log)
            out_of_time = c.max_minutes > 0 and now - started > 60 * c.max_minutes
            if step % c.save_every == 0 or step == c.steps or out_of_time:
                run.save()
            if out_of_time:
                log(f"stopped at step {step} after --max-minutes {c.max_minutes}; run again to resume")
                return False
    return True


def _export(run: _Run, held: Tensor, log: Callable[[str], None]) -> Path:
    """Fit the normaliser (kept as it was with ``--start-from``), measure the held-out views, save the
    ``save_pretrained`` folder with CPU tensors (and the start's bases.pt beside it)."""
    ae, c = run.ae, run.c
    if c.start_from is None:
        ae.normaliser = fitted_normaliser(ae, held)
    psnr = reconstruction_psnr(ae, held)
    export = ae.to("cpu").save(run.out / EXPORT_DIR)  # CPU tensors: a folder made on a GPU loads anywhere
    bases = bases_beside_autoencoder(c.start_from) if c.start_from is not None else None
    if bases is not None:
        shutil.copy2(bases, export / bases.name)
    final = {"step": run.step, "minutes": run.elapsed / 60, "final_holdout_psnr": psnr}
    final["normaliser"] = ae.normaliser.to_dict()
    with (run.out / LOG_FILE).open("a") as logfile:
        logfile.write(json.dumps(final) + "\n")
    log(json.dumps(final))
    return export


def train_autoencoder(c: AutoencoderTrainingConfig, log: Callable[[str], None] = print) -> Path:
    """Run (or resume) autoencoder-only training on ``c.device``; returns the exported ``save_pretrained`` folder
    (its path also when ``--max-minutes`` stopped the run before the export)."""
    out, device = _prepare(c)
    train, held = _corpora(c, out, log)
    run = _Run(c, out, device)
    log(f"device: {describe_device(device)}; {run.batch_size} crops of {c.crop}² a step")
    if run.resume():
        log(f"resumed at step {run.step} ({run.elapsed / 60:.1f} min trained so far)")
    if not _train_loop(run, train, held.to(device), log):
        return out / EXPORT_DIR
    return _export(run, held.to(device), log)


def read_log(run: Path) -> List[Dict[str, object]]:
    """The JSON lines of a run's log."""
    path = Path(run) / LOG_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
