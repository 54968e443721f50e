"""Colour management on decode: a source's ICC profile decides its L (colorize_core.icc through imageio). The
profiles are built in tests/iccfixtures.py; LittleCMS (Pillow's ImageCms) is the independent reference."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms

from colorize_core import color, icc, imageio
from tests import iccfixtures


def _lcms(arr: np.ndarray, profile: bytes, mode: str) -> np.ndarray:
    """LittleCMS's 8-bit answer: the source profile to LittleCMS's own sRGB."""
    src = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    dst = ImageCms.ImageCmsProfile(io.BytesIO(icc.srgb_profile_bytes()))
    out = ImageCms.profileToProfile(Image.fromarray(arr, mode), src, dst, outputMode="RGB")
    return np.asarray(out).astype(np.float64)


def _png(pixels: np.ndarray, profile: bytes | None) -> bytes:
    """A gray ([H, W]) or RGB ([H, W, 3]) 8-bit PNG, tagged with ``profile``."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", **({"icc_profile": profile} if profile else {}))
    return buf.getvalue()


def _lab_l(y: np.ndarray) -> np.ndarray:
    """CIE L* of relative luminance (skimage's constants, as colorize_core.color)."""
    return np.where(y > 0.008856, 116 * np.cbrt(y) - 16, 903.3 * y)


RAMP8 = np.tile(np.arange(256, dtype=np.uint8), (4, 1))


@pytest.mark.parametrize("make", [iccfixtures.gray_gamma22, iccfixtures.dot_gain20, iccfixtures.adobe_rgb])
def test_fixture_profiles_are_real_profiles_not_srgb(make):
    data = make()
    assert ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(data))).strip()
    p = icc.parse_profile(data)
    assert p.kind in ("gray-trc", "matrix-trc") and not p.is_srgb


def test_littlecms_srgb_is_recognised_as_srgb():
    assert icc.parse_profile(icc.srgb_profile_bytes()).is_srgb


def test_gray_gamma22_gives_the_profiles_l_not_srgbs():
    data = _png(RAMP8, iccfixtures.gray_gamma22())
    managed = imageio.decode_image(data)
    plain = imageio.decode_image(_png(RAMP8, None))
    assert managed.is_gray and "Gray Gamma 2.2" in managed.colour and "applied" in managed.colour
    assert plain.colour.startswith("no ICC profile")
    l_managed = color.srgb_to_l(managed.rgb)[0]
    l_plain = color.srgb_to_l(plain.rgb)[0]
    expected = _lab_l((np.arange(256) / 255.0) ** 2.2)
    assert np.max(np.abs(l_managed - expected)) < 0.05
    assert np.max(np.abs(l_plain - l_managed)) > 2  # gamma 2.2 shadows are darker than sRGB's (up to 3.3 L)
    # ... and LittleCMS agrees (it works in 8 bits, so within one code)
    assert np.max(np.abs(managed.rgb[0].astype(np.float64) / 257 - _lcms(RAMP8[:1], iccfixtures.gray_gamma22(),
                                                                        "L")[0])) <= 1.05


def test_8bit_gray_in_a_profile_keeps_every_level():
    """Gamma 2.2 -> sRGB merges shadow levels at 8 bits; the decode keeps them all (uint16 out)."""
    managed = imageio.decode_image(_png(RAMP8, iccfixtures.gray_gamma22()))
    assert managed.rgb.dtype == np.uint16 and managed.bit_depth == 8
    assert len(np.unique(managed.rgb[..., 0])) == 256


def test_dot_gain_agrees_with_littlecms():
    data = iccfixtures.dot_gain20()
    managed = imageio.decode_image(_png(RAMP8, data))
    ours = managed.rgb[0].astype(np.float64) / 257
    assert np.max(np.abs(ours - _lcms(RAMP8[:1], data, "L")[0])) <= 1.05
    assert np.max(np.abs(ours[:, 0] - RAMP8[0])) > 10  # and it does change the tones


def test_adobe_rgb_8bit_agrees_with_littlecms_and_changes_l():
    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    managed = imageio.decode_image(_png(px, iccfixtures.adobe_rgb()))
    assert np.max(np.abs(managed.rgb.astype(np.float64) - _lcms(px, iccfixtures.adobe_rgb(), "RGB"))) <= 1
    assert np.mean(np.abs(color.srgb_to_l(managed.rgb) - color.srgb_to_l(px))) > 0.5


def test_16bit_gray_master_in_gamma22_keeps_its_precision():
    levels = np.linspace(0, 65535, 20000).round().astype(np.uint16).reshape(100, 200)
    buf = io.BytesIO()
    tifffile.imwrite(buf, levels, photometric="minisblack", iccprofile=iccfixtures.gray_gamma22())
    managed = imageio.decode_image(buf.getvalue())
    assert managed.rgb.dtype == np.uint16 and managed.bit_depth == 16 and managed.is_gray
    assert "applied" in managed.colour
    expected = _lab_l((levels / 65535.0) ** 2.2)
    assert np.max(np.abs(color.srgb_to_l(managed.rgb) - expected)) < 0.05
    assert len(np.unique(managed.rgb[..., 0])) > 10000


