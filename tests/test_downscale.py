"""``downscale_factor`` of the ``3dae-scenes`` dataparser: images resized once into ``images_<f>``, intrinsics scaled
so that a known 3D point still projects into the pixel that shows it, and sizes checked against the autoencoder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import look_at_c2w, tiny_pipeline
from PIL import Image

from nerfstudio_3dae.data.dataparser import ScenesDataParserConfig
from nerfstudio_3dae.data.layout import DatasetError, Intrinsics, write_scene, write_scenes_index

FULL, FACTOR = 64, 4
TRAIN_STEPS = 10
MARK = (5, 9)
"""(column, row) of the downscaled pixel that shows the point: full-resolution pixels [20, 24) x [36, 40)."""


def _write_marker_scene(root: Path) -> np.ndarray:
    """One scene, one off-centre camera, a black image with a white FACTOR x FACTOR block; returns the 3D point on
    the ray through the block's centre (found with plain pinhole maths, independent of nerfstudio)."""
    intr = Intrinsics(fx=70.0, fy=66.0, cx=30.0, cy=34.5, width=FULL, height=FULL)
    c2w = look_at_c2w(np.array([0.4, -1.2, 0.6]), target=(0.05, 0.0, 0.1))
    image = np.zeros((FULL, FULL, 3), dtype=np.uint8)
    col, row = MARK
    image[row * FACTOR : (row + 1) * FACTOR, col * FACTOR : (col + 1) * FACTOR] = 255
    scene = root / "obj"
    (scene / "images").mkdir(parents=True)
    Image.fromarray(image).save(scene / "images" / "0000.png")
    Image.fromarray(image).save(scene / "images" / "0001.png")
    write_scene(scene, intr, [("images/0000.png", c2w, "train"), ("images/0001.png", c2w, "test")])
    write_scenes_index(root, ["obj"])
    # the block's centre in full-resolution pixel coordinates (pixel (i, j) has its centre at (i + 0.5, j + 0.5))
    u, v = (col + 0.5) * FACTOR, (row + 0.5) * FACTOR
    direction_cam = np.array([(u - intr.cx) / intr.fx, -(v - intr.cy) / intr.fy, -1.0])  # OpenGL camera axes
    return c2w[:3, 3] + 1.3 * (c2w[:3, :3] @ direction_cam)


