"""``ns-3dae-bench``: benchmarks of 3dae, one subcommand each.

``ns-3dae-bench scaling --preset small --output scaling.json`` times a latent-space training step for N = 10, 100
and 1000 scenes with row-sparse updates and with the dense reference, prints a table and writes the JSON.

``ns-3dae-bench compare --preset small --output DIR`` trains the same scenes with 3dae-rgb (RGB Tri-Planes, the
paper's baseline) and with 3dae-latent (in the latent space of a 3dae-autoencoder run on other scenes) and writes
compare.json, compare.md and plots to DIR (docs/benchmarks.md). The scenes are generated, or two disjoint
selections of a dataset: ``--data DIR --stage1-scenes 0:4 --scenes 4:10``. ``--mode convergence`` (``--preset
paper50``'s default) trains each method until its test PSNR plateaus or its step cap.

``ns-3dae-bench step-memory --image-size 128`` measures single training steps of 3dae-rgb and 3dae-latent with the
method defaults: wall time, ``torch.cuda.max_memory_allocated`` on CUDA, autograd's saved tensors and peak RSS.

``ns-3dae-bench skipping --preset small`` trains 3dae-rgb and 3dae-latent each without and with per-scene occupancy
grids (skipping empty space), interleaved, and prints training time, samples per step and test PSNR side by side
(skipping.json, skipping.md; docs/sampling.md).

``ns-3dae-bench quality --preset medium`` follows the decoded PSNR of 3dae-latent stage by stage (D(E(x)) before and
after stage 1, the latent fit on training and test views, decoded before and after the decoded phase) against RGB
Tri-Planes on the same scenes, for each lever (schedule or option set) named by ``--levers`` (quality.json,
quality.md; docs/quality.md).

``ns-3dae-bench step-profile --device cpu`` profiles steady-state training steps of both methods (3dae-latent in both
phases) after the occupancy grids' warm-up: wall time per phase (data, forward, occupancy, loss, backward, optimiser,
callbacks), dispatched operators, host syncs by kind, the top operators, and the time per step unprofiled
(step-profile.json, step-profile.md; docs/gpu.md).

``ns-3dae-bench reconstruction --autoencoders embedded my-ae --data data/cars`` measures D(E(x)) of autoencoders on
datasets' views side by side (reconstruction.json, reconstruction.md; docs/autoencoder.md).

A new benchmark is one class with a ``main()`` method and one entry of :data:`COMMANDS`.
"""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Literal, Optional, Tuple, Type

import tyro
from rich.console import Console
from rich.table import Table

# nerfstudio 1.1.5 on recent torch: upstream deprecation noise (at import and per step), not ours
warnings.filterwarnings("ignore", message="Using a non-tuple sequence")
warnings.filterwarnings("ignore", category=FutureWarning)

from nerfstudio_3dae.bench.scaling import Mode, ScalingConfig, run_scaling  # noqa: E402
from nerfstudio_3dae.data.layout import DatasetError  # noqa: E402

CONSOLE = Console(width=None if sys.stdout.isatty() else 120)


def _mib(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:,.1f}"


def scaling_table(result: Dict) -> Table:
    """The scaling figures, sparse beside dense, one row per scene count (times in ms, memory in MiB)."""
    table = Table(
        title=f"ns-3dae-bench scaling, preset {result['preset']} ({result['device']})",
        caption="s: sparse grads + RowSparseAdam, d: dense grads + Adam; step and optimizer (opt) times in ms, "
        "peak RSS and scene-table gradients in MiB",
    )
    for name in ("N", "step s", "step d", "d/s", "opt s", "opt d", "RSS s", "RSS d", "grad s", "grad d"):
        table.add_column(name, justify="right")
    sparse, dense = result, result["dense"]
    for n in map(str, result["scene_counts"]):
        s_t, d_t = sparse["step_time_s"][n], dense["step_time_s"][n]
        s_o, d_o = sparse["phase_time_s"]["optimizer"][n], dense["phase_time_s"]["optimizer"][n]
        table.add_row(
            n,
            f"{1e3 * s_t:.1f}",
            f"{1e3 * d_t:.1f}",
            f"{d_t / s_t:.2f}",
            f"{1e3 * s_o:.1f}",
            f"{1e3 * d_o:.1f}",
            _mib(sparse["peak_rss_bytes"][n]),
            _mib(dense["peak_rss_bytes"][n]),
            _mib(sparse["scene_grad_bytes"][n]),
            _mib(dense["scene_grad_bytes"][n]),
        )
    return table


