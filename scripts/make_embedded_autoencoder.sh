#!/usr/bin/env bash
# Remakes the embedded autoencoder (nerfstudio_3dae/weights/autoencoder) by the project's own recipe, on a GPU when
# there is one (DEVICE=auto), else on the CPU:
#   1. autoencoder-only training on a large generated corpus (ns-3dae-train-autoencoder: 800 cars + 100 chairs +
#      100 tables x 16 views at 128², random 64² crops, the last steps on whole images; 8 crops a step on the CPU,
#      32 on CUDA);
#   2. the 3dae-autoencoder joint phase on 100 other generated cars (warm-up on cached latents, then E, D and the
#      scenes together, 2 scenes x 2 views a step: a joint step runs E and D at 128²): the latent space becomes
#      3D-aware;
#   3. the decoder polish (ns-3dae-train-autoencoder --start-from the joint export --train-part decoder): the decoder
#      alone learns to reconstruct again on 400 generated scenes (the encoder, so the 3D-aware latent space, frozen);
#   4. the export is copied into the package (INSTALL=0: not).
# Every step resumes after a stop: run the script again with the same WORK. Progress: $WORK/ae/log.jsonl and the
# ns-train log. Hours on 2 CPU cores, minutes on one GPU (docs/autoencoder.md records both; scripts/gpu_recipe.sh
# runs it at GPU sizes).
#
# Environment (defaults in brackets):
#   WORK [outputs/embedded-ae-v2]  run folder           CORPUS [$WORK]      where the generated corpus lives
#   DEVICE [auto]  --device of step 1 (auto: CUDA when torch sees one); cpu/cuda also set step 2's --machine.device-type
#                  (auto leaves step 2 to the method, which uses CUDA when there is one)
#   BATCH [auto]   crops a step (auto: 32 on CUDA, 8 on the CPU)
#   WORKERS [CPUs, at most 16]  generator processes (the corpus does not depend on it)
#   THREADS [1]    torch CPU threads of step 1
#   AE_STEPS [5000]  FULL_STEPS [400]  step 1's steps, the last FULL_STEPS of them on whole images
#   JOINT_STEPS [1200]  WARMUP_STEPS [800]  step 2's steps, the first WARMUP_STEPS of them warm-up
#   JOINT_AE_WEIGHT [the method's: 10]  step 2's weight of ‖D(E(x)) − x‖² (--pipeline.model.ae-weight when set): the
#                  shipped weights (v3, 2026-12-07, polished into v4) were made at 10
#                  from AE_START = the GPU recipe's autoencoder-only export; at 1.0 (3dae-autoencoder's default
#                  until 2026-12-08) the joint phase costs 2.2 dB of held-out D(E(x)), at 0.1 (v2) 3.3 dB (docs/autoencoder.md)
#   JOINT_SCENES [100]  JOINT_VIEWS [24]  JOINT_TEST_VIEWS [4]  step 2's generated cars (seed 7000)
#   POLISH_STEPS [1500]  step 3's steps (the last 300 on whole images; 0: no polish, the joint export is installed);
#                  its corpus: POLISH_CARS [300] POLISH_CHAIRS [50] POLISH_TABLES [50] x 16 views in $WORK/polish-corpus
#   POLISH_ARGS    more options for step 3
#   CHANNELS [16]  latent channels      RESOLUTION [128]  image size of both corpora
#   AE_ARGS, JOINT_ARGS  more options for step 1 / step 2 (last wins)       INSTALL [1]  step 3 on (1) or off (0)
#   AE_START []    an autoencoder folder (diffusers save_pretrained) to start step 2 from instead of running step 1,
#                  e.g. the autoencoder-only export of scripts/gpu_recipe.sh (step 1 at GPU sizes)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! command -v ns-3dae-train-autoencoder >/dev/null 2>&1; then  # else: an installed project (.whl/install.sh)
  source "$ROOT/scripts/env.sh"
fi
export WANDB_MODE=disabled HF_HUB_OFFLINE=1
cd "$ROOT"
WORK="${WORK:-$ROOT/outputs/embedded-ae-v2}"
CORPUS="${CORPUS:-$WORK}"
DEVICE="${DEVICE:-auto}"
BATCH="${BATCH:-auto}"
CPUS="$(nproc 2>/dev/null || echo 2)"
WORKERS="${WORKERS:-$((CPUS < 16 ? CPUS : 16))}"
AE_STEPS="${AE_STEPS:-5000}"
FULL_STEPS="${FULL_STEPS:-400}"
JOINT_STEPS="${JOINT_STEPS:-1200}"
WARMUP_STEPS="${WARMUP_STEPS:-800}"
JOINT_SCENES="${JOINT_SCENES:-100}"
JOINT_VIEWS="${JOINT_VIEWS:-24}"
JOINT_TEST_VIEWS="${JOINT_TEST_VIEWS:-4}"
CHANNELS="${CHANNELS:-16}"
RESOLUTION="${RESOLUTION:-128}"
MACHINE=()
case "$DEVICE" in
  cpu) MACHINE=(--machine.device-type cpu) ;;
  cuda*) MACHINE=(--machine.device-type cuda) ;;
