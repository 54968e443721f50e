"""A tiny "awkward corpus": the file kinds archives really contain, plus broken ones.

Built in memory, deterministically, each image <= 64x48, so any test can use it
(the imageio unit tests, and the job's bad-input tests that write it out as a
manifest). `awkward_corpus()` maps a file name (its extension is the real
format) to ``(bytes, expected_ok)``.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
import tifffile
from PIL import Image

W, H = 64, 48


def png_chunk(tag: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(tag + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", crc)


_ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def png16(arr: np.ndarray, *, exif: bytes | None = None, interlace: bool = False) -> bytes:
    """Write a 16-bit PNG ([H, W] gray, or [H, W, 2|3|4]); Pillow cannot write 16-bit colour."""
    arr = np.asarray(arr).astype(">u2")
    if arr.ndim == 2:
        arr = arr[..., None]
    h, w, c = arr.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]

    def scanlines(a: np.ndarray) -> bytes:  # filter type 0 on every row
        return b"".join(b"\x00" + row.tobytes() for row in a)

    if interlace:
        passes = (arr[y0::dy, x0::dx] for x0, y0, dx, dy in _ADAM7)
        raw = b"".join(scanlines(p) for p in passes if p.size)
    else:
        raw = scanlines(arr)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, int(interlace))
    out = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
    if exif is not None:
        out += png_chunk(b"eXIf", exif)
    return out + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b"")


def png_header_only(width: int, height: int) -> bytes:
    """A valid-looking 8-bit gray PNG that declares any size but holds one tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00\x00"))
        + png_chunk(b"IEND", b"")
    )


