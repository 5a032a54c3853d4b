"""ns-viewer on a tiny 3dae run, driven in a real headless Chromium (Playwright): the page connects, a rendered frame
arrives, it shows the object from the camera the viewer starts at, and the model's "Scene" picker (Custom Elements)
switches the rendered scene.

Needs Debian's Chromium (/usr/bin/chromium, or $NS3DAE_CHROMIUM) and the Python package ``playwright`` (its wheel
bundles the driver; no browser download: ``playwright install`` is never used). Skips, with the reason, without them.
Screenshots go to the test's tmp folder, and also to $NS3DAE_VIEWER_SHOTS when set (a folder).

The run is ``3dae-rgb`` (the baseline: same tri-plane bank, scene picker and viewer path as the latent model):
it learns a clean silhouette in 60 CPU steps (~10 s), which a ``3dae-latent`` run on the random 'scratch'
autoencoder does not (its density stays a fog for hundreds of steps), and the test must not need the embedded
autoencoder. About 70-110 s in all on the 2-core CPU machines, depending on their load.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import pytest
from conftest import BIN, free_port, tool_env
from PIL import Image

from nerfstudio_3dae.data.synth.generate import generate_dataset

CHROMIUM = os.environ.get("NS3DAE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
TINY_RGB_RUN = [
    "--vis", "tensorboard", "--logging.local-writer.enable", "False", "--max-num-iterations", "60",
    "--steps-per-eval-batch", "1000", "--steps-per-eval-image", "1000", "--steps-per-eval-all-images", "1000",
    "--pipeline.model.resolution", "16", "--pipeline.model.num-bases", "2",
    "--pipeline.model.micro-channels", "4", "--pipeline.model.macro-channels", "4", "--pipeline.model.hidden-dim", "32",
    "--pipeline.model.num-coarse-samples", "12", "--pipeline.model.num-fine-samples", "12",
    "--pipeline.datamanager.scenes-per-step", "2", "--pipeline.datamanager.views-per-scene", "2",
]  # fmt: skip
VIEWPORT = {"width": 1200, "height": 800}
MAX_RES = 512
"""The control panel's default "Max res": the long side of a full-resolution frame."""


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the Python package 'playwright' is not installed (pip install playwright)")
    return sync_playwright


def _end_group(proc: subprocess.Popen) -> None:
    """SIGTERM the viewer's process group, then SIGKILL what is left of it (the viewer can leave children)."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    try:  # the leader is gone; make sure no child of the group outlives it
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def viewer(tmp_path_factory) -> Dict:
    """A tiny 3dae-rgb run of two scenes, shown by ns-viewer on 127.0.0.1 (its own process group)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    _playwright()
    root = tmp_path_factory.mktemp("viewer")
    # one torch thread: on a busy 2-core machine, 2 OpenMP threads made ns-train ~15x slower (1.9 vs 0.1 s/step)
    env = tool_env(one_thread=True)
    env.pop("NS3DAE_SCENE", None)
    start = time.monotonic()
    data = generate_dataset(root / "cars", 2, 6, 32, seed=3, test_views=1, progress=False)
    train = subprocess.run(
        [str(BIN / "ns-train"), "3dae-rgb", "--data", str(data), "--output-dir", str(root / "runs"),
         "--timestamp", "run", *TINY_RGB_RUN],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert train.returncode == 0, f"ns-train failed:\n{train.stdout[-2000:]}\n{train.stderr[-4000:]}"
    (config,) = (root / "runs").glob("*/3dae-rgb/run/config.yml")
    trained = time.monotonic()

    port = free_port()
    log_path = root / "ns-viewer.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "ns-viewer"), "--load-config", str(config),
             "--viewer.websocket-host", "127.0.0.1", "--viewer.websocket-port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=root,
            start_new_session=True,  # setsid: its own process group, ended as a whole
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an *_proxy variable
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ns-viewer exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                with direct.open(url, timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"ns-viewer did not serve {url} within 180 s:\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
        print(f"[viewer] data + ns-train {trained - start:.0f} s, ns-viewer up in {time.monotonic() - trained:.0f} s")
        yield {"url": url, "log": log_path, "proc": proc}
    finally:
        _end_group(proc)


@pytest.fixture
def page(viewer, tmp_path):
    """A fresh headless Chromium page on the viewer; requests to anything but 127.0.0.1 are aborted."""
    sync_playwright = _playwright()
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh, empty user-data-dir
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS, viewport=VIEWPORT, timeout=60_000,
        )  # fmt: skip
        try:
            context.set_default_timeout(60_000)
            # the viewer page asks for googletagmanager and docs.nerf.studio: the network is closed, do not wait on it
            context.route("**/*", lambda route: route.continue_() if _local(route.request.url) else route.abort())
            page = context.pages[0] if context.pages else context.new_page()
            page.goto(viewer["url"], wait_until="domcontentloaded")
            page.get_by_text("Connected", exact=True).wait_for(timeout=60_000)
            yield page
        finally:
            context.close()


def _local(url: str) -> bool:
    return url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:"))


# ------------------------------------------------------------------------------------------------ reading pixels


def _render_box(page) -> Dict[str, float]:
    """Page area showing the rendered frame: the 3D canvas left of the control panel."""
    box = page.locator("canvas").first.bounding_box()
    assert box and box["width"] > 200 and box["height"] > 200, f"no 3D canvas on the page: {box}"
    y = box["y"] + box["height"] / 2
    right = page.evaluate(
        """([x0, x1, y]) => { for (let x = x1 - 1; x > x0; x -= 4) {
               const e = document.elementFromPoint(x, y); if (e && e.tagName === 'CANVAS') return x; }
             return x0; }""",
        [box["x"], box["x"] + box["width"], y],
    )
    inset = 4  # stay off the panel's edge and shadow
    return {"x": box["x"] + inset, "y": box["y"] + inset, "width": right - box["x"] - 2 * inset,
            "height": box["height"] - 2 * inset}  # fmt: skip


def _grab(page, clip) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(page.screenshot(clip=clip))).convert("RGB"), dtype=np.float32)


