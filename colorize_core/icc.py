"""A source's ICC profile, applied on decode so that its lightness (the only thing the model and the output
keep of a gray scan) is the lightness the scanner meant.

Every later stage reads pixels as sRGB (:mod:`colorize_core.color`), so colour management here means one
thing: turn the source's values into the sRGB values of the same colours (relative colorimetric, white
to white). What is assumed without a profile: RGB is sRGB, gray has sRGB's tone curve (so gray L is
``srgb_to_l``), CMYK goes through Pillow's plain conversion. A profile that says sRGB (within half an 8-bit
code, whatever its name) changes nothing.

How, by profile kind:

* **Gray with a tone curve** (``kTRC``: Gray Gamma 2.2, Dot Gain 20 %, ...) and **RGB matrix/TRC** profiles
  (Adobe RGB, ProPhoto, Display P3, ...) are applied by our own code from the profile's curves and colorants:
  exact at any bit depth (LittleCMS through Pillow only handles 8-bit modes, which would cost a 16-bit
  master its precision). A gray curve becomes a table over every input level; an 8-bit gray source comes
  out as uint16 then, because the converted curve needs more than 256 levels (Gamma 2.2 shadows would
  otherwise merge).
* Any other profile (LUT-based RGB, CMYK) on an **8-bit** source goes through LittleCMS (Pillow's
  ``ImageCms``). On a 16-bit source such a profile is not applied: the source is read as sRGB and
  :attr:`Managed.note` says so (the metrics row's metadata column carries it).

A profile that cannot be parsed, or whose colour space does not match the pixels, is ignored with a reason;
it never costs the image. Parsed profiles and LittleCMS transforms are cached by the profile's bytes: a
collection usually shares one profile.
"""

from __future__ import annotations

import functools
import io
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms

__all__ = ["Managed", "Profile", "apply_profile", "parse_profile", "srgb_profile_bytes"]

# How close a profile must be to sRGB to be treated as sRGB: half an 8-bit code on the curves, and the
# s15Fixed16 rounding that real sRGB profiles (HP's, LittleCMS's, Apple's) differ by on the colorants.
_CURVE_TOLERANCE = 0.5 / 255
_COLORANT_TOLERANCE = 2e-3
_SAMPLES = 1024  # curve samples compared against sRGB's

# The sRGB tone curve (IEC 61966-2-1), encoded <-> linear.
_SRGB_A, _SRGB_GAMMA, _SRGB_SLOPE, _SRGB_ENC_T = 0.055, 2.4, 12.92, 0.0031308


def _srgb_decode(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0.04045, ((x + _SRGB_A) / (1 + _SRGB_A)) ** _SRGB_GAMMA, x / _SRGB_SLOPE)


def _srgb_encode(lin: np.ndarray) -> np.ndarray:
    lin = np.clip(lin, 0.0, 1.0)
    with np.errstate(invalid="ignore"):
        return np.where(lin > _SRGB_ENC_T, (1 + _SRGB_A) * lin ** (1 / _SRGB_GAMMA) - _SRGB_A, lin * _SRGB_SLOPE)


class ProfileError(ValueError):
    """A profile that cannot be used; ``str(err)`` is one short line."""


@dataclass(frozen=True, eq=False)
class _Curve:
    """One ICC ``curv`` or ``para`` tone curve, device value in [0, 1] -> linear (PCS) value in [0, 1]."""

    kind: str  # "identity" | "gamma" | "table" | "para"
    gamma: float = 1.0
    table: np.ndarray | None = None
    function: int = 0
    params: tuple[float, ...] = ()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.clip(np.asarray(x, np.float64), 0.0, 1.0)
        if self.kind == "identity":
            return x
        if self.kind == "gamma":
            return x**self.gamma
        if self.kind == "table":
            t = self.table
            return np.interp(x * (len(t) - 1), np.arange(len(t)), t)
        return _parametric(self.function, self.params, x)