def _summary_lines(result: Dict) -> str:
    lines = []
    for label, part in (("sparse", result), ("dense", result["dense"])):
        per_scene, shared = part["bytes_per_scene"], part["shared_bytes"]
        lines.append(
            f"{label:>6}: largest N vs smallest: step time x{part['step_time_ratio']:.2f}, step CPU time "
            f"x{part['step_cpu_time_ratio']:.2f}, optimizer time x{part['optimizer_time_ratio']:.2f}; per scene "
            f"{per_scene['params'] / 1024:,.1f} KiB params + {per_scene['optimizer_state'] / 1024:,.1f} KiB optimizer "
            f"state; shared {_mib(shared['params'])} MiB params + {_mib(shared['optimizer_state'])} MiB state"
        )
    return "\n".join(lines)


@dataclass
class Scaling(ScalingConfig):
    """Time a latent-space training step for N = 10, 100, 1000 scenes: row-sparse updates vs dense Adam."""

    output: Optional[Path] = None
    """Write the figures to this JSON file."""

    def main(self) -> None:
        def progress(mode: Mode, num_scenes: int, figures: Dict[str, float]) -> None:
            wall, cpu = 1e3 * figures["step_time_s"], 1e3 * figures["step_cpu_time_s"]
            CONSOLE.print(f"  {mode:>6} N={num_scenes:<5} {wall:8.1f} ms/step ({cpu:.1f} ms CPU)")

        where = "one fresh process per (mode, N)" if self.fresh_process else "in this process"
        CONSOLE.print(f"[bold]scaling[/bold] preset {self.preset}, {where}")
        result = run_scaling(self, on_run=progress)
        CONSOLE.print(scaling_table(result))
        CONSOLE.print(_summary_lines(result))
        if self.output is not None:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            self.output.write_text(json.dumps(result, indent=2) + "\n")
            CONSOLE.print(f"wrote {self.output}")


