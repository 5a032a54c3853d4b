"""The three methods through nerfstudio's own CLIs (ns-train, ns-eval) on a tiny generated dataset, on the CPU."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import List, Tuple

import pytest
import torch
from conftest import BIN, tool_env

from nerfstudio_3dae.autoencoder import load_autoencoder
from nerfstudio_3dae.autoencoder_source import BASES_FILE, RUN_EXPORT
from nerfstudio_3dae.data.synth.generate import generate_dataset
from nerfstudio_3dae.latent_model import LR_PHASE
from nerfstudio_3dae.model import (
    PARAM_GROUP,
    TriplaneModel,  # noqa: F401  (registers the checkpoint loader fix)
)

TINY = [
    "--vis", "tensorboard", "--logging.local-writer.enable", "False",
    "--steps-per-eval-image", "1000", "--steps-per-eval-all-images", "1000", "--steps-per-save", "1000",
    "--pipeline.model.resolution", "8", "--pipeline.model.num-bases", "2",
    "--pipeline.model.micro-channels", "4", "--pipeline.model.macro-channels", "4",
    "--pipeline.model.num-coarse-samples", "8", "--pipeline.model.num-fine-samples", "8",
    "--pipeline.datamanager.scenes-per-step", "2",
]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("cars") / "cars", 3, 8, 32, seed=3, test_views=2, progress=False)


def ns(tool: str, *args, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(BIN / tool), *map(str, args)], capture_output=True, text=True, env=tool_env(), timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def train(method: str, data: Path, out: Path, steps: int, *extra) -> Tuple[Path, str]:
    proc = ns("ns-train", method, "--data", data, "--output-dir", out, "--timestamp", "run",
              "--max-num-iterations", steps, *TINY, *extra)  # fmt: skip
    (run,) = list(out.glob(f"*/{method}/run"))
    return run, proc.stdout + proc.stderr


def checkpoints(run: Path) -> List[str]:
    return sorted(p.name for p in (run / "nerfstudio_models").glob("*.ckpt"))


def scalars(run: Path, tag: str) -> List[float]:
    """The values a run logged to tensorboard under ``tag``, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return [e.value for e in EventAccumulator(str(run)).Reload().Scalars(tag)]


def test_rgb_baseline_trains_and_evaluates(data, tmp_path):
    """12 steps lower the training loss, and ns-eval (another process, from the checkpoint) finds test views far
    better than the untrained model rendered its first batch."""
    run, _ = train("3dae-rgb", data, tmp_path, 12, "--logging.steps-per-log", "1")
    assert checkpoints(run) == ["step-000000011.ckpt"]
    losses, psnrs = scalars(run, "Train Loss"), scalars(run, "Train Metrics Dict/psnr")
    assert len(losses) == len(psnrs) == 12, "a loss and a PSNR every step"
    # seen (CPU): loss 0.167 at step 0, 0.086 over the last 4 steps; PSNR 7.8 dB at step 0 (before its update)
    assert sum(losses[-4:]) / 4 < 0.7 * losses[0], f"the loss falls: {[round(x, 3) for x in losses]}"
    ns("ns-eval", "--load-config", run / "config.yml", "--output-path", tmp_path / "eval.json")
    results = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert {"psnr", "ssim"} <= results.keys()
    # seen: 11.1 dB on the test views after 12 steps
    assert results["psnr"] > psnrs[0] + 2.0, f"test PSNR {results['psnr']:.2f} dB, untrained {psnrs[0]:.2f} dB"
    assert 0 < results["ssim"] <= 1


def test_stage1_feeds_stage2_and_latents_are_cached(data, tmp_path):
    stage1, _ = train("3dae-autoencoder", data, tmp_path / "s1", 12, "--pipeline.model.autoencoder", "scratch",
                      "--pipeline.model.scratch-width", "8", "--pipeline.model.ae-pretrain-steps", "4",
                      "--pipeline.model.warmup-steps", "4")  # fmt: skip
    exported = stage1 / RUN_EXPORT
    assert (exported / "config.json").is_file() and (exported / BASES_FILE).is_file()
    ae = load_autoencoder(exported)
    assert ae.factor == 8 and ae.normaliser.kind == "tanh"
    bases = torch.load(exported / BASES_FILE, weights_only=True)
    assert bases.shape == (2, 3, 4, 8, 8)

    # the stage-1 run named once (as in the README): its bases come with its autoencoder
    args = [
        "--pipeline.model.autoencoder",
        stage1,
        "--pipeline.model.finetune-start",
        "8",
        "--pipeline.datamanager.latent-cache-dir",
        tmp_path / "cache",
    ]
    stage2, log = train("3dae-latent", data, tmp_path / "s2", 12, *args)
    assert "encoding" in log and checkpoints(stage2) == ["step-000000011.ckpt"]
    said = "".join(log.split())  # rich wraps long lines
    assert "sharedbasesfrom" in said and "givenby--pipeline.model.autoencoder,astage-1run" in said
    assert list((tmp_path / "cache" / ae.encoder_identity).glob("*.npy")), "cached under the encoder identity"
    # the stage-2 checkpoint starts from the stage-1 bases and holds the stage-1 autoencoder's weights
    state = torch.load(stage2 / "nerfstudio_models" / "step-000000011.ckpt", map_location="cpu")["pipeline"]
    assert state["_model.field.bank.bases"].shape == bases.shape
    encoder_key = next(k for k in state if k.startswith("_model.autoencoder.model.encoder."))
    assert torch.equal(state[encoder_key], ae.model.state_dict()[encoder_key.removeprefix("_model.autoencoder.model.")])

    _, again = train("3dae-latent", data, tmp_path / "s2b", 4, *args)
    assert "encoding" not in again, "a second run on the same data and autoencoder must not run the encoder"

    ns("ns-eval", "--load-config", stage2 / "config.yml", "--output-path", tmp_path / "eval.json")
    results = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert {"psnr", "ssim", "latent_psnr", "autoencoded_psnr", "autoencoded_ssim"} <= results.keys()


def test_default_latent_method_resumes_with_load_dir(data, tmp_path):
    """3dae-latent with the embedded autoencoder; --load-dir continues from the saved step to the run's end."""
    first, _ = train("3dae-latent", data, tmp_path / "a", 6, "--pipeline.model.finetune-start", "4")
    assert checkpoints(first) == ["step-000000005.ckpt"]
    second, log = train("3dae-latent", data, tmp_path / "b", 10, "--load-dir", first / "nerfstudio_models",
                        "--pipeline.model.finetune-start", "4")  # fmt: skip
    assert "Done loading Nerfstudio checkpoint" in log
    assert checkpoints(second) == ["step-000000009.ckpt"], "training continued from step 6 to the 10th step"
    saved = torch.load(second / "nerfstudio_models" / "step-000000009.ckpt", map_location="cpu")
    recorded = {pg.get(LR_PHASE) for pg in saved["optimizers"][PARAM_GROUP.micro]["param_groups"]}
    assert recorded == {"finetune"}, "the fine-tune learning-rate change is applied once and saved"