def _parametric(function: int, p: tuple[float, ...], x: np.ndarray) -> np.ndarray:
    """ICC.1 parametricCurveType, functions 0-4."""
    g = p[0]
    if function == 0:
        return x**g
    a, b = p[1], p[2]
    base = np.maximum(a * x + b, 0.0)
    if function == 1:
        return np.where(x >= -b / a, base**g, 0.0)
    if function == 2:
        return np.where(x >= -b / a, base**g + p[3], p[3])
    c, d = p[3], p[4]
    if function == 3:
        return np.where(x >= d, base**g, c * x)
    return np.where(x >= d, base**g + p[5], c * x + p[6])  # function 4


_PARA_COUNTS = {0: 1, 1: 3, 2: 4, 3: 5, 4: 7}


def _read_curve(data: bytes, offset: int, size: int) -> _Curve:
    sig = data[offset: offset + 4]
    if sig == b"curv":
        (n,) = struct.unpack_from(">I", data, offset + 8)
        if n == 0:
            return _Curve("identity")
        if n == 1:
            (g,) = struct.unpack_from(">H", data, offset + 12)
            return _Curve("gamma", gamma=g / 256.0)
        if 12 + 2 * n > size:
            raise ProfileError("curve table runs past its tag")
        table = np.frombuffer(data, ">u2", n, offset + 12).astype(np.float64) / 65535.0
        return _Curve("table", table=table)
    if sig == b"para":
        (function,) = struct.unpack_from(">H", data, offset + 8)
        count = _PARA_COUNTS.get(function)
        if count is None or 12 + 4 * count > size:
            raise ProfileError(f"unknown parametric curve function {function}")
        params = struct.unpack_from(f">{count}i", data, offset + 12)
        params = tuple(v / 65536.0 for v in params)
        if function in (1, 2, 3, 4) and params[1] == 0:
            raise ProfileError("parametric curve with a = 0")
        return _Curve("para", function=function, params=params)
    raise ProfileError(f"tone curve of type {sig!r} is not a curve")


@dataclass(frozen=True, eq=False)
class Profile:
    """What we use of an ICC profile. ``kind``: ``gray-trc``, ``matrix-trc`` or ``lut`` (anything else:
    applied by LittleCMS on 8-bit pixels only)."""

    data: bytes
    description: str
    colour_space: str  # "GRAY", "RGB", "CMYK", ...
    kind: str
    curves: tuple[_Curve, ...] = ()
    matrix: np.ndarray | None = None  # linear device RGB -> PCS XYZ (D50), columns = colorants
    is_srgb: bool = False


def _tags(data: bytes) -> dict[bytes, tuple[int, int]]:
    if len(data) < 132:
        raise ProfileError(f"profile too short ({len(data)} bytes)")
    (declared,) = struct.unpack_from(">I", data, 0)
    if data[36:40] != b"acsp":
        raise ProfileError("not an ICC profile (no 'acsp' signature)")
    if declared > len(data):
        raise ProfileError(f"profile truncated ({len(data)} of {declared} bytes)")
    (count,) = struct.unpack_from(">I", data, 128)
    if 132 + 12 * count > len(data):
        raise ProfileError("tag table runs past the profile")
    tags = {}
    for i in range(count):
        sig, off, size = struct.unpack_from(">4sII", data, 132 + 12 * i)
        if off + size > len(data) or size < 8:
            raise ProfileError(f"tag {sig.decode('latin-1')!r} runs past the profile")
        tags[sig] = (off, size)
    return tags


