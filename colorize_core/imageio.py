"""Decode whatever an archive holds into one RGB array; encode results.

Decoding never lets a bad file escape as anything but `ImageDecodeError` with a
one-line reason, because the job stores `str(err)` in the row's error column
(a bad image is a row, not a crash).

Decisions worth knowing:

* **Alpha** (RGBA, LA, PA, P or L/RGB with a tRNS colour key) is composited over
  WHITE: transparent regions of archive scans are cut-outs on paper, and black
  would read as ink to a colorizer.
* **16-bit** sources keep their precision: ``rgb`` is uint16 for 16-bit
  grayscale (Pillow's ``I;16*`` modes, or mode ``I`` whose values fit in 16
  bits) and 16-bit RGB(A). Pillow narrows 16-bit RGB(A) to 8 bits when it
  decodes, so for those:

  - TIFF is read with ``tifffile`` (exact; also reads planar files, which
    Pillow misreads, and extra-sample layouts Pillow refuses). Without
    ``imagecodecs`` tifffile lacks LZW/PackBits/JPEG; when it fails we use the
    PNG trick below through Pillow's libtiff (contiguous samples only; planar
    files then fail with a reason that names tifffile's error).
  - PNG (and the TIFF fallback) is decoded by Pillow twice with byte-swapped
    raw modes (``RGB;16B`` then ``RGB;16L``): Pillow's unpacker keeps one byte
    per sample, so the two passes yield the high and the low bytes, which are
    recombined exactly. The un-filtering and zlib work stay in Pillow's C code.

  16-bit gray+alpha (PNG ``LA`` 16) is narrowed to 8 bits by Pillow; accepted
  (rare, and there is no Pillow unpacker to recover the low byte). A tRNS
  colour key on 16-bit gray or on the 16-bit RGB paths is ignored.
* **Size guard**: width*height is checked against ``max_pixels`` from the header,
  before any pixel is decoded (``Image.open`` is lazy). Pillow's own global
  guard is switched off once at import (see `Image.MAX_IMAGE_PIXELS` below) so
  the per-call limit is the only one and Pillow cannot raise or warn first.
* **Orientation**: the EXIF Orientation tag (all 8 values) is applied; an
  unreadable EXIF block leaves the stored orientation rather than rejecting
  otherwise good pixels.
* **Colour management**: an embedded ICC profile is applied (:mod:`colorize_core.icc`), so ``rgb`` is
  sRGB whatever the scanner wrote (Gray Gamma 2.2, Dot Gain 20 %, Adobe RGB, CMYK with its profile).
  Without a profile RGB is taken as sRGB, gray as gray with sRGB's tone curve, CMYK and YCbCr through
  Pillow's plain conversions. An 8-bit gray source in a non-sRGB gray profile comes out as uint16 (its
  converted tone curve needs more than 256 levels); ``bit_depth`` still says 8. ``colour`` says in one
  line what was done, and why a profile was ignored (unreadable, or the wrong colour space for the pixels).
* Multi-frame files (GIF, WebP, multi-page TIFF, MPO) yield their first frame.
* **Formats**: only :data:`DECODE_FORMATS` are decoded, all by code inside this process (Pillow's C
  decoders, tifffile). Pillow would otherwise try every plugin it has, and its EPS plugin runs Ghostscript
  (an interpreter of a full programming language) on the file. Documents (PDF, PostScript/EPS, SVG, HTML)
  are recognised from their first bytes and refused before Pillow sees them; anything else that is not
  in the allowlist is "unsupported format".
"""

from __future__ import annotations

import functools
import io
import logging
import re
import sys
import threading
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError
from . import icc as icc_mod

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FORMAT_EXTENSIONS",
    "DecodedImage",
    "ImageDecodeError",
    "decode_image",
    "canonical_format",
    "encode_image",
    "output_depth",
    "to_float01",
    "to_uint8",
]

DEFAULT_MAX_PIXELS = 100_000_000
"""Largest width*height decoded by default: a 10k x 10k scan, ~300 MB as uint8
RGB (twice that for 16-bit). Raise it per call for very large plates."""