@dataclass
class Compare:
    """3dae-rgb (RGB Tri-Planes) vs 3dae-latent on the same scenes: time per scene to a PSNR target, PSNR/SSIM,
    memory per scene (resident, and the paper's effective accounting), render time, stage-1 cost amortised over N.
    With --mode convergence (paper50's default) each method trains until its test PSNR plateaus or its step cap, and
    the figures at convergence come first (plateau PSNR, time to it, plateaued or not, time ratio at RGB plateau −
    --target-margin-db); the equal-budget figures follow."""

    preset: Literal["tiny", "small", "medium", "paper50", "paper", "gpu"] = "small"
    """Sizes and steps. tiny: the code path in seconds (tests); small: 64², about 15 min on a 2-core CPU;
    medium: 128², R = 64, about 45 min on a 2-core CPU; paper50: medium's sizes with the paper's 50 views a scene (10
    test) in convergence mode (estimated ~1 h 40 min on a 2-core CPU with both caps hit); paper: the paper's sizes
    (GPU); gpu: 256 scenes at 128², each method at the batch that fills a GPU (about 10-15 min on one H200,
    estimated)."""
    mode: Optional[Literal["convergence", "equal-budget"]] = None
    """convergence: each method trains its equal-budget steps, then on until its test PSNR plateaus (the rule of
    --plateau-window, --plateau-min-window-steps and --plateau-min-gain-db, checked at every evaluation) or its step
    cap; equal-budget: the preset's steps only. Default: the preset's (convergence for paper50, equal-budget for the
    others)."""
    rgb_step_cap: Optional[int] = None
    """Convergence mode: most steps of 3dae-rgb (default: the preset's; 4 × its equal-budget steps if it names none)."""
    latent_step_cap: Optional[int] = None
    """Convergence mode: most steps of 3dae-latent (default: the preset's, or 4 × its equal-budget steps)."""
    plateau_window: Optional[float] = None
    """The plateau rule's window, a fraction of the steps trained so far (default: the preset's, 0.2: the last
    20 %)."""
    plateau_min_window_steps: Optional[int] = None
    """The plateau rule's window is at least this many steps: the window is the larger of --plateau-window's fraction
    and this (default: the preset's, 200; tiny: 8; 0: the fraction alone)."""
    plateau_min_gain_db: Optional[float] = None
    """The plateau rule: a curve has plateaued when its best test PSNR rose by less than this over the window, with
    at least 2 evaluations in the window and 1 before it; its plateau is reached at the first evaluation within this
    of its best (default: the preset's, 0.1 dB)."""
    output: Path = Path("outputs/bench-compare")
    """Folder for compare.json, compare.md, the plots, the generated data and the runs."""
    data: Optional[Path] = None
    """A 3dae-scenes dataset to compare on (converter output, nerfstudio/Blender scenes); needs --stage1-scenes and
    --scenes. Without it the preset's scenes are generated."""
    stage1_scenes: Optional[str] = None
    """With --data: the scenes of the stage-1 autoencoder run (a --scenes spec such as '0:4')."""
    scenes: Optional[str] = None
    """With --data: the compared scenes, trained by both methods; must not overlap --stage1-scenes."""
    downscale_factor: int = 1
    """The dataparser's downscale_factor for every run (e.g. 2: a 128² dataset at 64²)."""
    ablation: bool = False
    """Also train the ablation: 3dae-rgb with the latent method's micro/macro bank (a third run)."""
    autoencoder: str = "embedded"
    """Where stage 1 (3dae-autoencoder) starts from: 'embedded', 'scratch', a diffusers folder or a hub id."""
    target_margin_db: float = 0.5
    """The PSNR target is the RGB run's final test PSNR minus this (in convergence mode also: its plateau PSNR minus
    this)."""
    threads: int = 0
    """Torch CPU threads (0: torch's default)."""
    seed: int = 0
    """Seed of the generated scenes (stage-1 scenes use seed + 1000)."""
    clock: Optional[Literal["wall", "cpu"]] = None
    """What the times are: wall seconds, or cpu: the process's CPU seconds (all its threads), which another process
    on the same cores does not inflate. Default: cpu on the CPU, wall on CUDA."""
    resume: bool = False
    """Read back the stages (stage 1, RGB, latent, ablation) that an earlier compare into the same --output finished
    with the same settings, and run only the rest: a compare stopped part-way goes on where it was."""

    def main(self) -> None:
        import torch

        from nerfstudio_3dae.bench.compare import resolve_preset, run_compare
        from nerfstudio_3dae.bench.report import markdown_table, write_outputs

        try:
            preset = resolve_preset(
                self.preset, self.mode, rgb_step_cap=self.rgb_step_cap, latent_step_cap=self.latent_step_cap,
                plateau_window=self.plateau_window, plateau_min_gain_db=self.plateau_min_gain_db,
                plateau_min_window_steps=self.plateau_min_window_steps,
            )  # fmt: skip
        except ValueError as err:
            CONSOLE.print(f"[bold red]error:[/bold red] {err}")
            sys.exit(2)
        if self.threads > 0:
            torch.set_num_threads(self.threads)
        where = (
            f"{self.data} (stage 1: {self.stage1_scenes}, compared: {self.scenes})" if self.data else "generated scenes"
        )
        mode = "convergence" if preset.convergence else "equal-budget"
        CONSOLE.print(f"[bold]compare[/bold] preset {self.preset} ({mode}) on {where} -> {self.output}")
        result = run_compare(
            self.preset,
            self.output,
            self.autoencoder,
            self.target_margin_db,
            self.seed,
            log=CONSOLE.print,
            data=self.data,
            stage1_scenes=self.stage1_scenes,
            scenes=self.scenes,
            downscale_factor=self.downscale_factor,
            ablation=self.ablation,
            preset=preset,
            clock=self.clock,
            resume=self.resume,
        )
        for path in write_outputs(result, self.output):
            CONSOLE.print(f"wrote {path}")
        CONSOLE.print(markdown_table(result))


