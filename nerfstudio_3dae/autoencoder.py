"""One interface over diffusers image autoencoders (``AutoencoderKL``, ``AutoencoderTiny``).

Images are ``[B, 3, H, W]`` floats in ``[0, 1]``; latents are *normalised* ``[B, c, H/f, W/f]``. The paper
(Schnepf et al., arXiv 2403.11678) normalises raw latents with ``tanh(0.02 * z)``; ``"linear"`` (``z * scale``,
e.g. SD's 0.18215) and ``"none"`` are also offered. Note that ``AutoencoderTiny`` (TAESD) latents are already
about SD's latents times 0.18215, so the paper's setting for it is roughly ``tanh`` with scale ``0.02 / 0.18215``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor, nn

from nerfstudio_3dae.image_layout import hwc_to_nchw, to_float

NORMALISER_FILE = "3dae_autoencoder.json"
_KIND_OF_CLASS = {"AutoencoderKL": "kl", "AutoencoderTiny": "tiny"}
ENCODER_PREFIXES = ("encoder.", "quant_conv.")
"""State-dict prefixes of the encoder side of both classes (everything else decodes)."""
Part = Literal["all", "encoder"]


def is_encoder_tensor(name: str) -> bool:
    """Whether a parameter/buffer name of a diffusers autoencoder belongs to its encoder side."""
    return name.startswith(ENCODER_PREFIXES)


def _diffusers_class(kind: str) -> type:
    """diffusers is imported on first use: importing this module (and the method configs) stays cheap."""
    import diffusers

    return getattr(diffusers, {v: k for k, v in _KIND_OF_CLASS.items()}[kind])


# ----------------------------------------------------------------------------------------------- normaliser
def _check_kind(kind: str) -> None:
    if kind not in ("tanh", "linear", "none"):
        raise ValueError(f"unknown latent normaliser kind {kind!r} (expected 'tanh', 'linear' or 'none')")


def normalise_latents(z: Float[Tensor, "B c h w"], kind: str = "tanh", scale: float = 0.02) -> Float[Tensor, "B c h w"]:
    """Raw autoencoder latents -> normalised latents (``tanh(scale*z)``, ``scale*z`` or ``z``)."""
    _check_kind(kind)
    return torch.tanh(z * scale) if kind == "tanh" else z * scale if kind == "linear" else z


def denormalise_latents(
    y: Float[Tensor, "B c h w"], kind: str = "tanh", scale: float = 0.02, eps: float = 1e-6
) -> Float[Tensor, "B c h w"]:
    """Inverse of :func:`normalise_latents`; for ``tanh`` the input is clamped to ``[-1+eps, 1-eps]`` first."""
    _check_kind(kind)
    if kind == "tanh":
        return torch.atanh(y.clamp(-1.0 + eps, 1.0 - eps)) / scale
    return y / scale if kind == "linear" else y


@dataclasses.dataclass(frozen=True)
class NormaliserConfig:
    """Settings of the latent normaliser: ``kind`` in {"tanh", "linear", "none"}, ``scale``, tanh's clamp ``eps``."""

    kind: Literal["tanh", "linear", "none"] = "tanh"
    scale: float = 0.02
    eps: float = 1e-6

    def __post_init__(self) -> None:
        _check_kind(self.kind)
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"latent normaliser scale must be finite and > 0, got {self.scale}")
        if not 0.0 < self.eps < 1.0:
            raise ValueError(f"latent normaliser eps must be in (0, 1), got {self.eps}")

    def normalise(self, z: Float[Tensor, "B c h w"]) -> Float[Tensor, "B c h w"]:
        """Raw -> normalised latents."""
        return normalise_latents(z, self.kind, self.scale)

    def denormalise(self, y: Float[Tensor, "B c h w"]) -> Float[Tensor, "B c h w"]:
        """Normalised -> raw latents."""
        return denormalise_latents(y, self.kind, self.scale, self.eps)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able settings."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> NormaliserConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(kind=d["kind"], scale=float(d["scale"]), eps=float(d.get("eps", 1e-6)))


