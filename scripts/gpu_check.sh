#!/usr/bin/env bash
# The first run on a machine with a GPU (docs/gpu.md): every CUDA-dependent path once, in at most 10 minutes on one
# GPU, then ONE summary table (check, ok/FAILED, figure, seconds). Exit status 0 when every check is ok.
#
#   bash scripts/gpu_check.sh                  # needs CUDA; stops at once without it
#   bash scripts/gpu_check.sh --cpu-smoke      # every check on the CPU at the smallest sizes (CUDA tests skip)
#   bash scripts/gpu_check.sh --build-nerfacc  # first build nerfacc's extension (ns-3dae-build-nerfacc)
#   bash scripts/gpu_check.sh --keep           # keep the work folder (data, runs, logs); kept anyway on a failure
#   bash scripts/gpu_check.sh --speed          # instead: the speed checks (step profile eager and compiled at 128²,
#                                              # ns-3dae-bench compare --preset gpu), within the same 10 minutes
#
# Checks: the CUDA tests (NS3DAE_REQUIRE_CUDA=1: they fail, not skip, when they cannot run), the backend decision,
# peak memory of one 3dae-rgb and one 3dae-latent training step (128², method defaults), 10 steps on 2 processes with
# a save and a resume to step 20, ns-eval and ns-3dae-render on the resumed run, ns-3dae-bench scaling and compare
# (tiny presets). Uses .venv (made by scripts/env.sh when missing); needs no network.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE=gpu KEEP=0 BUILD=0 SPEED=0
for arg in "$@"; do
  case "$arg" in
    --cpu-smoke) MODE=cpu ;;
    --keep) KEEP=1 ;;
    --build-nerfacc) BUILD=1 ;;
    --speed) SPEED=1 ;;
    -h | --help) sed -n '2,15p' "$0" | cut -c3-; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done

if [ -x "$ROOT/.venv/bin/python" ]; then
  export PATH="$ROOT/.venv/bin:$PATH"
  if ! command -v ffmpeg >/dev/null 2>&1 && [ ! -e "$ROOT/.venv/bin/ffmpeg" ]; then  # as scripts/env.sh does
    ln -sf "$(python -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())')" "$ROOT/.venv/bin/ffmpeg"
  fi
else
  source "$ROOT/scripts/env.sh"
  set +e
fi
export WANDB_MODE=disabled HF_HUB_OFFLINE=1
cd "$ROOT"

HAS_CUDA='import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'
if [ "$MODE" = gpu ] && ! python -c "$HAS_CUDA" 2>/dev/null; then
  echo "gpu_check.sh: no CUDA device is visible (torch.cuda.is_available() is False), so there is nothing to check" \
    "here. Run it on a machine with a GPU, or pass --cpu-smoke to run every check on the CPU at the smallest sizes." >&2
  exit 2
fi

# ---- sizes: the GPU checks use the method defaults; the CPU smoke run the smallest sizes that exercise every path
if [ "$MODE" = gpu ]; then
  DEVICE=cuda DATA_SIZE=64 VIEWS=6 TEST_VIEWS=2 STEP_SIZE=128 MODEL_ARGS=() CPU_ARGS=()
  NUM_GPUS=$(python -c 'import torch; print(torch.cuda.device_count())')
else
  DEVICE=cpu DATA_SIZE=32 VIEWS=4 TEST_VIEWS=1 STEP_SIZE=16 NUM_GPUS=0
  MODEL_ARGS=(--pipeline.model.resolution 16 --pipeline.model.num-coarse-samples 8 --pipeline.model.num-fine-samples 8)
  CPU_ARGS=(--threads 1)
  export OMP_NUM_THREADS=1
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
mkdir -p "$WORK/logs"
START=$(date +%s)
DEADLINE=$((START + 570))  # the whole run stays under 10 minutes: every check gets at most what is left
ROWS="$WORK/logs/rows.tsv"
: >"$ROWS"
echo "gpu_check.sh ($MODE mode): work folder $WORK"

tmo() {  # run a command, killed (with its process group) at the current check's end
  local left=$((CHECK_END - $(date +%s)))
  ((left < 1)) && left=1
  timeout -k 5 "$left" "$@"
}