@dataclass
class Finetune:
    """Stage 3 measured: 3dae-latent on the same scenes for each autoencoder and decoder fine-tune learning rate,
    the decoded test PSNR through the whole fine-tune (finetune.json, finetune.md)."""

    data: Path
    """A 3dae-scenes dataset (the scenes must be new to the autoencoders)."""
    output: Path = Path("outputs/bench-finetune")
    """Folder for finetune.json, finetune.md and the runs."""
    autoencoders: Tuple[str, ...] = ("embedded",)
    """Autoencoders to compare ('embedded', folders, 3dae-autoencoder runs, hub ids)."""
    decoder_lrs: Tuple[float, ...] = (1e-4, 3e-4, 1e-3)
    """Decoder learning rates of the fine-tune."""
    scenes: str = ":"
    """The scenes to train (a --scenes spec)."""
    preset: Literal["tiny", "small", "medium", "paper", "gpu"] = "medium"
    """Tri-plane sizes, samples and batch of ns-3dae-bench compare's preset."""
    latent_steps: int = 1000
    """Stage-2 steps (latent space) before the fine-tune."""
    finetune_steps: int = 300
    """Fine-tune steps."""
    eval_every: int = 50
    """Steps between evaluations of all test views."""

    def main(self) -> None:
        from nerfstudio_3dae.bench.finetune import finetune_table, run_finetune_sweep

        result = run_finetune_sweep(
            self.data,
            self.output,
            self.autoencoders,
            self.decoder_lrs,
            self.scenes,
            self.preset,
            self.latent_steps,
            self.finetune_steps,
            self.eval_every,
            log=CONSOLE.print,
        )
        CONSOLE.print(finetune_table(result))
        CONSOLE.print(f"wrote {self.output / 'finetune.json'}")


def step_memory_table(result: Dict) -> Table:
    """One row per measured training step: wall time and the three memory figures (MiB)."""
    table = Table(
        title=f"ns-3dae-bench step-memory ({result['device']}, {result['image_size'] or 'dataset'}² views)",
        caption="CUDA peak: torch.cuda.max_memory_allocated over the step (reset before it), resident: allocated "
        "before it; saved: tensors autograd kept for backward; RSS: the process's peak resident set so far",
    )
    for name in ("method", "step", "seconds", "CUDA peak", "CUDA resident", "saved", "peak RSS"):
        table.add_column(name, justify="right")
    for row in result["steps"]:
        cuda = [_mib(row[k]) if row[k] is not None else "-" for k in ("cuda_peak_bytes", "cuda_resident_bytes")]
        table.add_row(
            row["method"], str(row["step"]), f"{row['seconds']:.3f}", *cuda, _mib(row["saved_bytes"]),
            _mib(row["rss_peak_bytes"]),
        )  # fmt: skip
    return table


@dataclass
class StepMemory:
    """Peak memory and wall time of single training steps of 3dae-rgb and 3dae-latent with the method defaults (CUDA:
    torch.cuda.max_memory_allocated; any device: autograd's saved tensors and peak RSS)."""

    image_size: int = 128
    """Side of the generated views (a multiple of 8)."""
    device: Literal["auto", "cuda", "cpu"] = "auto"
    """Where to train (auto: CUDA when visible)."""
    methods: Tuple[Literal["3dae-rgb", "3dae-latent"], ...] = ("3dae-rgb", "3dae-latent")
    """The methods to measure."""
    steps: int = 2
    """Training steps measured per method (step 0 also creates the optimiser state)."""
    data: Optional[Path] = None
    """A 3dae-scenes dataset to train on instead of generated cars."""
    output: Path = Path("outputs/bench-step-memory")
    """Folder for the generated data, the runs and step_memory.json."""
    threads: int = 0
    """Torch CPU threads (0: torch's default)."""

    def main(self) -> None:
        import torch

        from nerfstudio_3dae.bench.step_memory import run_step_memory

        if self.threads > 0:
            torch.set_num_threads(self.threads)
        result = run_step_memory(
            self.output, self.image_size, self.device, self.methods, self.steps, self.data, log=CONSOLE.print
        )
        CONSOLE.print(step_memory_table(result))
        for row in result["steps"]:  # one parseable line per step (scripts/gpu_check.sh reads them)
            peak = row["cuda_peak_bytes"] if row["cuda_peak_bytes"] is not None else row["saved_bytes"]
            kind = "cuda_peak_bytes" if row["cuda_peak_bytes"] is not None else "saved_bytes"
            CONSOLE.print(
                f"step-memory {row['method']} step {row['step']}: {kind}={peak} seconds={row['seconds']:.3f}",
                soft_wrap=True, highlight=False,
            )  # fmt: skip
        path = self.output / "step_memory.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        CONSOLE.print(f"wrote {path}")


