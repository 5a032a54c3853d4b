"""Compact image storage: every view of a split decoded once into one uint8 tensor, plus the on-disk latent cache.

Pure helpers (no nerfstudio): the datamanager adapts them.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from jaxtyping import Float, UInt8
from torch import Tensor

from nerfstudio_3dae.data.layout import DatasetError

BACKGROUND = 255
"""Images with an alpha channel are composited onto white, the background of the generator and of SRN."""


def decode_image(path: Path) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB; RGBA is composited onto white. Errors name the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
                rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
                rgb = rgba[..., :3] * (rgba[..., 3:] / 255.0) + BACKGROUND * (1.0 - rgba[..., 3:] / 255.0)
                return np.round(rgb).astype(np.uint8)
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DatasetError(f"image {path} cannot be decoded: {err}") from err


def load_images(paths: Sequence[Path], workers: Optional[int] = None) -> UInt8[Tensor, "N H W 3"]:
    """Decode images in parallel threads into one uint8 tensor (sizes were checked by the dataparser)."""
    if not paths:
        raise DatasetError("no images to load")
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        arrays = list(pool.map(decode_image, paths))
    shape = arrays[0].shape
    for path, array in zip(paths, arrays, strict=True):
        if array.shape != shape:
            raise DatasetError(
                f"image {path} is {array.shape[1]}x{array.shape[0]}, {paths[0]} is {shape[1]}x{shape[0]}"
            )
    return torch.from_numpy(np.stack(arrays))


def dataset_key(paths: Sequence[Path]) -> str:
    """A hash of the image files (path, size, mtime): changes when any image is replaced."""
    digest = hashlib.sha256()
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def cached_latents(
    cache_dir: Optional[Path],
    autoencoder_identity: str,
    paths: Sequence[Path],
    encode: Callable[[], Float[Tensor, "N c h w"]],
) -> Float[Tensor, "N c h w"]:
    """Latents of ``paths`` from ``cache_dir/<autoencoder identity>/<dataset key>.npy`` (float16), or ``encode()``
    them and write the file atomically. ``cache_dir=None`` disables the disk cache."""
    if cache_dir is None:
        return encode()
    folder = Path(cache_dir) / autoencoder_identity
    target = folder / f"{dataset_key(paths)}.npy"
    if target.exists():
        return torch.from_numpy(np.load(target, mmap_mode="r").astype(np.float32))
    latents = encode().detach().cpu().to(torch.float16)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, latents.numpy())
    tmp.replace(target)
    (folder / f"{target.stem}.json").write_text(
        json.dumps({"images": [str(p) for p in paths[:3]], "count": len(paths)})
    )
    return latents.float()  # the same float16-rounded values a later run reads back


def views_by_scene(scene_ids: Sequence[int], num_scenes: int) -> List[Tensor]:
    """For each scene, the indices of its views in the split."""
    ids = torch.as_tensor(scene_ids, dtype=torch.long)
    return [torch.nonzero(ids == s).squeeze(1) for s in range(num_scenes)]


def downscaled_path(image: Path, scene_root: Path, factor: int) -> Path:
    """Where the ``factor``-times smaller copy of ``image`` is cached, nerfstudio's ``images_2`` convention: the
    image's top folder inside its scene gets a ``_<factor>`` suffix (``scene/images/0001.png`` →
    ``scene/images_2/0001.png``); images at the scene's top level go to ``scene/images_<factor>/``."""
    relative = Path(image).relative_to(scene_root)
    if len(relative.parts) == 1:
        return Path(scene_root) / f"images_{factor}" / relative
    return Path(scene_root) / f"{relative.parts[0]}_{factor}" / Path(*relative.parts[1:])


def downscale_image(source: Path, target: Path, factor: int) -> Tuple[int, int]:
    """Write ``source`` shrunk ``factor`` times (area average; alpha kept) to ``target``, unless a copy at least
    as new as the source is there already. Both sides must divide by ``factor`` (so intrinsics scale exactly).
    Returns the new ``(width, height)``. Errors are DatasetErrors naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as img:
            width, height = img.size
            if width % factor or height % factor:
                raise DatasetError(
                    f"image {source} is {width}x{height}: downscale_factor {factor} must divide both sides "
                    "(crop the images or choose another factor)"
                )
            size = (width // factor, height // factor)
            if target.exists() and target.stat().st_mtime_ns >= Path(source).stat().st_mtime_ns:
                return size
            img.load()
            if img.mode not in ("RGB", "RGBA", "L", "LA"):
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            small = img.resize(size, Image.Resampling.BOX)
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetError(f"image {source} cannot be read for downscaling: {err}") from err
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp{target.suffix}")  # atomic: other processes may read it
    small.save(tmp, **({"quality": 95} if target.suffix.lower() in (".jpg", ".jpeg") else {}))
    tmp.replace(target)
    return size