run_check() {  # run_check NAME SECONDS FUNCTION: one row of the table
  local name=$1 limit=$2 fn=$3 log="$WORK/logs/$1.log" fig="$WORK/logs/$1.figure"
  local left=$((DEADLINE - $(date +%s)))
  if ((left <= 0)); then
    printf '%s\tFAILED\tnot run: the 10-minute budget is spent\t0.0\n' "$name" >>"$ROWS"
    return
  fi
  ((limit > left)) && limit=$left
  CHECK_END=$(($(date +%s) + limit))
  : >"$fig"
  local t0 t1 rc status figure
  t0=$(date +%s.%N)
  (set -e; "$fn" "$fig") >"$log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  status=ok
  if ((rc != 0)); then
    status=FAILED
    ((rc == 124 || rc == 137)) && echo "stopped after its ${limit} s" >>"$fig"
  fi
  figure="$(tr '\n\t' '  ' <"$fig" | sed 's/ *$//')"
  [ -z "$figure" ] && figure="see $log"
  local seconds
  seconds=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$figure" "$seconds" >>"$ROWS"
  echo "  $name: $status ($log)"
}

# ---- the checks; each writes its figure to "$1" and fails on any failing command

check_build() {
  tmo ns-3dae-build-nerfacc --timeout-s 400 | tee /dev/stderr | grep -o 'ns-3dae-build-nerfacc: .*' | cut -c1-90 >"$1"
  grep -q 'ns-3dae-build-nerfacc: ok' "$1"
}

