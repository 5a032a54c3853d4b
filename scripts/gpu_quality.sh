#!/usr/bin/env bash
# The quality measurements of docs/quality.md on one GPU machine in under 8 minutes: `ns-3dae-bench quality` groups
# run as parallel processes (one GPU, many cores; a latent step is overhead-bound, so processes share the GPU well),
# each writing OUT/<group>/quality.{json,md} and OUT/<group>.log:
#   gen-*      every lever on the medium generated cars, stage 1 from the embedded autoencoder;
#   gen-aew1   stage 1 with the autoencoder loss weighted 1.0 instead of 0.1 (the joint phase's cost in D(E(x)));
#   gen-ae     stage 1 from the autoencoder folder $AE (e.g. the GPU-trained one of the recipe's step 1);
#   joint-*    the recipe's joint phase (step 2) from $AE at ae-weight 0.1 and 1.0, then the bench from each export;
#   real-*     the main levers on the real data set $REAL (scenes $REAL_STAGE1 for stage 1, $REAL_SCENES compared);
#   gen-f4     an autoencoder of factor 4 (32² latents at 128², widths 32/64/128) trained by ns-3dae-train-autoencoder
#              on a generated corpus (the recipe's step 1, shorter), then the bench from it.
# At the end OUT/quality-results.tgz holds every quality.json/.md, the logs and the joint exports' D(E(x)).
#   bash scripts/gpu_quality.sh OUT                 (on the GPU machine, the project installed: ../shared/gpu-run.md)
#   bash scripts/gpu_quality.sh OUT --cpu-smoke     (the same groups at the tiny preset on the CPU: tests/)
set -uo pipefail
OUT="${1:?usage: gpu_quality.sh OUT [--cpu-smoke]}"
PRESET=medium
JOINT_SCENES=100
JOINT_STEPS=1200
JOINT_WARMUP=800
SIZE=128
F4=(--cars 300 --chairs 50 --tables 50 --steps 3000 --full-image-steps 200 --workers 6)
if [ "${2:-}" = "--cpu-smoke" ]; then
  PRESET=tiny JOINT_SCENES=2 JOINT_STEPS=6 JOINT_WARMUP=3 SIZE=16
  F4=(--cars 2 --chairs 1 --tables 1 --holdout-cars 1 --views-per-scene 2 --holdout-views 1 --resolution 32 --crop 16
    --steps 4 --full-image-steps 1 --eval-every 4 --save-every 4 --workers 1)
fi
AE="${AE:-}"
REAL="${REAL:-}"
REAL_STAGE1="${REAL_STAGE1:-0:8}"
REAL_SCENES="${REAL_SCENES:-8:12}"
mkdir -p "$OUT"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
START=$(date +%s)

bench() { # group, then options of ns-3dae-bench quality
  local group="$1"
  shift
  ns-3dae-bench quality --preset "$PRESET" --output "$OUT/$group" "$@" >"$OUT/$group.log" 2>&1
  echo "[gpu-quality] $group: exit $? after $(($(date +%s) - START)) s"
}

joint() { # weight: the recipe's joint phase from $AE with --pipeline.model.ae-weight WEIGHT, then the bench from it
  local weight="$1" group="joint-aew$1"
  local run="$OUT/runs-$group/embedded-ae/3dae-autoencoder/run"
  [ -f "$OUT/joint-scenes/scenes.json" ] || return 1
  ns-train 3dae-autoencoder --data "$OUT/joint-scenes" --output-dir "$OUT/runs-$group" --experiment-name embedded-ae \
    --timestamp run --max-num-iterations "$JOINT_STEPS" --vis tensorboard --steps-per-eval-image 100000 \
    --steps-per-save 100000 --logging.steps-per-log 100 --pipeline.model.autoencoder "$AE" \
    --pipeline.model.warmup-steps "$JOINT_WARMUP" --pipeline.model.ae-weight "$weight" \
    --pipeline.datamanager.scenes-per-step 2 --pipeline.datamanager.views-per-scene 2 >"$OUT/$group-train.log" 2>&1
  echo "[gpu-quality] $group joint phase: exit $? after $(($(date +%s) - START)) s"
  rm -rf "$OUT/ae-$group" && cp -r "$run/autoencoder" "$OUT/ae-$group"
  rm -f "$OUT/ae-$group/bases.pt" # as the recipe's export: the bases belong to the joint phase's tri-plane sizes
  bench "$group" --autoencoder "$OUT/ae-$group" --levers stage3-late decode-scene-early
}

bench gen-a --levers stage3-late stage3-half decode-scene-half &
bench gen-b --levers decode-scene-early decode-scene-frozen decode-scene-rgb-only &
bench gen-c --levers decode-scene-start decode-scene-dlr1e-3 &
bench gen-d --levers capacity-r32 capacity-micro20 &
bench gen-aew1 --stage1-ae-weight 1.0 --levers stage3-late decode-scene-early &
(
  ns-3dae-train-autoencoder --output "$OUT/ae-f4" --block-out-channels 32 64 128 --device auto --batch-size auto \
    "${F4[@]}" >"$OUT/ae-f4.log" 2>&1
  echo "[gpu-quality] factor-4 autoencoder: exit $? after $(($(date +%s) - START)) s"
  bench gen-f4 --autoencoder "$OUT/ae-f4/autoencoder" --levers stage3-late decode-scene-early
) &
if [ -n "$AE" ]; then
  bench gen-ae --autoencoder "$AE" --levers stage3-late decode-scene-early &
  (
    ns-3dae-synth --output "$OUT/joint-scenes" --num-scenes "$JOINT_SCENES" --views-per-scene 24 --resolution "$SIZE" \
      --test-views 4 --seed 7000 --overwrite --workers 4 >"$OUT/joint-scenes.log" 2>&1
    joint 0.1 &
    joint 1.0 &
    wait
  ) &
fi
if [ -n "$REAL" ]; then
  real=(--data "$REAL" --stage1-scenes "$REAL_STAGE1" --scenes "$REAL_SCENES")
  bench real-a "${real[@]}" --levers stage3-late decode-scene-early decode-scene-frozen &
  bench real-b "${real[@]}" --levers decode-scene-half decode-scene-start &
  [ -n "$AE" ] && bench real-ae "${real[@]}" --autoencoder "$AE" --levers stage3-late decode-scene-early &
fi
wait
echo "[gpu-quality] all groups done after $(($(date +%s) - START)) s"
(cd "$OUT" && tar czf quality-results.tgz --exclude='runs*' --exclude='data' --exclude='joint-scenes' \
  ./*.log ./*/quality.json ./*/quality.md ./ae-joint-*/*.json ./ae-f4/log.jsonl 2>/dev/null)
for md in "$OUT"/*/quality.md; do
  echo "== $md"
  cat "$md"
done