FORMAT_EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp", "tiff": "tif"}

FORMAT_DEPTHS = {"jpeg": (8,), "png": (8, 16), "webp": (8,), "tiff": (8, 16)}
"""Bits per sample each output format holds: masters at full depth are PNG or TIFF."""

OUTPUT_DEPTHS = ("auto", "8", "16")

DECODE_FORMATS = ("JPEG", "PNG", "TIFF", "WEBP", "BMP", "GIF", "JPEG2000", "PPM")
"""Pillow format names we decode (``Image.open(formats=...)``). MPO (multi-picture JPEG) opens through
the JPEG plugin. JPEG 2000 is OpenJPEG, linked into Pillow. Nothing here starts another program."""

# Pillow's decompression-bomb guard reads this module-global at every
# Image.open and warns above it / raises above twice it. We do our own per-call
# check against `max_pixels` before decoding, so we switch Pillow's off ONCE
# here; mutating it per call would race between threads. This is process-wide:
# other Pillow users in the same process lose Pillow's default guard.
Image.MAX_IMAGE_PIXELS = None
# ImageFile.LOAD_TRUNCATED_IMAGES is deliberately left False: truncation must fail.

_MAX_REASON = 160


class _MuteWhileDecoding(logging.Filter):
    """tifffile logs a warning per oddity of a corrupt file; we already turn the
    failure into the row's reason, so drop its records, but only from a thread
    that is inside `_decode_tiff16` (a thread-local flag, so no global toggling)."""

    local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.local, "active", False)


logging.getLogger("tifffile").addFilter(_MuteWhileDecoding())

# Pillow raw modes for 16-bit colour, mapped to the mode whose unpacker takes
# the other byte of each sample (see module docstring).
_NATIVE = "L" if sys.byteorder == "little" else "B"
_SWAP16 = {
    f"{m};16{a}": f"{m};16{b}"
    for m in ("RGB", "RGBA", "RGBX")
    for a, b in (("B", "L"), ("L", "B"), ("N", "B" if _NATIVE == "L" else "L"))
}

_GRAY16_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
_GRAY_MODES = {"1", "L", "LA", "La", "I", "F"} | _GRAY16_MODES

_MAGIC = [
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF8", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
]


_OTHER_MAGIC = [
    (b"8BPS", "PSD"), (b"gimp xcf", "XCF"), (b"DDS ", "DDS"), (b"SIMPLE  =", "FITS"), (b"\x00\x00\x01\x00", "ICO"),
    (b"icns", "ICNS"), (b"qoif", "QOI"), (b"\xd7\xcd\xc6\x9a", "WMF"), (b"\x01\x00\x00\x00", "EMF"),
    (b"ftypavif", "AVIF"), (b"ftypheic", "HEIF"), (b"ftypmif1", "HEIF"), (b"\x00\x00\x00\x0cjXL ", "JPEG XL"),
    (b"\xff\x0a", "JPEG XL"), (b"#?RADIANCE", "HDR"), (b"\x76\x2f\x31\x01", "OpenEXR"),
]


class ImageDecodeError(InputError, ValueError):
    """A file that cannot be turned into pixels; `str(err)` is one short line. An input failure: its row is
    ``status='error'`` (see :mod:`colorize_core.errors`)."""

    def __init__(self, reason: str):
        super().__init__(_one_line(reason))


