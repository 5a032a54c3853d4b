"""One place holds a default: a bare model config is its method's model (code that builds one, a notebook, another
plugin, a bench, trains the documented method), and the option table of docs/methods.md shows those defaults."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Dict

import pytest

from nerfstudio_3dae.latent_model import LatentTriplaneModelConfig
from nerfstudio_3dae.method_configs import autoencoder_method, latent_method, rgb_method
from nerfstudio_3dae.model import TriplaneModelConfig

METHODS_DOC = Path(__file__).resolve().parents[1] / "docs" / "methods.md"


def differences(config: Any, bare: Any) -> Dict[str, Any]:
    """The fields in which ``config`` differs from ``bare``: name -> ``config``'s value."""
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(bare)
        if getattr(config, f.name) != getattr(bare, f.name)
    }


def test_a_bare_model_config_is_its_methods_model():
    assert differences(latent_method().pipeline.model, LatentTriplaneModelConfig()) == {}, "3dae-latent"
    assert differences(rgb_method().pipeline.model, TriplaneModelConfig()) == {}, "3dae-rgb: RGB Tri-Planes"
    # stage 1 changes only what makes it stage 1 (its stage-1 options are the model's defaults)
    assert differences(autoencoder_method().pipeline.model, LatentTriplaneModelConfig()) == {
        "stage": "autoencoder",
        "pixel_jitter": False,
    }


def documented_model_defaults(text: str) -> Dict[str, str]:
    """``--pipeline.model.*`` option -> default of the option table (``a`` / ``b`` rows: one default each, a
    parenthesised note about another method dropped)."""
    found = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`--pipeline.model."):
            continue
        names = [n.strip().strip("`").removeprefix("--pipeline.model.") for n in cells[0].split(" / ")]
        values = [v.strip() for v in re.sub(r"\s*\(.*\)$", "", cells[1]).split(" / ")]
        assert len(names) == len(values), f"docs/methods.md: one default an option: {line}"
        found.update(zip(names, values, strict=True))
    return found


@pytest.mark.parametrize("name, value", sorted(documented_model_defaults(METHODS_DOC.read_text()).items()))
def test_the_documented_defaults_are_the_configs(name: str, value: str):
    actual = getattr(LatentTriplaneModelConfig(), name.replace("-", "_"))
    if isinstance(actual, bool):
        assert value == str(actual), f"docs/methods.md: --pipeline.model.{name} {value}, the config {actual}"
    elif isinstance(actual, (int, float)):
        assert float(value) == pytest.approx(actual), f"docs/methods.md: --pipeline.model.{name} {value} != {actual}"
    else:
        assert value == str(actual), f"docs/methods.md: --pipeline.model.{name} {value}, the config {actual}"


def test_the_table_is_read():
    documented = documented_model_defaults(METHODS_DOC.read_text())
    assert {"finetune-start", "pixel-jitter", "ae-weight", "warmup-steps", "micro-channels"} <= set(documented)
