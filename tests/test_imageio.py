"""Decode/encode behaviour on the awkward corpus (tests/corpus.py). No Ray."""

from __future__ import annotations

import dataclasses
import io
import logging
import pickle
import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageFile, ImageOps, JpegImagePlugin

from colorize_core import imageio
from colorize_core.imageio import (
    DEFAULT_MAX_PIXELS,
    FORMAT_EXTENSIONS,
    DecodedImage,
    ImageDecodeError,
    decode_image,
    encode_image,
    to_float01,
)
from tests import corpus
from tests.corpus import H, W, awkward_corpus, color_u8, color_u16, gray_u8, gray_u16, png16, save, tiff

CORPUS = awkward_corpus()
GOOD = sorted(name for name, (_, ok) in CORPUS.items() if ok)
BAD = sorted(name for name, (_, ok) in CORPUS.items() if not ok)


def decode(name: str, **kwargs) -> DecodedImage:
    return decode_image(CORPUS[name][0], **kwargs)


def assert_short_reason(err: ImageDecodeError) -> None:
    msg = str(err)
    assert msg and "\n" not in msg and len(msg) < 200, msg
    assert "Traceback" not in msg


def over_white(color, alpha, maxval):
    c, a = color.astype(np.float64), alpha.astype(np.float64)[..., None]
    return np.round((c * a + maxval * (maxval - a)) / maxval).astype(color.dtype)


# ----------------------------------------------------------------------------- corpus


def test_corpus_is_tiny_and_has_broken_entries():
    assert len(BAD) >= 5
    assert sum(len(data) for data, _ in CORPUS.values()) < 1_000_000
    assert awkward_corpus() is not awkward_corpus()  # callers may mutate their copy


@pytest.mark.parametrize("name", GOOD)
def test_good_files_decode_to_contiguous_rgb(name):
    img = decode(name)
    assert img.rgb.ndim == 3 and img.rgb.shape[2] == 3
    assert img.rgb.flags.c_contiguous
    assert img.rgb.dtype == (np.uint16 if "16" in name else np.uint8)
    expected_hw = (W, H) if "rot6" in name else (H, W)
    assert (img.height, img.width) == expected_hw == img.rgb.shape[:2]
    assert img.source_format in {"PNG", "JPEG", "TIFF", "BMP", "WEBP", "GIF"}
    assert img.is_gray == name.startswith("gray")


@pytest.mark.parametrize("name", BAD)
def test_broken_files_raise_short_decode_error(name):
    with pytest.raises(ImageDecodeError) as info:
        decode(name)
    assert_short_reason(info.value)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("empty.jpg", "empty file (0 bytes)"),
        ("random.jpg", "not an image (unrecognised bytes)"),
        ("notes.txt", "not an image (text file)"),
        ("scan.pdf", "not an image (PDF document)"),
        ("page.html", "not an image (HTML/XML text)"),
        ("truncated.jpg", "truncated image data"),
        ("truncated.png", "truncated image data"),
        ("bomb.png", "image too large: 100000x100000 = 10000000000 pixels > max_pixels 100000000"),
    ],
)
def test_broken_file_reasons(name, reason):
    with pytest.raises(ImageDecodeError, match="^" + reason.replace("(", r"\(").replace(")", r"\)") + "$"):
        decode(name)


# ----------------------------------------------------------------------------- pixel values


@pytest.mark.parametrize("name", ["gray16.png", "gray16_le.tiff", "gray16_be.tiff", "gray16_i32.tiff"])
def test_16bit_gray_keeps_every_bit(name):
    img = decode(name)
    assert img.rgb.dtype == np.uint16 and img.is_gray
    for k in range(3):
        np.testing.assert_array_equal(img.rgb[..., k], gray_u16())


@pytest.mark.parametrize(
    "name", ["rgb16.png", "rgb16_interlaced.png", "rgb16.tiff", "rgb16_deflate.tiff", "rgb16_planar.tiff"]
)
def test_16bit_rgb_keeps_every_bit(name):
    img = decode(name)
    assert img.source_mode == "RGB;16" and not img.is_gray
    np.testing.assert_array_equal(img.rgb, color_u16())