@dataclass(frozen=True)
class DecodedImage:
    """Pixels as displayed (orientation applied, alpha flattened) plus provenance.

    `pixels` is what was decoded: gray sources (gray modes, 1-bit included) stay one channel ``[H, W]``, colour
    ones are ``[H, W, 3]`` sRGB; C-contiguous, uint8 for 8-bit (and 1-bit) sources and uint16 for 16-bit ones
    (and for 8-bit gray converted from a non-sRGB gray profile, see the module docstring). `rgb` is always
    ``[H, W, 3]``: gray expanded on first use (callers that can take one channel read `pixels`, and a gray scan
    never costs three). `source_mode` is Pillow's mode, except 16-bit colour
    which is reported as ``RGB;16`` / ``RGBA;16`` (Pillow calls it ``RGB``).
    `is_gray` is True when the source carries no colour: a gray mode, or colour
    whose three channels are identical everywhere. `bit_depth` is the file's bits per sample (8 or 16):
    what ``--output-depth auto`` follows. `colour` is what colour management did, one line.
    """

    pixels: np.ndarray
    source_mode: str
    source_format: str
    is_gray: bool
    bit_depth: int = 8
    colour: str = "no ICC profile: read as sRGB"

    @functools.cached_property
    def rgb(self) -> np.ndarray:
        return self.pixels if self.pixels.ndim == 3 else _gray3(self.pixels)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode file bytes into display-ready RGB, or raise `ImageDecodeError`.

    Any failure caused by the bytes becomes `ImageDecodeError` with a one-line
    reason. A non-bytes argument (TypeError) and MemoryError are not the file's
    fault and propagate.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode_image expects bytes, got {type(data).__name__}")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
    data = bytes(data)
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    # Pillow warns about e.g. corrupt EXIF or palette transparency; per image
    # that is noise (and an error under -W error), so silence it for this call.
    # catch_warnings swaps process-global state: fine for one decode per thread.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return _decode(data, max_pixels)
        except (ImageDecodeError, MemoryError):
            raise
        except Image.DecompressionBombError as exc:  # only if someone re-enabled Pillow's guard
            raise ImageDecodeError(f"image too large for Pillow's MAX_IMAGE_PIXELS: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - plugins raise anything on bad bytes
            raise ImageDecodeError(_reason(exc)) from None


def to_float01(rgb: np.ndarray) -> np.ndarray:
    """uint8 / 255 or uint16 / 65535 as float32 in [0, 1]."""
    rgb = np.asarray(rgb)
    if rgb.dtype == np.uint8:
        scale = 255.0
    elif rgb.dtype == np.uint16:
        scale = 65535.0
    else:
        raise ValueError(f"to_float01 expects uint8 or uint16, got {rgb.dtype}")
    return rgb.astype(np.float32) * np.float32(1.0 / scale)


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """The one 16 -> 8-bit rounding: ``rint(v / 257)`` (65535 -> 255, exact for values that came from 8 bits);
    uint8 passes unchanged."""
    if rgb.dtype == np.uint8:
        return rgb
    if rgb.dtype != np.uint16:
        raise ValueError(f"to_uint8 expects uint8 or uint16, got {rgb.dtype}")
    return np.rint(rgb.astype(np.float32) / np.float32(257.0)).astype(np.uint8)


def output_depth(requested: str | int, source_bits: int, fmt: str) -> int:
    """Bits per sample of an output: ``auto`` is 16 where the source is 16-bit and the format holds 16 bits
    (PNG, TIFF), else 8. An explicit 16 in a format that cannot hold it is a ValueError (configs check it
    at start-up, so no image fails for it)."""
    fmt_key = canonical_format(fmt)
    requested = str(requested)
    if requested not in OUTPUT_DEPTHS:
        raise ValueError(f"output depth must be one of {', '.join(OUTPUT_DEPTHS)}, got {requested!r}")
    if requested == "auto":
        return 16 if source_bits > 8 and 16 in FORMAT_DEPTHS[fmt_key] else 8
    depth = int(requested)
    if depth not in FORMAT_DEPTHS[fmt_key]:
        raise ValueError(f"{fmt_key} holds {' or '.join(map(str, FORMAT_DEPTHS[fmt_key]))}-bit samples only; "
                         f"for 16-bit masters use png or tiff")
    return depth


def encode_image(rgb: np.ndarray, fmt: str = "jpeg", *, quality: int = 95) -> bytes:
    """Encode [H, W, 3] as JPEG (4:4:4), PNG (lossless), WebP or TIFF (deflate): uint8 for every format,
    uint16 for PNG and TIFF (16-bit masters).

    JPEG keeps full-resolution chroma because colour is the product here.
    WebP at quality 100 is written lossless. TIFF is deflate with horizontal differencing (predictor 2,
    which every TIFF reader knows), little-endian, one strip per ~256 KB. Only pixels are written here:
    :func:`colorize_core.metadata.write` adds the metadata (and the sRGB profile) to these bytes.
    """
    fmt_key = canonical_format(fmt)
    rgb = np.asarray(rgb)
    depths = FORMAT_DEPTHS[fmt_key]
    allowed = (np.uint8, np.uint16) if 16 in depths else (np.uint8,)
    if rgb.dtype not in allowed or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(
            f"encode_image({fmt_key}) expects {' or '.join(np.dtype(d).name for d in allowed)} [H, W, 3], got "
            f"{rgb.dtype} {list(rgb.shape)}; convert (e.g. np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8)) first"
        )
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"encode_image got an empty image {list(rgb.shape)}")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an int in [1, 100], got {quality!r}")
    words = _rgbx_words(rgb)
    if words is not None and fmt_key == "jpeg":
        im = Image.frombuffer("RGBX", (rgb.shape[1], rgb.shape[0]), words, "raw", "RGBX", 0, 1)
    else:
        rgb = np.ascontiguousarray(rgb)
        if fmt_key == "tiff":
            return _encode_tiff(rgb)
        if rgb.dtype == np.uint16:
            return _encode_png16(rgb)
        im = Image.fromarray(rgb)
    buf = io.BytesIO()
    if fmt_key == "jpeg":
        im.save(buf, "JPEG", quality=quality, subsampling=0)
    elif fmt_key == "png":
        im.save(buf, "PNG")
    else:
        im.save(buf, "WEBP", quality=quality, lossless=quality == 100)
    return buf.getvalue()


