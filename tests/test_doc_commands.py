"""Every ``ns-*`` command that README.md and docs/*.md show runs, on tiny data, for a few steps.

Commands are the lines of fenced code blocks whose first word (after ``VAR=value`` assignments) starts with
``ns-``; ``\\``-continued lines are joined, ``# comments`` and ``[optional]`` brackets dropped. Each is run as the
installed console script, in a workspace folder where the relative paths of the docs exist, with paths and sizes
substituted (:func:`tiny`): ``--num-scenes 100`` makes 4 scenes, ``--scenes 500:1000`` selects 2 of them,
``--preset paper`` is ``tiny`` (``scaling`` in this process), ``<run>`` is the run an earlier documented command
trained, training commands get a few steps at R = 8. Data producers (``ns-3dae-synth``, ``ns-3dae-convert``) run
first, then stage 1, the other trainings, the tools on their runs and the benchmarks, so a command that consumes
another's output gets the real output. ``ns-viewer`` is started and stopped once it serves. Only :data:`SKIP` is
not run, each with its reason.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest
from conftest import BIN, free_port, look_at_c2w, run_in_one_process, tool_env
from srn_layout import write_srn_cars

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EMBEDDED = ROOT / "nerfstudio_3dae" / "weights" / "autoencoder"

SKIP = {
    "stabilityai/sd-vae-ft-mse": "a model-hub id: this machine has no hub access (test_autoencoder loads the same "
    "code path from a diffusers folder written with save_pretrained)",
}
"""Substring of a command -> why it is not run."""

SCENES = {":": ":", "0:80": "0:2", "80:100": "2:4", "0:500": "0:2", "500:1000": "2:4", "500:506": "2:4",
          "3,7,9": "0,1,3", "0:4": "0:4", "4:10": "2:4", "0:10": "0:4",
          "car_0002,car_0009": "car_0002,car_0003", "32,36,40,44": "2:4", "4:8": "2:4"}  # fmt: skip
"""``--scenes`` of the docs -> the same kind of selection of the workspace's 4 scenes."""
STAGE1_SCENES = {"0:4": "0:2", "0,4,8,12,16,20,24,28": "0:2"}
"""``--stage1-scenes`` of the docs (disjoint from the mapped ``--scenes``)."""
SCENE_NAMES = {"car_0007": "car_0001", "car_0042": "car_0002", "3": "3"}
"""``NS3DAE_SCENE`` of the docs -> a scene of the workspace's runs."""
PATHS = {"/data/cars": "data/cars", "/shared/runs": "outputs", "/models/my-vae": str(EMBEDDED),
         ".../config.yml": "outputs/cars/3dae-latent/run/config.yml", "outputs/data/chairs50": "data/cars",
         "outputs/data/chairs": "data/cars",
         "outputs/ae-gpu-recipe/autoencoder": str(EMBEDDED)}  # fmt: skip
"""Absolute or elided paths of the docs -> the workspace's."""
WORDS = {"<method>": "3dae-rgb", "D": "1", "M": "1", "K": "0"}
"""Placeholder words (the multi-machine line: D devices, M machines, rank K)."""

TRAIN_STEPS = {"3dae-latent": 12}
"""Steps of a documented training by method (others: 4): README's ns-eval of a 3dae-latent run must beat a white
picture clearly (4 steps: 0.9 dB over it; 12 steps: 2.6 dB, in about the same time: start-up dominates)."""
TINY_TRAIN = ["--vis", "tensorboard", "--logging.local-writer.enable",
              "False", "--steps-per-eval-image", "1000", "--steps-per-eval-all-images", "1000",
              "--steps-per-save", "1000", "--pipeline.model.resolution", "8", "--pipeline.model.num-coarse-samples",
              "4", "--pipeline.model.num-fine-samples", "4", "--pipeline.datamanager.scenes-per-step", "2"]  # fmt: skip