def test_16bit_rgba_png_composited_over_white_in_16_bits():
    img = decode("rgba16.png")
    assert img.source_mode == "RGBA;16"
    np.testing.assert_array_equal(img.rgb, over_white(color_u16(), np.full((H, W), 40000, np.uint16), 65535))


def test_16bit_tiff_alpha_and_extra_samples():
    rgb, alpha = color_u16(), np.full((H, W), 40000, np.uint16)
    straight = tiff(np.dstack([rgb, alpha]), photometric="rgb", extrasamples=["unassalpha"])
    np.testing.assert_array_equal(decode_image(straight).rgb, over_white(rgb, alpha, 65535))
    premultiplied = (rgb.astype(np.uint64) * 40000 // 65535).astype(np.uint16)
    assoc = tiff(np.dstack([premultiplied, alpha]), photometric="rgb", extrasamples=["assocalpha"])
    np.testing.assert_array_equal(decode_image(assoc).rgb, premultiplied + (65535 - 40000))
    two_extra = tiff(np.dstack([rgb, rgb[..., :2]]), photometric="rgb", extrasamples=["unspecified"] * 2)
    img = decode_image(two_extra)  # Pillow refuses this layout; tifffile reads it
    assert img.source_mode == "RGB;16"
    np.testing.assert_array_equal(img.rgb, rgb)


def test_16bit_tiff_falls_back_to_pillow_when_tifffile_lacks_a_codec(monkeypatch):
    def no_codec(*_args):
        raise KeyError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")

    monkeypatch.setattr(imageio, "_decode_tiff16", no_codec)
    for name in ["rgb16.tiff", "rgb16_deflate.tiff"]:  # raw and libtiff Pillow decoders
        np.testing.assert_array_equal(decode(name).rgb, color_u16())
    tiled = tiff(color_u16(), photometric="rgb", tile=(16, 16), compression="zlib")
    np.testing.assert_array_equal(decode_image(tiled).rgb, color_u16())
    # Pillow cannot give planar 16-bit exactly: an error beats silently narrowed pixels.
    with pytest.raises(ImageDecodeError, match="cannot decode 16-bit RGB TIFF with tifffile .*imagecodecs") as info:
        decode("rgb16_planar.tiff")
    assert_short_reason(info.value)


@pytest.mark.parametrize(
    "name", ["rgb.png", "rgb.bmp", "rgb_lzw.tiff", "rgb_multipage.tiff", "cmyk.tiff", "rgba.webp"]
)
def test_lossless_colour_exact(name):
    expected = color_u8()
    if name == "rgba.webp":
        alpha = np.tile(np.linspace(0, 255, W).astype(np.uint8), (H, 1))
        expected = over_white(color_u8(), alpha, 255)
    np.testing.assert_array_equal(decode(name).rgb, expected)


@pytest.mark.parametrize(
    ("name", "tol"),
    [("rgb.jpg", 3), ("rgb_progressive.jpg", 3), ("cmyk.jpg", 3), ("ycbcr.tiff", 2), ("rgb.webp", 4)],
)
def test_lossy_colour_close(name, tol):
    diff = np.abs(decode(name).rgb.astype(int) - color_u8().astype(int))
    assert diff.mean() < tol, (name, diff.mean())


def test_gray_8bit_and_1bit():
    np.testing.assert_array_equal(decode("gray_l.png").rgb, np.dstack([gray_u8()] * 3))
    assert decode("gray_l.jpg").is_gray
    bilevel = decode("gray_1bit.png")
    assert bilevel.source_mode == "1" and set(np.unique(bilevel.rgb)) <= {0, 255}
    np.testing.assert_array_equal(decode("gray_1bit_g4.tiff").rgb, bilevel.rgb)


def test_alpha_composited_over_white():
    alpha = np.tile(np.linspace(0, 255, W).astype(np.uint8), (H, 1))
    rgba = decode("rgba.png")
    np.testing.assert_array_equal(rgba.rgb, over_white(color_u8(), alpha, 255))
    assert (rgba.rgb[:, 0] == 255).all()  # alpha 0 -> paper white, not black
    la = decode("gray_la.png")
    np.testing.assert_array_equal(la.rgb[..., 0], over_white(gray_u8()[..., None], alpha, 255)[..., 0])


def test_palette_with_and_without_transparency():
    palette = Image.fromarray(color_u8()).quantize(16)
    indices = np.asarray(palette)
    plain = np.asarray(palette.convert("RGB"))
    np.testing.assert_array_equal(decode("palette.png").rgb, plain)
    np.testing.assert_array_equal(decode("palette.gif").rgb, plain)
    trns = decode("palette_trns.png").rgb
    assert (trns[indices == 0] == 255).all()
    np.testing.assert_array_equal(trns[indices != 0], plain[indices != 0])


def test_animated_gif_yields_first_frame():
    rgb = decode("animated.gif").rgb.astype(int)
    assert np.abs(rgb - color_u8()).mean() < np.abs(rgb - (255 - color_u8())).mean()


def test_is_gray_checks_every_pixel_of_rgb():
    gray_rgb = np.dstack([gray_u8()] * 3)
    img = decode_image(save(Image.fromarray(gray_rgb), "PNG"))
    assert img.source_mode == "RGB" and img.is_gray
    gray_rgb[H - 1, W - 1, 2] ^= 1  # one pixel, away from the sampled rows
    assert not decode_image(save(Image.fromarray(gray_rgb), "PNG")).is_gray


# ----------------------------------------------------------------------------- orientation

# Stored pixels for each EXIF orientation, from the EXIF spec (not from Pillow):
# the file stores `stored(display)`; the viewer must show `display`.
STORED = {
    1: lambda d: d,
    2: lambda d: d[:, ::-1],  # mirrored horizontally
    3: lambda d: d[::-1, ::-1],  # rotated 180
    4: lambda d: d[::-1],  # mirrored vertically
    5: lambda d: d.swapaxes(0, 1),  # mirrored + rotated: transpose
    6: lambda d: np.rot90(d, 1),  # display = stored rotated 90 CW
    7: lambda d: d[::-1, ::-1].swapaxes(0, 1),  # transverse
    8: lambda d: np.rot90(d, -1),  # display = stored rotated 90 CCW
}


def display_with_markers(dtype=np.uint8) -> np.ndarray:
    """Gray page (H x W) with a red block top-left and a blue block top-right."""
    top = np.iinfo(dtype).max
    d = np.full((H, W, 3), top // 2, dtype)
    d[:12, :12] = (top, 0, 0)
    d[:12, -12:] = (0, 0, top)
    return d


def exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_jpeg(orientation):
    stored = np.ascontiguousarray(STORED[orientation](display_with_markers()))
    data = save(Image.fromarray(stored), "JPEG", quality=95, exif=exif_bytes(orientation))
    img = decode_image(data)
    assert img.rgb.shape == (H, W, 3)
    red, blue = img.rgb[6, 6].astype(int), img.rgb[6, W - 7].astype(int)
    assert red[0] > 200 and red[2] < 60, red
    assert blue[2] > 200 and blue[0] < 60, blue


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_16bit_png_exact(orientation):
    display = display_with_markers(np.uint16)
    display[20:, :] = color_u16()[20:, :]  # low bytes must survive the transposes too
    stored = STORED[orientation](display)
    img = decode_image(png16(stored, exif=exif_bytes(orientation)[6:]))  # eXIf holds no "Exif\0\0"
    np.testing.assert_array_equal(img.rgb, display)


def test_exif_orientation_16bit_tiff():
    display = color_u16()
    data = tiff(np.ascontiguousarray(STORED[6](display)), photometric="rgb", extratags=[(274, "H", 1, 6, False)])
    np.testing.assert_array_equal(decode_image(data).rgb, display)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_numpy_orientation_matches_pillow(orientation):
    """The 16-bit path orients in numpy; it must agree with ImageOps.exif_transpose."""
    stored = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    im = Image.open(io.BytesIO(save(Image.fromarray(stored), "PNG", exif=exif_bytes(orientation))))
    np.testing.assert_array_equal(imageio._orient(stored, orientation), np.asarray(ImageOps.exif_transpose(im)))


def test_corrupt_exif_keeps_pixels():
    data = save(Image.fromarray(color_u8()), "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff\x01\x12")
    assert decode_image(data).rgb.shape == (H, W, 3)


# ----------------------------------------------------------------------------- size guard


def test_max_pixels_is_checked_per_call():
    data = CORPUS["rgb.png"][0]
    assert decode_image(data, max_pixels=W * H).width == W
    with pytest.raises(ImageDecodeError, match=f"^image too large: 64x48 = {W * H} pixels > max_pixels {W * H - 1}$"):
        decode_image(data, max_pixels=W * H - 1)
    assert DEFAULT_MAX_PIXELS == 100_000_000


def test_size_is_checked_before_pixels_are_decoded(monkeypatch):
    def no_pixels(*_args, **_kwargs):
        raise AssertionError("pixels decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_pixels)
    monkeypatch.setattr(tifffile.TiffPage, "asarray", no_pixels)
    for name in ["rgb.jpg", "rgb16.png", "rgb16.tiff", "gray16.png", "bomb.png"]:
        with pytest.raises(ImageDecodeError, match="image too large"):
            decode(name, max_pixels=100)


def test_bomb_with_a_large_per_call_limit_fails_as_data_not_as_pillow_bomb():
    # 1e10 pixels allowed by the caller: Pillow's guard (off) must not interfere;
    # the tiny IDAT then fails as truncated data, still a short ImageDecodeError.
    with pytest.raises(ImageDecodeError) as info:
        decode_image(corpus.png_header_only(100, 100), max_pixels=10**10)
    assert_short_reason(info.value)


def test_pillow_guard_is_off_and_cannot_escape_if_turned_back_on(monkeypatch):
    assert Image.MAX_IMAGE_PIXELS is None  # set once at import, by design
    data = CORPUS["rgb.png"][0]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 3072 px > 2x: DecompressionBombError
    with pytest.raises(ImageDecodeError, match="too large") as info:
        decode_image(data)
    assert_short_reason(info.value)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # between 1x and 2x: a warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert decode_image(data).width == W
    assert not caught


@pytest.mark.parametrize("width,height", [(0, 10), (10, 0)])
def test_zero_size_dimensions(width, height):
    with pytest.raises(ImageDecodeError) as info:
        decode_image(corpus.png_header_only(width, height))
    assert_short_reason(info.value)


# ----------------------------------------------------------------------------- robustness


def mutations(data: bytes, rng: np.random.Generator):
    for frac in (0.05, 0.2, 0.5, 0.8, 0.95, 0.99):
        yield data[: max(1, int(len(data) * frac))]
    for _ in range(6):
        b = bytearray(data)
        for pos in rng.integers(0, len(b), size=4):
            b[pos] ^= int(rng.integers(1, 256))
        yield bytes(b)


@pytest.mark.parametrize("name", GOOD)
def test_damaged_files_never_raise_anything_else(name):
    rng = np.random.default_rng(len(name))
    for bad in mutations(CORPUS[name][0], rng):
        try:
            img = decode_image(bad)
        except ImageDecodeError as err:
            assert_short_reason(err)
        else:  # some damage is invisible to the decoder (e.g. in JPEG entropy data)
            assert img.rgb.ndim == 3 and img.rgb.shape[2] == 3


def test_pillow_warnings_do_not_leak():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("error")  # a warning would now be an exception
        for name in GOOD:
            decode(name)
    assert not caught


def test_tifffile_complaints_about_a_bad_file_are_not_logged(caplog):
    data = bytearray(CORPUS["rgb16.tiff"][0])
    data[-200:] = b""  # strips point past the end
    data[100:140] = bytes(40)  # and some tags are zeroed
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(ImageDecodeError):
            decode_image(bytes(data))
        assert not [r for r in caplog.records if r.name.startswith("tifffile")]
        logging.getLogger("tifffile").warning("outside decode_image")  # others still log
        assert [r.getMessage() for r in caplog.records if r.name == "tifffile"] == ["outside decode_image"]


def test_argument_errors_are_not_decode_errors():
    with pytest.raises(TypeError):
        decode_image("photo.jpg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_pixels"):
        decode_image(CORPUS["rgb.png"][0], max_pixels=0)
    assert decode_image(bytearray(CORPUS["rgb.png"][0])).width == W


def test_decode_error_is_one_line_value_error_that_pickles():
    err = ImageDecodeError("first line\n  second line\n" + "x" * 500)
    assert isinstance(err, ValueError)
    assert str(err).startswith("first line second line x") and len(str(err)) < 200
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is ImageDecodeError and str(again) == str(err)


def test_decoded_image_is_frozen_and_pickles():
    img = decode("rgb.png")
    with pytest.raises(dataclasses.FrozenInstanceError):
        img.is_gray = True  # type: ignore[misc]
    again = pickle.loads(pickle.dumps(img))
    np.testing.assert_array_equal(again.rgb, img.rgb)
    assert (again.source_mode, again.source_format, again.is_gray) == ("RGB", "PNG", False)


# ----------------------------------------------------------------------------- float / encode


def test_to_float01():
    u8 = np.array([[[0, 128, 255]]], np.uint8)
    u16 = np.array([[[0, 32768, 65535]]], np.uint16)
    for arr in (u8, u16):
        out = to_float01(arr)
        assert out.dtype == np.float32 and out.shape == arr.shape
        assert out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_allclose(to_float01(u8)[0, 0, 1], 128 / 255, rtol=1e-6)
    with pytest.raises(ValueError, match="uint8 or uint16"):
        to_float01(u8.astype(np.float32))


@pytest.mark.parametrize("fmt", ["jpeg", "jpg", "JPEG", "png", "PNG", "webp", "WebP", "tiff", "tif"])
def test_encode_round_trip_keeps_geometry(fmt):
    rgb = color_u8()
    img = decode_image(encode_image(rgb, fmt))
    assert img.rgb.shape == rgb.shape and img.rgb.dtype == np.uint8
    assert np.abs(img.rgb.astype(int) - rgb).mean() < 3
    if fmt.lower() in ("png", "tiff", "tif"):
        np.testing.assert_array_equal(img.rgb, rgb)


def _master16() -> np.ndarray:
    """16-bit colour with structure in every bit: gradients in the high bits, noise in the low ones."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:123, 0:217]
    base = np.stack([x * 300, y * 530, (x + y) * 190], axis=-1)
    return ((base + rng.integers(0, 256, base.shape)) % 65536).astype(np.uint16)


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_16bit_masters_round_trip_exactly(fmt):
    rgb = _master16()
    data = encode_image(rgb, fmt)
    img = decode_image(data)
    assert img.rgb.dtype == np.uint16 and img.bit_depth == 16
    np.testing.assert_array_equal(img.rgb, rgb)
    if fmt == "tiff":
        page = tifffile.TiffFile(io.BytesIO(data)).pages[0]
        assert page.compression == 8 and page.predictor == 2 and page.bitspersample == 16  # deflate, differencing
    else:
        assert Image.open(io.BytesIO(data)).mode == "RGB" and data[24:26] == bytes([16, 2])  # IHDR depth, colour


def test_16bit_png_uses_every_filter_where_it_pays():
    """The adaptive filter choice decodes exactly whatever it picked (rows of flat, ramp and noise)."""
    rgb = np.zeros((40, 300, 3), np.uint16)
    rgb[10:20] = np.arange(300, dtype=np.uint16)[None, :, None] * 200
    rgb[20:30] = np.random.default_rng(4).integers(0, 65536, (10, 300, 3), dtype=np.uint16)
    rgb[30:] = np.arange(10, dtype=np.uint16)[:, None, None] * 6000
    np.testing.assert_array_equal(decode_image(encode_image(rgb, "png")).rgb, rgb)


def test_16bit_lightness_keeps_the_masters_tonal_precision():
    """A 16-bit gray master with far more than 256 levels, given colour at 16 bits, keeps its levels and its L
    within 0.5 L units; the same colour at 8 bits keeps far fewer."""
    from colorize_core import color

    gray = np.linspace(0, 65535, 120 * 160).round().astype(np.uint16).reshape(120, 160)
    master_l = color.srgb_to_l(np.repeat(gray[..., None], 3, axis=2))
    lab = np.stack([master_l, np.full_like(master_l, 6.0), np.full_like(master_l, 9.0)], axis=-1)
    colour = color.lab_to_srgb(lab)  # a warm tint, unclipped where in gamut
    in_gamut = np.all((colour > 1e-3) & (colour < 1 - 1e-3), axis=-1)  # lab_to_srgb clips the rest
    assert in_gamut.mean() > 0.8
    for fmt in ("png", "tiff"):
        out = decode_image(encode_image(np.rint(colour * 65535).astype(np.uint16), fmt)).rgb
        out_l = color.srgb_to_l(out)
        assert np.max(np.abs(out_l - master_l)[in_gamut]) < 0.5
        assert len(np.unique(np.round(out_l, 3))) > 5000
    eight_l = color.srgb_to_l(np.rint(colour * 255).astype(np.uint8))  # what an 8-bit output keeps
    assert len(np.unique(np.round(eight_l, 3))) < 1000


def test_output_depth_follows_source_and_format():
    assert imageio.output_depth("auto", 16, "png") == 16 and imageio.output_depth("auto", 16, "tiff") == 16
    assert imageio.output_depth("auto", 16, "jpeg") == 8 and imageio.output_depth("auto", 8, "png") == 8
    assert imageio.output_depth("8", 16, "tiff") == 8 and imageio.output_depth(16, 8, "png") == 16
    with pytest.raises(ValueError, match="png or tiff"):
        imageio.output_depth("16", 16, "webp")
    with pytest.raises(ValueError, match="auto, 8, 16"):
        imageio.output_depth("12", 16, "png")


def test_encode_options():
    rgb = color_u8()
    jpeg = Image.open(io.BytesIO(encode_image(rgb, "jpeg", quality=90)))
    assert jpeg.format == "JPEG" and JpegImagePlugin.get_sampling(jpeg) == 0  # 4:4:4
    assert len(encode_image(rgb, "jpeg", quality=30)) < len(encode_image(rgb, "jpeg", quality=95))
    np.testing.assert_array_equal(decode_image(encode_image(rgb, "webp", quality=100)).rgb, rgb)  # lossless
    assert FORMAT_EXTENSIONS == {"jpeg": "jpg", "png": "png", "webp": "webp", "tiff": "tif"}


@pytest.mark.parametrize(
    ("rgb", "fmt", "kwargs"),
    [
        (color_u8(), "gif", {}),
        (color_u16(), "jpeg", {}),
        (color_u16(), "webp", {}),
        (color_u16().astype(np.int32), "png", {}),
        (gray_u8(), "png", {}),
        (color_u8(), "jpeg", {"quality": 0}),
        (color_u8()[:0], "png", {}),
    ],
)
def test_encode_rejects_bad_input(rgb, fmt, kwargs):
    with pytest.raises(ValueError):
        encode_image(rgb, fmt, **kwargs)


def test_corpus_round_trips_through_files(tmp_path):
    """Shape of the job's use: corpus written as files, read back as bytes."""
    for name, (data, ok) in CORPUS.items():
        (tmp_path / name).write_bytes(data)
    results = {}
    for path in sorted(tmp_path.iterdir()):
        try:
            decode_image(path.read_bytes())
            results[path.name] = True
        except ImageDecodeError:
            results[path.name] = False
    assert results == {name: ok for name, (_, ok) in CORPUS.items()}

