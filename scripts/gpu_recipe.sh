#!/usr/bin/env bash
# The embedded-autoencoder recipe (scripts/make_embedded_autoencoder.sh) at GPU sizes, in about 7 minutes on one
# H200 with 16 cores: 1000 generated scenes x 16 views at 128² (16 generator workers), 5300 autoencoder-only steps of
# 32 64² crops (the last 440 on 8 whole images), the 3dae-autoencoder joint phase (100 cars x 24 views, 1200 steps,
# 800 of them warm-up), the decoder polish (1500 steps, encoder frozen). Nothing is copied into the package. Ends with
# the held-out D(E(x)) figures.
#
#   bash scripts/gpu_recipe.sh OUTDIR               # needs CUDA; stops at once without it
#   bash scripts/gpu_recipe.sh OUTDIR --cpu-smoke   # every step on the CPU at the smallest sizes (under a minute)
#
# OUTDIR gets at most 7 files: recipe.log (everything printed), ae-log.jsonl (step 1's log), summary.json, the final
# (3D-aware, polished) export autoencoder/ (3 files, 11 MB) and the autoencoder-only export as ae-only-autoencoder.tar (11 MB).
# The work folder (corpus, checkpoints, runs: thousands of files) is WORK, by default ${TMPDIR:-/tmp}/gpu_recipe-work
# (-smoke): outside OUTDIR; the same WORK resumes a stopped run. On a GPU machine without a registry, install first:
#   source .whl/install.sh .whl      (../shared/gpu-run.md)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE=gpu OUTDIR=""
for arg in "$@"; do
  case "$arg" in
    --cpu-smoke) MODE=cpu ;;
    -h | --help) sed -n '2,14p' "$0" | cut -c3-; exit 0 ;;
    -*) echo "gpu_recipe.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
    *) [ -z "$OUTDIR" ] || { echo "gpu_recipe.sh: one OUTDIR only (got $OUTDIR and $arg)" >&2; exit 2; }; OUTDIR=$arg ;;
  esac
done
[ -n "$OUTDIR" ] || { echo "gpu_recipe.sh: usage: bash scripts/gpu_recipe.sh OUTDIR [--cpu-smoke]" >&2; exit 2; }

if ! command -v ns-3dae-train-autoencoder >/dev/null 2>&1; then
  if [ -x "$ROOT/.venv/bin/ns-3dae-train-autoencoder" ]; then export PATH="$ROOT/.venv/bin:$PATH"; else source "$ROOT/scripts/env.sh"; fi
fi
export WANDB_MODE=disabled HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
if [ "$MODE" = gpu ] && ! python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_recipe.sh: no CUDA device is visible (torch.cuda.is_available() is False). Run it on a GPU machine, or" \
    "pass --cpu-smoke to run every step on the CPU at the smallest sizes." >&2
  exit 2
fi

# ---- sizes: the GPU run of ../shared/autoencoder-gpu (26.5 ms a step of 32 crops) fitted into ~7 minutes; measured
# 2026-12-04 on an H200 (with --save-every 100): corpus 89 s, 5300 steps 2.8 min, step 1 275 s, step 2 126 s, 431 s in all
if [ "$MODE" = gpu ]; then
  export DEVICE=cuda BATCH=auto AE_STEPS=5300 FULL_STEPS=440 JOINT_STEPS=1200 WARMUP_STEPS=800 THREADS=4
  export JOINT_SCENES=100 JOINT_VIEWS=24 JOINT_TEST_VIEWS=4 RESOLUTION=128 AE_ARGS="--save-every 500" JOINT_ARGS=""
  export POLISH_STEPS=1500 POLISH_ARGS=""
else
  export DEVICE=cpu BATCH=4 AE_STEPS=4 FULL_STEPS=1 JOINT_STEPS=4 WARMUP_STEPS=2 THREADS=1 WORKERS=1 OMP_NUM_THREADS=1
  export JOINT_SCENES=2 JOINT_VIEWS=4 JOINT_TEST_VIEWS=1 RESOLUTION=32
  export AE_ARGS="--cars 2 --chairs 1 --tables 0 --holdout-cars 1 --views-per-scene 2 --holdout-views 2 --crop 16 \
--warmup-steps 1 --eval-every 2 --log-every 2"
  export JOINT_ARGS="--pipeline.model.resolution 8 --pipeline.model.num-coarse-samples 4 \
--pipeline.model.num-fine-samples 4 --steps-per-eval-image 1000 --steps-per-eval-all-images 1000 --logging.steps-per-log 2"
  export POLISH_STEPS=2 POLISH_CARS=2 POLISH_CHAIRS=1 POLISH_TABLES=0
  export POLISH_ARGS="--holdout-cars 1 --views-per-scene 2 --holdout-views 2 --crop 16 --warmup-steps 1 --eval-every 2 \
--log-every 2"
fi
export WORK="${WORK:-${TMPDIR:-/tmp}/gpu_recipe-work$([ "$MODE" = cpu ] && echo -smoke)}" INSTALL=0
export CORPUS="$WORK"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
LOG="$OUTDIR/recipe.log"
START=$(date +%s)
echo "gpu_recipe.sh ($MODE mode): work folder $WORK, results in $OUTDIR" | tee "$LOG"
set -o pipefail
bash "$ROOT/scripts/make_embedded_autoencoder.sh" 2>&1 | tee -a "$LOG"
TRAINED=$(($(date +%s) - START))