@dataclass
class Skipping:
    """Skipping empty space measured: 3dae-rgb and 3dae-latent on the same generated scenes, each trained without and
    with per-scene occupancy grids, the two runs one step each in turn (skipping.json, skipping.md)."""

    preset: Literal["tiny", "small", "medium", "paper", "gpu"] = "small"
    """Scenes, views, image size, tri-plane sizes and schedules (nerfstudio_3dae.bench.presets)."""
    output: Path = Path("outputs/bench-skipping")
    """Folder for the generated data, the runs, skipping.json and skipping.md."""
    rgb_steps: Optional[int] = None
    """3dae-rgb training steps (default: the preset's)."""
    latent_steps: Optional[int] = None
    """3dae-latent training steps, decoder fine-tune included at the preset's share (default: the preset's)."""
    occupancy_resolution: int = 32
    """Cells per side of the grids of the runs with skipping (capped at the tri-plane resolution)."""
    occupancy_warmup: Optional[int] = None
    """Training batches that must hold a scene before its grid is used (default: the model's; short runs need
    fewer)."""
    methods: Tuple[Literal["rgb", "latent"], ...] = ("rgb", "latent")
    """The methods to measure."""
    threads: int = 0
    """Torch CPU threads (0: torch's default)."""
    seed: int = 0
    """Seed of the generated scenes and of the training runs."""

    def main(self) -> None:
        import torch

        from nerfstudio_3dae.bench.skipping import format_report, run_skipping, skipping_preset

        try:
            skipping_preset(
                self.preset, self.occupancy_resolution, self.methods, self.rgb_steps, self.latent_steps,
                self.occupancy_warmup,
            )  # fmt: skip
        except ValueError as err:
            CONSOLE.print(f"[bold red]error:[/bold red] {err}")
            sys.exit(2)
        if self.threads > 0:
            torch.set_num_threads(self.threads)
        result = run_skipping(
            self.preset,
            self.output,
            self.occupancy_resolution,
            self.seed,
            log=CONSOLE.print,
            methods=self.methods,
            rgb_steps=self.rgb_steps,
            latent_steps=self.latent_steps,
            occupancy_warmup=self.occupancy_warmup,
        )
        report = format_report(result)
        self.output.mkdir(parents=True, exist_ok=True)
        (self.output / "skipping.json").write_text(json.dumps(result, indent=2) + "\n")
        (self.output / "skipping.md").write_text(report + "\n")
        CONSOLE.print(report, soft_wrap=True, highlight=False)
        CONSOLE.print(f"wrote {self.output / 'skipping.json'} and {self.output / 'skipping.md'}")