esac
mkdir -p "$WORK"

if [ -n "${AE_START:-}" ]; then
  if [ ! -f "$AE_START/config.json" ]; then
    echo "[make-ae] AE_START=$AE_START is not an autoencoder folder (no config.json there)" >&2
    exit 2
  fi
  START="$AE_START"
  echo "[make-ae] 1/4 skipped: step 2 starts from AE_START=$START"
else
  echo "[make-ae] 1/4 autoencoder-only: $AE_STEPS steps ($FULL_STEPS on whole images), $CHANNELS latent channels," \
    "--device $DEVICE, --batch-size $BATCH, $WORKERS generator workers"
  SECONDS=0
  ns-3dae-train-autoencoder --output "$WORK/ae" --corpus-dir "$CORPUS" --latent-channels "$CHANNELS" \
    --steps "$AE_STEPS" --full-image-steps "$FULL_STEPS" --eval-every 500 --save-every 100 --threads "${THREADS:-1}" \
    --device "$DEVICE" --batch-size "$BATCH" --workers "$WORKERS" --resolution "$RESOLUTION" ${AE_ARGS:-}
  echo "[make-ae] 1/4 done in $SECONDS s"
  START="$WORK/ae/autoencoder"
fi

echo "[make-ae] 2/4 joint phase (3dae-autoencoder): $JOINT_STEPS steps, $WARMUP_STEPS of them warm-up"
SECONDS=0
if [ ! -f "$WORK/joint-scenes/scenes.json" ]; then
  ns-3dae-synth --output "$WORK/joint-scenes" --num-scenes "$JOINT_SCENES" --views-per-scene "$JOINT_VIEWS" \
    --resolution "$RESOLUTION" --test-views "$JOINT_TEST_VIEWS" --seed 7000 --workers "$WORKERS" --overwrite
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
    --steps-per-save 100 --logging.steps-per-log 50 "${RESUME[@]}" "${MACHINE[@]}" \
    --pipeline.model.autoencoder "$START" --pipeline.model.warmup-steps "$WARMUP_STEPS" \
    ${JOINT_AE_WEIGHT:+--pipeline.model.ae-weight "$JOINT_AE_WEIGHT"} \
    --pipeline.datamanager.scenes-per-step 2 --pipeline.datamanager.views-per-scene 2 ${JOINT_ARGS:-}
echo "[make-ae] 2/4 done in $SECONDS s"

FINAL="$RUN/autoencoder"
POLISH_STEPS="${POLISH_STEPS:-1500}"
if [ "$POLISH_STEPS" -gt 0 ]; then
  echo "[make-ae] 3/4 decoder polish: $POLISH_STEPS steps, the encoder frozen"
  SECONDS=0
  ns-3dae-train-autoencoder --output "$WORK/polish" --corpus-dir "$WORK/polish-corpus" --start-from "$RUN/autoencoder" \
    --train-part decoder --cars "${POLISH_CARS:-300}" --chairs "${POLISH_CHAIRS:-50}" --tables "${POLISH_TABLES:-50}" \
    --steps "$POLISH_STEPS" --full-image-steps $((POLISH_STEPS / 5)) --lr 3e-4 --warmup-steps 50 \
    --final-lr-factor 0.05 --eval-every 250 --save-every 250 --threads "${THREADS:-2}" --device "$DEVICE" \
    --batch-size "$BATCH" --workers "$WORKERS" --resolution "$RESOLUTION" ${POLISH_ARGS:-}
  echo "[make-ae] 3/4 done in $SECONDS s"
  FINAL="$WORK/polish/autoencoder"
else
  echo "[make-ae] 3/4 skipped (POLISH_STEPS=0)"
fi

if [ "${INSTALL:-1}" = 0 ]; then
  echo "[make-ae] 4/4 skipped (INSTALL=0): the 3D-aware autoencoder is $FINAL"
  exit 0
fi
echo "[make-ae] 4/4 export into the package"
rm -rf nerfstudio_3dae/weights/autoencoder
mkdir -p nerfstudio_3dae/weights
cp -r "$FINAL" nerfstudio_3dae/weights/autoencoder
rm -f nerfstudio_3dae/weights/autoencoder/bases.pt  # the bases belong to those 100 scenes' tri-plane sizes
echo "embedded autoencoder written to nerfstudio_3dae/weights/autoencoder"
