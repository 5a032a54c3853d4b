"""The plugin installs beside nerfstudio without breaking it, and what a user types reaches the config: ns-train,
ns-3dae-train and ns-3dae-bench run through their console entry points in this process, with what they would launch
replaced by a recorder of the parsed config; an option they do not know, or a value they refuse, is named.

(The installed console scripts themselves run in test_methods, test_doc_commands and test_bench_compare.)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, List

import pytest

from nerfstudio_3dae.data.dataparser import ScenesDataParserConfig


def _parsed(monkeypatch, entrypoint: Callable[[], None], owner, name: str, argv: List[str]):
    """Run ``entrypoint`` as the console script ``argv[0]`` with ``argv``, ``owner.name`` (what it calls with the
    parsed config, or the parsed command's ``main``) replaced by a recorder; the parsed config (or command)."""
    seen = []
    with monkeypatch.context() as patch:
        patch.setattr(owner, name, lambda *args: seen.append(args[0]))
        patch.setattr(sys, "argv", argv)
        entrypoint()
    (config,) = seen
    return config


def test_ns_train_parses_stock_and_3dae_methods_with_the_given_values(monkeypatch):
    import nerfstudio.scripts.train as ns_train

    latent = _parsed(monkeypatch, ns_train.entrypoint, ns_train, "main", [
        "ns-train", "3dae-latent", "--data", "cars", "--max-num-iterations", "7",
        "--pipeline.model.finetune-start", "5", "--pipeline.model.autoencoder", "runs/ae",
        "3dae-scenes", "--scenes", "0:2", "--downscale-factor", "2",
    ])  # fmt: skip
    assert (latent.method_name, latent.data, latent.max_num_iterations) == ("3dae-latent", Path("cars"), 7)
    assert latent.pipeline.model.finetune_start == 5 and str(latent.pipeline.model.autoencoder) == "runs/ae"
    parser = latent.pipeline.datamanager.dataparser
    assert isinstance(parser, ScenesDataParserConfig)
    assert (parser.scenes, parser.downscale_factor, parser.image_multiple) == ("0:2", 2, 8)
    for method in ("3dae-rgb", "3dae-autoencoder", "nerfacto", "splatfacto"):  # nerfstudio's own still parse
        argv = ["ns-train", method, "--max-num-iterations", "3"]
        config = _parsed(monkeypatch, ns_train.entrypoint, ns_train, "main", argv)
        assert (config.method_name, config.max_num_iterations) == (method, 3)


def test_ns_train_names_an_unknown_option_and_a_bad_value(monkeypatch, capsys):
    import nerfstudio.scripts.train as ns_train

    for argv, named in (
        (["3dae-latent", "--pipeline.model.finetune-startt", "5"], "--pipeline.model.finetune-startt"),
        (["3dae-rgb", "--max-num-iterations", "many"], "--max-num-iterations"),
    ):
        with pytest.raises(SystemExit) as stopped:
            _parsed(monkeypatch, ns_train.entrypoint, ns_train, "main", ["ns-train", *argv])
        assert stopped.value.code == 2
        said = capsys.readouterr()
        assert named in " ".join((said.out + said.err).split()), f"the error names {named}"


def test_ns_3dae_train_takes_the_machine_options_and_refuses_impossible_ones(monkeypatch, tmp_path):
    import nerfstudio_3dae.scripts.train as ns_3dae_train

    for var in ns_3dae_train.TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)
    argv = ["ns-3dae-train", "3dae-rgb", "--data", "cars", "--output-dir", str(tmp_path),
            "--machine.device-type", "cpu", "--machine.num-devices", "2", "--machine.num-machines", "2",
            "--machine.dist-url", "auto"]  # fmt: skip
    config = _parsed(monkeypatch, ns_3dae_train.entrypoint, ns_3dae_train, "launch", argv)
    assert (config.method_name, config.machine.num_devices, config.machine.num_machines) == ("3dae-rgb", 2, 2)
    assert config.machine.device_type == "cpu" and config.data == Path("cars")
    with pytest.raises(ValueError, match="--machine.dist-url auto works on one machine only"):
        ns_3dae_train.launch(config)  # refused before any process starts
    assert config.pipeline.datamanager.data == Path("cars"), "--data reaches the datamanager, as in ns-train"
    config.machine.num_devices = 0
    with pytest.raises(ValueError, match="--machine.num-devices and --machine.num-machines must be at least 1"):
        ns_3dae_train.launch(config)


def test_ns_3dae_bench_parses_its_subcommands_and_names_what_it_refuses(monkeypatch, capsys, tmp_path):
    import nerfstudio_3dae.scripts.bench as bench

    argv = ["ns-3dae-bench", "compare", "--preset", "tiny", "--output", str(tmp_path / "out"), "--ablation"]
    compare = _parsed(monkeypatch, bench.entrypoint, bench.Compare, "main", argv)
    assert isinstance(compare, bench.Compare) and (compare.preset, compare.output) == ("tiny", tmp_path / "out")
    assert compare.ablation and compare.data is None
    scaling = _parsed(
        monkeypatch, bench.entrypoint, bench.Scaling, "main", ["ns-3dae-bench", "scaling", "--preset", "tiny"]
    )
    assert isinstance(scaling, bench.Scaling) and scaling.preset == "tiny"

    monkeypatch.setattr(sys, "argv", ["ns-3dae-bench", "compare", "--preset", "huge"])
    with pytest.raises(SystemExit) as stopped:
        bench.entrypoint()
    said = capsys.readouterr()
    text = " ".join((said.out + said.err).split())
    assert stopped.value.code == 2 and "--preset" in text and "huge" in text
    # a selection it refuses (the real run_compare, before anything is written): exit code 2 and the reason
    monkeypatch.setattr(sys, "argv", ["ns-3dae-bench", "compare", "--preset", "tiny", "--data", str(tmp_path),
                                      "--scenes", "2:4", "--output", str(tmp_path / "refused")])  # fmt: skip
    with pytest.raises(SystemExit) as stopped:
        bench.entrypoint()
    said = capsys.readouterr()
    assert stopped.value.code == 2 and "give both --stage1-scenes and --scenes" in " ".join(said.out.split())
    assert not (tmp_path / "refused").exists()
