#!/usr/bin/env bash
# Remakes the embedded autoencoder (nerfstudio_3dae/weights/autoencoder) with the project's own stage 1:
# generated cars, an AutoencoderKL trained from scratch (autoencoder-only phase), then the 3dae-autoencoder
# warm-up and joint phases that make it 3D-aware. CPU: about 15 minutes on 2 idle cores. See docs/autoencoder.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
WORK="${WORK:-$ROOT/outputs/embedded-ae}"
STEPS="${STEPS:-1500}"
rm -rf "$WORK"
ns-3dae-synth --output "$WORK/cars64" --num-scenes 48 --views-per-scene 24 --resolution 64 --test-views 4 --seed 1000
ns-train 3dae-autoencoder --data "$WORK/cars64" --output-dir "$WORK/runs" --experiment-name embedded-ae \
  --timestamp run --max-num-iterations "$STEPS" --vis tensorboard --steps-per-eval-image 500 \
  --steps-per-eval-all-images "$STEPS" --logging.steps-per-log 50 \
  --pipeline.model.autoencoder scratch --pipeline.model.resolution 32 --pipeline.model.num-bases 8 \
  --pipeline.model.num-coarse-samples 24 --pipeline.model.num-fine-samples 24 \
  --pipeline.model.ae-pretrain-steps $((STEPS * 3 / 5)) --pipeline.model.warmup-steps $((STEPS / 10)) \
  --optimizers.encoder.optimizer.lr 1e-3 --optimizers.decoder.optimizer.lr 1e-3
rm -rf nerfstudio_3dae/weights/autoencoder
mkdir -p nerfstudio_3dae/weights
cp -r "$WORK/runs/embedded-ae/3dae-autoencoder/run/autoencoder" nerfstudio_3dae/weights/autoencoder
rm -f nerfstudio_3dae/weights/autoencoder/bases.pt  # the bases belong to those 48 scenes' tri-plane sizes
echo "embedded autoencoder written to nerfstudio_3dae/weights/autoencoder"