def save(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def tiff(arr: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kwargs)
    return buf.getvalue()


def color_u8() -> np.ndarray:
    """Smooth colour ramp [H, W, 3] uint8 (smooth, so JPEG keeps it recognisable)."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([x * 255 // (W - 1), y * 255 // (H - 1), (x + y) * 255 // (W + H - 2)], -1).astype(np.uint8)


def gray_u8() -> np.ndarray:
    return color_u8()[..., 0].copy()


def color_u16() -> np.ndarray:
    """Colour [H, W, 3] uint16 whose low bytes matter (not a scaled 8-bit image)."""
    return (np.random.default_rng(16).integers(0, 65536, size=(H, W, 3))).astype(np.uint16)


def gray_u16() -> np.ndarray:
    return color_u16()[..., 1].copy()


@functools.cache
def _build() -> tuple[tuple[str, bytes, bool], ...]:
    rgb, gray = color_u8(), gray_u8()
    im_rgb, im_l = Image.fromarray(rgb), Image.fromarray(gray)
    alpha = np.tile(np.linspace(0, 255, W).astype(np.uint8), (H, 1))
    rgba = Image.fromarray(np.dstack([rgb, alpha]))
    palette = im_rgb.quantize(16)
    palette_trns = palette.copy()
    palette_trns.info["transparency"] = 0
    frames = [im_rgb.quantize(16), Image.fromarray(255 - rgb).quantize(16)]
    animated = save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    multipage = save(im_rgb, "TIFF", save_all=True, append_images=[im_l.convert("RGB")])
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb16 = color_u16()
    rgba16 = np.dstack([rgb16, np.full((H, W, 1), 40000, np.uint16)])
    jpeg = save(im_rgb, "JPEG", quality=90)
    png = save(im_rgb, "PNG")

    entries = [
        # 1-bit, 8-bit and 16-bit grayscale
        ("gray_1bit.png", save(im_l.convert("1"), "PNG"), True),
        ("gray_1bit_g4.tiff", save(im_l.convert("1"), "TIFF", compression="group4"), True),
        ("gray_l.png", save(im_l, "PNG"), True),
        ("gray_l.jpg", save(im_l, "JPEG"), True),
        ("gray16.png", png16(gray_u16()), True),
        ("gray16_le.tiff", save(Image.fromarray(gray_u16()), "TIFF"), True),
        ("gray16_be.tiff", tiff(gray_u16(), byteorder=">"), True),
        ("gray16_i32.tiff", save(Image.fromarray(gray_u16().astype(np.int32)), "TIFF"), True),
        ("gray_la.png", save(Image.fromarray(np.dstack([gray, alpha])), "PNG"), True),
        # 8-bit colour in every container
        ("rgb.png", png, True),
        ("rgb.jpg", jpeg, True),
        ("rgb_progressive.jpg", save(im_rgb, "JPEG", quality=90, progressive=True), True),
        ("rgb_exif_rot6.jpg", save(im_rgb, "JPEG", quality=90, exif=exif), True),
        ("rgb.bmp", save(im_rgb, "BMP"), True),
        ("rgb.webp", save(im_rgb, "WEBP", quality=90), True),
        ("rgb_lzw.tiff", save(im_rgb, "TIFF", compression="tiff_lzw"), True),
        ("rgb_multipage.tiff", multipage, True),
        ("rgba.png", save(rgba, "PNG"), True),
        ("rgba.webp", save(rgba, "WEBP", lossless=True), True),
        ("palette.png", save(palette, "PNG"), True),
        ("palette_trns.png", save(palette_trns, "PNG", transparency=0), True),
        ("palette.gif", save(palette, "GIF"), True),
        ("animated.gif", animated, True),
        ("cmyk.jpg", save(im_rgb.convert("CMYK"), "JPEG", quality=90), True),
        ("cmyk.tiff", save(im_rgb.convert("CMYK"), "TIFF"), True),
        ("ycbcr.tiff", save(im_rgb.convert("YCbCr"), "TIFF"), True),
        # 16-bit colour
        ("rgb16.png", png16(rgb16), True),
        ("rgb16_interlaced.png", png16(rgb16, interlace=True), True),
        ("rgba16.png", png16(rgba16), True),
        ("rgb16.tiff", tiff(rgb16, photometric="rgb"), True),
        ("rgb16_deflate.tiff", tiff(rgb16, photometric="rgb", compression="zlib"), True),
        ("rgb16_planar.tiff", tiff(np.moveaxis(rgb16, -1, 0), photometric="rgb", planarconfig="separate"), True),
        # broken
        ("empty.jpg", b"", False),
        ("random.jpg", np.random.default_rng(0).integers(0, 256, 2048, dtype=np.uint8).tobytes(), False),
        ("notes.txt", b"Box 12, folder 3: photographs of the harbour, 1921.\n" * 20, False),
        ("scan.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n", False),
        ("page.html", b"<!DOCTYPE html><html><body>404 Not Found</body></html>", False),
        ("truncated.jpg", jpeg[: len(jpeg) // 2], False),
        ("truncated.png", png[: len(png) // 2], False),
        ("header_only.png", png[:20], False),
        ("bomb.png", png_header_only(100_000, 100_000), False),
    ]
    return tuple(entries)


def awkward_corpus() -> dict[str, tuple[bytes, bool]]:
    """name -> (file bytes, whether decode should succeed). A fresh dict per call."""
    return {name: (data, ok) for name, data, ok in _build()}


# --------------------------------------------------------------------------- hostile corpus
# Files a hostile or careless archive holds, each with what decoding must say: None = decodes fine, else a
# fragment of the one-line reason. Kept apart from `awkward_corpus` (whose good entries are all W x H).

EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
       b"newpath 0 0 moveto 8 8 lineto stroke showpage\n%%EOF\n")
SVG = (b'<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8">'
       b'<rect width="8" height="8" fill="red"/></svg>\n')


def _jpeg_with_size(width: int, height: int) -> bytes:
    """A real JPEG whose SOF0 header is rewritten to claim ``width`` x ``height`` (a decompression bomb)."""
    data = bytearray(save(Image.fromarray(gray_u8()), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5: sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _gif_with_size(width: int, height: int) -> bytes:
    data = bytearray(save(Image.fromarray(gray_u8()).quantize(4), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def _bad_crc_png() -> bytes:
    data = bytearray(save(Image.fromarray(color_u8()), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 8] ^= 0xFF  # a byte inside the compressed data: the chunk's CRC no longer matches
    return bytes(data)


def _exif_jpeg(exif: bytes) -> bytes:
    return save(Image.fromarray(color_u8()), "JPEG", quality=90, exif=exif)


@functools.cache
def _hostile() -> tuple[tuple[str, bytes, str | None], ...]:
    rgb = color_u8()
    big_exif = Image.Exif()
    big_exif[0x010E] = "x" * 60_000  # ImageDescription: near the 64 KiB APP1 limit
    odd_exif = Image.Exif()
    odd_exif[0x0112] = 9  # an Orientation value that does not exist
    float_tiff = save(Image.fromarray(np.linspace(0, 1, W * H, dtype=np.float32).reshape(H, W), mode="F"), "TIFF")
    entries: list[tuple[str, bytes, str | None]] = [
        ("tiny_1x1.png", save(Image.fromarray(rgb[:1, :1]), "PNG"), None),
        ("long_20000x2.png", save(Image.fromarray(np.tile(rgb[:2, :1], (1, 20000, 1))), "PNG"), None),
        ("huge_exif.jpg", _exif_jpeg(big_exif.tobytes()), None),
        ("odd_exif_orientation.jpg", _exif_jpeg(odd_exif.tobytes()), None),
        ("garbage_exif.jpg", _exif_jpeg(b"Exif\x00\x00" + b"\xde\xad\xbe\xef" * 64), None),
        ("rgb.jp2", save(Image.fromarray(rgb), "JPEG2000"), None),
        ("rgb.ppm", save(Image.fromarray(rgb), "PPM"), None),
        ("eps.jpg", EPS, "Ghostscript"),
        ("dos_eps.eps", b"\xc5\xd0\xd3\xc6" + struct.pack("<6I", 30, len(EPS), 0, 0, 0, 0) + b"\xff\xff" + EPS,
         "Ghostscript"),
        ("svg.jpg", SVG, "SVG"),
        ("bare_svg.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><circle r="4"/></svg>', "SVG"),
        ("pdf_named.jpg", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n", "PDF"),
        ("html_named.jpg", b"<html><head><title>Access denied</title></head></html>", "HTML"),
        ("text_named.png", b"image not scanned yet\n", "text file"),
        ("zero_bytes.png", b"", "empty file"),
        ("bad_crc.png", _bad_crc_png(), "truncated"),
        ("jpeg_magic_then_noise.jpg", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "JPEG"),
        ("jpeg_bomb.jpg", _jpeg_with_size(65_000, 65_000), "too large"),
        ("gif_bomb.gif", _gif_with_size(65_535, 65_535), "too large"),
        ("png_bomb.png", png_header_only(200_000, 200_000), "too large"),
        ("tiff_float.tiff", float_tiff, "floating-point"),
        ("photoshop.psd", b"8BPS\x00\x01" + bytes(40), "PSD"),
        ("icon.ico", b"\x00\x00\x01\x00\x01\x00" + bytes(40), "ICO"),
    ]
    return tuple(entries)


def hostile_corpus() -> dict[str, tuple[bytes, str | None]]:
    """name -> (file bytes, None if it decodes, else a fragment of its reason). A fresh dict per call."""
    return {name: (data, reason) for name, data, reason in _hostile()}