TINY_METHOD = {"3dae-autoencoder": ["--pipeline.model.warmup-steps", "2"],
               "3dae-latent": ["--pipeline.model.finetune-start", "2"]}  # fmt: skip
SYNTH_SIZES = {"--num-scenes": "4", "--views-per-scene": "6", "--resolution": "16", "--test-views": "1"}
AE_TRAINING = {"--cars": "2", "--chairs": "1", "--tables": "0", "--holdout-cars": "1", "--views-per-scene": "2",
               "--holdout-views": "1", "--resolution": "16", "--crop": "8", "--steps": "3", "--warmup-steps": "1",
               "--full-image-steps": "1", "--eval-every": "3", "--save-every": "3", "--workers": "1"}  # fmt: skip
"""ns-3dae-train-autoencoder on a corpus of 3 tiny scenes for 3 steps."""
FINETUNE_STEPS = {"--latent-steps": "4", "--finetune-steps": "2", "--eval-every": "2"}
SKIPPING_STEPS = {"--rgb-steps": "6", "--latent-steps": "6", "--threads": "1"}
"""ns-3dae-bench skipping: four runs of a few steps."""


@dataclass
class DocCommand:
    where: str
    """file:line of the command's first line."""
    text: str
    """The command as written (continuations joined, comment dropped)."""
    env: Dict[str, str] = field(default_factory=dict)
    argv: List[str] = field(default_factory=list)


def collect() -> List[DocCommand]:
    """The ``ns-*`` commands of the fenced code blocks of README.md and docs/*.md."""
    commands = []
    for path in DOCS:
        lines, fenced, i = path.read_text().splitlines(), False, 0
        while i < len(lines):
            line, first = lines[i], i
            if line.lstrip().startswith("```"):
                fenced = not fenced
            elif fenced:
                while line.rstrip().endswith("\\") and i + 1 < len(lines):
                    i += 1
                    line = line.rstrip()[:-1] + " " + lines[i].strip()
                words = [w.strip("[]") for w in shlex.split(line, comments=True)]
                env = {}
                while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
                    key, _, value = words.pop(0).partition("=")
                    env[key] = value
                if words and words[0].startswith("ns-"):
                    text = line.split(" #")[0].strip()
                    commands.append(DocCommand(f"{path.relative_to(ROOT)}:{first + 1}", text, env, words))
            i += 1
    return commands


def _set(argv: List[str], option: str, value: str) -> None:
    """Give ``option`` the value ``value`` (replacing the docs' value, or adding it after the command words)."""
    if option in argv:
        argv[argv.index(option) + 1] = value
    else:
        argv.append(option)
        argv.append(value)


