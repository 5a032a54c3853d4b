#!/usr/bin/env bash
# Short autoencoder-only runs with 4, 8 and 16 latent channels on one shared generated corpus, same steps and
# seed: held-out D(E(x)) PSNR and step time for each (the measurement behind the embedded autoencoder's channel
# count; docs/autoencoder.md). Resumable like every ns-3dae-train-autoencoder run. CPU: ~2 min a setting (1 thread).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
WORK="${WORK:-$ROOT/outputs/ae-channels}"
CORPUS="${CORPUS:-$ROOT/outputs/ae-corpus}"
STEPS="${STEPS:-200}"
for C in ${CHANNELS:-4 8 16}; do
  ns-3dae-train-autoencoder --output "$WORK/c$C" --corpus-dir "$CORPUS" --latent-channels "$C" --steps "$STEPS" \
    --warmup-steps 50 --eval-every "$STEPS" --save-every 100 --log-every 25 --threads "${THREADS:-1}"
done
python - "$WORK" ${CHANNELS:-4 8 16} <<'PY'
import sys
from nerfstudio_3dae.autoencoder_training import read_log
work, channels = sys.argv[1], sys.argv[2:]
print("| latent channels | steps | held-out D(E(x)) PSNR (dB) | training minutes | s / step |")
print("|---|---|---|---|---|")
for c in channels:
    log = read_log(f"{work}/c{c}")
    end = [r for r in log if "final_holdout_psnr" in r][-1]
    print(f"| {c} | {end['step']} | {end['final_holdout_psnr']:.2f} | {end['minutes']:.1f} | {60 * end['minutes'] / end['step']:.2f} |")
PY