def _rgbx_words(rgb: np.ndarray) -> np.ndarray | None:
    """The contiguous RGBX words under an ``[H, W, 3]`` uint8 view of them (:func:`graytable.rgb_view`, or
    ``rgba[..., :3]``), so the JPEG encoder reads them without the copy to ``[H, W, 3]``; else None."""
    base = rgb.base
    if (rgb.dtype != np.uint8 or rgb.strides != (4 * rgb.shape[1], 4, 1) or not isinstance(base, np.ndarray)
            or base.nbytes != 4 * rgb.shape[0] * rgb.shape[1] or not base.flags.c_contiguous
            or base.__array_interface__["data"][0] != rgb.__array_interface__["data"][0]):
        return None
    return base


def _encode_tiff(rgb: np.ndarray) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, rgb, photometric="rgb", compression="zlib", predictor=True, byteorder="<",
                     metadata=None, software=False, bigtiff=False)
    return buf.getvalue()


_PNG_BAND_BYTES = 1 << 20
_PNG_FILTER_CODES = np.array((0, 1, 2, 4), np.uint8)  # None, Sub, Up, Paeth


def _encode_png16(rgb: np.ndarray, level: int = 6) -> bytes:
    """16-bit RGB PNG (Pillow cannot write one): the filters in numpy, band by band, each row taking the one
    of None/Sub/Up/Paeth with the smallest sum of |bytes| (libpng's heuristic), then zlib."""
    h, w, _ = rgb.shape
    bpp, stride = 6, w * 6
    raw = rgb.astype(">u2", copy=False).view(np.uint8).reshape(h, stride)
    comp = zlib.compressobj(level)
    idat: list[bytes] = []
    prev = np.zeros(stride, np.uint8)
    band = max(1, _PNG_BAND_BYTES // stride)
    for s in range(0, h, band):
        cur = raw[s: s + band]
        up = np.empty_like(cur)
        up[0], up[1:] = prev, cur[:-1]
        left = np.zeros_like(cur)
        left[:, bpp:] = cur[:, :-bpp]
        upleft = np.zeros_like(cur)
        upleft[:, bpp:] = up[:, :-bpp]
        a, b, c = left.astype(np.int16), up.astype(np.int16), upleft.astype(np.int16)
        pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
        candidates = np.stack([cur, cur - left, cur - up, cur - paeth])  # uint8 arithmetic wraps, as PNG's
        cost = np.minimum(candidates, 0 - candidates).sum(axis=2, dtype=np.uint32)  # |byte as int8|
        best = np.argmin(cost, axis=0)
        rows = np.empty((len(cur), stride + 1), np.uint8)
        rows[:, 0] = _PNG_FILTER_CODES[best]
        rows[:, 1:] = candidates[best, np.arange(len(cur))]
        idat.append(comp.compress(rows.tobytes()))
        prev = cur[-1]
    idat.append(comp.flush())
    data = b"".join(idat)

    def chunk(ctype: bytes, body: bytes) -> bytes:
        return (len(body).to_bytes(4, "big") + ctype + body
                + (zlib.crc32(ctype + body) & 0xFFFFFFFF).to_bytes(4, "big"))

    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([16, 2, 0, 0, 0])
    parts = [b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", ihdr)]
    parts += [chunk(b"IDAT", data[i: i + (1 << 20)]) for i in range(0, len(data), 1 << 20)]
    parts.append(chunk(b"IEND", b""))
    return b"".join(parts)


# --------------------------------------------------------------------------- decode


def _decode(data: bytes, max_pixels: int) -> DecodedImage:
    refused = _refused_document(data)
    if refused is not None:
        raise ImageDecodeError(refused)
    try:
        im = Image.open(io.BytesIO(data), formats=DECODE_FORMATS)
    except UnidentifiedImageError:
        # Pillow refuses some 16-bit RGB TIFF layouts (e.g. RGB + 2 extra samples).
        if _sniff(data) == "TIFF":
            try:
                decoded = _decode_tiff16(data, max_pixels)
            except ImageDecodeError:
                raise
            except Exception:  # noqa: BLE001 - fall through to the generic reason
                decoded = None
            if decoded is not None:
                return decoded
        raise ImageDecodeError(_unidentified_reason(data)) from None

    with im:
        fmt = im.format or "unknown"
        _check_size(*im.size, max_pixels)
        if _is_rgb16(im):
            return _decode_rgb16(data, im, max_pixels)
        im.load()  # full decode: raises on truncation
        source_mode = im.mode
        profile = im.info.get("icc_profile")
        try:
            ImageOps.exif_transpose(im, in_place=True)
        except Exception:  # noqa: BLE001 - bad EXIF must not cost good pixels
            pass
        note = None
        if source_mode == "CMYK" and profile:
            im, note = icc_mod.cmyk_to_srgb(im, profile)
        pixels, is_gray = _to_pixels(im)
    bits = 16 if source_mode in _GRAY16_MODES or (source_mode == "I" and pixels.dtype == np.uint16) else 8
    if note is None:
        pixels, is_gray, note = managed_pixels(pixels, profile, gray_source=source_mode in _GRAY_MODES,
                                               is_gray=is_gray)
    return DecodedImage(pixels, source_mode=source_mode, source_format=fmt, is_gray=is_gray, bit_depth=bits,
                        colour=note)


def managed_pixels(pixels: np.ndarray, profile: bytes | None, *, gray_source: bool,
                   is_gray: bool | None = None) -> tuple[np.ndarray, bool, str]:
    """Decoded pixels (gray ``[H, W]`` or ``[H, W, 3]``) brought from their embedded profile to sRGB
    (:func:`icc.apply_profile`): (pixels, is_gray, the note). Profiles work on ``[H, W, 3]``; a gray source
    whose result is gray goes back to one channel."""
    if not profile:
        return pixels, bool(gray_source if is_gray is None else is_gray), "no ICC profile: read as sRGB"
    rgb = pixels if pixels.ndim == 3 else _gray3(pixels)
    is_gray = (gray_source or channels_equal(rgb)) if is_gray is None else is_gray
    managed = icc_mod.apply_profile(rgb, is_gray, profile, gray_source=gray_source)
    out = managed.rgb
    if out.ndim == 3 and gray_source and managed.is_gray:
        out = np.ascontiguousarray(out[..., 0])
    return out, managed.is_gray, managed.note


def _to_pixels(im: Image.Image) -> tuple[np.ndarray, bool]:
    """Loaded, oriented Pillow image -> (gray [H, W] or colour [H, W, 3], uint8/uint16; is_gray)."""
    mode = im.mode
    if mode in _GRAY16_MODES:
        return np.ascontiguousarray(np.asarray(im).astype(np.uint16, copy=False)), True
    if mode == "I":
        arr = np.asarray(im)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise ImageDecodeError(f"unsupported image mode 'I': values [{lo}, {hi}] exceed 16 bits")
        return arr.astype(np.uint16), True
    if mode == "F":
        raise ImageDecodeError("unsupported image mode 'F' (floating-point samples)")
    if mode == "1":
        return np.ascontiguousarray(np.asarray(im.convert("L"))), True
    if mode == "L" and not im.has_transparency_data:
        return np.ascontiguousarray(np.asarray(im)), True
    if mode == "LA":
        la = np.asarray(im)
        return _over_white(la[..., :1], la[..., 1], 255)[..., 0], True
    if mode == "RGB" and not im.has_transparency_data:
        rgb = np.ascontiguousarray(np.asarray(im))
        return rgb, channels_equal(rgb)
    if im.has_transparency_data or mode in ("RGBA", "RGBa", "PA", "La"):
        rgba = np.asarray(im if mode == "RGBA" else im.convert("RGBA"))
        rgb = _over_white(rgba[..., :3], rgba[..., 3], 255)
        return rgb, mode in _GRAY_MODES or channels_equal(rgb)
    try:  # P, CMYK, YCbCr, RGBX, LAB, HSV, ...
        converted = im.convert("RGB")
    except (ValueError, OSError):
        raise ImageDecodeError(f"unsupported image mode {mode!r}") from None
    rgb = np.ascontiguousarray(np.asarray(converted))
    return rgb, channels_equal(rgb)


def _decode_rgb16(data: bytes, im: Image.Image, max_pixels: int) -> DecodedImage:
    """16-bit RGB(A) that Pillow would narrow to 8 bits (see module docstring)."""
    fmt = im.format or "unknown"
    tiff_error = None
    if fmt == "TIFF":
        try:
            decoded = _decode_tiff16(data, max_pixels)
        except ImageDecodeError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. LZW needs imagecodecs: try Pillow below
            decoded, tiff_error = None, exc
        if decoded is not None:
            return decoded
    rawmodes = [t.args[0] if isinstance(t.args, tuple) else t.args for t in im.tile]
    # Planar TIFF: Pillow's libtiff path picks its own per-plane unpackers (the
    # swap has no effect) and its raw path reads 8 of the 16 bits; refuse both.
    planar = fmt == "TIFF" and getattr(im, "tag_v2", {}).get(284, 1) != 1
    if planar or not all(r in _SWAP16 for r in rawmodes):
        if tiff_error is not None:
            raise ImageDecodeError(
                f"cannot decode 16-bit RGB TIFF with tifffile ({type(tiff_error).__name__}: {tiff_error})"
            )
        raise ImageDecodeError(f"unsupported 16-bit RGB {fmt} layout")
    hi = _load_with_rawmodes(data, rawmodes)
    lo = _load_with_rawmodes(data, [_SWAP16[r] for r in rawmodes])
    if hi.shape != lo.shape or hi.ndim != 3:
        raise ImageDecodeError(f"corrupt 16-bit {fmt} data")
    arr = (hi.astype(np.uint16) << 8) | lo
    return _finish16(arr, _exif_orientation(im), fmt, profile=im.info.get("icc_profile"))


def _load_with_rawmodes(data: bytes, rawmodes: list[str]) -> np.ndarray:
    """Decode with each tile's raw mode replaced (Pillow keeps one byte per sample)."""
    with Image.open(io.BytesIO(data), formats=DECODE_FORMATS) as im:
        im.tile = [
            t._replace(args=(raw, *t.args[1:]) if isinstance(t.args, tuple) else raw)
            for t, raw in zip(im.tile, rawmodes, strict=True)
        ]
        im.load()
        return np.asarray(im)


def _decode_tiff16(data: bytes, max_pixels: int) -> DecodedImage | None:
    """First page of a 16-bit RGB(A) TIFF via tifffile; None if not that kind."""
    _MuteWhileDecoding.local.active = True
    try:
        return _read_tiff16(data, max_pixels)
    finally:
        _MuteWhileDecoding.local.active = False


def _read_tiff16(data: bytes, max_pixels: int) -> DecodedImage | None:
    import tifffile  # ships with scikit-image; imported lazily, only 16-bit TIFFs need it

    with tifffile.TiffFile(io.BytesIO(data)) as tf:
        page = tf.pages[0]
        if (
            int(page.photometric) != 2  # RGB
            or page.dtype != np.uint16
            or page.axes not in ("YXS", "SYX")
        ):
            return None
        shape = dict(zip(page.axes, page.shape))
        if shape["S"] < 3:
            return None
        _check_size(shape["X"], shape["Y"], max_pixels)
        arr = page.asarray()
        if page.axes == "SYX":
            arr = np.moveaxis(arr, 0, -1)
        first_extra = int(page.extrasamples[0]) if len(page.extrasamples) else 0  # 1 assoc, 2 unassoc alpha
        tag = page.tags.get(274)
        orientation = int(tag.value) if tag is not None else 1
        icc_tag = page.tags.get(34675)
        profile = bytes(icc_tag.value) if icc_tag is not None and isinstance(icc_tag.value, bytes) else None
    arr = arr[..., :4] if first_extra in (1, 2) else arr[..., :3]
    return _finish16(arr.astype(np.uint16, copy=False), orientation, "TIFF", premultiplied=first_extra == 1,
                     profile=profile)


def _finish16(arr: np.ndarray, orientation: int, fmt: str, *, premultiplied: bool = False,
              profile: bytes | None = None) -> DecodedImage:
    """[H, W, 3|4] uint16 -> oriented, alpha-flattened DecodedImage."""
    if arr.shape[2] == 4 and premultiplied:  # colour already scaled by alpha: add the white
        white = 65535 - arr[..., 3:].astype(np.uint32)
        mode, rgb = "RGBA;16", np.minimum(arr[..., :3] + white, 65535).astype(np.uint16)
    elif arr.shape[2] == 4:
        mode, rgb = "RGBA;16", _over_white(arr[..., :3], arr[..., 3], 65535)
    else:
        mode, rgb = "RGB;16", arr[..., :3]
    rgb = np.ascontiguousarray(_orient(rgb, orientation))
    managed = icc_mod.apply_profile(rgb, channels_equal(rgb), profile, gray_source=False)
    return DecodedImage(managed.rgb, source_mode=mode, source_format=fmt, is_gray=managed.is_gray,
                        bit_depth=16, colour=managed.note)


# --------------------------------------------------------------------------- helpers


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"zero-size image ({width}x{height})")
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"image too large: {width}x{height} = {width * height} pixels > max_pixels {max_pixels}"
        )