def _description(data: bytes, tags) -> str:
    if b"desc" not in tags:
        return "unnamed profile"
    off, size = tags[b"desc"]
    sig = data[off: off + 4]
    try:
        if sig == b"desc":  # v2 textDescriptionType: ASCII count, then the string
            (n,) = struct.unpack_from(">I", data, off + 8)
            text = data[off + 12: off + 12 + min(n, size - 12)].split(b"\0")[0].decode("latin-1")
        elif sig == b"mluc":  # v4: first record, UTF-16BE
            (n,) = struct.unpack_from(">I", data, off + 8)
            length, start = struct.unpack_from(">II", data, off + 20) if n else (0, 0)
            text = data[off + start: off + start + length].decode("utf-16-be", "replace")
        else:
            return "unnamed profile"
    except (struct.error, UnicodeDecodeError):
        return "unnamed profile"
    return " ".join(text.split())[:80] or "unnamed profile"


def _xyz(data: bytes, tags, sig: bytes) -> np.ndarray:
    off, size = tags[sig]
    if data[off: off + 4] != b"XYZ " or size < 20:
        raise ProfileError(f"{sig.decode()} is not an XYZ value")
    return np.array(struct.unpack_from(">3i", data, off + 8), np.float64) / 65536.0


@functools.lru_cache(maxsize=32)
def parse_profile(data: bytes) -> Profile:
    """The parts of an ICC profile this module applies, or :class:`ProfileError` with a one-line reason."""
    try:
        return _parse(bytes(data))
    except ProfileError:
        raise
    except (struct.error, ValueError, IndexError) as exc:
        raise ProfileError(f"corrupt ICC profile ({exc})") from None


def _parse(data: bytes) -> Profile:
    tags = _tags(data)
    space = data[16:20].decode("latin-1").strip()
    desc = _description(data, tags)
    if space == "GRAY" and b"kTRC" in tags:
        curve = _read_curve(data, *tags[b"kTRC"])
        x = np.linspace(0.0, 1.0, _SAMPLES)
        is_srgb = bool(np.max(np.abs(_srgb_encode(curve(x)) - x)) <= _CURVE_TOLERANCE)
        return Profile(data, desc, space, "gray-trc", (curve,), is_srgb=is_srgb)
    trc = (b"rTRC", b"gTRC", b"bTRC")
    colorants = (b"rXYZ", b"gXYZ", b"bXYZ")
    if space == "RGB" and all(t in tags for t in trc + colorants):
        curves = tuple(_read_curve(data, *tags[t]) for t in trc)
        matrix = np.stack([_xyz(data, tags, t) for t in colorants], axis=1)
        if abs(np.linalg.det(matrix)) < 1e-6:
            raise ProfileError("colorants do not span a colour space")
        srgb = _srgb_reference()
        x = np.linspace(0.0, 1.0, _SAMPLES)
        is_srgb = srgb is not None and bool(
            np.max(np.abs(matrix - srgb.matrix)) <= _COLORANT_TOLERANCE
            and max(np.max(np.abs(_srgb_encode(c(x)) - x)) for c in curves) <= _CURVE_TOLERANCE)
        return Profile(data, desc, space, "matrix-trc", curves, matrix, is_srgb)
    return Profile(data, desc, space, "lut")


@functools.cache
def srgb_profile_bytes() -> bytes:
    """The sRGB profile every output embeds: LittleCMS's own (``ImageCms.createProfile("sRGB")``)."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@functools.cache
def _srgb_reference() -> Profile | None:
    """sRGB's D50-adapted colorants as LittleCMS writes them, to compare and to convert into."""
    data = srgb_profile_bytes()
    tags = _tags(data)
    matrix = np.stack([_xyz(data, tags, t) for t in (b"rXYZ", b"gXYZ", b"bXYZ")], axis=1)
    return Profile(data, "sRGB", "RGB", "matrix-trc", (), matrix, True)


@dataclass(frozen=True)
class Managed:
    """Pixels as sRGB after the profile, whether they are still gray, and what was done (one line)."""

    rgb: np.ndarray
    is_gray: bool
    note: str