def test_16bit_rgb_adobe_rgb_tiff_matches_littlecms_at_8_bits():
    rng = np.random.default_rng(1)
    px8 = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    tifffile.imwrite(buf, px8.astype(np.uint16) * 257, photometric="rgb", iccprofile=iccfixtures.adobe_rgb())
    managed = imageio.decode_image(buf.getvalue())
    assert managed.rgb.dtype == np.uint16 and "Adobe RGB" in managed.colour
    assert np.max(np.abs(managed.rgb / 257.0 - _lcms(px8, iccfixtures.adobe_rgb(), "RGB"))) <= 1.0


def test_srgb_profile_changes_nothing():
    px = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out = imageio.decode_image(_png(px, icc.srgb_profile_bytes()))
    assert np.array_equal(out.rgb, px) and "is sRGB" in out.colour


@pytest.mark.parametrize("profile, reason", [
    (b"not a profile at all, just some bytes" * 8, "ignored"),
    (iccfixtures.adobe_rgb()[:200], "truncated"),
])
def test_unusable_profile_is_ignored_with_a_reason_and_costs_nothing(profile, reason):
    out = imageio.decode_image(_png(RAMP8, profile))
    assert np.array_equal(out.rgb[..., 0], RAMP8) and out.rgb.dtype == np.uint8
    assert reason in out.colour and "read as sRGB" in out.colour and ";" not in out.colour


def test_gray_profile_on_a_colour_image_is_ignored():
    px = np.random.default_rng(6).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out = imageio.decode_image(_png(px, iccfixtures.gray_gamma22()))
    assert np.array_equal(out.rgb, px) and "GRAY gray-trc profile on an RGB image" in out.colour


def test_gray_image_tagged_with_an_rgb_profile_uses_its_gray_axis():
    """Gray JPEGs tagged sRGB are common (read as they are); in Adobe RGB, R = G = B is gamma 563/256 gray."""
    srgb_tagged = imageio.decode_image(_png(RAMP8, icc.srgb_profile_bytes()))
    assert np.array_equal(srgb_tagged.rgb[..., 0], RAMP8) and "is sRGB" in srgb_tagged.colour
    adobe = imageio.decode_image(_png(RAMP8, iccfixtures.adobe_rgb()))
    assert adobe.is_gray and "applied" in adobe.colour
    expected = _lab_l((np.arange(256) / 255.0) ** iccfixtures.ADOBE_RGB_GAMMA)
    assert np.max(np.abs(color.srgb_to_l(adobe.rgb)[0] - expected)) < 0.1


def test_parse_profile_reasons_are_one_line():
    with pytest.raises(icc.ProfileError) as err:
        icc.parse_profile(b"\0" * 200)
    assert "\n" not in str(err.value) and "acsp" in str(err.value)


@pytest.mark.parametrize("mode, make", [("L", iccfixtures.dot_gain20), ("RGB", iccfixtures.adobe_rgb)])
def test_the_models_reduced_decode_applies_the_profile_as_the_full_decode(mode, make):
    """render.decode_reduced (the model's L, JPEG draft mode) manages colour as imageio.decode_image does, so the
    model and the compose see the same L."""
    from colorize_core import render
    from colorize_core.models.preprocess import Preprocessing

    rng = np.random.default_rng(0)
    base = np.repeat(np.repeat(rng.integers(0, 256, (8, 12), dtype=np.uint8), 32, 0), 32, 1)  # 256x384, in blocks
    pixels = base if mode == "L" else np.stack([base, base[::-1], base[:, ::-1]], -1)
    pre = Preprocessing((32, 32))
    ls = {}
    for tagged in (True, False):
        buf = io.BytesIO()
        Image.fromarray(pixels, mode).save(buf, "JPEG", quality=95, **({"icc_profile": make()} if tagged else {}))
        reduced, _ = render.decode_reduced(buf.getvalue(), pre.input_size, imageio.DEFAULT_MAX_PIXELS)
        ls[tagged] = pre.model_l(reduced), pre.model_l(imageio.decode_image(buf.getvalue()).rgb)
    # DCT-scaled vs full decode: with the profile as close as without it (what draft mode costs anyway).
    draft = {t: float(np.abs(ls[t][0] - ls[t][1]).mean()) for t in ls}
    assert draft[True] < 1.5 * draft[False] + 0.2, draft
    assert np.abs(ls[True][0] - ls[False][0]).mean() > 2 * draft[True], draft  # the profile changes the L