def _is_rgb16(im: Image.Image) -> bool:
    """16-bit-per-sample colour, which Pillow would decode to 8 bits."""
    if im.format == "TIFF":  # tags, not raw modes: Pillow misreads planar 16-bit as 8-bit
        tags = getattr(im, "tag_v2", {})
        bits = tags.get(258, ())
        bits = bits if isinstance(bits, tuple) else (bits,)
        return tags.get(262) == 2 and len(bits) >= 3 and set(bits) == {16}
    args = [t.args for t in getattr(im, "tile", None) or ()]
    raws = [a[0] if isinstance(a, tuple) and a else a for a in args]
    return bool(raws) and all(isinstance(r, str) and r in _SWAP16 for r in raws)


def _exif_orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - unreadable EXIF: keep stored orientation
        return 1
    return value if 1 <= value <= 8 else 1


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to [H, W, ...] as ImageOps.exif_transpose would."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:
        return arr.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(arr, -1)
    if orientation == 7:
        return arr[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(arr, 1)
    return arr


def _gray3(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def _over_white(color: np.ndarray, alpha: np.ndarray, maxval: int) -> np.ndarray:
    """Composite straight-alpha `color` over white, rounded, in the input dtype.

    c*a + max*(max-a) <= max**2 fits uint16 for 8-bit and uint32 for 16-bit.
    """
    out_dtype = np.uint8 if maxval == 255 else np.uint16
    wide = np.uint16 if maxval == 255 else np.uint32
    a = alpha.astype(wide)[..., None]
    out = (color.astype(wide) * a + (maxval - a) * wide(maxval) + wide(maxval // 2)) // wide(maxval)
    return np.ascontiguousarray(out.astype(out_dtype))


def channels_equal(rgb: np.ndarray) -> bool:
    """True if R == G == B everywhere; a strided sample rejects colour images early."""
    step = max(1, rgb.shape[0] // 32)
    sample = rgb[::step]
    if not (np.array_equal(sample[..., 0], sample[..., 1]) and np.array_equal(sample[..., 1], sample[..., 2])):
        return False
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))


def _sniff(data: bytes) -> str | None:
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


def _refused_document(data: bytes) -> str | None:
    """A reason to refuse documents before any decoder sees them (PostScript would run Ghostscript)."""
    head = data[:1024]
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n\x00")
    if head.startswith(b"\xc5\xd0\xd3\xc6") or stripped.startswith(b"%!"):
        return "unsupported format: PostScript/EPS (refused: decoding it would run Ghostscript)"
    if stripped.startswith(b"%PDF") or b"%PDF-" in head:
        return "not an image (PDF document)"
    low = stripped[:1024].lower()
    if low.startswith((b"<?xml", b"<svg", b"<!doctype svg")) and b"<svg" in data[:65536].lower():
        return "unsupported format: SVG (vector graphics are not decoded)"
    return None


def _unidentified_reason(data: bytes) -> str:
    kind = _sniff(data)
    if kind is not None:
        return f"corrupt or truncated {kind} header"
    # Named from magic numbers, not by asking Pillow's other plugins: they are exactly what we do not run.
    for magic, name in _OTHER_MAGIC:
        if data.startswith(magic) or (name in ("HEIF", "AVIF") and data[4:12].startswith(magic)):
            return f"unsupported format: {name} (decoded: {', '.join(DECODE_FORMATS)})"
    head = data[:1024].lstrip()
    if head.startswith(b"%PDF"):
        return "not an image (PDF document)"
    if head[:1] == b"<":
        return "not an image (HTML/XML text)"
    has_controls = any(b < 9 or 13 < b < 32 or b == 127 for b in head)
    if not has_controls and head.decode("utf-8", "replace").count("\ufffd") <= 1:  # 1: a cut char
        return "not an image (text file)"
    return "not an image (unrecognised bytes)"


def _reason(exc: BaseException) -> str:
    msg = str(exc)
    low = msg.lower()
    if isinstance(exc, EOFError) or "truncated" in low or "broken data stream" in low:
        return "truncated image data"
    detail = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    return f"corrupt image data ({detail})"


def _one_line(text: str) -> str:
    text = re.sub(r"\s+", " ", str(text)).strip() or "undecodable image"
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def canonical_format(fmt: str) -> str:
    """``jpg``/``JPEG``/``.tif``... -> the key of :data:`FORMAT_EXTENSIONS`, or a ValueError naming the choices."""
    key = str(fmt).lower().lstrip(".")
    key = {"jpg": "jpeg", "tif": "tiff"}.get(key, key)
    if key not in FORMAT_EXTENSIONS:
        raise ValueError(f"unknown output format {fmt!r}; use one of {sorted(FORMAT_EXTENSIONS)} (or 'jpg', 'tif')")
    return key
