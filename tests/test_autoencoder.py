"""Tests of nerfstudio_3dae.autoencoder (CPU, offline: nothing here may reach a model hub)."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before diffusers/huggingface_hub read it, if this module imports them first

import numpy as np
import pytest
import torch
from conftest import tiny_test_config

from nerfstudio_3dae.autoencoder import (
    NORMALISER_FILE,
    LatentAutoencoder,
    NormaliserConfig,
    build_autoencoder,
    denormalise_latents,
    encode_in_batches,
    load_autoencoder,
    normalise_latents,
    small_autoencoder_config,
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DIFFUSERS_OFFLINE", "1")


def _images(n=2, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------- normaliser
@pytest.mark.parametrize("kind,scale", [("tanh", 0.02), ("tanh", 0.5), ("linear", 0.18215), ("none", 1.0)])
def test_normaliser_round_trip(kind, scale):
    z = torch.randn(2, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) / scale  # unsaturated
    y = normalise_latents(z, kind, scale)
    assert torch.allclose(denormalise_latents(y, kind, scale), z, rtol=1e-6, atol=1e-6)
    cfg = NormaliserConfig(kind, scale)
    assert torch.allclose(cfg.denormalise(cfg.normalise(z)), z, rtol=1e-6, atol=1e-6)
    assert NormaliserConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_normaliser_tanh_values_and_clamp():
    z = torch.tensor([[[[0.0, 10.0, -50.0]]]])
    assert torch.allclose(normalise_latents(z), torch.tanh(0.02 * z))
    assert normalise_latents(z).abs().max() < 1
    out = denormalise_latents(torch.tensor([[[[1.0, -1.0, 2.0]]]]))  # saturated values stay finite
    assert torch.isfinite(out).all()


def test_normaliser_rejects_bad_settings():
    with pytest.raises(ValueError, match="kind"):
        NormaliserConfig("sigmoid")
    with pytest.raises(ValueError, match="scale"):
        NormaliserConfig("tanh", 0.0)
    with pytest.raises(ValueError, match="kind"):
        normalise_latents(torch.zeros(1, 1, 1, 1), "bogus")


# ----------------------------------------------------------------------------------------------- shapes/factor
@pytest.mark.parametrize("kind", ["kl", "tiny"])
@pytest.mark.parametrize("factor", [4, 8])
def test_encode_decode_shapes_and_factor(kind, factor):
    ae = build_autoencoder(tiny_test_config(kind, latent_channels=4, factor=factor), kind=kind, seed=0)
    assert ae.kind == kind and ae.latent_channels == 4 and ae.factor == factor
    x = _images(2, 32)
    with torch.no_grad():
        z = ae.encode(x)
        y = ae.decode(z)
    assert z.shape == (2, 4, 32 // factor, 32 // factor)
    assert x.shape[-1] // z.shape[-1] == ae.factor and x.shape[-2] // z.shape[-2] == ae.factor
    assert y.shape == x.shape and y.dtype == torch.float32
    assert ae.latent_size(32, 64) == (32 // factor, 64 // factor)
    with pytest.raises(ValueError, match="divisible"):
        ae.encode(_images(1, 30))


def test_small_default_config():
    ae = build_autoencoder(small_autoencoder_config(), seed=0)
    assert ae.kind == "kl" and ae.factor == 8 and ae.latent_channels == 4
    n_bytes = sum(p.numel() * p.element_size() for p in ae.parameters())
    assert n_bytes < 16 * 2**20
    with torch.no_grad():
        assert ae.encode(_images(1, 64)).shape == (1, 4, 8, 8)


def test_kl_encode_uses_mean_and_tanh_range():
    ae = build_autoencoder(tiny_test_config("kl"), seed=0)
    x = _images(2, 32)
    with torch.no_grad():
        z1, z2 = ae.encode(x), ae.encode(x)
        mean = ae.model.encode(x * 2 - 1).latent_dist.mean
    assert torch.equal(z1, z2)
    assert torch.allclose(z1, torch.tanh(0.02 * mean))
    assert z1.abs().max() < 1


def test_decode_clamps_only_in_eval():
    ae = build_autoencoder(tiny_test_config("kl"), seed=0)
    z = torch.randn(1, 4, 4, 4) * 0.9
    ae.eval()
    with torch.no_grad():
        y = ae.decode(z)
        raw = ae.decode(z, clamp=False)
    assert y.min() >= 0 and y.max() <= 1
    assert torch.allclose(y, raw.clamp(0, 1))
    ae.train()
    with torch.no_grad():
        assert torch.equal(ae.decode(z), raw)


# ----------------------------------------------------------------------------------------------- save/load/identity
@pytest.mark.parametrize("kind", ["kl", "tiny"])
def test_save_load_round_trip(tmp_path, kind):
    ae = build_autoencoder(tiny_test_config(kind), kind=kind, normaliser=NormaliserConfig("linear", 0.5), seed=1)
    folder = ae.save(tmp_path / "ae")
    assert (folder / "config.json").is_file() and (folder / NORMALISER_FILE).is_file()
    loaded = load_autoencoder(folder)
    assert isinstance(loaded, LatentAutoencoder) and loaded.kind == kind
    assert loaded.normaliser == NormaliserConfig("linear", 0.5)
    assert loaded.identity == ae.identity
    x = _images(2, 32)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), ae.encode(x))
        z = ae.encode(x)
        assert torch.equal(loaded.decode(z, clamp=False), ae.decode(z, clamp=False))
    # an explicit normaliser overrides the saved one; str paths work too; kind must agree with config
    other = load_autoencoder(str(folder), kind=kind, normaliser=NormaliserConfig())
    assert other.normaliser == NormaliserConfig() and other.identity != ae.identity
    with pytest.raises(ValueError, match="requested"):
        load_autoencoder(folder, kind="tiny" if kind == "kl" else "kl")


def test_load_subfolder(tmp_path):
    ae = build_autoencoder(tiny_test_config("kl"), seed=0)
    ae.save(tmp_path / "repo" / "vae")
    assert load_autoencoder(tmp_path / "repo", subfolder="vae").identity == ae.identity


def test_identity_tracks_weights_and_normaliser():
    ae = build_autoencoder(tiny_test_config("kl"), seed=0)
    ident = ae.identity
    assert isinstance(ident, str) and len(ident) == 16 and ae.identity == ident
    assert build_autoencoder(tiny_test_config("kl"), seed=0).identity == ident  # same seed, same weights
    assert build_autoencoder(tiny_test_config("kl"), seed=1).identity != ident
    state = {k: v.clone() for k, v in ae.state_dict().items()}
    with torch.no_grad():
        next(ae.parameters()).add_(1e-3)  # in-place change is noticed without refresh
    changed = ae.identity
    assert changed != ident
    ae.load_state_dict(state)
    assert ae.identity == ident
    with torch.no_grad():
        next(ae.parameters()).data.mul_(2.0)  # .data writes bypass version counters: refresh explicitly
    assert ae.refresh_identity() != ident
    ae.load_state_dict(state)
    ae.normaliser = NormaliserConfig("tanh", 0.05)
    assert ae.identity != ident
    ae.normaliser = NormaliserConfig()
    assert ae.identity == ident


def test_identity_changes_after_optimiser_step():
    ae = build_autoencoder(tiny_test_config("tiny"), kind="tiny", seed=0)
    ident = ae.identity
    opt = torch.optim.Adam(ae.parameters(), lr=1e-2)
    ae(_images(1, 32)).mean().backward()
    opt.step()
    assert ae.identity != ident


# ----------------------------------------------------------------------------------------------- errors
def test_missing_folder_error(tmp_path):
    missing = tmp_path / "does_not_exist"
    with pytest.raises(FileNotFoundError) as info:
        load_autoencoder(missing)
    assert str(missing) in str(info.value)
    with pytest.raises(FileNotFoundError) as info:
        load_autoencoder(str(missing))
    assert str(missing) in str(info.value)


def test_folder_without_config_error(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(FileNotFoundError) as info:
        load_autoencoder(folder)
    assert str(folder) in str(info.value) and "config.json" in str(info.value)


def test_unknown_class_and_bad_json_errors(tmp_path):
    folder = tmp_path / "unet"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError) as info:
        load_autoencoder(folder)
    assert str(folder) in str(info.value) and "UNet2DModel" in str(info.value)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError) as info:
        load_autoencoder(folder)
    assert str(folder) in str(info.value)
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))  # config but no weights
    with pytest.raises(ValueError) as info:
        load_autoencoder(folder)
    assert str(folder) in str(info.value)


# ----------------------------------------------------------------------------------------------- batching
def test_encode_in_batches_uint8_hwc_and_float():
    ae = build_autoencoder(tiny_test_config("tiny"), kind="tiny", seed=0)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    ref = torch.from_numpy(imgs).float().div(255).permute(0, 3, 1, 2)
    with torch.no_grad():
        expect = ae.encode(ref)
    got = encode_in_batches(ae, imgs, batch_size=2)
    assert got.shape == (5, 4, 4, 4) and not got.requires_grad
    assert torch.allclose(got, expect, atol=1e-6)
    assert torch.allclose(encode_in_batches(ae, torch.from_numpy(imgs), batch_size=3), expect, atol=1e-6)
    assert torch.allclose(encode_in_batches(ae, ref, batch_size=4), expect, atol=1e-6)  # float NCHW
    assert torch.allclose(encode_in_batches(ae, ref.permute(0, 2, 3, 1), batch_size=5), expect, atol=1e-6)
    assert encode_in_batches(ae, imgs[:0]).shape == (0, 4, 4, 4)
    with pytest.raises(ValueError):
        encode_in_batches(ae, imgs[0])


# ----------------------------------------------------------------------------------------------- learning
def _squares(n, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.ones(n, 3, size, size) * torch.rand(n, 3, 1, 1, generator=g)
    for i in range(n):
        for _ in range(2):
            s = int(torch.randint(8, 17, (1,), generator=g))
            y, x = torch.randint(0, size - s + 1, (2,), generator=g).tolist()
            imgs[i, :, y : y + s, x : x + s] = torch.rand(3, 1, 1, generator=g)
    return imgs


def test_small_autoencoder_learns_squares(one_thread):
    torch.manual_seed(0)
    ae = build_autoencoder(small_autoencoder_config(), seed=0)
    x = _squares(4)
    opt = torch.optim.Adam(ae.parameters(), lr=1e-3)
    with torch.no_grad():
        before = torch.mean((ae(x) - x) ** 2).item()
    for _ in range(60):
        loss = torch.mean((ae(x) - x) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = torch.mean((ae(x) - x) ** 2).item()
    assert after < before / 4, (before, after)


def test_encoder_identity_ignores_the_decoder():
    """The latent cache key: a decoder fine-tune keeps it, an encoder change does not."""
    ae = build_autoencoder(tiny_test_config("kl"), seed=0)
    whole, encoder = ae.identity, ae.encoder_identity
    with torch.no_grad():
        next(ae.model.decoder.parameters()).add_(1.0)
    assert ae.identity != whole and ae.encoder_identity == encoder
    with torch.no_grad():
        next(ae.model.encoder.parameters()).add_(1.0)
    assert ae.encoder_identity != encoder
