"""The viewer opens at a training camera of the shown scene, not inside the object box (no browser needed)."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import viser.transforms as vtf
from conftest import look_at_c2w, tiny_pipeline
from nerfstudio.viewer.utils import parse_object
from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO
from nerfstudio.viewer.viewer_elements import ViewerControl

from nerfstudio_3dae.method_configs import rgb_method
from nerfstudio_3dae.viewer_start import StartAtTrainingCamera, viser_pose


def nerfstudio_c2w(position: np.ndarray, wxyz: np.ndarray) -> np.ndarray:
    """What nerfstudio's viewer renders for a viser camera pose (``Viewer.get_camera_state``)."""
    rotation = (vtf.SO3(wxyz=wxyz) @ vtf.SO3.from_x_radians(np.pi)).as_matrix()
    return np.concatenate([rotation, (position / VISER_NERFSTUDIO_SCALE_RATIO)[:, None]], axis=1)


def test_viser_pose_is_what_the_viewer_renders_back():
    c2w = torch.tensor(look_at_c2w(np.array([1.1, -0.6, 0.5]))[:3], dtype=torch.float32)
    position, wxyz = viser_pose(c2w)
    assert np.allclose(nerfstudio_c2w(position, wxyz), c2w.numpy(), atol=1e-5)
    assert np.linalg.norm(position) > VISER_NERFSTUDIO_SCALE_RATIO, "outside the [-1, 1]^3 box, in viser units"


class FakeClient:
    """The two things ``place`` touches on a ``viser.ClientHandle``."""

    def __init__(self):
        self.camera = type("Camera", (), {"position": np.zeros(3), "wxyz": np.array([1.0, 0, 0, 0])})()
        self.atomic_entered = False

    @contextlib.contextmanager
    def atomic(self):
        self.atomic_entered = True
        yield


def test_the_viewer_starts_at_a_training_camera_of_the_shown_scene(tiny_dataset, one_thread):
    pipeline = tiny_pipeline(rgb_method(), tiny_dataset(num_scenes=3))
    controls = [c for _, c in parse_object(pipeline, ViewerControl, "Custom Elements")]
    assert [type(c) for c in controls] == [StartAtTrainingCamera], "the viewer finds it under the pipeline"
    cameras = pipeline.datamanager.train_dataset.cameras
    scene_ids = cameras.metadata["scene_id"].reshape(-1)
    for scene in (2, 1):
        pipeline.model.scene = scene
        client = FakeClient()
        controls[0].place(client)
        first_view = int((scene_ids == scene).nonzero()[0])
        expected = cameras.camera_to_worlds[first_view].numpy()
        assert client.atomic_entered
        assert np.allclose(nerfstudio_c2w(client.camera.position, client.camera.wxyz), expected, atol=1e-5)