def test_downscaled_cameras_project_a_known_point_into_its_pixel(tmp_path):
    root = tmp_path / "data"
    point = _write_marker_scene(root)
    out = ScenesDataParserConfig(data=root, downscale_factor=FACTOR, image_multiple=8).setup().get_dataparser_outputs()
    cached = out.image_filenames[0]
    assert cached == root / "obj" / f"images_{FACTOR}" / "0000.png", "nerfstudio's images_<factor> convention"
    small = np.asarray(Image.open(cached))
    assert small.shape == (FULL // FACTOR, FULL // FACTOR, 3)
    rows, cols = np.nonzero(small[..., 0] > 128)
    assert (cols.tolist(), rows.tolist()) == ([MARK[0]], [MARK[1]]), "the block averages into one white pixel"

    camera = out.cameras[0:1]
    assert int(camera.width) == FULL // FACTOR and int(camera.height) == FULL // FACTOR
    assert float(camera.fx) == pytest.approx(70.0 / FACTOR) and float(camera.cy) == pytest.approx(34.5 / FACTOR)
    # nerfstudio's own ray through the marked pixel of the downscaled camera passes through the point
    rays = camera.generate_rays(camera_indices=0)  # [H, W] rays
    origin = rays.origins[MARK[1], MARK[0]].double().numpy()
    direction = rays.directions[MARK[1], MARK[0]].double().numpy()
    offset = point - origin
    distance = np.linalg.norm(offset - (offset @ direction) * direction)
    assert distance < 1e-5, f"the point is {distance:.2e} from the ray of its pixel"
    # and the point projects, through the scaled intrinsics, into the marked pixel's centre
    w2c = np.linalg.inv(np.vstack([camera.camera_to_worlds[0].double().numpy(), [0, 0, 0, 1]]))
    cam = w2c[:3, :3] @ point + w2c[:3, 3]
    u = float(camera.cx) + float(camera.fx) * cam[0] / -cam[2]
    v = float(camera.cy) - float(camera.fy) * cam[1] / -cam[2]
    assert (u, v) == pytest.approx((MARK[0] + 0.5, MARK[1] + 0.5), abs=1e-4)


def test_the_cache_is_written_once_and_refreshed_when_the_source_changes(tmp_path):
    root = tmp_path / "data"
    _write_marker_scene(root)

    def parse():
        return ScenesDataParserConfig(data=root, downscale_factor=2, image_multiple=8).setup().get_dataparser_outputs()

    cached = parse().image_filenames[0]
    first = cached.stat().st_mtime_ns
    parse()
    assert cached.stat().st_mtime_ns == first, "a fresh copy is reused"
    source = root / "obj" / "images" / "0000.png"
    Image.fromarray(np.full((FULL, FULL, 3), 100, np.uint8)).save(source)
    os.utime(source, ns=(first + 10**9, first + 10**9))
    parse()
    assert np.asarray(Image.open(cached)).max() == 100, "a changed source is resized again"


def test_a_downscaled_size_off_the_autoencoder_factor_names_the_scene(tmp_path):
    root = tmp_path / "data"
    _write_marker_scene(root)  # 64 / 16 = 4: not a multiple of 8
    with pytest.raises(DatasetError, match=r"scene 'obj'.*is 4x4 after downscale_factor 16.*multiples of 8"):
        ScenesDataParserConfig(data=root, downscale_factor=16).setup().get_dataparser_outputs()
    with pytest.raises(DatasetError, match=r"0000\.png is 64x64: downscale_factor 3 must divide both sides"):
        ScenesDataParserConfig(data=root, downscale_factor=3, image_multiple=1).setup().get_dataparser_outputs()
    with pytest.raises(DatasetError, match="downscale_factor must be >= 1"):
        ScenesDataParserConfig(data=root, downscale_factor=0).setup().get_dataparser_outputs()


def test_the_downscaled_images_train(tmp_path, one_thread):
    """A 3dae-rgb pipeline on the small copies: a batch holds downscaled images matching the cameras, and a few
    training steps bring the render of the test camera (the same camera) much closer to the small image on disk."""
    from nerfstudio.engine.optimizers import Optimizers

    from nerfstudio_3dae.method_configs import rgb_method

    root = tmp_path / "data"
    _write_marker_scene(root)
    config = rgb_method()
    config.pipeline.datamanager.dataparser.downscale_factor = 2
    pipeline = tiny_pipeline(config, root)
    cameras, batch = pipeline.datamanager.next_train(0)
    assert batch["image"].shape[1:3] == (FULL // 2, FULL // 2)
    assert torch.equal(cameras.width.reshape(-1), torch.full((len(cameras),), FULL // 2))

    small = torch.tensor(np.asarray(Image.open(root / "obj" / "images_2" / "0001.png")), dtype=torch.float32) / 255
    test_camera, _ = pipeline.datamanager.views("eval", [0])

    def test_psnr() -> float:
        with torch.no_grad():
            rgb = pipeline.model.get_outputs_for_camera(test_camera[0:1])["rgb"]
        assert rgb.shape == small.shape, "rendered at the downscaled size"
        return float(-10 * torch.log10(((rgb - small) ** 2).mean()))

    before = test_psnr()
    optimizers = Optimizers(config.optimizers, pipeline.get_param_groups())
    losses = []
    for step in range(TRAIN_STEPS):
        optimizers.zero_grad_all()
        _, loss_dict, _ = pipeline.get_train_loss_dict(step)
        loss = sum(loss_dict.values())
        loss.backward()
        optimizers.optimizer_step_all()
        losses.append(float(loss.detach()))
    after = test_psnr()
    # seen (CPU, 10 steps): loss 0.72 -> 0.17, test PSNR 1.4 -> 9.2 dB
    assert losses[-1] < 0.5 * losses[0], f"the loss falls: {losses[0]:.3f} -> {losses[-1]:.3f}"
    assert after > before + 4.0, f"the test view's PSNR against the small image rises: {before:.2f} -> {after:.2f} dB"
