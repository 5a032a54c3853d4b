"""Procedural multi-scene data: look-alike objects (cars, chairs, tables) seen from the upper view hemisphere.

``shapes`` builds coloured meshes from a random generator, ``cameras`` draws SRN-like camera rigs and intrinsics,
``raycast`` renders them on the CPU with Embree, ``textures`` gives their surfaces liveries, wood and fabric, and
``generate`` writes whole datasets: the ``ns-3dae-synth`` CLI (:mod:`nerfstudio_3dae.scripts.synth`) is a thin
wrapper over it.
"""

from nerfstudio_3dae.data.synth.cameras import (
    CAMERA_RADIUS,
    FAR,
    FOV_DEG,
    NEAR,
    CameraRig,
    check_in_view,
    look_at,
    sample_hemisphere_rig,
    square_intrinsics,
)
from nerfstudio_3dae.data.synth.raycast import Render, pixel_rays, render_views
from nerfstudio_3dae.data.synth.shapes import CATEGORIES, SynthObject, build_object

__all__ = [
    "CAMERA_RADIUS",
    "CATEGORIES",
    "FAR",
    "FOV_DEG",
    "NEAR",
    "CameraRig",
    "Render",
    "SynthObject",
    "build_object",
    "check_in_view",
    "look_at",
    "pixel_rays",
    "render_views",
    "sample_hemisphere_rig",
    "square_intrinsics",
]