def apply_profile(rgb: np.ndarray, is_gray: bool, icc: bytes | None, *, gray_source: bool | None = None) -> Managed:
    """Bring decoded pixels (uint8/uint16 [H, W, 3]) from their embedded profile to sRGB.

    ``gray_source``: the file's own mode was gray (defaults to ``is_gray``). A gray file takes a GRAY profile,
    or an RGB one whose gray axis is used (gray JPEGs tagged sRGB are common; a matrix profile's neutral axis
    is what R = G = B means in that space); a colour file takes an RGB one. Any other pairing is ignored with
    a reason, as is a profile that cannot be parsed.
    """
    gray_source = is_gray if gray_source is None else gray_source
    if not icc:
        return Managed(rgb, is_gray, "no ICC profile: read as sRGB")
    try:
        profile = parse_profile(bytes(icc))
    except ProfileError as exc:
        return Managed(rgb, is_gray, f"ICC profile ignored ({exc}), read as sRGB")
    name = f"ICC profile '{profile.description}'"
    wanted = ("GRAY", "RGB") if gray_source else ("RGB",)
    if profile.colour_space not in wanted or (gray_source and profile.kind == "lut"):
        return Managed(rgb, is_gray, f"{name} ignored ({profile.colour_space} {profile.kind} profile on "
                                     f"{'a gray' if gray_source else 'an RGB'} image), read as sRGB")
    if profile.is_srgb:
        return Managed(rgb, is_gray, f"{name} is sRGB: kept as is")
    if profile.kind == "gray-trc":
        lut = _gray_table(profile, 8 if rgb.dtype == np.uint8 else 16)
        return Managed(_gray_lookup(lut, rgb), True, f"{name} applied")
    if profile.kind == "matrix-trc":
        if is_gray:  # neutral in, neutral out: the transform of the gray axis is one table
            lut = _neutral_table(profile, 8 if rgb.dtype == np.uint8 else 16)
            if lut is not None:
                return Managed(_gray_lookup(lut, rgb), True, f"{name} applied")
        return Managed(_matrix_transform(profile, rgb), False, f"{name} applied")
    if rgb.dtype != np.uint8:
        return Managed(rgb, is_gray, f"{name} not applied (a LUT-based profile on a 16-bit image: LittleCMS "
                                     "through Pillow is 8-bit only), read as sRGB")
    try:
        out = _littlecms(profile, rgb)
    except (ImageCms.PyCMSError, OSError, ValueError) as exc:
        return Managed(rgb, is_gray, f"{name} ignored (LittleCMS: {exc}), read as sRGB")
    return Managed(out, is_gray and _equal_channels(out), f"{name} applied (LittleCMS)")


