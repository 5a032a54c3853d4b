"""A tiny SRN-layout folder (``<instance>/rgb``, ``pose``, ``intrinsics.txt``) made of generated cars, for the tests
that run ``ns-3dae-convert srn`` and train on its output."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from nerfstudio_3dae.data.layout import read_scene, read_scene_names
from nerfstudio_3dae.data.srn import OPENCV_TO_OPENGL
from nerfstudio_3dae.data.synth.generate import generate_dataset


def write_srn_cars(root: Path, instances: int, views: int, size: int, seed: int = 0) -> Path:
    """``instances`` procedural cars in the SRN layout: OpenCV camera-to-world poses, intrinsics for ``size``."""
    generated = generate_dataset(root.with_name(root.name + "-generated"), instances, views, size, seed=seed,
                                 test_views=1, progress=False)  # fmt: skip
    for name in read_scene_names(generated):
        scene = read_scene(generated, name)
        inst = root / name
        (inst / "rgb").mkdir(parents=True)
        (inst / "pose").mkdir()
        k = scene.views[0].intrinsics
        assert k is not None and abs(k.fx - k.fy) < 1e-9, "SRN intrinsics have one focal length"
        (inst / "intrinsics.txt").write_text(f"{k.fx} {k.cx} {k.cy} 0.\n0. 0. 0.\n1.\n{k.height} {k.width}\n")
        for i, view in enumerate(scene.views):
            shutil.copyfile(view.image, inst / "rgb" / f"{i:06d}.png")
            pose = view.camera_to_world @ OPENCV_TO_OPENGL  # OpenGL -> OpenCV camera axes
            (inst / "pose" / f"{i:06d}.txt").write_text(" ".join(f"{v:.10f}" for v in np.asarray(pose).ravel()))
    return root
