"""Jittered latent rays (``pixel_jitter``): the moved cameras and the shifted target images agree."""

from __future__ import annotations

import torch
from conftest import look_at_c2w
from nerfstudio.cameras.cameras import Cameras

from nerfstudio_3dae.image_layout import shift_images
from nerfstudio_3dae.latent_model import pixel_jitter
from nerfstudio_3dae.rays import BatchLayout, camera_rays


def test_shift_images_resamples_at_p_plus_shift():
    images = torch.rand(2, 3, 8, 10)
    shift = torch.tensor([[2.0, 0.0], [0.0, -1.0]])
    out = shift_images(images, shift)
    assert torch.allclose(out[0, :, :, :-2], images[0, :, :, 2:], atol=1e-5), "x + 2 pixels"
    assert torch.allclose(out[1, :, 1:], images[1, :, :-1], atol=1e-5), "y - 1 pixel"
    half = shift_images(images, torch.tensor([[0.5, 0.0], [0.0, 0.0]]))
    assert torch.allclose(half[0, :, :, 3], (images[0, :, :, 3] + images[0, :, :, 4]) / 2, atol=1e-5)


def test_a_jittered_camera_sees_its_ray_through_the_shifted_pixel():
    import numpy as np

    c2w = torch.tensor(look_at_c2w(np.array([1.2, 0.4, 0.6])), dtype=torch.float32)[:3][None].repeat(3, 1, 1)
    cameras = Cameras(camera_to_worlds=c2w, fx=40.0, fy=40.0, cx=16.0, cy=16.0, width=32, height=32)
    torch.manual_seed(0)
    shift = pixel_jitter(3, downscale=8, device=torch.device("cpu"))
    assert shift.shape == (3, 2) and bool((shift.abs() <= 4).all()) and bool((shift.abs() > 0).any())
    # [3, 16, 3]: rays of the 4 x 4 latent pixels, by the project's pinhole rays and by nerfstudio's moved cameras
    _, moved_dirs, (h, w) = camera_rays(cameras, BatchLayout(32, 32, (0, 0, 0), pinhole=True), 8, shift)
    _, nerfstudio_dirs, _ = camera_rays(cameras, BatchLayout(32, 32, (0, 0, 0), pinhole=False), 8, shift)
    assert torch.allclose(moved_dirs, nerfstudio_dirs, atol=1e-5)
    for k in range(3):  # the same ray from the original camera, through the latent pixel centre + shift
        one = Cameras(camera_to_worlds=c2w[k : k + 1], fx=40.0, fy=40.0, cx=16.0, cy=16.0, width=32, height=32)
        ys, xs = torch.meshgrid(torch.arange(h) * 8 + 4.0, torch.arange(w) * 8 + 4.0, indexing="ij")
        coords = torch.stack([ys + shift[k, 1], xs + shift[k, 0]], dim=-1)  # nerfstudio coords: (y, x)
        expected = one.generate_rays(camera_indices=0, coords=coords).directions.reshape(-1, 3)
        assert torch.allclose(moved_dirs[k], expected, atol=1e-5)