def tiny(command: DocCommand) -> DocCommand:
    """The command on the workspace's tiny data: paths, scene selections, sizes and steps substituted."""
    argv = []
    for word in command.argv:
        word = WORDS.get(word, word)
        for old, new in PATHS.items():
            word = new + word[len(old) :] if word.startswith(old) else word
        word = re.sub(r"(outputs/[^/]+/[^/]+/)<(run|timestamp)>", r"\1run", word)  # a run folder: timestamp 'run'
        word = word.replace("<run>", "outputs/cars/3dae-latent/run")  # a bare <run>: the last 3dae-latent run
        word = re.sub(r"^tcp://HOST0:\d+$", f"tcp://127.0.0.1:{free_port()}", word)
        argv.append(word)
    for option, table in (("--scenes", SCENES), ("--stage1-scenes", STAGE1_SCENES)):
        if option in argv:
            spec = argv[argv.index(option) + 1]
            assert spec in table, f"{command.where}: add a tiny equivalent of {option} {spec!r} to {table}"
            argv[argv.index(option) + 1] = table[spec]
    env = {k: SCENE_NAMES.get(v, v) if k == "NS3DAE_SCENE" else v for k, v in command.env.items()}
    tool = argv[0]
    if tool in ("ns-train", "ns-3dae-train"):
        method = argv[1]
        steps = ["--max-num-iterations", str(TRAIN_STEPS.get(method, 4))]
        extra = steps + TINY_TRAIN + TINY_METHOD.get(method, [])
        for option, value in (("--output-dir", "outputs"), ("--timestamp", "run")):
            if option not in argv:
                extra = extra + [option, value]
        argv = argv[:2] + extra + argv[2:]
    elif tool == "ns-3dae-synth" and "--help" not in argv:
        for option, value in SYNTH_SIZES.items():
            _set(argv, option, value)
    elif tool == "ns-3dae-train-autoencoder" and "--help" not in argv:
        for option, value in AE_TRAINING.items():
            _set(argv, option, value)
    elif tool == "ns-3dae-bench":
        if argv[1] != "reconstruction":  # it has no presets: the workspace's views are few already
            _set(argv, "--preset", "tiny")
        if argv[1] == "compare":
            _set(argv, "--threads", "1")
            if "paper50" in command.argv:  # paper50 is a convergence compare; tiny's own mode is the equal budget
                _set(argv, "--mode", "convergence")
        if argv[1] == "skipping":
            for option, value in SKIPPING_STEPS.items():
                _set(argv, option, value)
        if argv[1] == "finetune":
            for option, value in FINETUNE_STEPS.items():
                _set(argv, option, value)
        elif argv[1] == "scaling" and "--fresh-process" not in argv:  # 6 Python start-ups: test_bench_scaling's
            argv.append("--no-fresh-process")
    elif tool == "ns-viewer":
        _set(argv, "--viewer.websocket-port", str(free_port()))
    return DocCommand(command.where, command.text, env, argv)


def phase(command: DocCommand) -> int:
    """Run order: data, stage 1, trainings with a scene selection, trainings of all scenes (so the runs the tools
    load hold every scene), tools, benchmarks."""
    tool, argv = command.argv[0], command.argv
    if tool in ("ns-3dae-synth", "ns-3dae-convert"):
        return 0
    if tool in ("ns-train", "ns-3dae-train"):
        if "3dae-autoencoder" in argv:
            return 1
        return 2 if "3dae-scenes" in argv else 3
    return 5 if tool == "ns-3dae-bench" else 4


def _workspace(root: Path) -> None:
    """What the docs assume exists before their first command: SRN renderings and a camera path."""
    write_srn_cars(root / "cars_train", instances=4, views=14, size=32)
    path = {"camera_type": "perspective", "render_height": 16, "render_width": 16, "seconds": 1, "fps": 2,
            "camera_path": [{"camera_to_world": look_at_c2w(np.array([1.3 * math.cos(a), 1.3 * math.sin(a), 0.6]))
                             .ravel().tolist(), "fov": 50, "aspect": 1.0} for a in (0.0, 1.0)]}  # fmt: skip
    (root / "path.json").write_text(json.dumps(path))