@dataclass
class Quality:
    """Where the decoded dB of 3dae-latent go, stage by stage, and what each lever buys, against RGB Tri-Planes on
    the same scenes (quality.json, quality.md; resumable: run again with the same --output)."""

    preset: Literal["tiny", "small", "medium", "paper", "gpu"] = "medium"
    """Sizes and steps (those of ns-3dae-bench compare)."""
    output: Path = Path("outputs/bench-quality")
    """Folder for quality.json, quality.md, the generated data and the runs."""
    levers: Tuple[str, ...] = ("stage3-late", "decode-scene-early")
    """Levers to train (nerfstudio_3dae.bench.quality.LEVERS): stage3-late, stage3-half, decode-scene-half,
    decode-scene-early, decode-scene-frozen, decode-scene-rgb-only, decode-scene-start, decode-scene-dlr1e-3,
    capacity-r32, capacity-micro20, decode-scene-jitter, defaults."""
    data: Optional[Path] = None
    """A 3dae-scenes dataset (needs --stage1-scenes and --scenes); without it the preset's scenes are generated."""
    stage1_scenes: Optional[str] = None
    """With --data: the scenes of the stage-1 autoencoder run."""
    scenes: Optional[str] = None
    """With --data: the compared scenes; must not overlap --stage1-scenes."""
    downscale_factor: int = 1
    """The dataparser's downscale_factor for every run."""
    autoencoder: str = "embedded"
    """Where stage 1 starts from: 'embedded', a diffusers folder, a 3dae-autoencoder run or a hub id."""
    stage1_ae_weight: Optional[float] = None
    """Weight of ‖D(E(x)) − x‖² in stage 1's joint phase (default: the 3dae-autoencoder method's 0.1)."""
    stage1_steps: Optional[int] = None
    """Steps of stage 1 (half of them warm-up; default: the preset's); 0: no stage 1, the levers train in the latent
    space of --autoencoder as it is (what ns-train 3dae-latent does with the embedded autoencoder)."""
    rgb_from: Optional[Path] = None
    """A quality.json on the same scenes (preset, data, selections, seed) whose RGB Tri-Planes run is reused."""
    max_views: int = 16
    """Training views scored for the train-side figures (spread over the scenes)."""
    threads: int = 0
    """Torch CPU threads (0: torch's default)."""
    seed: int = 0
    """Seed of the generated scenes."""

    def main(self) -> None:
        import torch

        from nerfstudio_3dae.bench.quality import LEVERS, QualitySettings, quality_tables, run_quality

        unknown = [name for name in self.levers if name not in LEVERS]
        if unknown:
            CONSOLE.print(f"[bold red]error:[/bold red] --levers: unknown {unknown} (choose from {', '.join(LEVERS)})")
            sys.exit(2)
        if self.threads > 0:
            torch.set_num_threads(self.threads)
        settings = QualitySettings(
            self.preset, list(self.levers), self.autoencoder, self.data and str(self.data), self.stage1_scenes,
            self.scenes, self.downscale_factor, self.seed, self.stage1_ae_weight, self.stage1_steps,
        )  # fmt: skip
        try:
            result = run_quality(settings, self.output, self.max_views, log=CONSOLE.print, rgb_from=self.rgb_from)
        except ValueError as err:
            CONSOLE.print(f"[bold red]error:[/bold red] {err}")
            sys.exit(2)
        CONSOLE.print(quality_tables(result), soft_wrap=True, highlight=False)
        CONSOLE.print(f"wrote {self.output / 'quality.json'} and {self.output / 'quality.md'}")