def _frame_size(page) -> Tuple[int, int]:
    """(width, height) of the last frame the viewer sent, from its "Resolution: 512x435px" line."""
    text = page.get_by_text(re.compile(r"Resolution:")).first.inner_text()
    found = re.search(r"Resolution:\s*(\d+)\s*[x×]\s*(\d+)", text)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def _wait_for_frame(
    page, clip, accept: Callable[[np.ndarray], bool], what: str, shots: Path, timeout: float = 120.0
) -> np.ndarray:
    """Poll the render area until a full-resolution frame that ``accept`` likes stays on screen. After any change
    the viewer first sends a fast low-resolution frame (~30 px high on a CPU), then renders at "Max res"."""
    deadline = time.monotonic() + timeout
    last: Optional[np.ndarray] = None
    while time.monotonic() < deadline:
        full = max(_frame_size(page)) >= MAX_RES
        frame = _grab(page, clip)
        if full and last is not None and np.abs(frame - last).mean() < 0.5 and accept(frame):
            print(f"[viewer] {what}: {timeout - deadline + time.monotonic():.0f} s")
            return frame
        last = frame if full else None
        page.wait_for_timeout(500)
    page.screenshot(path=str(shots / "timeout.png"))
    pytest.fail(f"no {what} within {timeout:.0f} s (screenshot: {shots / 'timeout.png'})")


_TURBO_INVERSE: Optional[np.ndarray] = None


