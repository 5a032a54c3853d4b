#!/usr/bin/env bash
# The test command (README, .ci/run): sets up .venv if needed, then runs the whole suite on the CPU.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
# tests/test_viewer_browser.py drives ns-viewer in Debian's Chromium through Playwright (no browser download);
# without root/apt the test is skipped and says why.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[3dae] installing Debian's chromium for the viewer browser test"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "[3dae] could not install chromium: the browser test will be skipped"
fi
# The suite's workloads are tiny: one thread each is faster than two fighting over these 2-core machines.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# The code style (pyproject.toml [tool.ruff]): lint and formatting are checked before any test runs.
ruff check .
ruff format --check .
# pytest exits 5 when it collects no test: that is a failure here, like any other non-zero code.
exec python -m pytest -q "$@"
