#!/usr/bin/env bash
# Remakes the embedded autoencoder (nerfstudio_3dae/weights/autoencoder) by the project's own recipe, on the CPU:
#   1. autoencoder-only training on a large generated corpus (ns-3dae-train-autoencoder: 800 cars + 100 chairs +
#      100 tables x 16 views at 128², random 64² crops, the last steps on whole images);
#   2. the 3dae-autoencoder joint phase on 100 other generated cars (warm-up on cached latents, then E, D and the
#      scenes together, 2 scenes x 2 views a step: a joint step runs E and D at 128²): the latent space becomes
#      3D-aware;
#   3. the export is copied into the package.
# Every step resumes after a stop: run the script again with the same WORK. Progress: $WORK/ae/log.jsonl and the
# ns-train log. Hours on 2 cores (docs/autoencoder.md records the last run).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
WORK="${WORK:-$ROOT/outputs/embedded-ae-v2}"
CORPUS="${CORPUS:-$WORK}"
AE_STEPS="${AE_STEPS:-5000}"
FULL_STEPS="${FULL_STEPS:-400}"
JOINT_STEPS="${JOINT_STEPS:-1200}"
WARMUP_STEPS="${WARMUP_STEPS:-800}"
CHANNELS="${CHANNELS:-16}"
mkdir -p "$WORK"

echo "[make-ae] 1/3 autoencoder-only: $AE_STEPS steps ($FULL_STEPS on whole images), $CHANNELS latent channels"
ns-3dae-train-autoencoder --output "$WORK/ae" --corpus-dir "$CORPUS" --latent-channels "$CHANNELS" \
  --steps "$AE_STEPS" --full-image-steps "$FULL_STEPS" --eval-every 500 --save-every 100 --threads 1 ${AE_ARGS:-}

echo "[make-ae] 2/3 joint phase (3dae-autoencoder): $JOINT_STEPS steps, $WARMUP_STEPS of them warm-up"
if [ ! -f "$WORK/joint-scenes/scenes.json" ]; then
  ns-3dae-synth --output "$WORK/joint-scenes" --num-scenes 100 --views-per-scene 24 --resolution 128 \
    --test-views 4 --seed 7000 --overwrite
fi
RUN="$WORK/runs/embedded-ae/3dae-autoencoder/run"
RESUME=()
if ls "$RUN/nerfstudio_models/"step-*.ckpt >/dev/null 2>&1; then
  RESUME=(--load-dir "$RUN/nerfstudio_models")
  echo "[make-ae] resuming the joint phase from $RUN/nerfstudio_models"
fi
# a finished run resumes at its last step, trains nothing and exports again
ns-train 3dae-autoencoder --data "$WORK/joint-scenes" --output-dir "$WORK/runs" --experiment-name embedded-ae \
    --timestamp run --max-num-iterations "$JOINT_STEPS" --vis tensorboard --steps-per-eval-image 500 \
    --steps-per-save 100 --logging.steps-per-log 50 "${RESUME[@]}" \
    --pipeline.model.autoencoder "$WORK/ae/autoencoder" --pipeline.model.warmup-steps "$WARMUP_STEPS" \
    --pipeline.datamanager.scenes-per-step 2 --pipeline.datamanager.views-per-scene 2 ${JOINT_ARGS:-}

echo "[make-ae] 3/3 export into the package"
rm -rf nerfstudio_3dae/weights/autoencoder
mkdir -p nerfstudio_3dae/weights
cp -r "$RUN/autoencoder" nerfstudio_3dae/weights/autoencoder
rm -f nerfstudio_3dae/weights/autoencoder/bases.pt  # the bases belong to those 100 scenes' tri-plane sizes
echo "embedded autoencoder written to nerfstudio_3dae/weights/autoencoder"