def _gray_lookup(lut: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """``lut[rgb]`` for gray pixels (R = G = B), through the flat array by cache-sized chunks: numpy widens
    every index to 64 bits, and a chunk's worth stays in cache."""
    flat = rgb.reshape(-1)
    out = np.empty(flat.shape, lut.dtype)
    for s in range(0, len(flat), _BAND):
        np.take(lut, flat[s: s + _BAND], out=out[s: s + _BAND])
    return out.reshape(rgb.shape)


@functools.lru_cache(maxsize=64)
def _gray_table(profile: Profile, bits: int) -> np.ndarray:
    """uint16 sRGB-encoded value of every input level of a gray tone curve."""
    levels = 2**bits
    x = np.arange(levels, dtype=np.float64) / (levels - 1)
    return np.rint(_srgb_encode(profile.curves[0](x)) * 65535).astype(np.uint16)


@functools.lru_cache(maxsize=64)
def _neutral_table(profile: Profile, bits: int) -> np.ndarray | None:
    """The gray axis through a matrix/TRC profile, if it stays neutral (same curve on R, G and B)."""
    levels = 2**bits
    x = np.arange(levels, dtype=np.float64) / (levels - 1)
    out = _srgb_encode(_to_srgb_linear(profile, np.stack([c(x) for c in profile.curves], axis=-1)))
    codes = np.rint(out * 65535)
    if np.max(np.abs(codes - codes[:, 1:2])) > 1:
        return None
    return codes[:, 1].astype(np.uint16)


@functools.lru_cache(maxsize=16)
def _pcs_to_srgb(profile: Profile) -> np.ndarray:
    return np.linalg.inv(_srgb_reference().matrix) @ profile.matrix


def _to_srgb_linear(profile: Profile, linear: np.ndarray) -> np.ndarray:
    return linear @ _pcs_to_srgb(profile).T


_BAND = 1 << 16


def _matrix_transform(profile: Profile, rgb: np.ndarray) -> np.ndarray:
    """Matrix/TRC RGB -> sRGB, band by band in float32 (tone curves by table), uint16 out for 16-bit input."""
    bits = 8 if rgb.dtype == np.uint8 else 16
    tables = _linear_tables(profile, bits)
    m = _pcs_to_srgb(profile).astype(np.float32)
    enc = _encode_table()
    flat = rgb.reshape(-1, 3)
    out = np.empty_like(flat)
    scale = np.float32(len(enc) - 1)
    maxv = np.float32(255 if bits == 8 else 65535)
    for s in range(0, len(flat), _BAND):
        e = min(len(flat), s + _BAND)
        lin = np.stack([np.take(tables[c], flat[s:e, c]) for c in range(3)], axis=-1)
        srgb_lin = np.clip(lin @ m.T, 0.0, 1.0)
        idx = (srgb_lin * scale + np.float32(0.5)).astype(np.int32)
        out[s:e] = np.rint(np.take(enc, idx) * maxv).astype(out.dtype)
    return out.reshape(rgb.shape)


@functools.lru_cache(maxsize=64)
def _linear_tables(profile: Profile, bits: int) -> tuple[np.ndarray, ...]:
    levels = 2**bits
    x = np.arange(levels, dtype=np.float64) / (levels - 1)
    return tuple(c(x).astype(np.float32) for c in profile.curves)


@functools.cache
def _encode_table() -> np.ndarray:
    """sRGB encoding of 2**20 + 1 linear levels: nearest-level rounding moves a value by under half a 16-bit code."""
    return _srgb_encode(np.linspace(0.0, 1.0, (1 << 20) + 1)).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _cms_transform(profile: Profile):
    src = ImageCms.ImageCmsProfile(io.BytesIO(profile.data))
    dst = ImageCms.ImageCmsProfile(io.BytesIO(srgb_profile_bytes()))
    return ImageCms.buildTransform(src, dst, "RGB", "RGB", renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)


def _littlecms(profile: Profile, rgb: np.ndarray) -> np.ndarray:
    im = ImageCms.applyTransform(Image.fromarray(np.ascontiguousarray(rgb)), _cms_transform(profile))
    return np.ascontiguousarray(np.asarray(im))


@functools.lru_cache(maxsize=16)
def _cms_cmyk_transform(data: bytes):
    src = ImageCms.ImageCmsProfile(io.BytesIO(data))
    dst = ImageCms.ImageCmsProfile(io.BytesIO(srgb_profile_bytes()))
    return ImageCms.buildTransform(src, dst, "CMYK", "RGB", renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)


def cmyk_to_srgb(im: Image.Image, icc: bytes) -> tuple[Image.Image, str]:
    """An 8-bit CMYK Pillow image through its profile to sRGB (LittleCMS), or Pillow's plain conversion."""
    try:
        profile = parse_profile(bytes(icc))
        if profile.colour_space != "CMYK":
            raise ProfileError(f"a {profile.colour_space} profile on a CMYK image")
        return ImageCms.applyTransform(im, _cms_cmyk_transform(profile.data)), \
            f"ICC profile '{profile.description}' applied (LittleCMS)"
    except (ProfileError, ImageCms.PyCMSError, OSError, ValueError) as exc:
        return im.convert("RGB"), f"ICC profile ignored ({exc}): CMYK converted without colour management"


def _equal_channels(rgb: np.ndarray) -> bool:
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))