def _turbo_inverse(frame: np.ndarray) -> np.ndarray:
    """[H/3, W/3] colormap value in [0, 1] of a frame drawn with nerfstudio's default ('turbo') colormap: the
    nearest of matplotlib's 256 turbo colours, looked up in a table over RGB quantised to 32 levels a channel."""
    global _TURBO_INVERSE
    if _TURBO_INVERSE is None:
        import matplotlib

        turbo = np.asarray(matplotlib.colormaps["turbo"].colors, dtype=np.float32) * 255.0  # [256, 3]
        levels = np.arange(32, dtype=np.float32) * 8 + 4  # the centre of each quantisation bin
        grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
        nearest = ((grid[:, None, :] - turbo[None]) ** 2).sum(-1).argmin(-1)
        _TURBO_INVERSE = (nearest / 255.0).astype(np.float32).reshape(32, 32, 32)
    q = (frame[::3, ::3] // 8).astype(np.intp).clip(0, 31)
    return _TURBO_INVERSE[q[..., 0], q[..., 1], q[..., 2]]


def _shows_object(frame: np.ndarray) -> bool:
    """An accumulation frame of an object: an opaque region on a mostly empty background (not a fog everywhere)."""
    v = _turbo_inverse(frame)
    opaque, empty = (v > 0.5).mean(), (v < 0.1).mean()
    return 0.02 < opaque < 0.6 and empty > 0.3


def _non_white(rgb: np.ndarray) -> np.ndarray:
    """Pixels that are not the white background of the 3dae models (at the turbo-inverse resolution)."""
    return (255.0 - rgb[::3, ::3]).max(-1) > 40


def _save(page, shots: Path, name: str) -> Path:
    path = shots / name
    page.screenshot(path=str(path))
    extra = os.environ.get("NS3DAE_VIEWER_SHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(extra) / name)
    return path


def _pick(page, label: str, option: str) -> None:
    """Choose ``option`` in the viewer's dropdown (a Mantine Select) labelled ``label``."""
    page.get_by_label(label, exact=True).click()
    page.get_by_role("option", name=option, exact=True).click()
    assert page.get_by_label(label, exact=True).input_value() == option
    page.mouse.move(10, VIEWPORT["height"] - 10)  # no tooltip of the panel in the screenshots


# ------------------------------------------------------------------------------------------------ the test


def test_viewer_renders_the_object_and_switches_scenes(viewer, page, tmp_path):
    # the model's own GUI element, under "Custom Elements" of the control panel
    page.get_by_text("Custom Elements", exact=True).wait_for()
    scene = page.get_by_label("Scene", exact=True)
    assert scene.input_value() == "car_0000"
    scene.click()
    assert {o.strip() for o in page.get_by_role("option").all_inner_texts()} == {"car_0000", "car_0001"}
    page.keyboard.press("Escape")

    page.get_by_role("button", name="Hide Train Cams").click()  # only the rendered frame in the canvas
    clip = _render_box(page)
    before = _grab(page, clip)  # the canvas as it is before we look at the object

    _pick(page, "Output type", "accumulation")
    # no scrolling: the viewer starts at a training camera of the shown scene, outside the object's box
    accumulation = _wait_for_frame(page, clip, _shows_object, "accumulation frame showing the object", tmp_path)
    _save(page, tmp_path, "viewer-accumulation.png")
    assert np.abs(accumulation - before).mean() > 5, "the canvas did not change: no rendered frame arrived"
    coverage = _turbo_inverse(accumulation)
    mask = coverage > 0.5  # the opaque object
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    assert 0.15 * w < xs.mean() < 0.85 * w and 0.15 * h < ys.mean() < 0.85 * h, "the object is not in view"

    # rgb (the default output): the car on the white background, where the accumulation put it
    _pick(page, "Output type", "rgb")
    rgb = _wait_for_frame(page, clip, lambda f: 0.01 < _non_white(f).mean() < 0.6, "rgb frame", tmp_path)
    _save(page, tmp_path, "viewer-rgb.png")
    car = _non_white(rgb)
    on_car = (car & mask).sum() / mask.sum()
    on_something = (car & (coverage >= 0.1)).sum() / car.sum()
    assert on_car > 0.9, f"only {on_car:.0%} of the opaque region is coloured in the rgb frame"
    assert on_something > 0.9, f"only {on_something:.0%} of the rgb frame's coloured pixels are on the object"

    # the model's scene picker: another car, another picture, from the same camera
    _pick(page, "Scene", "car_0001")
    other = _wait_for_frame(
        page,
        clip,
        lambda f: np.abs(f - rgb).mean() > 2 and 0.01 < _non_white(f).mean() < 0.6,
        "car_0001 frame",
        tmp_path,
    )
    _save(page, tmp_path, "viewer-rgb-car_0001.png")
    # measured on the cars, not the frame: how much of the frame they fill depends on the start camera
    cars = car | _non_white(other)
    changed = ((np.abs(other - rgb).max(-1) > 40)[::3, ::3] & cars).sum() / cars.sum()
    assert changed > 0.1, f"switching the scene changed only {changed:.1%} of the pixels showing a car"
    assert "Traceback" not in viewer["log"].read_text(), viewer["log"].read_text()[-4000:]