check_cuda_tests() {
  local require=0
  [ "$MODE" = gpu ] && require=1
  local rc=0 files
  # only the files that mark a test `pytest.mark.cuda` (or `pytestmark = pytest.mark.cuda`): collecting the whole
  # suite to select those few tests cost ~4 s of every run
  mapfile -t files < <(grep -l 'mark\.cuda' tests/test_*.py)
  if ((${#files[@]} == 0)); then
    echo "no test file under tests/ marks a test pytest.mark.cuda" | tee "$1"
    return 1
  fi
  NS3DAE_REQUIRE_CUDA=$require tmo python -m pytest -q -p no:cacheprovider -m cuda -rs "${files[@]}" \
    >"$WORK/logs/pytest.out" 2>&1 || rc=$?
  cat "$WORK/logs/pytest.out"
  tail -n 1 "$WORK/logs/pytest.out" | sed -E 's/ in [0-9.]+s.*//; s/=//g; s/^ *//' >"$1"
  [ "$MODE" = cpu ] && echo "(CUDA tests skip on the CPU)" >>"$1"
  return $rc
}

check_decision() {
  tmo python - "$DEVICE" "$1" <<'EOF'
import sys
from nerfstudio_3dae.backends import decide_backend
decision = decide_backend("auto", sys.argv[1])
print(f"decide_backend('auto', {sys.argv[1]!r}) = {decision.backend}: {decision.reason}")
with open(sys.argv[2], "w") as f:
    reason = decision.reason if len(decision.reason) <= 60 else decision.reason[:60] + "..."
    f.write(f"{decision.backend} ({reason})")
EOF
}

check_step_memory() {
  tmo ns-3dae-bench step-memory --image-size "$STEP_SIZE" --device "$DEVICE" --steps 2 --output "$WORK/step-memory" \
    "${CPU_ARGS[@]}"
  python - "$WORK/step-memory/step_memory.json" "$1" <<'EOF'
import json, sys
result = json.load(open(sys.argv[1]))
parts, kind = [], "CUDA max allocated"
for method in ("3dae-rgb", "3dae-latent"):
    rows = [r for r in result["steps"] if r["method"] == method]
    if rows[0]["cuda_peak_bytes"] is None:
        kind = "autograd saved (CPU)"
        peak = max(r["saved_bytes"] for r in rows)
    else:
        peak = max(r["cuda_peak_bytes"] for r in rows)
    parts.append(f"{method[5:]} {peak / 2**20:,.0f} MiB ({rows[-1]['seconds']:.2f} s)")
open(sys.argv[2], "w").write(f"{', '.join(parts)}, {kind}, {result['image_size']}²")
EOF
}

TRAIN_ARGS=(--output-dir "$WORK/runs" --vis tensorboard --logging.local-writer.enable False
  --steps-per-eval-batch 100000 --steps-per-eval-image 100000 --steps-per-eval-all-images 100000
  --save-only-latest-checkpoint False --steps-per-save 10 --pipeline.datamanager.scenes-per-step 2)

check_train_resume() {
  tmo ns-3dae-synth --output "$WORK/data" --num-scenes 4 --views-per-scene "$VIEWS" --test-views "$TEST_VIEWS" \
    --resolution "$DATA_SIZE" --workers 2
  local first=(--machine.device-type cpu --machine.num-devices 2) first_label="2 gloo CPU processes"
  if ((NUM_GPUS >= 2)); then
    first=(--machine.device-type cuda --machine.num-devices 2) first_label="2 NCCL processes on 2 GPUs"
  elif [ "$MODE" = gpu ]; then
    # ns-3dae-train gives rank r the device cuda:r, and NCCL refuses two ranks on one GPU: with one GPU the two
    # processes are CPU (gloo) processes, and the resume below runs on the GPU (docs/gpu.md)
    first_label="2 gloo CPU processes (1 GPU)"
  fi
  tmo ns-3dae-train 3dae-latent --data "$WORK/data" --timestamp first --max-num-iterations 10 "${TRAIN_ARGS[@]}" \
    "${MODEL_ARGS[@]}" "${first[@]}"
  local run="$WORK/runs/data/3dae-latent"
  test -f "$run/first/nerfstudio_models/step-000000009.ckpt"
  tmo ns-3dae-train 3dae-latent --data "$WORK/data" --timestamp resumed --max-num-iterations 20 "${TRAIN_ARGS[@]}" \
    "${MODEL_ARGS[@]}" --machine.device-type "$DEVICE" --load-dir "$run/first/nerfstudio_models" \
    | tee "$WORK/logs/resumed.out"
  # rich wraps long lines: join them before looking for the checkpoint the resume loaded
  tr -d '\n' <"$WORK/logs/resumed.out" \
    | grep -q "Done loading Nerfstudio checkpoint from.*first/nerfstudio_models/step-000000009.ckpt"
  test -f "$run/resumed/nerfstudio_models/step-000000019.ckpt"
  echo "steps 0-9 on $first_label, saved; resumed on 1 $DEVICE process to step 19" >"$1"
}

check_eval() {
  tmo ns-eval --load-config "$WORK/runs/data/3dae-latent/resumed/config.yml" --output-path "$WORK/metrics.json"
  python - "$WORK/metrics.json" "$1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
open(sys.argv[2], "w").write(f"test PSNR {r['psnr']:.2f} dB, {r['fps']:.1f} views/s")
EOF
}

check_render() {
  tmo ns-3dae-render spiral --load-config "$WORK/runs/data/3dae-latent/resumed/config.yml" --scenes 0:2 \
    --output-path "$WORK/renders/spiral.mp4" --seconds 1 --frame-rate 4
  local videos
  videos=$(find "$WORK/renders" -name 'spiral_*.mp4' -size +0 | wc -l)
  echo "$videos spiral videos (1 s, 4 fps)" >"$1"
  ((videos == 2))
}

check_scaling() {
  local extra=()
  [ "$MODE" = cpu ] && extra=(--no-fresh-process --threads 1)
  tmo ns-3dae-bench scaling --preset tiny --device "$DEVICE" --output "$WORK/scaling.json" "${extra[@]}"
  python - "$WORK/scaling.json" "$1" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
first, last = d["scene_counts"][0], d["scene_counts"][-1]
step = 1e3 * d["step_time_s"][str(last)]
open(sys.argv[2], "w").write(f"sparse step {step:.1f} ms at N={last}, x{d['step_time_ratio']:.2f} vs N={first}")
EOF
}

check_compare() {
  tmo ns-3dae-bench compare --preset tiny --output "$WORK/compare" "${CPU_ARGS[@]}"
  python - "$WORK/compare/compare.json" "$1" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
open(sys.argv[2], "w").write(f"PSNR rgb {d['psnr_rgb']:.2f} / latent {d['psnr_latent']:.2f} dB, {d['device']}"[:90])
EOF
}

check_step_profile() {  # check_step_profile FIGURE [--compile-renderer]: operators, syncs and ms of a latent step
  local size=128 out="$WORK/step-profile${2:-}"
  [ "$MODE" = cpu ] && size=16
  tmo ns-3dae-bench step-profile --device "$DEVICE" --image-size $size --warmup 5 --steps 5 --rounds 1 \
    --output "$out" ${2:-}
  python - "$out/step-profile.json" "$1" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
m = d["methods"]
rgb, lat, dec = m["3dae-rgb"], m["3dae-latent"], m["3dae-latent/decoded"]
open(sys.argv[2], "w").write(
    f"latent {lat['ms_per_step_unprofiled']:.1f} ms unprofiled, {lat['ops_per_step']['top_level']:.0f} ops, "
    f"{lat['syncs_per_step']['total'] + dec['syncs_per_step']['total']:g} syncs; decoded "
    f"x{d['decoded_over_latent_unprofiled']:.2f}; rgb {rgb['ms_per_step_unprofiled']:.1f} ms"
)
EOF
}

check_step_profile_compiled() { check_step_profile "$1" --compile-renderer; }

check_compare_gpu() {
  local preset=gpu
  [ "$MODE" = cpu ] && preset=tiny
  tmo ns-3dae-bench compare --preset $preset --output "$WORK/compare-gpu" "${CPU_ARGS[@]}"
  python - "$WORK/compare-gpu/compare.json" "$1" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
ratio, render = d.get("time_ratio"), d.get("render_ratio")
text = f"x{ratio:.2f} per scene to RGB-0.5 dB" if ratio else "no time ratio"
text += f", render x{render:.2f}" if render else ""
open(sys.argv[2], "w").write(f"{text}; PSNR rgb {d['psnr_rgb']:.2f} / latent {d['psnr_latent']:.2f}"[:90])
EOF
}

if ((SPEED)); then
  run_check "step profile" 150 check_step_profile
  run_check "step profile compiled" 200 check_step_profile_compiled
  run_check "compare gpu preset" 560 check_compare_gpu
fi
((SPEED)) || { ((BUILD)) && run_check "nerfacc build" 420 check_build; }
((SPEED)) || run_check "cuda tests" 120 check_cuda_tests
((SPEED)) || run_check "backend decision" 60 check_decision
((SPEED)) || run_check "step memory" 150 check_step_memory
((SPEED)) || run_check "2 procs save+resume" 240 check_train_resume
((SPEED)) || run_check "eval" 60 check_eval
((SPEED)) || run_check "render" 90 check_render
((SPEED)) || run_check "bench scaling" 120 check_scaling
((SPEED)) || run_check "bench compare" 150 check_compare

FAILED=$(awk -F'\t' '$2 != "ok"' "$ROWS" | wc -l)
awk -F'\t' '$2 != "ok" { print $1 }' "$ROWS" | while IFS= read -r name; do
  echo "---- $name FAILED: the last lines of $WORK/logs/$name.log"
  tail -n 15 "$WORK/logs/$name.log"
done
((KEEP || FAILED)) && echo "work folder kept: $WORK"
python - "$ROWS" "$MODE" "$(($(date +%s) - START))" <<'EOF'
import sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
head = ("check", "status", "figure", "seconds")
widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
line = "-+-".join("-" * w for w in widths)
fmt = lambda r: " | ".join(c.rjust(w) if i == 3 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
failed = sum(r[1] != "ok" for r in rows)
print(f"\ngpu_check.sh summary ({sys.argv[2]} mode, {sys.argv[3]} s, {len(rows) - failed} ok, {failed} FAILED)")
print(fmt(head))
print(line)
for r in rows:
    print(fmt(r))
EOF
TABLE_RC=$?
((KEEP || FAILED)) || rm -rf "$WORK"
((FAILED == 0 && TABLE_RC == 0))
