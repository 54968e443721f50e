"""The one colorize path (colorize_core.render) on plain arrays: ab upsampling as torch's (bilinear and bicubic),
the compose against the float64 reference, 8- and 16-bit outputs, and golden outputs of the bundled weights.

Golden tests pin what users get from the shipped weights: tiny images (48x32 gray, colour, 16-bit colour)
through ``effnet_unet`` and ``compact``, compared with ``tests/golden/render.npz`` within 2 levels per value
(and 0.02 on the mean), in fp32. The tolerance is for CPUs whose fp32 convolutions round differently in the
last bits (oneDNN on AMX, another thread count); any change of the numerics beyond it fails here, and
regenerating the file (``COLORIZE_UPDATE_GOLDEN=1 python -m pytest tests/test_render.py -k golden``) makes it a
visible decision in the diff.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import color as skcolor
from skimage import data

from colorize_core import color, imageio, metrics, render
from colorize_core.models import load_model
from colorize_core.models.preprocess import Preprocessing

GOLDEN = Path(__file__).resolve().parent / "golden" / "render.npz"
MODES = ("bilinear", "bicubic")


def _reference(rgb: np.ndarray, ab: np.ndarray, mode: str) -> np.ndarray:
    """float64: skimage Lab of the source, ab upsampled in float64 by torch, lab2rgb, clipped, in [0, 1]."""
    light = skcolor.rgb2lab(imageio.to_float01(rgb).astype(np.float64))[..., 0]
    up = torch.nn.functional.interpolate(torch.from_numpy(ab)[None].double(), size=rgb.shape[:2], mode=mode,
                                         align_corners=False)[0].permute(1, 2, 0).numpy()
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # skimage warns about clipped negative Z (out-of-gamut ab)
            return np.clip(skcolor.lab2rgb(np.concatenate([light[..., None], up], axis=-1)), 0, 1)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.fromarray(data.astronaut()).resize((301, 227), Image.BICUBIC))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n_out, n_in", [(97, 16), (16, 97), (40, 40), (5, 1), (64, 63)])
def test_axis_weights_are_torchs(mode, n_out, n_in):
    x = torch.from_numpy(np.random.default_rng(n_in).normal(0, 20, (1, 1, n_in, 3)))
    expected = torch.nn.functional.interpolate(x, size=(n_out, 3), mode=mode, align_corners=False)[0, 0].numpy()
    idx, w = render.axis_weights(n_out, n_in, mode)
    got = (x[0, 0].numpy()[idx] * w[..., None]).sum(axis=1)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_compose_is_within_one_code_of_the_float64_reference(photo, mode):
    """The tolerance the module docstring states: 8-bit within 1 code, < 1% of values off; 16-bit within 2."""
    pre = Preprocessing((24, 32), ab_upsample=mode)
    off = total = 0
    for seed in range(3):
        ab = np.random.default_rng(seed).normal(0, 30, (2, 24, 32)).astype(np.float32)
        ref = _reference(photo, ab, mode)
        out8 = render.compose(photo, ab, pre)
        diff = np.abs(out8.astype(int) - np.floor(ref * 255 + 0.5).astype(int))
        assert diff.max() <= 1, (mode, seed)
        off, total = off + int((diff > 0).sum()), total + diff.size
        out16 = render.compose(photo, ab, pre, depth=16)
        assert out16.dtype == np.uint16
        assert np.abs(out16.astype(int) - np.floor(ref * 65535 + 0.5).astype(int)).max() <= 2, (mode, seed)
    assert off / total < 0.01


@pytest.mark.parametrize("mode", MODES)
def test_the_8_bit_gray_table_compose_is_within_the_fidelity_bound(photo, mode):
    """8-bit gray to 8 bits goes through graytable (ab rounded to whole units): its only error is ab's, at most
    1 unit in a and b, so it is not within 1 code where the sRGB curve is steep (near black, where a 1-unit
    step in ab moves a clipped channel by ~12 codes), but far inside the 40 dB bound of the float64 reference."""
    pre = Preprocessing((16, 16), ab_upsample=mode)
    gray = photo[..., 0].copy()
    for seed in range(2):
        ab = np.random.default_rng(seed).normal(0, 20, (2, 16, 16)).astype(np.float32)
        ref = np.floor(_reference(np.repeat(gray[..., None], 3, axis=2), ab, mode) * 255 + 0.5).astype(np.uint8)
        out = render.compose(gray, ab, pre)
        assert out.shape == (*gray.shape, 3) and out.dtype == np.uint8
        assert metrics.psnr(out, ref) > 48, (mode, seed)
        assert np.abs(out.astype(int) - ref).mean() < 0.6
        floats = render.compose(np.repeat(gray[..., None], 3, axis=2), ab, pre)  # the float path: within 1 code
        assert np.abs(floats.astype(int) - ref).max() <= 1


def test_ab_upsample_is_honoured_and_bands_do_not_show(photo, monkeypatch):
    ab = np.random.default_rng(0).normal(0, 30, (2, 8, 8)).astype(np.float32)
    bilinear = render.compose(photo, ab, Preprocessing((8, 8), ab_upsample="bilinear"))
    bicubic = render.compose(photo, ab, Preprocessing((8, 8), ab_upsample="bicubic"))
    assert np.abs(bilinear.astype(int) - bicubic.astype(int)).max() >= 3  # the two really differ
    monkeypatch.setattr(render, "COMPOSE_CHUNK_PIXELS", 301 * 3 + 17)  # bands of 3 rows: same pixels
    for mode, whole in (("bilinear", bilinear), ("bicubic", bicubic)):
        np.testing.assert_array_equal(render.compose(photo, ab, Preprocessing((8, 8), ab_upsample=mode)), whole)


def test_compose_keeps_geometry_and_l_and_scales_saturation(photo):
    pre = Preprocessing((16, 16))
    ab = np.random.default_rng(0).normal(0, 15, (2, 16, 16)).astype(np.float32)
    out = render.compose(photo, ab, pre)
    assert out.shape == photo.shape and out.dtype == np.uint8
    assert np.abs(color.srgb_to_l(out) - color.srgb_to_l(photo)).mean() < 1.0  # up to gamut clipping, rounding
    assert metrics.colorfulness(render.gray(photo)) < 0.5
    assert metrics.colorfulness(render.compose(photo, ab, pre, saturation=2.0)) > metrics.colorfulness(out)
    gray8 = np.repeat(photo[..., :1], 3, axis=2)  # 8-bit gray: the table compose, one channel or three
    np.testing.assert_array_equal(render.compose(gray8, ab, pre, is_gray=True), render.compose(gray8[..., 0], ab, pre))
    with pytest.raises(ValueError, match="depth"):
        render.compose(photo, ab, pre, depth=12)


def test_a_16_bit_source_keeps_its_precision_in_a_16_bit_output(photo):
    rgb16 = (photo.astype(np.uint16) * 257) + np.random.default_rng(0).integers(0, 200, photo.shape, np.uint16)
    ab = np.random.default_rng(1).normal(0, 15, (2, 16, 16)).astype(np.float32)
    pre = Preprocessing((16, 16))
    out16 = render.compose(rgb16, ab, pre, depth=16)
    out8 = render.compose(rgb16, ab, pre)
    assert np.abs(imageio.to_uint8(out16).astype(int) - out8.astype(int)).max() <= 1
    assert len(np.unique(out16)) > 4 * len(np.unique(out8))  # the low bits are really there


def test_colorize_feeds_the_model_its_l_and_hints():
    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))
            self.calls = []

        def forward(self, l, hint_ab=None, hint_mask=None):
            self.calls.append((l.clone(), hint_ab, hint_mask))
            return torch.full((l.shape[0], 2, *l.shape[-2:]), 10.0)

    pre = Preprocessing((12, 16), resize="lanczos")
    rgb = np.asarray(Image.fromarray(data.chelsea()).resize((40, 30)))
    spy = Spy()
    outs = render.colorize(spy, [rgb, rgb[:20]], pre, batch_size=1)
    assert [o.shape for o in outs] == [(30, 40, 3), (20, 40, 3)]
    np.testing.assert_array_equal(spy.calls[0][0][0, 0].numpy(), pre.model_l(rgb))
    assert spy.calls[0][1] is None, "no hints: the model gets L alone"
    spy.calls.clear()
    render.colorize(spy, [rgb, rgb], pre, hints=[[{"x": 0.5, "y": 0.5, "a": 20.0, "b": -5.0}], None], hint_radius=1)
    (l, hint_ab, hint_mask), = spy.calls
    assert hint_mask.shape == (2, 1, 12, 16) and hint_mask[0].sum() == 9 and hint_mask[1].sum() == 0
    assert hint_ab[0, 0, 6, 8] == 20.0 and hint_ab[0, 1, 6, 8] == -5.0


# --------------------------------------------------------------------------- golden outputs


def _golden_inputs() -> dict[str, np.ndarray]:
    """48x32 gray, colour and 16-bit colour images, and a 224x160 gray one (larger than ``compact``'s input, so
    its ab is upsampled: the weights' ``ab_upsample`` shows), stored with the expected outputs, so Pillow's
    resize in a later version cannot move them."""
    gray = np.asarray(Image.fromarray(data.camera()).resize((48, 32), Image.BICUBIC))
    gray_up = np.asarray(Image.fromarray(data.camera()).resize((224, 160), Image.BICUBIC))
    colour = np.asarray(Image.fromarray(data.chelsea()).resize((48, 32), Image.BICUBIC))
    big = Image.fromarray(data.coffee()).resize((48, 32), Image.BICUBIC)
    rgb16 = np.clip(np.asarray(big, np.float64) * 257 + np.random.default_rng(0).normal(0, 60, (32, 48, 3)),
                    0, 65535).astype(np.uint16)
    return {"gray": np.repeat(gray[..., None], 3, axis=2), "colour": colour, "colour16": rgb16,
            "gray_up": np.repeat(gray_up[..., None], 3, axis=2)}


@pytest.fixture()
def fp32(monkeypatch):
    """IEEE fp32 everywhere (no TF32/bf16 inner products on CPUs or builds that would allow them)."""
    for backend in (torch.backends.mkldnn, getattr(torch.backends.mkldnn, "conv", None),
                    getattr(torch.backends.mkldnn, "matmul", None), torch.backends):
        if backend is not None and hasattr(backend, "fp32_precision"):
            monkeypatch.setattr(backend, "fp32_precision", "ieee")
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(previous)


def _golden_outputs(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for model in ("effnet_unet", "compact"):
        module, info = load_model(model)
        for name, rgb in inputs.items():
            if name == "gray_up" and model != "compact":
                continue
            # The job's own way in: the bytes decoded (PNG for 8-bit, lossless), then the one path.
            image = imageio.decode_image(imageio.encode_image(rgb, "png")) if rgb.dtype == np.uint8 else \
                imageio.DecodedImage(rgb, "RGB;16", "PNG", False)
            out[f"{model}/{name}"] = render.colorize(module, [image], info.preprocessing)[0]
        out[f"{model}/colour16/depth16"] = render.colorize(module, [inputs["colour16"]], info.preprocessing,
                                                           depth=16)[0]
    return out


def test_golden_outputs_of_the_bundled_weights(fp32):
    if os.environ.get("COLORIZE_UPDATE_GOLDEN") == "1":
        inputs = _golden_inputs()
        GOLDEN.parent.mkdir(exist_ok=True)
        np.savez_compressed(GOLDEN, **{f"input/{k}": v for k, v in inputs.items()}, **_golden_outputs(inputs))
    stored = np.load(GOLDEN)
    inputs = {k.removeprefix("input/"): stored[k] for k in stored.files if k.startswith("input/")}
    got = _golden_outputs(inputs)
    assert set(got) == {k for k in stored.files if not k.startswith("input/")}
    for key, value in got.items():
        expected = stored[key]
        assert value.shape == expected.shape and value.dtype == expected.dtype, key
        scale = 257 if value.dtype == np.uint16 else 1  # the tolerance in 8-bit levels
        diff = np.abs(value.astype(np.int64) - expected.astype(np.int64)) / scale
        means = value.reshape(-1, 3).mean(axis=0) / scale, expected.reshape(-1, 3).mean(axis=0) / scale
        assert diff.max() <= 2 and diff.mean() <= 0.02, f"{key}: max {diff.max():.2f}, mean {diff.mean():.3f} " \
                                                        f"levels; channel means {means[0]} vs {means[1]}"
    # And the pinned pictures are colorized, not gray, for the colour inputs.
    assert metrics.colorfulness(got["effnet_unet/colour"]) > 5


def test_golden_file_is_small_and_holds_every_case():
    stored = np.load(GOLDEN)
    assert GOLDEN.stat().st_size < 250_000
    assert {"input/gray", "input/colour", "input/colour16", "input/gray_up", "compact/gray_up",
            "effnet_unet/colour16/depth16"} <= set(stored.files)
    assert stored["input/colour16"].dtype == np.uint16 and stored["effnet_unet/colour16/depth16"].dtype == np.uint16



@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_a_full_decode_reduced_for_the_model_matches_the_draft_decode(mode):
    """The fused actor decodes once at full resolution and brings it down as the draft would: same size, and
    the model's L within a fraction of a unit of the draft's (both are low-passes of the same 8x8 blocks)."""
    photo = np.asarray(Image.fromarray(data.astronaut()).resize((1500, 1100)).convert(mode))
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, "JPEG", quality=90)
    pre = Preprocessing((128, 128))
    drafted, geometry = render.decode_reduced(buf.getvalue(), pre.input_size, imageio.DEFAULT_MAX_PIXELS)
    full = imageio.decode_image(buf.getvalue()).pixels
    reduced = render.reduce_decoded(full, pre.input_size)
    assert reduced.shape == drafted.shape and geometry == full.shape[:2]
    diff = np.abs(pre.model_l(reduced) - pre.model_l(drafted))
    assert diff.mean() < 0.3 and diff.max() < 3.0
    small = full[:300, :300]
    assert render.reduce_decoded(small, pre.input_size) is small  # too small to halve: as it is
