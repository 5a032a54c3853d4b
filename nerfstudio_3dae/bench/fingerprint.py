"""Content fingerprints for the ``--resume`` key of ``ns-3dae-bench compare``: a stage finished earlier is read back
only when the autoencoder and the dataset it was made from are still the same, not merely named the same.

* :func:`autoencoder_fingerprint`: a SHA-256 of every file of the autoencoder's folder (config, weights, the bases
  of a 3dae-autoencoder export), read as bytes: nothing is loaded, so the model is not built twice.
* :func:`method_defaults_fingerprint`: a SHA-256 of the three methods' default pipeline and optimizer configs, so a
  default changed in the code (stage 1's ``ae_weight``, a schedule) does not pass unseen;
* :func:`dataset_fingerprint`: a SHA-256 of ``scenes.json`` and every ``transforms*.json`` of the used scenes (their
  bytes), and of each image those scenes list, by name, size and modification time (a stand-in for its bytes: an
  image rewritten in place with the same size and time would pass unseen; one merely touched counts as changed).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence

from nerfstudio_3dae.autoencoder_source import autoencoder_folder
from nerfstudio_3dae.data.layout import SCENES_INDEX, read_scene, read_scene_names

_CHUNK = 1 << 20


def _hash_file(digest, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)


def folder_digest(folder: Path) -> str:
    """16 hex chars of a SHA-256 over every file under ``folder`` (relative name and bytes, in sorted order)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\n".encode())
        _hash_file(digest, path)
    return digest.hexdigest()[:16]


def autoencoder_fingerprint(source: str) -> str:
    """``files:<digest of the autoencoder's folder>`` (:func:`folder_digest`); ``scratch`` and hub ids, which have
    no folder here, are named as they are (a hub id's weights are whatever the hub cache holds: not fingerprinted)."""
    folder = autoencoder_folder(source)
    return f"named:{source}" if folder is None else f"files:{folder_digest(folder)}"


def dataset_fingerprint(root: Path, scenes: Iterable[int]) -> str:
    """16 hex chars of a SHA-256 over ``root``'s ``scenes.json`` and, for each scene of ``scenes`` (indices in it),
    the bytes of its ``transforms*.json`` files and the name, size and modification time of every image it lists
    (see the module's docstring for what that misses)."""
    root = Path(root)
    names = read_scene_names(root)
    digest = hashlib.sha256()
    if (root / SCENES_INDEX).is_file():
        _hash_file(digest, root / SCENES_INDEX)
    for index in sorted(set(scenes)):
        scene = read_scene(root, names[index])
        digest.update(f"\nscene {names[index]}\n".encode())
        for transforms in sorted(scene.root.glob("transforms*.json")):
            digest.update(f"{transforms.name}\n".encode())
            _hash_file(digest, transforms)
        for view in scene.views:
            stat = os.stat(view.image)
            digest.update(f"{_relative(view.image, scene.root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _relative(path: Path, folder: Path) -> str:
    try:
        return Path(path).relative_to(folder).as_posix()
    except ValueError:  # an image outside its scene folder: its full path
        return str(path)


def method_defaults_fingerprint() -> str:
    """A SHA-256 of the three methods' pipeline and optimizer configs as the package defines them (their dataclass
    reprs): a default changed in the code (a weight, a schedule, a rate) makes earlier stages stale."""
    from nerfstudio_3dae.method_configs import autoencoder_method, latent_method, rgb_method

    digest = hashlib.sha256()
    for method in (autoencoder_method, rgb_method, latent_method):
        config = method()
        digest.update((repr(config.pipeline) + repr(config.optimizers)).encode())
    return digest.hexdigest()


def compare_fingerprints(autoencoder: str, data: Optional[Path], scenes: Sequence[int]) -> Dict[str, Optional[str]]:
    """The fingerprints a compare's resume key holds: the autoencoder's, the methods' defaults and, with ``data``,
    the dataset's over ``scenes`` (None for generated scenes, which are keyed by their seed and preset)."""
    return {
        "autoencoder": autoencoder_fingerprint(autoencoder),
        "methods": method_defaults_fingerprint(),
        "data": None if data is None else dataset_fingerprint(Path(data), scenes),
    }
