"""Stage 3 measured: ``3dae-latent`` on the same new scenes with several autoencoders and decoder fine-tune rates.

Every run trains the scenes in the latent space (stage 2, cached latents) for ``latent_steps``, then fine-tunes the
decoder (and the planes, at ``finetune_plane_lr_factor`` of their rate) for ``finetune_steps``; all test views are
scored every ``eval_every`` steps, so one run gives the whole fine-tune curve (the length to choose) for one decoder
learning rate. Runs over several autoencoders compare latent spaces on equal terms — e.g. the embedded
autoencoder before and after its 3D-aware joint phase (docs/autoencoder.md). Writes ``finetune.json`` and
``finetune.md``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from nerfstudio_3dae.bench.compare import Selection, configure_method
from nerfstudio_3dae.bench.measure import train_and_measure
from nerfstudio_3dae.bench.presets import PRESETS
from nerfstudio_3dae.method_configs import latent_method
from nerfstudio_3dae.model import PARAM_GROUP


@dataclass
class FinetuneRow:
    """One run of the sweep."""

    autoencoder: str
    decoder_lr: float
    curve: List[List[float]]
    """[step, training seconds, test PSNR, test SSIM] at every evaluation."""
    autoencoded_psnr: Optional[float]
    """Test PSNR of D(E(x)): the ceiling of the decoded renders."""


def run_finetune_sweep(
    data: Path,
    output: Path,
    autoencoders: Sequence[str] = ("embedded",),
    decoder_lrs: Sequence[float] = (1e-4, 3e-4, 1e-3),
    scenes: str = ":",
    preset: str = "medium",
    latent_steps: int = 1000,
    finetune_steps: int = 300,
    eval_every: int = 50,
    log: Callable[[str], None] = print,
) -> Dict[str, object]:
    """Train ``3dae-latent`` for every (autoencoder, decoder learning rate) pair; returns and writes the results."""
    if latent_steps < 1 or finetune_steps < 0 or eval_every < 1:
        raise ValueError("--latent-steps must be >= 1, --finetune-steps >= 0 and --eval-every >= 1")
    sizes = dataclasses.replace(
        PRESETS[preset], latent_steps=latent_steps + finetune_steps, finetune_start=latent_steps, eval_every=eval_every
    )
    output = Path(output)
    rows: List[FinetuneRow] = []
    for k, source in enumerate(autoencoders):
        for lr in decoder_lrs:
            name = f"ae{k}-lr{lr:g}"
            config = configure_method(
                latent_method(), Selection(Path(data), scenes), output / "runs", sizes, sizes.latent_steps, name
            )
            config.pipeline.model.autoencoder = source
            config.pipeline.model.finetune_start = latent_steps
            config.optimizers[PARAM_GROUP.decoder]["optimizer"].lr = lr
            log(f"3dae-latent, autoencoder {source}, decoder lr {lr:g}: {latent_steps} + {finetune_steps} steps")
            run = train_and_measure(config, sizes, lambda m, step, s, psnr: log(f"  step {step}: {psnr:.2f} dB"))
            rows.append(FinetuneRow(source, lr, [list(point) for point in run.curve], run.autoencoded_psnr))
    result = {"data": str(data), "scenes": scenes, "preset": preset, "latent_steps": latent_steps,
              "finetune_steps": finetune_steps, "eval_every": eval_every,
              "runs": [dataclasses.asdict(r) for r in rows]}  # fmt: skip
    output.mkdir(parents=True, exist_ok=True)
    (output / "finetune.json").write_text(json.dumps(result, indent=1))
    (output / "finetune.md").write_text(finetune_table(result))
    return result


def finetune_table(result: Dict) -> str:
    """Markdown: decoded test PSNR at the fine-tune's start and after each evaluated length, per run."""
    start = result["latent_steps"]
    lengths = sorted({int(p[0]) - start for r in result["runs"] for p in r["curve"] if int(p[0]) >= start})
    head = "| autoencoder | decoder lr | D(E(x)) | " + " | ".join(f"+{n}" for n in lengths) + " |"
    lines = [head, "|" + "---|" * (3 + len(lengths))]
    for r in result["runs"]:
        by_length = {int(p[0]) - start: p[2] for p in r["curve"]}
        cells = [f"{by_length[n]:.2f}" if n in by_length else "" for n in lengths]
        ae = "" if r["autoencoded_psnr"] is None else f"{r['autoencoded_psnr']:.2f}"
        lines.append(f"| {r['autoencoder']} | {r['decoder_lr']:g} | {ae} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