# ----------------------------------------------------------------------------------------------- wrapper
class LatentAutoencoder(nn.Module):
    """A diffusers ``AutoencoderKL`` / ``AutoencoderTiny`` seen as images in [0,1] <-> normalised latents.

    ``identity`` is a short hash of (class, config, normaliser, weights) for keying latent caches. The weight
    hash is cached and recomputed when any tensor's in-place version counter, storage, dtype or shape changes
    (optimiser steps, ``load_state_dict``, ``.to()``); after writing through ``param.data`` call
    :meth:`refresh_identity`.
    """

    def __init__(self, model: nn.Module, normaliser: Optional[NormaliserConfig] = None) -> None:
        super().__init__()
        if type(model).__name__ not in _KIND_OF_CLASS:
            raise TypeError(f"expected a diffusers AutoencoderKL or AutoencoderTiny, got {type(model).__name__}")
        self.model = model
        self.normaliser = normaliser if normaliser is not None else NormaliserConfig()
        self._hashes: Dict[str, Tuple[tuple, str]] = {}
        if type(model).__name__ == "AutoencoderTiny":
            cfg = model.config
            up = int(cfg.upsampling_scaling_factor) ** (len(cfg.decoder_block_out_channels) - 1)
            if up != self.factor:
                raise ValueError(f"AutoencoderTiny encoder downsamples by {self.factor} but decoder upsamples by {up}")

    @property
    def kind(self) -> Literal["kl", "tiny"]:
        """``"kl"`` or ``"tiny"``."""
        return _KIND_OF_CLASS[type(self.model).__name__]  # type: ignore[return-value]

    @property
    def latent_channels(self) -> int:
        """Number of latent channels ``c``."""
        return int(self.model.config.latent_channels)

    @property
    def factor(self) -> int:
        """Spatial downsampling factor ``f`` read from the model config (one stride-2 stage per extra block)."""
        cfg = self.model.config
        blocks = cfg.block_out_channels if self.kind == "kl" else cfg.encoder_block_out_channels
        return 2 ** (len(blocks) - 1)

    def latent_size(self, height: int, width: int) -> Tuple[int, int]:
        """Latent ``(h, w)`` for an image of ``(height, width)``; raises if not divisible by ``factor``."""
        f = self.factor
        if height % f or width % f:
            raise ValueError(f"image size {height}x{width} is not divisible by the autoencoder factor {f}")
        return height // f, width // f

    def encode_raw(self, images: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B c h w"]:
        """Images in [0, 1] -> raw (un-normalised) latents, float32. KL uses the posterior mean (no sampling)."""
        self.latent_size(images.shape[-2], images.shape[-1])
        p = next(self.model.parameters())
        x = images.to(device=p.device, dtype=p.dtype) * 2.0 - 1.0
        if self.kind == "kl":
            z = self.model.encode(x).latent_dist.mean
        else:  # EncoderTiny maps [-1,1] back to [0,1] itself; encode() applies no scaling (only forward() does)
            z = self.model.encode(x).latents
        return z.float()

    def decode_raw(self, z: Float[Tensor, "B c h w"]) -> Float[Tensor, "B 3 H W"]:
        """Raw latents -> images mapped from [-1, 1] to [0, 1] (not clamped), float32."""
        p = next(self.model.parameters())
        x = self.model.decode(z.to(device=p.device, dtype=p.dtype)).sample
        return (x.float() + 1.0) * 0.5

    def encode(self, images: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B c h w"]:
        """Images ``[B,3,H,W]`` in [0, 1] -> normalised latents ``[B,c,H/f,W/f]`` (float32, differentiable)."""
        return self.normaliser.normalise(self.encode_raw(images))

    def decode(self, latents: Float[Tensor, "B c h w"], clamp: Optional[bool] = None) -> Float[Tensor, "B 3 H W"]:
        """Normalised latents -> images ``[B,3,H*f,W*f]`` (float32).

        ``clamp`` to [0, 1]: ``None`` (default) clamps only in eval mode, so training losses keep gradients
        outside the range.
        """
        images = self.decode_raw(self.normaliser.denormalise(latents.float()))
        if clamp if clamp is not None else not self.training:
            images = images.clamp(0.0, 1.0)
        return images

    def forward(self, images: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 3 H W"]:
        """Reconstruction ``decode(encode(images))``."""
        return self.decode(self.encode(images))

    # identity ---------------------------------------------------------------------------------------------
    def _tensors(self, part: Part = "all") -> List[Tuple[str, Tensor]]:
        items = sorted(self.model.state_dict(keep_vars=True).items())
        return items if part == "all" else [(n, t) for n, t in items if is_encoder_tensor(n)]

    def refresh_identity(self) -> str:
        """Recompute the weight hashes now and return the new :attr:`identity`."""
        self._hashes = {}
        return self.identity

    def _fingerprint(self, part: Part = "all") -> tuple:
        return tuple(
            (n, t._version, t.data_ptr(), t.dtype, tuple(t.shape), t.device.type) for n, t in self._tensors(part)
        )

    def _weights_hash(self, part: Part) -> str:
        """sha256 of the part's tensors, cached until one of them changes (in-place version, storage, dtype...)."""
        key = self._fingerprint(part)
        cached = self._hashes.get(part)
        if cached is None or cached[0] != key:
            h = hashlib.sha256()
            for name, t in self._tensors(part):
                t = t.detach()
                h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
                h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            cached = (key, h.hexdigest())
            self._hashes[part] = cached
        return cached[1]

    def _identity(self, part: Part) -> str:
        cfg = {k: v for k, v in dict(self.model.config).items() if not k.startswith("_")}
        payload = json.dumps(
            [type(self.model).__name__, cfg, self.normaliser.to_dict(), part, self._weights_hash(part)],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def identity(self) -> str:
        """16 hex chars hashing class name, config (keys without a leading ``_``), normaliser and all weights."""
        return self._identity("all")

    @property
    def encoder_identity(self) -> str:
        """Like :attr:`identity` but over the encoder side only (what latents depend on): the key of latent caches,
        unchanged by a decoder fine-tune."""
        return self._identity("encoder")

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """``nn.Module.load_state_dict`` that also invalidates the cached identity."""
        out = super().load_state_dict(*args, **kwargs)
        self._hashes = {}
        return out

    def save(self, folder: Union[str, Path]) -> Path:
        """Write ``save_pretrained`` output plus ``3dae_autoencoder.json`` (normaliser) into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder)
        (folder / NORMALISER_FILE).write_text(json.dumps({"format": 1, "normaliser": self.normaliser.to_dict()}))
        return folder


# ----------------------------------------------------------------------------------------------- loading
def _read_json(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


def _resolve_kind(class_name: Any, kind: str, where: str) -> str:
    if kind not in ("auto", "kl", "tiny"):
        raise ValueError(f"unknown autoencoder kind {kind!r} (expected 'auto', 'kl' or 'tiny')")
    found = _KIND_OF_CLASS.get(class_name) if class_name is not None else None
    if class_name is not None and found is None:
        raise ValueError(f"{where}: unknown _class_name {class_name!r} (supported: {sorted(_KIND_OF_CLASS)})")
    if kind == "auto":
        if found is None:
            raise ValueError(f"{where}: config has no _class_name; pass kind='kl' or kind='tiny'")
        return found
    if found is not None and found != kind:
        raise ValueError(f"{where}: config says {class_name} but kind={kind!r} was requested")
    return kind


def load_autoencoder(
    source: Union[str, Path],
    kind: Literal["auto", "kl", "tiny"] = "auto",
    normaliser: Optional[NormaliserConfig] = None,
    subfolder: Optional[str] = None,
    local_files_only: bool = False,
) -> LatentAutoencoder:
    """Load a local ``save_pretrained`` folder or a hub id (e.g. ``"stabilityai/sd-vae-ft-mse"``).

    The class comes from config.json's ``_class_name`` when ``kind="auto"``. ``normaliser=None`` uses the
    folder's ``3dae_autoencoder.json`` if present, else :class:`NormaliserConfig` defaults (tanh, 0.02).
    Raises ``FileNotFoundError``/``ValueError`` naming the path for missing or invalid folders.
    """
    path = Path(source).expanduser()
    text = str(source)
    looks_local = isinstance(source, Path) or text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1
    if path.exists() or looks_local:
        folder = path / subfolder if subfolder else path
        if not folder.is_dir():
            raise FileNotFoundError(f"autoencoder folder not found: {folder}")
        cfg_path = folder / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"autoencoder folder {folder} has no config.json (expected save_pretrained output)")
        k = _resolve_kind(_read_json(cfg_path).get("_class_name"), kind, str(cfg_path))
        if normaliser is None and (folder / NORMALISER_FILE).is_file():
            normaliser = NormaliserConfig.from_dict(_read_json(folder / NORMALISER_FILE)["normaliser"])
        try:
            model = _diffusers_class(k).from_pretrained(folder, local_files_only=True)
        except Exception as e:  # diffusers raises many types; say which folder failed
            raise ValueError(f"cannot load {_diffusers_class(k).__name__} weights from {folder}: {e}") from e
    else:
        opts = {"subfolder": subfolder, "local_files_only": local_files_only}
        try:
            cfg = _diffusers_class("kl").load_config(text, **opts)
        except Exception as e:
            raise FileNotFoundError(
                f"{text!r} is no local folder (cwd {Path.cwd()}) and no loadable hub id: {e}"
            ) from e
        k = _resolve_kind(cfg.get("_class_name"), kind, f"{text} (subfolder={subfolder})")
        model = _diffusers_class(k).from_pretrained(text, **opts)
    return LatentAutoencoder(model.eval(), normaliser)


# ----------------------------------------------------------------------------------------------- building
def kl_autoencoder_config(
    widths: Sequence[int],
    latent_channels: int,
    layers_per_block: int = 1,
    norm_groups: Optional[int] = None,
    mid_attention: bool = True,
    sample_size: int = 256,
) -> Dict[str, Any]:
    """A diffusers ``AutoencoderKL`` config with these block widths (factor ``2 ** (len(widths) - 1)``).

    ``norm_groups`` None: the most groups (up to 32) that divide every width, diffusers' habit.
    """
    groups = max(g for g in range(1, 33) if all(w % g == 0 for w in widths)) if norm_groups is None else norm_groups
    if groups < 1 or any(w % groups for w in widths):
        raise ValueError(f"--norm-groups {groups} must divide every block width {tuple(widths)}")
    levels = len(widths)
    return {
        "_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": list(widths), "layers_per_block": layers_per_block, "latent_channels": latent_channels,
        "norm_num_groups": groups, "sample_size": sample_size, "scaling_factor": 1.0,
        "mid_block_add_attention": mid_attention,
    }  # fmt: skip


def small_autoencoder_config(latent_channels: int = 4, factor: int = 8, width: int = 32) -> Dict[str, Any]:
    """Config of the 'scratch' ``AutoencoderKL``: widths ``(width, 2w, 2w, ...)``, one layer a block."""
    if factor < 1 or factor & (factor - 1):
        raise ValueError(f"factor must be a power of two, got {factor}")
    levels = int(math.log2(factor)) + 1
    return kl_autoencoder_config([width] + [2 * width] * (levels - 1), latent_channels)


def build_autoencoder(
    config: Dict[str, Any],
    kind: Literal["auto", "kl", "tiny"] = "kl",
    normaliser: Optional[NormaliserConfig] = None,
    seed: Optional[int] = None,
) -> LatentAutoencoder:
    """Build an autoencoder with random weights from ``config`` (no download); ``seed`` makes them reproducible."""
    k = _resolve_kind(config.get("_class_name"), kind, "config")
    kwargs = {key: v for key, v in config.items() if not key.startswith("_")}
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = _diffusers_class(k).from_config(kwargs)
    return LatentAutoencoder(model, normaliser)


@torch.no_grad()
def encode_in_batches(
    ae: LatentAutoencoder,
    images: Union[np.ndarray, Tensor],
    batch_size: int = 16,
    out_device: Union[str, torch.device] = "cpu",
) -> Float[Tensor, "N c h w"]:
    """Encode ``[N,H,W,3]`` or ``[N,3,H,W]`` images (uint8 in [0,255] or float in [0,1], numpy or torch).

    Channels-last is assumed when the last dim is 3. Returns normalised float32 latents on ``out_device``.
    """
    if images.ndim != 4:
        raise ValueError(f"expected images of shape [N,H,W,3] or [N,3,H,W], got {tuple(images.shape)}")
    channels_last = images.shape[-1] == 3
    if not channels_last and images.shape[1] != 3:
        raise ValueError(f"expected 3 colour channels, got images of shape {tuple(images.shape)}")
    out = []
    for i in range(0, images.shape[0], batch_size):
        b = images[i : i + batch_size]
        b = torch.from_numpy(np.ascontiguousarray(b)) if isinstance(b, np.ndarray) else b
        b = to_float(b)
        if channels_last:
            b = hwc_to_nchw(b)
        out.append(ae.encode(b).to(out_device))
    if not out:
        h, w = ae.latent_size(*(images.shape[1:3] if channels_last else images.shape[2:4]))
        return torch.zeros(0, ae.latent_channels, h, w, device=out_device)
    return torch.cat(out)
