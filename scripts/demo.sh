#!/usr/bin/env bash
# The demo command (README): sets up .venv if needed, generates a small dataset and runs the demo on the CPU.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
exec ns-3dae-demo "$@"
