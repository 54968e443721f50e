"""The table compose for 8-bit gray (colorize_core/graytable.py) against the float64 loop, the float path and
the definitions it stands in for."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from colorize_core import color, graytable, imageio, metrics, torchpath
from tests.test_fastpath import CASES, MIN_PSNR, compact, loop_output  # noqa: F401 - compact is a fixture

RNG = np.random.default_rng(11)
GRAY_CASES = [n for n in CASES if n.startswith("gray")]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _delta_e(rgb, ref):
    return np.linalg.norm(color.srgb_to_lab(np.ascontiguousarray(rgb)) - color.srgb_to_lab(ref), axis=-1)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if "2400" in n else n for n in GRAY_CASES])
def test_within_40_db_of_the_float64_loop(compact, name):
    module, pre = compact
    payload = CASES[name]()
    source = imageio.decode_image(payload)
    with torch.no_grad():
        ab = module(torch.from_numpy(pre.model_l(source.rgb))[None, None])[0].numpy()
    words = graytable.compose_gray8(np.ascontiguousarray(source.rgb[..., 0]), ab)
    loop = loop_output(payload, module, pre.input_size)
    assert metrics.psnr(np.ascontiguousarray(graytable.rgb_view(words)), loop) >= MIN_PSNR


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_only_error_is_ab_rounding(mode):
    """Against the float32 path with the same L: the difference is bounded by 1 ab unit in a and in b (dE76
    1.41) plus each side's 8-bit rounding."""
    gray = RNG.integers(0, 256, (150, 210), dtype=np.uint8)
    ab = np.clip(RNG.normal(0, 20, (2, 24, 32)), -100, 100).astype(np.float32)  # inside the table's +-128
    words = graytable.compose_gray8(gray, ab, mode=mode, saturation=1.2)
    exact = torchpath.compose(gray, ab, mode=mode, saturation=1.2)
    d = _delta_e(graytable.rgb_view(words), exact)
    assert d.max() < 1.41 + 1.6 and d.mean() < 0.8
    assert np.all(words >> 24 == 255)  # X byte, as the table stores it


def test_strips_equal_the_whole_image_uint8_upsampling():
    """Each strip of columns is bit-identical to one F.interpolate call on the whole image."""
    gray = np.full((97, 3 * graytable.STRIP_COLUMNS + 17), 128, np.uint8)
    ab = RNG.normal(0, 25, (2, 16, 16)).astype(np.float32)
    words = graytable.compose_gray8(gray, ab)
    q = graytable._ab_indices(ab, 1.0)
    whole = F.interpolate(graytable._packed(q), size=gray.shape, mode="bilinear", align_corners=False)
    whole[0, 0] = torch.from_numpy(gray)
    want = graytable.table().words[whole.permute(0, 2, 3, 1).view(torch.int32).reshape(-1).long()]
    np.testing.assert_array_equal(words.view(np.int32).reshape(-1), want.numpy())


def test_table_slices_are_built_as_images_need_them():
    lut = graytable.table()
    ab = np.zeros((2, 4, 4), np.float32)
    ab[0] = -100.0  # a index 28: a slice no other test touches
    before = lut.built.copy()
    graytable.compose_gray8(np.zeros((8, 8), np.uint8), ab)
    assert lut.built[28] and (lut.built & ~before).sum() == (0 if before[28] else 1)


def test_jpeg_from_words_is_the_bytes_imageio_writes():
    gray = RNG.integers(0, 256, (64, 80), dtype=np.uint8)
    words = graytable.compose_gray8(gray, RNG.normal(0, 20, (2, 8, 8)).astype(np.float32))
    rgb = np.ascontiguousarray(graytable.rgb_view(words))
    assert graytable.encode_jpeg(words, 95) == imageio.encode_image(rgb, "jpeg", quality=95)
    assert Image.open(io.BytesIO(graytable.encode_jpeg(words))).mode == "RGB"


def test_refuses_anything_but_8_bit_gray():
    with pytest.raises(ValueError, match="8-bit gray"):
        graytable.compose_gray8(np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="8-bit gray"):
        graytable.compose_gray8(np.zeros((4, 4), np.uint16), np.zeros((2, 2, 2), np.float32))


def test_a_constant_ab_of_one_pixel_is_the_gray_baseline():
    """ab [2, 1, 1] (render.gray's): torch gives a 1x1 input's upsampling back in NCHW, not channels-last."""
    gray = np.random.default_rng(3).integers(0, 256, (37, 300), dtype=np.uint8)
    rgb = graytable.rgb_view(graytable.compose_gray8(gray, np.zeros((2, 1, 1), np.float32)))
    np.testing.assert_array_equal(rgb, np.repeat(gray[..., None], 3, axis=2))


def test_imageio_encodes_the_rgbx_view_without_a_copy_and_to_the_same_bytes():
    gray = np.random.default_rng(4).integers(0, 256, (64, 99), dtype=np.uint8)
    view = graytable.rgb_view(graytable.compose_gray8(gray, np.random.default_rng(5).normal(0, 20, (2, 8, 8))))
    assert imageio._rgbx_words(view) is not None and imageio._rgbx_words(view[1:]) is None
    for fmt in ("jpeg", "png"):
        assert imageio.encode_image(view, fmt) == imageio.encode_image(np.ascontiguousarray(view), fmt)
