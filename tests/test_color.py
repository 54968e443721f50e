"""colorize_core.color pinned against skimage's Lab, plus the torch twins and gradients."""

import warnings

import numpy as np
import pytest
import torch
from skimage import data
from skimage.color import colorconv, deltaE_cie76, lab2rgb, rgb2lab

from colorize_core import color
from colorize_core.color import (
    lab_to_srgb,
    lab_to_srgb_torch,
    lab_to_srgb_uint8,
    srgb_to_l,
    srgb_to_lab,
    srgb_to_lab_torch,
)

REAL_IMAGES = ["astronaut", "coffee", "chelsea"]


def _extreme_rgb() -> np.ndarray:
    """Black, white, primaries, secondaries, grays and values on both sides of the
    sRGB and Lab branch thresholds, as float64 in [0, 1]."""
    corners = np.array(np.meshgrid([0.0, 1.0], [0.0, 1.0], [0.0, 1.0])).reshape(3, -1).T
    levels = np.array([0.0, 1e-6, 0.04, 0.04045, 0.0405, 0.08, 0.5, 0.999, 1.0])
    grays = np.repeat(levels[:, None], 3, axis=1)
    mixed = np.array(np.meshgrid(levels, levels, levels)).reshape(3, -1).T
    return np.concatenate([corners, grays, mixed])


def _random_rgb(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3))


