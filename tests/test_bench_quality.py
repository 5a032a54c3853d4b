"""ns-3dae-bench quality: decoded PSNR stage by stage and per lever against RGB Tri-Planes (tiny preset, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nerfstudio_3dae.bench.presets import PRESETS
from nerfstudio_3dae.bench.quality import LEVERS, QualitySettings, decoded_start, run_quality


def test_levers_share_the_latent_phase_and_the_run_resumes(tmp_path: Path, one_thread):
    levers = ["decode-scene-early", "decode-scene-frozen"]
    settings = QualitySettings("tiny", levers, "embedded", None, None, None, 1, 0)
    logs: list = []
    result = run_quality(settings, tmp_path, max_views=4, log=logs.append)
    preset = PRESETS["tiny"]
    early, frozen = (result["levers"][name] for name in levers)
    start = decoded_start(LEVERS["decode-scene-early"], preset)
    assert early["decoded_start"] == frozen["decoded_start"] == start == round(preset.latent_steps / 4)
    # same seeds and the same latent phase: equal figures at the switch; the frozen decoder differs only after it
    assert early["at_switch"]["test"]["psnr"] == pytest.approx(frozen["at_switch"]["test"]["psnr"], abs=1e-4)
    assert early["at_switch"]["train"]["latent_psnr"] == pytest.approx(frozen["at_switch"]["train"]["latent_psnr"])
    assert early["final"]["test"]["psnr"] != pytest.approx(frozen["final"]["test"]["psnr"], abs=1e-4)
    # the decoded phase trains on the training views: they gain over the phase and score above the test views at the end
    final = early["final"]
    assert final["train"]["psnr"] > early["at_switch"]["train"]["psnr"]
    assert final["train"]["psnr"] > final["test"]["psnr"], f"train {final['train']} test {final['test']}"
    assert 5 < result["autoencoder_psnr"]["input"] < 60 and 5 < result["rgb"]["final"]["test"]["psnr"] < 60
    table = (tmp_path / "quality.md").read_text()
    assert table.count("| decode-scene-") == 4, "one row per lever in each of the two tables"

    # run again: stage 1, RGB and both levers are reused; a new lever is the only run
    saved = json.loads((tmp_path / "quality.json").read_text())
    settings.levers = levers + ["stage3-late"]
    again = run_quality(settings, tmp_path, max_views=4, log=logs.append)
    assert again["levers"]["decode-scene-early"] == saved["levers"]["decode-scene-early"]
    assert again["stage1"] == saved["stage1"] and again["rgb"] == saved["rgb"]
    assert again["levers"]["stage3-late"]["decoded_start"] == round(preset.latent_steps * 5 / 6)
    assert sum("lever decode-scene-early" in line for line in logs) == 1, "a finished lever is not trained again"


def test_unknown_levers_are_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="--levers: unknown"):
        run_quality(QualitySettings("tiny", ["faster"], "embedded", None, None, None, 1, 0), tmp_path)


def test_without_stage1_and_with_the_rgb_run_of_another(tmp_path: Path, one_thread):
    first = QualitySettings("tiny", ["stage3-late"], "embedded", None, None, None, 1, 0)
    run_quality(first, tmp_path / "first", max_views=2, log=lambda line: None)
    no_stage1 = QualitySettings("tiny", ["stage3-late"], "embedded", None, None, None, 1, 0, stage1_steps=0)
    logs: list = []
    result = run_quality(no_stage1, tmp_path / "second", max_views=2, log=logs.append,
                         rgb_from=tmp_path / "first" / "quality.json")  # fmt: skip
    assert "stage1" not in result and result["autoencoder_psnr"]["stage1"] is None
    assert not any("3dae-rgb" in line for line in logs), "the RGB run is reused, not trained again"
    assert "| stage3-late | " in (tmp_path / "second" / "quality.md").read_text()
    assert "no stage 1" in (tmp_path / "second" / "quality.md").read_text()
    other_scenes = QualitySettings("tiny", ["stage3-late"], "embedded", None, None, None, 1, 5, stage1_steps=0)
    with pytest.raises(ValueError, match="--rgb-from"):
        run_quality(other_scenes, tmp_path / "third", rgb_from=tmp_path / "first" / "quality.json")


def test_the_rgb_run_of_a_dataset_is_reused_for_the_same_compared_scenes(tmp_path: Path, one_thread):
    from nerfstudio_3dae.data.synth.generate import generate_dataset

    data = str(generate_dataset(tmp_path / "data", 3, 5, 16, seed=2, test_views=1, progress=False))
    first = QualitySettings("tiny", ["stage3-late"], "embedded", data, "0", "2", 1, 0, stage1_steps=0)
    run_quality(first, tmp_path / "first", max_views=2, log=lambda line: None)
    saved = tmp_path / "first" / "quality.json"
    same_scenes = QualitySettings("tiny", ["stage3-late"], "embedded", data, "1", "2", 1, 0, stage1_steps=0)
    result = run_quality(same_scenes, tmp_path / "second", max_views=2, log=lambda line: None, rgb_from=saved)
    assert result["compared_scenes"] == ["car_0002"] and result["rgb"] == json.loads(saved.read_text())["rgb"]
    other_scenes = QualitySettings("tiny", ["stage3-late"], "embedded", data, "0", "1", 1, 0, stage1_steps=0)
    with pytest.raises(ValueError, match="--rgb-from"):
        run_quality(other_scenes, tmp_path / "third", rgb_from=saved)
