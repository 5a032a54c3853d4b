"""Where the viewer's camera starts: at a training camera of the model's scene.

nerfstudio's viewer leaves a new client at viser's default pose, which for these scenes (objects filling the
``[-1, 1]^3`` box, shown ×10 in viser units) sits inside the object: users saw nothing until they scrolled out.
:class:`StartAtTrainingCamera` is a ``ViewerControl`` (the viewer finds those anywhere under the pipeline) that moves
each newly connected client to a training camera of the scene being shown.
"""

from __future__ import annotations

from typing import Callable, Tuple

import numpy as np
import viser.transforms as vtf
from jaxtyping import Float
from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO
from nerfstudio.viewer.viewer_elements import ViewerControl
from torch import Tensor


def viser_pose(camera_to_world: Float[Tensor, "3 4"]) -> Tuple[np.ndarray, np.ndarray]:
    """``(position [3], wxyz [4])`` of a viser camera showing what the nerfstudio (OpenGL) camera ``camera_to_world``
    sees: the inverse of the viewer's ``get_camera_state`` (viser cameras look down +Z, +Y down; the scene is scaled
    by ``VISER_NERFSTUDIO_SCALE_RATIO``), as nerfstudio itself does when a training camera is clicked."""
    c2w = np.asarray(camera_to_world.detach().cpu(), dtype=np.float64).reshape(3, 4)
    rotation = vtf.SO3.from_matrix(c2w[:, :3]) @ vtf.SO3.from_x_radians(np.pi)
    return c2w[:, 3] * VISER_NERFSTUDIO_SCALE_RATIO, np.asarray(rotation.wxyz)


class StartAtTrainingCamera(ViewerControl):
    """Puts every client that connects at ``camera_to_world()`` (called at connection time, so it can follow the
    scene picked by then)."""

    def __init__(self, camera_to_world: Callable[[], Float[Tensor, "3 4"]]) -> None:
        self.camera_to_world = camera_to_world

    def _setup(self, viewer) -> None:
        super()._setup(viewer)
        self.viser_server.on_client_connect(self.place)  # also runs for clients already connected

    def place(self, client) -> None:
        """Move ``client``'s camera (a ``viser.ClientHandle``) to the start pose."""
        position, wxyz = viser_pose(self.camera_to_world())
        with client.atomic():
            client.camera.position = position
            client.camera.wxyz = wxyz
