"""The trainable architectures: registry contracts, tiny forward/backward, VGG-19 key layout, pix2pix
losses, and the bundled compact weights (sha256-checked, better than gray on an image it never saw)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from colorize_core.models import WeightsError, WeightsSpec, create_model, get_entry, load_model
from colorize_core.models import weights as weights_mod
from colorize_core.models.pix2pix import (PatchDiscriminator, Pix2PixGenerator, discriminator_loss, gan_loss,
                                          generator_loss, pix2pix_loss)
from colorize_core.models.unet import UNetColorizer
from colorize_core.models.vgg_autoencoder import VGGAutoencoder

TRAINABLE = ("unet", "compact", "pix2pix", "vgg_autoencoder")

# name -> (tiny builder kwargs, input H, W)
TINY = {
    "unet": ({"base_channels": 4, "depth": 2}, (16, 24)),
    "compact": ({"base_channels": 4, "depth": 3, "max_channels": 8}, (16, 24)),
    "pix2pix": ({"ngf": 4, "num_downs": 5}, (32, 64)),
    "vgg_autoencoder": ({"width": 1 / 16}, (32, 64)),
}

# torchvision vgg19().features: conv layer indices and output channels, written out from torchvision's
# cfg "E" independently of our module (conv, ReLU pairs; one max-pool after each block).
TORCHVISION_VGG19_CONVS = [(0, 64), (2, 64), (5, 128), (7, 128), (10, 256), (12, 256), (14, 256), (16, 256),
                           (19, 512), (21, 512), (23, 512), (25, 512), (28, 512), (30, 512), (32, 512), (34, 512)]


@pytest.mark.parametrize("name", TRAINABLE)
def test_declared_params_input_size_and_output_shape(name):
    entry = get_entry(name)
    model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == entry.num_params
    assert type(model).input_size == entry.input_size and model.accepts_hints is False
    with torch.no_grad():
        out = model(torch.rand(1, 1, *entry.input_size) * 100)
    assert out.shape == (1, 2, *entry.input_size) and out.abs().max() <= 110
    assert pickle.loads(pickle.dumps(entry)) == entry


@pytest.mark.parametrize("name", TRAINABLE)
def test_tiny_forward_backward(name):
    kwargs, (h, w) = TINY[name]
    model = get_entry(name).builder(**kwargs).train()
    l = torch.rand(2, 1, h, w) * 100
    ab = model(l)
    assert ab.shape == (2, 2, h, w) and torch.isfinite(ab).all()
    ab.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("model, size", [(UNetColorizer(base_channels=4, depth=3), 20),
                                         (Pix2PixGenerator(ngf=4, num_downs=5), 48),
                                         (VGGAutoencoder(width=1 / 16), 48)])
def test_sizes_not_multiple_of_the_stride_are_rejected_with_a_fix(model, size):
    with pytest.raises(ValueError, match="multiples of"):
        model(torch.zeros(1, 1, size, size))


def test_unet_linear_head_and_bad_arguments():
    m = UNetColorizer(base_channels=4, depth=2, out_activation="linear")
    assert m(torch.rand(1, 1, 8, 8) * 100).shape == (1, 2, 8, 8)
    with pytest.raises(ValueError):
        UNetColorizer(norm="layer")
    with pytest.raises(ValueError):
        UNetColorizer(out_activation="sigmoid")


def test_patch_discriminator_is_70x70_patchgan():
    d = PatchDiscriminator()
    with torch.no_grad():
        out = d(torch.rand(1, 1, 256, 256) * 100, torch.zeros(1, 2, 256, 256))
    assert out.shape == (1, 1, 30, 30)  # the paper's 30x30 map of 70x70 patches at 256 px
    # Receptive field: a pixel change reaches only outputs within a 70-pixel window.
    d = PatchDiscriminator(ndf=4).eval()
    l = torch.zeros(1, 1, 256, 256, requires_grad=True)
    d(l, torch.zeros(1, 2, 256, 256))[0, 0, 15, 15].backward()
    rows = l.grad[0, 0].abs().sum(1).nonzero()
    assert int(rows.max() - rows.min()) + 1 <= 70


def test_pix2pix_losses():
    torch.manual_seed(0)
    d = PatchDiscriminator(ndf=4)
    l, real, fake = torch.rand(2, 1, 32, 32) * 100, torch.randn(2, 2, 32, 32) * 20, torch.randn(2, 2, 32, 32) * 20
    for mode in ("bce", "lsgan"):
        adv, l1 = generator_loss(d, l, real, fake, mode)
        assert torch.isclose(l1, (fake - real).abs().mean() / 110)
        assert torch.isclose(pix2pix_loss(d, l, real, fake, mode), adv + 100 * l1)
        assert discriminator_loss(d, l, real, fake, mode) > 0
    logits = torch.tensor([10.0, -10.0])
    assert gan_loss(logits[:1], True) < 1e-3 and gan_loss(logits[1:], True) > 9
    with pytest.raises(ValueError):
        gan_loss(logits, True, "wgan")


def _torchvision_vgg19_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state, cin = {}, 3
    for idx, cout in TORCHVISION_VGG19_CONVS:
        state[f"features.{idx}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * 0.01
        state[f"features.{idx}.bias"] = torch.randn(cout, generator=g) * 0.01
        cin = cout
    state["classifier.0.weight"] = torch.zeros(4, 7)  # classifier keys are ignored (shape irrelevant)
    state["classifier.0.bias"] = torch.zeros(4)
    return state


def test_vgg_encoder_loads_torchvision_vgg19_keys_and_sums_rgb(tmp_path):
    state = _torchvision_vgg19_state()
    path = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save(state, path)
    model = VGGAutoencoder()
    model.load_encoder_weights(str(path))
    enc = model.features.state_dict()
    assert torch.equal(enc["0.weight"], state["features.0.weight"].sum(1, keepdim=True))
    for idx, _ in TORCHVISION_VGG19_CONVS[1:]:
        assert torch.equal(enc[f"{idx}.weight"], state[f"features.{idx}.weight"])
    # Summing RGB filters is exact for a gray image fed to all three channels.
    x = torch.rand(1, 1, 8, 8)
    ref = torch.nn.functional.conv2d(x.expand(1, 3, 8, 8), state["features.0.weight"], state["features.0.bias"],
                                     padding=1)
    assert torch.allclose(model.features[0](x), ref, atol=1e-6)
    bad = dict(state)
    del bad["features.34.bias"]
    with pytest.raises(WeightsError, match="features.34.bias"):
        model.load_encoder_weights(bad)
    with pytest.raises(WeightsError, match="width=1"):
        VGGAutoencoder(width=0.5).load_encoder_weights(state)


def test_local_weights_sha256_is_checked_against_the_spec(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(UNetColorizer(base_channels=2, depth=1).state_dict(), path)
    digest = weights_mod.sha256_file(path)
    good = WeightsSpec(uri=str(path), sha256=digest, num_bytes=path.stat().st_size)
    assert weights_mod.load_state_dict(str(path), spec=good)
    bad = WeightsSpec(uri=str(path), sha256="0" * 64, num_bytes=None)
    with pytest.raises(WeightsError, match="does not match"):
        weights_mod.load_state_dict(str(path), spec=bad)


# --------------------------------------------------------------------------- the bundled compact model


def _bundled_spec():
    entry = get_entry("compact")
    if "bundled" not in entry.weights:
        pytest.fail("the compact entry has no bundled weights (colorize_core/assets/compact/weights.pt)")
    return entry, entry.weights["bundled"]


def test_bundled_compact_loads_offline_with_verified_sha256(monkeypatch):
    entry, spec = _bundled_spec()
    path = Path(spec.uri)
    assert path.is_file() and path.parent.name == "compact" and path.stat().st_size == spec.num_bytes
    assert weights_mod.sha256_file(path) == spec.sha256 and len(spec.sha256) == 64
    assert entry.default_weights == "bundled" and spec.preprocessing is None  # trained at the class's input_size
    assert {"trained_on", "heldout_psnr"} <= set(spec.meta)
    calls = []
    real = weights_mod.sha256_file
    monkeypatch.setattr(weights_mod, "sha256_file", lambda p: calls.append(p) or real(p))
    monkeypatch.setattr(weights_mod, "_download", lambda *a: pytest.fail("must not download"))
    model, info = load_model("compact")
    assert calls and info.weights == "bundled" and not model.training


def test_bundled_compact_beats_gray_on_a_held_out_skimage_photo():
    """chelsea is held out by scripts/get_training_data.py (never trained on)."""
    from skimage import data

    from colorize_core import metrics
    from colorize_core.training import colorize_rgb, gray_rgb

    model, info = load_model("compact")
    rgb = data.chelsea()
    pred = colorize_rgb(model, rgb, info.input_size)
    gray = gray_rgb(rgb)
    assert pred.shape == rgb.shape and pred.dtype == np.uint8
    assert metrics.psnr(pred, rgb) > metrics.psnr(gray, rgb)
    assert metrics.colorfulness(pred) > metrics.colorfulness(gray) + 5
