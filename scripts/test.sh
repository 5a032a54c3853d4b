#!/usr/bin/env bash
# The test command (README, .ci/run): sets up .venv if needed, then runs the whole suite on the CPU.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
# pytest exits 5 when it collects no test: that is a failure here, like any other non-zero code.
exec python -m pytest -q "$@"