def _run_viewer(argv: List[str], env: Dict[str, str], cwd: Path) -> Optional[str]:
    """Start ns-viewer in its own process group; an error message unless it serves its port within 4 minutes."""
    port = int(argv[argv.index("--viewer.websocket-port") + 1])
    proc = subprocess.Popen([str(BIN / argv[0]), *argv[1:]], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return None
            time.sleep(1)
        return f"ns-viewer did not serve 127.0.0.1:{port} (exit code {proc.poll()})"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        if proc.returncode not in (0, -signal.SIGTERM, None) and out:
            print(out[-3000:])


def test_the_docs_show_the_commands_this_test_knows():
    commands = collect()
    tools = {c.argv[0] for c in commands}
    assert {"ns-train", "ns-eval", "ns-render", "ns-3dae-synth", "ns-3dae-convert", "ns-3dae-bench"} <= tools
    scene_commands = [c for c in commands if "3dae-scenes" in c.argv]
    assert len(scene_commands) >= 8, "README, layout, converters and methods select scenes the nerfstudio way"
    for key in SKIP:
        assert any(key in c.text for c in commands), f"SKIP entry {key!r} matches no documented command any more"


def _run_batch(commands: List[DocCommand], work: Path, env: Dict[str, str], scratch: Path) -> List[str]:
    """Run ``commands`` in order in one process (tests/doc_runner.py); the failures, described."""
    results = run_in_one_process([{"argv": c.argv, "env": c.env} for c in commands], work, env, scratch, 1800)
    failures = []
    for command, result in zip(commands, results, strict=True):
        print(f"{result['seconds']:6.1f} s  {command.where}  {shlex.join(command.argv)}")
        if result["code"] != 0:
            failures.append(f"{command.where}: {command.text}\n  ran as: {shlex.join(command.argv)}\n  exit code "
                            f"{result['code']}\n{result['output'][-2000:]}")  # fmt: skip
    if failures:
        print(results[-1]["runner_log"])
    return failures


def _assert_eval_beats_the_background(results: Dict, data: Path) -> None:
    """README's ns-eval of a 12-step 3dae-latent run (embedded autoencoder) on ``data``: its figures against those of
    a blank white picture (the generator's background) on the same test views, computed here. An untrained field is
    empty and renders the white background: the run must beat white by 1 dB. Seen: the run 15.4 dB (4 steps: 13.6;
    1 step: 12.9), the autoencoder alone 15.7 dB (14.1 before the run fine-tunes its decoder), white 12.7 dB; a
    black render 0.7 dB, a grey one 6.9 dB."""
    from PIL import Image

    blank = []
    for scene in sorted(data.glob("car_*")):
        for frame in json.loads((scene / "transforms.json").read_text())["frames"]:
            if frame.get("split") == "test":
                image = np.asarray(Image.open(scene / frame["file_path"]), dtype=np.float64) / 255
                blank.append(-10 * math.log10(float(np.mean((1.0 - image) ** 2))))
    white = sum(blank) / len(blank)
    assert len(results["per_scene"]) == len(blank), "one test view a scene"
    per_scene = [scene["psnr"] for scene in results["per_scene"].values()]
    assert results["psnr"] == pytest.approx(sum(per_scene) / len(per_scene), abs=1e-4)
    assert results["psnr"] > white + 1.0, f"decoded test PSNR {results['psnr']:.2f} dB, a white picture {white:.2f}"
    assert results["autoencoded_psnr"] > white, f"the autoencoder alone: {results['autoencoded_psnr']:.2f} dB"
    assert 0 < results["ssim"] <= 1


def _assert_convergence_compares(commands: List[DocCommand], work: Path) -> None:
    """The convergence-mode compare commands of docs/benchmarks.md (``--preset paper50`` or ``--mode convergence``),
    run at the tiny size in convergence mode by the test below (:func:`tiny` gives paper50's mode to its tiny stand-in,
    whose own mode is the equal budget): each wrote a compare.json whose per-method verdicts are the plateau rule's
    on its recorded curves, and a run stopped either on a plateau after its equal budget or at its cap."""
    from nerfstudio_3dae.bench.plateau import PlateauRule, plateau

    commands = [c for c in commands if c.where.startswith("docs/benchmarks.md") and c.argv[:2] == ["ns-3dae-bench",
                "compare"] and "convergence" in c.argv and "--data" not in c.argv]  # fmt: skip
    assert len(commands) >= 2, "benchmarks.md shows paper50 and --mode convergence (each once at the tiny size)"
    for command in commands:
        result = json.loads((work / command.argv[command.argv.index("--output") + 1] / "compare.json").read_text())
        converged, settings = result["convergence"], result["settings"]
        assert result["mode"] == "convergence" and result["preset"] == "tiny"
        rule = PlateauRule(settings["plateau_window"], settings["plateau_min_gain_db"],
                           settings["plateau_min_window_steps"])  # fmt: skip
        for name in ("rgb", "latent"):
            verdict, curve = converged[name], converged["curves"][name]
            assert verdict["plateaued"] == plateau(curve, rule).plateaued
            assert verdict["last_step"] == curve[-1][0] <= verdict["step_cap"] == 4 * settings[f"{name}_steps"]
            if verdict["plateaued"]:
                assert curve[-1][0] >= settings[f"{name}_steps"], "a plateau ends a run after its equal budget only"
            else:
                assert verdict["cap_hit"] and "NOT plateaued" in (work / command.argv[command.argv.index(
                    "--output") + 1] / "compare.md").read_text()  # fmt: skip


def test_every_documented_command_runs_on_tiny_data(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    _workspace(work)
    env = tool_env(one_thread=True, bin_on_path=True)
    commands = [tiny(c) for c in collect() if not any(key in c.text for key in SKIP)]
    commands.sort(key=phase)  # stable: the docs' order within a phase
    unique, seen = [], set()
    for command in commands:  # the same benchmark after substitution (--preset small and paper: both tiny)
        key = (tuple(w for i, w in enumerate(command.argv) if command.argv[i - 1 : i] != ["--output"]),
               tuple(sorted(command.env.items())))  # fmt: skip
        if command.argv[0] != "ns-3dae-bench" or key not in seen:
            unique.append(command)
        seen.add(key)
    data = [c for c in unique if phase(c) == 0]
    failures = _run_batch(data, work, env, tmp_path)
    assert not failures, "\n\n".join(failures)
    assert (work / "data" / "srn_cars" / "scenes.json").is_file()
    shutil.copytree(work / "data" / "cars", work / "my_cars")  # the layout page's name for the README's cars
    rest = [c for c in unique if phase(c) > 0 and c.argv[0] != "ns-viewer"]
    failures = _run_batch(rest, work, env, tmp_path)
    for command in (c for c in unique if c.argv[0] == "ns-viewer"):
        error = _run_viewer(command.argv, {**env, **command.env}, work)
        if error:
            failures.append(f"{command.where}: {command.text}\n  ran as: {shlex.join(command.argv)}\n  {error}")
    assert not failures, f"{len(failures)} documented commands failed:\n\n" + "\n\n".join(failures)
    assert (work / "outputs" / "cars" / "3dae-autoencoder" / "run" / "autoencoder" / "bases.pt").is_file()
    results = json.loads((work / "metrics.json").read_text())["results"]
    _assert_eval_beats_the_background(results, work / "data" / "cars")
    _assert_convergence_compares(unique, work)


def test_the_dataparser_is_a_subcommand_that_keeps_each_methods_defaults():
    """``ns-train METHOD --data D 3dae-scenes --scenes ...`` as nerfstudio parses it; 3dae-rgb is RGB Tri-Planes."""
    import tyro
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    from nerfstudio_3dae.data.dataparser import ScenesDataParserConfig

    def parse(*args: str):
        return tyro.cli(AnnotatedBaseConfigUnion, args=list(args))

    rgb = parse("3dae-rgb", "--data", "d", "3dae-scenes", "--scenes", "0:2", "--downscale-factor", "2")
    parser = rgb.pipeline.datamanager.dataparser
    assert isinstance(parser, ScenesDataParserConfig)
    assert (parser.scenes, parser.downscale_factor, parser.image_multiple) == ("0:2", 2, 1)
    model = rgb.pipeline.model
    assert (model.micro_channels, model.macro_channels, model.num_bases) == (32, 0, 0), "RGB Tri-Planes"
    latent = parse("3dae-latent", "--data", "d", "3dae-scenes", "--test-every", "3")
    assert latent.pipeline.datamanager.dataparser.image_multiple == 8, "the autoencoder factor stays"
    assert latent.pipeline.datamanager.dataparser.test_every == 3
    assert (latent.pipeline.model.micro_channels, latent.pipeline.model.macro_channels) == (10, 22)
    plain = parse("3dae-autoencoder", "--data", "d")
    assert plain.pipeline.datamanager.dataparser.scenes == ":", "the subcommand may be left out"
