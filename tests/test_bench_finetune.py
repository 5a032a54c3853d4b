"""ns-3dae-bench finetune: the stage-3 sweep over autoencoders and decoder learning rates (tiny sizes, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nerfstudio_3dae.bench.finetune import run_finetune_sweep
from nerfstudio_3dae.data.synth.generate import generate_dataset


def test_sweep_shares_the_latent_phase_and_measures_each_rate(tmp_path: Path, one_thread):
    data = generate_dataset(tmp_path / "data", 2, 5, 16, seed=3, test_views=1, progress=False)
    result = run_finetune_sweep(
        data,
        tmp_path / "out",
        decoder_lrs=(1e-5, 1e-3),
        preset="tiny",
        latent_steps=8,
        finetune_steps=4,
        eval_every=4,
        log=lambda line: None,
    )
    runs = result["runs"]
    assert [r["decoder_lr"] for r in runs] == [1e-5, 1e-3]
    assert [int(p[0]) for p in runs[0]["curve"]] == [4, 8, 12]
    # same seeds, same stage 2: equal PSNR when the fine-tune starts; the rates differ only after it
    assert runs[0]["curve"][1][2] == pytest.approx(runs[1]["curve"][1][2], abs=1e-4)
    assert runs[0]["curve"][2][2] != pytest.approx(runs[1]["curve"][2][2], abs=1e-3)
    assert json.loads((tmp_path / "out" / "finetune.json").read_text())["finetune_steps"] == 4
    table = (tmp_path / "out" / "finetune.md").read_text()
    assert "| +0 | +4 |" in table and "| embedded | 0.001 |" in table


def test_bad_lengths_are_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="--latent-steps"):
        run_finetune_sweep(tmp_path, tmp_path / "out", latent_steps=0)