@dataclass
class StepProfile:
    """Where a steady-state training step of 3dae-rgb and 3dae-latent (both phases) goes (method defaults), after the
    occupancy grids' warm-up: wall time per phase, dispatched operators, host syncs by kind, the top operators, and
    the time per step without the profiler (step-profile.json, step-profile.md)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the steps run (auto: CUDA when torch sees one)."""
    image_size: int = 64
    """Side of the generated views."""
    output: Path = Path("outputs/bench-step-profile")
    """Folder for step-profile.json, step-profile.md and the generated data."""
    methods: Tuple[Literal["3dae-rgb", "3dae-latent"], ...] = ("3dae-rgb", "3dae-latent")
    """The methods to profile."""
    warmup: int = 5
    """Steps before the measured ones (the first steps create optimiser state and caches); the warm-up then goes on
    until every scene's occupancy grid has been computed (--pipeline.model.occupancy-warmup batches per scene)."""
    steps: int = 5
    """Profiled steps, the first of them updating the occupancy grids (as every few steps do); as many are then timed
    unprofiled in each round."""
    latent_phases: Tuple[Literal["latent", "decoded"], ...] = ("latent", "decoded")
    """The phases of 3dae-latent to profile, each from a fresh run: 'latent' (cached latents, the first quarter of the
    default schedule) and 'decoded' (RGB through the decoder, the rest); with both, the decoded step's unprofiled time
    over the latent step's is printed."""
    compile_renderer: bool = False
    """Profile with --pipeline.model.compile-renderer (the compiling happens during the warm-up steps)."""
    rounds: int = 3
    """Rounds of unprofiled timing: each round times --steps steps of every method and phase in turn (the median
    round is reported), so that a shared machine's changing load weighs on all of them alike."""

    def main(self) -> None:
        from nerfstudio_3dae.bench.step_profile import run_step_profile, step_profile_table

        bad = self.warmup < 0 or self.steps < 1 or self.rounds < 1 or not self.latent_phases
        if bad or self.image_size < 8 or self.image_size % 8:
            CONSOLE.print(
                "[bold red]error:[/bold red] --warmup >= 0, --steps >= 1, --rounds >= 1, --image-size a multiple of 8, "
                "--latent-phases latent and/or decoded"
            )
            sys.exit(2)
        result = run_step_profile(
            self.output,
            self.image_size,
            self.device,
            self.methods,
            self.warmup,
            self.steps,
            log=CONSOLE.print,
            phases=self.latent_phases,
            rounds=self.rounds,
            compile_renderer=self.compile_renderer,
        )
        table = step_profile_table(result)
        self.output.mkdir(parents=True, exist_ok=True)
        (self.output / "step-profile.json").write_text(json.dumps(result, indent=2) + "\n")
        (self.output / "step-profile.md").write_text(table)
        CONSOLE.print(table, soft_wrap=True, highlight=False)
        CONSOLE.print(f"wrote {self.output / 'step-profile.json'} and {self.output / 'step-profile.md'}")


@dataclass
class Reconstruction:
    """D(E(x)) PSNR of autoencoders on datasets' views, side by side (the ceiling of decoded renders)."""

    autoencoders: Tuple[str, ...] = ("embedded",)
    """Autoencoders, as --pipeline.model.autoencoder names them: 'embedded', a diffusers folder, a 3dae-autoencoder
    run, a hub id (needs a hub)."""
    data: Tuple[Path, ...] = ()
    """Datasets in the multi-scene layout (docs/layout.md): generated, converted or your own."""
    split: Literal["all", "test", "train"] = "all"
    """Which views of each dataset."""
    max_views: int = 0
    """At most this many views per dataset, spread over its scenes (0: all)."""
    output: Optional[Path] = None
    """Where to write reconstruction.json and reconstruction.md (default: print only)."""
    threads: int = 0
    """Torch CPU threads (0: torch's default)."""

    def main(self) -> None:
        import torch

        from nerfstudio_3dae.bench.reconstruction import reconstruction_table, run_reconstruction

        if not self.data:
            CONSOLE.print("[bold red]error:[/bold red] --data: name at least one dataset folder")
            sys.exit(2)
        if self.threads > 0:
            torch.set_num_threads(self.threads)
        result = run_reconstruction(self.autoencoders, self.data, self.split, self.max_views or None, CONSOLE.print)
        table = reconstruction_table(result)
        CONSOLE.print(table, soft_wrap=True, highlight=False)
        if self.output is not None:
            self.output.mkdir(parents=True, exist_ok=True)
            (self.output / "reconstruction.json").write_text(json.dumps(result, indent=2) + "\n")
            (self.output / "reconstruction.md").write_text(table)
            CONSOLE.print(f"wrote {self.output / 'reconstruction.json'} and {self.output / 'reconstruction.md'}")


COMMANDS: Dict[str, Type] = {
    "scaling": Scaling,
    "compare": Compare,
    "finetune": Finetune,
    "step-memory": StepMemory,
    "skipping": Skipping,
    "quality": Quality,
    "step-profile": StepProfile,
    "reconstruction": Reconstruction,
}
"""Subcommand name -> dataclass with a ``main()`` method."""


def entrypoint() -> None:
    """The ``ns-3dae-bench`` console script."""
    command = tyro.extras.subcommand_cli_from_dict(COMMANDS, description=__doc__)
    try:
        command.main()
    except DatasetError as err:  # bad data or selection: the message names the option or file
        CONSOLE.print(f"[bold red]error:[/bold red] {err}")
        sys.exit(2)


if __name__ == "__main__":
    entrypoint()
