"""``ns-3dae-demo`` (what ``bash scripts/demo.sh`` runs, the README's first command) at a tiny size: it generates the
cars, trains, evaluates and prints the decoded test PSNR and its picture; it keeps its cars for the next run only
while the settings are the same."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import BIN, tool_env
from PIL import Image


def _demo(out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "ns-3dae-demo"), "--output", str(out), "--num-scenes", "2", "--resolution", "32", *args]
    env = tool_env(one_thread=True, COLUMNS="400")  # rich wraps its lines at the terminal's width
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def _frames(data: Path) -> int:
    return len(json.loads((data / "car_0000" / "transforms.json").read_text())["frames"])


def test_the_demo_trains_evaluates_and_shows_its_test_views(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = _demo(out, "--views-per-scene", "6", "--steps", "8")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "decoded test PSNR:" in proc.stdout and "test_views.png" in proc.stdout
    results = json.loads((out / "eval.json").read_text())["results"]
    assert results["psnr"] > 8 and "autoencoded_psnr" in results
    with Image.open(out / "test_views.png") as picture:  # 2 scenes x 4 test views, 3 images each
        assert picture.height >= 2 * 32 and picture.width >= 4 * 3 * 32
    assert _frames(out / "cars") == 6

    # the same settings keep the cars; other ones make them again (and say so)
    same = _demo(out, "--views-per-scene", "6", "--only-data")
    assert same.returncode == 0 and "ns-3dae-synth" not in same.stdout
    other = _demo(out, "--views-per-scene", "7", "--only-data")
    assert other.returncode == 0, (other.stdout + other.stderr)[-3000:]
    assert "generating it again" in other.stdout and _frames(out / "cars") == 7
