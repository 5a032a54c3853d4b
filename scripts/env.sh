#!/usr/bin/env bash
# Creates (once) and activates the project's virtual environment in .venv: nerfstudio 1.1.5 and this plugin.
# Sourced by scripts/demo.sh and scripts/test.sh; re-running is cheap (a stamp keyed on pyproject.toml).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
STAMP="$VENV/.3dae-installed"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[3dae] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  echo "[3dae] installing nerfstudio 1.1.5 and nerfstudio-3dae into $VENV (first time: a few minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e "$ROOT[test]"
  echo "$WANT" > "$STAMP"
fi
# ns-render needs an `ffmpeg` on PATH: use the binary of the imageio-ffmpeg wheel unless the system has one.
if ! command -v ffmpeg >/dev/null 2>&1 && [ ! -e "$VENV/bin/ffmpeg" ]; then
  ln -sf "$("$VENV/bin/python" -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())')" "$VENV/bin/ffmpeg"
fi
export PATH="$VENV/bin:$PATH"
export WANDB_MODE=disabled HF_HUB_OFFLINE=1