# ---- results: logs, the exports (CPU tensors), held-out D(E(x)) of both and of the shipped autoencoder
FINAL="$WORK/polish/autoencoder"  # the decoder polish's export (step 3 of the recipe)
rm -rf "$OUTDIR/autoencoder"
cp -r "$FINAL" "$OUTDIR/autoencoder"
rm -f "$OUTDIR/autoencoder/bases.pt"  # the bases belong to the joint phase's scenes
tar -cf "$OUTDIR/ae-only-autoencoder.tar" -C "$WORK/ae" autoencoder
cp "$WORK/ae/log.jsonl" "$OUTDIR/ae-log.jsonl"
python - "$WORK" "$OUTDIR" "$MODE" "$TRAINED" "$LOG" <<'PY' 2>&1 | tee -a "$LOG"
import json, re, sys
from pathlib import Path

import numpy as np
import torch
from diffusers.utils import logging as diffusers_logging

from nerfstudio_3dae.autoencoder import load_autoencoder
from nerfstudio_3dae.autoencoder_source import EMBEDDED_AUTOENCODER
from nerfstudio_3dae.autoencoder_training import describe_device, read_log, reconstruction_psnr, resolve_device

diffusers_logging.set_verbosity_error()  # no advice to install accelerate
work, outdir, mode, trained, log = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
device = resolve_device("cuda" if mode == "gpu" else "cpu")
held = torch.from_numpy(np.load(work / "holdout" / "images.npy")).permute(0, 3, 1, 2).to(device)
joint = work / "runs" / "embedded-ae" / "3dae-autoencoder" / "run" / "autoencoder"
sources = {"autoencoder-only": work / "ae" / "autoencoder", "after the joint phase": joint,
           "after the decoder polish": outdir / "autoencoder", "shipped embedded": EMBEDDED_AUTOENCODER}
psnr = {name: reconstruction_psnr(load_autoencoder(src).to(device), held) for name, src in sources.items()}
ae_log = read_log(work / "ae")
final = [r for r in ae_log if "final_holdout_psnr" in r][-1]
text = Path(log).read_text()
seconds = {k: int(v) for k, v in re.findall(r"\[make-ae\] (\d)/4 done in (\d+) s", text)}
corpus = re.findall(r"corpus ready: .*\((\d+) s\)", text)
summary = {"mode": mode, "device": describe_device(device), "wall_s": trained, "phase_s": seconds,
           "corpus_s": int(corpus[-1]) if corpus else None, "ae_steps": final["step"],
           "ae_train_minutes": round(final["minutes"], 2),
           "ms_per_step": round(60000 * final["minutes"] / max(1, final["step"]), 1),
           "batch_size": [r["batch_size"] for r in ae_log if "batch_size" in r][-1],
           "holdout_views": len(held), "holdout_psnr_db": {k: round(v, 2) for k, v in psnr.items()},
           "export_mb": round(sum(f.stat().st_size for f in outdir.rglob("*") if f.is_file()) / 2**20, 1)}
(outdir / "summary.json").write_text(json.dumps(summary, indent=1))
print(f"\ngpu_recipe.sh summary ({mode} mode, {summary['device']}, {trained} s wall)")
print(f"  step 1: corpus {summary['corpus_s']} s, {final['step']} steps of {summary['batch_size']} crops in "
      f"{final['minutes']:.2f} min ({summary['ms_per_step']} ms a step); whole step 1 {seconds.get('1')} s")
print(f"  step 2 (joint phase, data included): {seconds.get('2')} s; step 3 (decoder polish): {seconds.get('3')} s")
print(f"  held-out D(E(x)) on {len(held)} views of generated cars never trained on:")
for name, value in psnr.items():
    print(f"    {name:>22}: {value:.2f} dB")
print(f"  results: {outdir} ({summary['export_mb']} MB)")
PY
echo "gpu_recipe.sh: done in $(($(date +%s) - START)) s (results in $OUTDIR)" | tee -a "$LOG"