def _random_lab(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Lab over the full nominal box, so many samples are out of the sRGB gamut."""
    rng = np.random.default_rng(seed)
    light = rng.uniform(0, 100, shape)
    return np.stack([light, rng.uniform(-128, 127, shape), rng.uniform(-128, 127, shape)], axis=-1)


def _assert_lab_close(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.dtype == np.float32
    assert ours.shape == ref.shape
    de = deltaE_cie76(ours.astype(np.float64), ref)
    assert de.mean() < 1e-3, de.mean()
    assert de.max() < 1e-2, de.max()


def _lab2rgb_quiet(lab: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # skimage warns about clipped negative Z
        warnings.simplefilter("ignore")
        return lab2rgb(lab)


def test_constants_are_skimages():
    np.testing.assert_array_equal(color._XYZ_FROM_RGB, colorconv.xyz_from_rgb)
    np.testing.assert_allclose(color._RGB_FROM_XYZ, colorconv.rgb_from_xyz, rtol=1e-12)
    white = colorconv.xyz_tristimulus_values(illuminant="D65", observer="2")
    np.testing.assert_array_equal(color._D65_WHITE, white)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_float_pixels_match_skimage(dtype):
    rgb = np.concatenate([_extreme_rgb(), _random_rgb(50_000)]).astype(dtype)
    _assert_lab_close(srgb_to_lab(rgb), rgb2lab(rgb.astype(np.float64)))


def test_uint8_every_code_matches_skimage():
    codes = np.arange(256, dtype=np.uint8)
    rgb = np.stack(np.meshgrid(codes, codes, codes[::5], indexing="ij"), axis=-1)
    _assert_lab_close(srgb_to_lab(rgb), rgb2lab(rgb))


def test_uint16_matches_skimage_and_uint8_scale():
    rgb16 = np.random.default_rng(1).integers(0, 65536, (200, 300, 3), dtype=np.uint16)
    rgb16[0, :8] = (np.array(np.meshgrid([0, 1], [0, 1], [0, 1])).reshape(3, -1).T * 65535)
    _assert_lab_close(srgb_to_lab(rgb16), rgb2lab(rgb16))
    rgb8 = data.coffee()
    # 257 * v maps uint8 code v onto the same fraction of the uint16 range.
    np.testing.assert_allclose(
        srgb_to_lab(rgb8.astype(np.uint16) * 257), srgb_to_lab(rgb8), atol=2e-4
    )


@pytest.mark.parametrize("name", REAL_IMAGES)
def test_real_images_match_skimage(name):
    rgb = getattr(data, name)()
    lab = srgb_to_lab(rgb)
    _assert_lab_close(lab, rgb2lab(rgb))
    ref_back = _lab2rgb_quiet(rgb2lab(rgb))
    np.testing.assert_allclose(lab_to_srgb(rgb2lab(rgb)), ref_back, atol=1e-5)


def test_lab_to_srgb_matches_skimage_incl_out_of_gamut():
    lab = _random_lab((50_000,), seed=2)
    edges = np.array([[0, 0, 0], [100, 0, 0], [50, 127, -128], [50, -128, 127], [0, 0, 127]], float)
    lab = np.concatenate([lab, edges])
    ours = lab_to_srgb(lab)
    assert ours.dtype == np.float32
    assert ours.min() >= 0.0 and ours.max() <= 1.0
    np.testing.assert_allclose(ours, _lab2rgb_quiet(lab), atol=1e-4)
    np.testing.assert_allclose(lab_to_srgb(lab.astype(np.float32)), ours, atol=1e-4)


def test_uint8_round_trip_is_exact_for_every_colour():
    codes = np.arange(256, dtype=np.uint8)
    rgb = np.stack(np.meshgrid(codes, codes, codes, indexing="ij"), axis=-1).reshape(-1, 3)
    back = lab_to_srgb_uint8(srgb_to_lab(rgb))  # all 16.7M colours, ~0.3 s
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, rgb)


def test_float_round_trip():
    rgb = np.concatenate([_extreme_rgb(), _random_rgb(50_000, seed=4)]).astype(np.float32)
    np.testing.assert_allclose(lab_to_srgb(srgb_to_lab(rgb)), rgb, atol=1e-4)


def test_uint8_rounds_half_up():
    lab = srgb_to_lab(_random_rgb(10_000, seed=5))
    expected = np.floor(np.clip(lab_to_srgb(lab) * np.float32(255), 0, 255) + np.float32(0.5))
    np.testing.assert_array_equal(lab_to_srgb_uint8(lab), expected.astype(np.uint8))


@pytest.mark.parametrize("shape", [(3,), (7, 3), (4, 5, 3), (2, 4, 5, 3), (0, 3)])
def test_any_leading_shape(shape):
    rgb = np.random.default_rng(6).integers(0, 256, shape, dtype=np.uint8)
    lab = srgb_to_lab(rgb)
    assert lab.shape == shape
    assert srgb_to_l(rgb).shape == shape[:-1]
    assert lab_to_srgb(lab).shape == shape
    assert lab_to_srgb_uint8(lab).shape == shape
    np.testing.assert_array_equal(lab.reshape(-1, 3), srgb_to_lab(rgb.reshape(-1, 3)))


def test_batch_equals_per_image_and_chunking_is_invisible():
    batch = np.stack([data.astronaut()[:300, :400], data.coffee()[:300, :400]])
    lab = srgb_to_lab(batch)  # 240k pixels: several internal chunks
    for i in range(2):
        np.testing.assert_array_equal(lab[i], srgb_to_lab(batch[i]))


def test_srgb_to_l_is_the_l_channel():
    gray_codes = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    np.testing.assert_array_equal(srgb_to_l(gray_codes), srgb_to_lab(gray_codes)[..., 0])
    gray_float = np.repeat(np.linspace(0, 1, 1001)[:, None], 3, axis=1)
    np.testing.assert_array_equal(srgb_to_l(gray_float), srgb_to_lab(gray_float)[..., 0])
    rgb = data.astronaut()
    np.testing.assert_array_equal(srgb_to_l(rgb), srgb_to_lab(rgb)[..., 0])
    np.testing.assert_allclose(srgb_to_l(gray_codes), rgb2lab(gray_codes)[..., 0], atol=1e-3)
    assert srgb_to_l(gray_codes)[0] == 0.0
    assert abs(srgb_to_l(gray_codes)[-1] - 100.0) < 1e-3


def test_other_layouts_and_dtypes():
    rgb16 = data.coffee().astype(np.uint16) * 257
    np.testing.assert_array_equal(srgb_to_lab(rgb16.astype(">u2")), srgb_to_lab(rgb16))
    np.testing.assert_array_equal(srgb_to_lab(rgb16[:, ::-1]), srgb_to_lab(rgb16)[:, ::-1])
    rgb = _random_rgb(1000, seed=8)
    half = rgb.astype(np.float16)
    np.testing.assert_allclose(srgb_to_lab(half), rgb2lab(half.astype(np.float64)), atol=1e-3)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"\[\.\.\., 3\]"):
        srgb_to_lab(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        srgb_to_lab(np.zeros((4, 4, 3), np.int32))
    with pytest.raises(ValueError, match="dtype"):
        srgb_to_l(np.zeros((4, 4, 3), bool))
    with pytest.raises(ValueError, match="3"):
        lab_to_srgb(np.zeros((4, 4, 4), np.float32))


def test_inputs_are_not_modified():
    rgb = _random_rgb(1000).astype(np.float32)
    before = rgb.copy()
    lab = srgb_to_lab(rgb)
    lab_before = lab.copy()
    lab_to_srgb(lab)
    lab_to_srgb_uint8(lab)
    np.testing.assert_array_equal(rgb, before)
    np.testing.assert_array_equal(lab, lab_before)


# --------------------------------------------------------------------------- torch


def _to_chw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, -3)))


def _to_hwc(x: torch.Tensor) -> np.ndarray:
    return np.moveaxis(x.detach().cpu().numpy(), -3, -1)


def test_torch_matches_numpy():
    crops = [data.astronaut()[:128, :160], data.coffee()[:128, :160]]
    rgb = np.stack(crops).astype(np.float32) / 255
    rgb[0, 0, :9] = _extreme_rgb()[:9]
    lab_t = srgb_to_lab_torch(_to_chw(rgb))
    assert lab_t.shape == (2, 3, 128, 160) and lab_t.dtype == torch.float32
    np.testing.assert_allclose(_to_hwc(lab_t), srgb_to_lab(rgb), atol=5e-4)

    lab = _random_lab((2, 64, 64), seed=7).astype(np.float32)
    rgb_t = lab_to_srgb_torch(_to_chw(lab))
    assert float(rgb_t.min()) >= 0.0 and float(rgb_t.max()) <= 1.0
    np.testing.assert_allclose(_to_hwc(rgb_t), lab_to_srgb(lab), atol=1e-4)


def test_torch_unbatched_and_bad_inputs():
    x = torch.rand(3, 8, 9)
    assert srgb_to_lab_torch(x).shape == (3, 8, 9)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        srgb_to_lab_torch(torch.rand(2, 8, 9, 3))
    with pytest.raises(ValueError, match="floating"):
        lab_to_srgb_torch(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))


def test_torch_gradients_finite_everywhere():
    # Includes exact zeros, ones and branch thresholds, where a naive torch.where leaks NaN.
    special = torch.tensor(_extreme_rgb()[:81], dtype=torch.float32).T.reshape(1, 3, 9, 9)
    rgb = torch.cat([special, torch.rand(1, 3, 9, 9)]).requires_grad_(True)
    lab = srgb_to_lab_torch(rgb)
    lab.square().sum().backward()
    assert torch.isfinite(rgb.grad).all()
    assert rgb.grad.abs().sum() > 0

    edges = torch.tensor(
        [[0.0, 0.0, 0.0], [100.0, 0.0, 0.0], [50.0, 120.0, -120.0], [50.0, -120.0, 120.0],
         [0.0, 0.0, 127.0], [100.0, 127.0, 127.0], [8.0, 0.0, 0.0], [1.0, -5.0, 5.0],
         [100.0, -128.0, -128.0]]
    )
    edge_rows = edges.T.reshape(1, 3, 1, 9).expand(2, 3, 1, 9)
    lab_in = torch.cat([edge_rows, lab.detach()], dim=2)
    lab_in.requires_grad_(True)
    lab_to_srgb_torch(lab_in).sum().backward()
    assert torch.isfinite(lab_in.grad).all()
    assert lab_in.grad.abs().sum() > 0


def test_torch_gradcheck_float64():
    # Away from the piecewise kinks the analytic gradient must be the true one.
    rgb = (0.1 + 0.8 * torch.rand(1, 3, 4, 4, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(srgb_to_lab_torch, (rgb,))
    lab = srgb_to_lab_torch(rgb.detach()).requires_grad_(True)
    assert lab.dtype == torch.float64
    assert torch.autograd.gradcheck(lab_to_srgb_torch, (lab,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_on_cuda_matches_cpu():
    rgb = torch.rand(2, 3, 32, 32)
    lab_cpu = srgb_to_lab_torch(rgb)
    lab_gpu = srgb_to_lab_torch(rgb.cuda())
    assert lab_gpu.device.type == "cuda"
    torch.testing.assert_close(lab_gpu.cpu(), lab_cpu, atol=1e-3, rtol=0)
    rgb_gpu = lab_to_srgb_torch(lab_gpu).cpu()
    torch.testing.assert_close(rgb_gpu, lab_to_srgb_torch(lab_cpu), atol=1e-4, rtol=0)
