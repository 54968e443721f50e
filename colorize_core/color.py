"""sRGB <-> CIE Lab (D65 white, 2 degree observer), float32, batch-first, numpy and torch.

Every constant is the one ``skimage.color.rgb2lab`` / ``lab2rgb`` use, so the colour
space here *is* skimage's (mean delta-E76 against skimage is ~1e-5): models trained
and scored with skimage's Lab keep working unchanged.  That includes skimage's rounded
forms of the CIE 6/29 constants (0.008856, 7.787, 0.2068966) rather than the exact
fractions, and its backward-compatible D65 white (0.95047, 1.0, 1.08883).

Why not call skimage: it works in float64 on whole arrays with boolean-mask indexing,
which on a 6-megapixel scan costs ~0.5 s and ~0.5 GB of temporaries.  The numpy path
below is single-threaded numpy on cache-sized chunks (no BLAS, so no thread
oversubscription inside a Ray worker): uint8/uint16 inputs are linearised through a
lookup table, the 3x3 matrix is applied plane by plane and temporaries never exceed a
couple of MB: ~9-12x faster than skimage on a 2000x3000 uint8 image, 3-6x on float input.

Layout: numpy functions are channel-last (``[..., 3]``, any leading dims) because that
is how decoded images arrive; torch functions are channel-first batches
(``[B, 3, H, W]``) because that is what the models consume.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

__all__ = [
    "srgb_to_lab",
    "lab_to_srgb",
    "lab_to_srgb_uint8",
    "srgb_to_l",
    "srgb_to_lab_torch",
    "lab_to_srgb_torch",
]

# --- constants, copied from skimage.color.colorconv (tests assert they still match) ---

# sRGB primaries -> CIE XYZ (skimage ``xyz_from_rgb``).
_XYZ_FROM_RGB = np.array(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ]
)
_RGB_FROM_XYZ = np.linalg.inv(_XYZ_FROM_RGB)
# skimage ``xyz_tristimulus_values(illuminant="D65", observer="2")``.
_D65_WHITE = np.array([0.95047, 1.0, 1.08883])

# The white point is folded into the matrices so that no separate scaling pass is needed:
# xyz / white = (M / white[:, None]) @ rgb  and  M^-1 @ (white * xyz_n) = (M^-1 * white) @ xyz_n.
_XYZN_FROM_LINEAR = (_XYZ_FROM_RGB / _D65_WHITE[:, None]).astype(np.float32)
_LINEAR_FROM_XYZN = (_RGB_FROM_XYZ * _D65_WHITE[None, :]).astype(np.float32)

# sRGB transfer function (IEC 61966-2-1).
_SRGB_DECODE_THRESHOLD = 0.04045  # on encoded values
_SRGB_ENCODE_THRESHOLD = 0.0031308  # on linear values
_SRGB_GAMMA = 2.4
_SRGB_SLOPE = 12.92
_SRGB_OFFSET = 0.055

# CIE Lab companding, skimage's rounded forms of (6/29)^3, (29/6)^2/3, 6/29 and 4/29.
_LAB_EPSILON = 0.008856
_LAB_SLOPE = 7.787
_LAB_F_THRESHOLD = 0.2068966
_LAB_OFFSET = 16.0 / 116.0

# Pixels per chunk in the numpy path: ~7 float32 planes of this length (~1.8 MB) stay in
# L2/L3 cache, which makes the memory-bound elementwise passes about twice as fast as
# whole-array passes and bounds temporary memory independently of the image size.
_CHUNK = 65536

_F32 = np.float32


# --------------------------------------------------------------------------- numpy


def _pow(x: np.ndarray, p: float, out: np.ndarray) -> np.ndarray:
    """x**p as exp2(p*log2(x)): numpy's float32 SIMD log2/exp2 are ~3x faster than its
    power() and within 3e-6 relative error, far below what Lab at float32 resolves.
    Non-positive x gives 0 or NaN; callers overwrite those with the linear branch."""
    with np.errstate(divide="ignore", invalid="ignore"):
        np.log2(x, out=out)
    out *= _F32(p)
    return np.exp2(out, out=out)


def _srgb_decode(x: np.ndarray) -> np.ndarray:
    """Encoded sRGB -> linear light, in place on a float32 array (skimage's rgb2xyz branch)."""
    small = x <= _F32(_SRGB_DECODE_THRESHOLD)
    lin_small = x[small] * _F32(1.0 / _SRGB_SLOPE) if small.any() else None
    x += _F32(_SRGB_OFFSET)
    x *= _F32(1.0 / (1.0 + _SRGB_OFFSET))
    _pow(x, _SRGB_GAMMA, out=x)
    if lin_small is not None:
        x[small] = lin_small
    return x


@functools.cache
def _decode_lut(bits: int) -> np.ndarray:
    """Linear value of every code of a ``bits``-bit channel, computed once in float64.

    A table lookup replaces the pow() for integer images and is exact to float32 rounding.
    """
    x = np.arange(2**bits, dtype=np.float64) / (2**bits - 1)
    lin = np.where(
        x > _SRGB_DECODE_THRESHOLD,
        ((x + _SRGB_OFFSET) / (1.0 + _SRGB_OFFSET)) ** _SRGB_GAMMA,
        x / _SRGB_SLOPE,
    )
    return lin.astype(np.float32)


def _lab_f(t: np.ndarray) -> np.ndarray:
    """CIE f(t) in place: cube root above epsilon, the tangent line below."""
    small = t <= _F32(_LAB_EPSILON)
    if small.any():
        t_small = t[small]
        np.cbrt(t, out=t)
        t[small] = t_small * _F32(_LAB_SLOPE) + _F32(_LAB_OFFSET)
    else:
        np.cbrt(t, out=t)
    return t


def _lab_f_inverse(f: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_lab_f` from ``f`` into ``out``."""
    np.multiply(f, f, out=out)
    out *= f
    small = f <= _F32(_LAB_F_THRESHOLD)
    if small.any():
        out[small] = (f[small] - _F32(_LAB_OFFSET)) * _F32(1.0 / _LAB_SLOPE)
    return out


def _matrix_row(m: np.ndarray, i: int, r, g, b, out, tmp) -> np.ndarray:
    """out = m[i,0]*r + m[i,1]*g + m[i,2]*b with a fixed operation order.

    Elementwise rather than BLAS on purpose: a K=3 product is memory-bound, multi-threaded
    OpenBLAS collapses (10x slower) when a Ray worker shares its cores, and a fixed order
    makes srgb_to_l bit-identical to the L channel of srgb_to_lab.
    """
    np.multiply(r, m[i, 0], out=out)
    np.multiply(g, m[i, 1], out=tmp)
    out += tmp
    np.multiply(b, m[i, 2], out=tmp)
    out += tmp
    return out


def _as_pixels(rgb: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.ndim < 1 or arr.shape[-1] != 3:
        raise ValueError(
            f"{name} expects a channel-last array of shape [..., 3], got shape {arr.shape}; "
            "move the channel axis last (np.moveaxis(x, 1, -1) for [B,3,H,W])."
        )
    return arr.reshape(-1, 3)


def _srgb_pixels_to_linear_planes(pix: np.ndarray, s: int, e: int, r, g, b) -> None:
    """Fill the planes r, g, b with linear light for pixels s:e of an [N,3] sRGB array."""
    if pix.dtype.kind == "u":  # uint8 / uint16 of either byte order (checked by caller)
        lut = _decode_lut(8 * pix.dtype.itemsize)
        for c, plane in enumerate((r, g, b)):
            np.take(lut, pix[s:e, c], out=plane, mode="clip")  # indices < len(lut)
    else:
        for c, plane in enumerate((r, g, b)):
            plane[...] = pix[s:e, c]
            _srgb_decode(plane)


def _check_rgb_dtype(dtype: np.dtype, name: str) -> None:
    if (dtype.kind == "u" and dtype.itemsize in (1, 2)) or dtype.kind == "f":
        return
    raise ValueError(
        f"{name} accepts uint8 (0..255), uint16 (0..65535) or float in [0, 1]; got dtype "
        f"{dtype}. Convert explicitly, e.g. x.astype(np.float32) / x_max."
    )


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB ``[..., 3]`` (uint8, uint16 or float in [0, 1]) -> float32 CIE Lab ``[..., 3]``.

    Integer inputs are scaled by their full range (/255, /65535) like skimage's
    ``img_as_float``. L is in [0, 100]; a, b roughly in [-128, 127]. Float inputs outside
    [0, 1] are converted with the same formula, unclipped, as skimage does.
    """
    pix = _as_pixels(rgb, "srgb_to_lab")
    _check_rgb_dtype(pix.dtype, "srgb_to_lab")
    n = pix.shape[0]
    lab = np.empty((n, 3), dtype=np.float32)
    buf = np.empty((7, min(_CHUNK, n)), dtype=np.float32)
    m = _XYZN_FROM_LINEAR
    for s in range(0, n, _CHUNK):
        e = min(n, s + _CHUNK)
        r, g, b, fx, fy, fz, tmp = (p[: e - s] for p in buf)
        _srgb_pixels_to_linear_planes(pix, s, e, r, g, b)
        for i, plane in enumerate((fx, fy, fz)):
            _lab_f(_matrix_row(m, i, r, g, b, plane, tmp))
        out = lab[s:e]
        np.multiply(fy, _F32(116.0), out=out[:, 0])
        out[:, 0] -= _F32(16.0)
        np.subtract(fx, fy, out=out[:, 1])
        out[:, 1] *= _F32(500.0)
        np.subtract(fy, fz, out=out[:, 2])
        out[:, 2] *= _F32(200.0)
    return lab.reshape(np.shape(rgb))


def srgb_to_l(rgb: np.ndarray) -> np.ndarray:
    """Lightness L* only, float32 ``[...]`` (input as in :func:`srgb_to_lab`).

    About half the work of srgb_to_lab: only the luminance row of the matrix and one
    cube root per pixel. It runs the exact same operations as srgb_to_lab's L channel, so
    the result is bit-identical to ``srgb_to_lab(rgb)[..., 0]`` (for gray inputs and
    any other). This is the model input for colorizing gray archive scans.
    """
    pix = _as_pixels(rgb, "srgb_to_l")
    _check_rgb_dtype(pix.dtype, "srgb_to_l")
    n = pix.shape[0]
    light = np.empty(n, dtype=np.float32)
    buf = np.empty((5, min(_CHUNK, n)), dtype=np.float32)
    for s in range(0, n, _CHUNK):
        e = min(n, s + _CHUNK)
        r, g, b, fy, tmp = (p[: e - s] for p in buf)
        _srgb_pixels_to_linear_planes(pix, s, e, r, g, b)
        _lab_f(_matrix_row(_XYZN_FROM_LINEAR, 1, r, g, b, fy, tmp))
        np.multiply(fy, _F32(116.0), out=light[s:e])
        light[s:e] -= _F32(16.0)
    return light.reshape(np.shape(rgb)[:-1])


def _lab_to_srgb_into(pix: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Shared body of lab_to_srgb / lab_to_srgb_uint8: [N,3] Lab -> [N,3] ``out``, by chunks."""
    n = pix.shape[0]
    buf = np.empty((7, min(_CHUNK, n)), dtype=np.float32)
    m = _LINEAR_FROM_XYZN
    to_uint8 = out.dtype == np.uint8
    for s in range(0, n, _CHUNK):
        e = min(n, s + _CHUNK)
        fx, fy, fz, x, y, z, tmp = (p[: e - s] for p in buf)
        fy[...] = pix[s:e, 0]
        fy += _F32(16.0)
        fy *= _F32(1.0 / 116.0)
        fx[...] = pix[s:e, 1]
        fx *= _F32(1.0 / 500.0)
        fx += fy
        fz[...] = pix[s:e, 2]
        fz *= _F32(-1.0 / 200.0)
        fz += fy
        # skimage clips negative z (very saturated blue-ish Lab outside the gamut) to 0.
        np.maximum(fz, _F32(0.0), out=fz)
        _lab_f_inverse(fx, x)
        _lab_f_inverse(fy, y)
        _lab_f_inverse(fz, z)
        for c, lin in enumerate((fx, fy, fz)):  # reuse the f planes for linear R, G, B
            _matrix_row(m, c, x, y, z, lin, tmp)
            # Clipping before encoding equals skimage's clip after it (the curve is
            # monotone with encode(0)=0, encode(1)=1) and keeps pow() away from negatives.
            np.clip(lin, _F32(0.0), _F32(1.0), out=lin)
            small = lin <= _F32(_SRGB_ENCODE_THRESHOLD)
            lin_small = lin[small] * _F32(_SRGB_SLOPE) if small.any() else None
            _pow(lin, 1.0 / _SRGB_GAMMA, out=tmp)
            tmp *= _F32(1.0 + _SRGB_OFFSET)
            tmp -= _F32(_SRGB_OFFSET)
            if lin_small is not None:
                tmp[small] = lin_small
            np.clip(tmp, _F32(0.0), _F32(1.0), out=tmp)
            if to_uint8:
                tmp *= _F32(255.0)
                tmp += _F32(0.5)
            out[s:e, c] = tmp  # float32 -> uint8 truncates, i.e. floors the +0.5
    return out


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """CIE Lab ``[..., 3]`` -> float32 sRGB ``[..., 3]`` in [0, 1], clipped like skimage.

    Out-of-gamut Lab (common in model predictions) is clipped silently instead of the
    warning skimage emits for negative Z, because a batch job would log it per image.
    """
    pix = _as_pixels(lab, "lab_to_srgb")
    out = np.empty(pix.shape, dtype=np.float32)
    return _lab_to_srgb_into(pix, out).reshape(np.shape(lab))


def lab_to_srgb_uint8(lab: np.ndarray) -> np.ndarray:
    """CIE Lab ``[..., 3]`` -> uint8 sRGB, rounding half up: ``floor(clip(x) * 255 + 0.5)``.

    Half-up (not numpy's half-to-even ``rint``) because it is one add and a truncating
    cast, the usual fixed-point convention; exact .5 ties practically never occur for
    computed floats, so the choice only matters for reproducibility, and it is fixed.
    Converted chunk-wise, so no full-size float32 image is ever allocated.
    """
    pix = _as_pixels(lab, "lab_to_srgb_uint8")
    out = np.empty(pix.shape, dtype=np.uint8)
    return _lab_to_srgb_into(pix, out).reshape(np.shape(lab))


# --------------------------------------------------------------------------- torch


def _check_chw(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 3 or x.shape[-3] != 3:
        raise ValueError(
            f"{name} expects a channel-first tensor [B, 3, H, W] (or [3, H, W]), got shape "
            f"{tuple(x.shape)}; for channel-last data use x.permute(0, 3, 1, 2)."
        )
    if not x.is_floating_point():
        raise ValueError(
            f"{name} expects a floating point tensor, got {x.dtype}; for uint8 images use "
            "x.float() / 255."
        )


def _apply_matrix(m: np.ndarray, x: torch.Tensor) -> torch.Tensor:
    mt = torch.as_tensor(m, dtype=x.dtype, device=x.device)
    return torch.einsum("ij,...jhw->...ihw", mt, x)


def srgb_to_lab_torch(rgb: torch.Tensor) -> torch.Tensor:
    """Differentiable sRGB ``[B, 3, H, W]`` in [0, 1] -> Lab ``[B, 3, H, W]``, same maths as numpy.

    Each nonlinear branch is evaluated on an input clamped into its own domain, so the
    branch that torch.where discards cannot inject inf/NaN into the gradient.
    """
    _check_chw(rgb, "srgb_to_lab_torch")
    t = _SRGB_DECODE_THRESHOLD
    lin = torch.where(
        rgb > t,
        ((rgb.clamp_min(t) + _SRGB_OFFSET) / (1.0 + _SRGB_OFFSET)) ** _SRGB_GAMMA,
        rgb / _SRGB_SLOPE,
    )
    xyz = _apply_matrix(_XYZN_FROM_LINEAR, lin)
    eps = _LAB_EPSILON
    f = torch.where(
        xyz > eps, xyz.clamp_min(eps) ** (1.0 / 3.0), xyz * _LAB_SLOPE + _LAB_OFFSET
    )
    fx, fy, fz = f.unbind(dim=-3)
    return torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), dim=-3)


def lab_to_srgb_torch(lab: torch.Tensor) -> torch.Tensor:
    """Differentiable Lab ``[B, 3, H, W]`` -> sRGB ``[B, 3, H, W]`` clamped to [0, 1].

    Clamping (like skimage's clip) zeroes the gradient of out-of-gamut channels; a training
    loss that must push predictions back into gamut should be computed in Lab.
    """
    _check_chw(lab, "lab_to_srgb_torch")
    light, a, b = lab.unbind(dim=-3)
    fy = (light + 16.0) / 116.0
    fx = a / 500.0 + fy
    fz = (fy - b / 200.0).clamp_min(0.0)
    f = torch.stack((fx, fy, fz), dim=-3)
    xyz = torch.where(
        f > _LAB_F_THRESHOLD, f**3, (f - _LAB_OFFSET) / _LAB_SLOPE
    )
    lin = _apply_matrix(_LINEAR_FROM_XYZN, xyz)
    t = _SRGB_ENCODE_THRESHOLD
    srgb = torch.where(
        lin > t,
        (1.0 + _SRGB_OFFSET) * lin.clamp_min(t) ** (1.0 / _SRGB_GAMMA) - _SRGB_OFFSET,
        lin * _SRGB_SLOPE,
    )
    return srgb.clamp(0.0, 1.0)


# --------------------------------------------------------------------------- fast compose path

# Linear light -> uint8 sRGB by table: linear values quantised to 16 bits (error below 0.06 of a code at the
# steepest point of the curve, near black), then one lookup, instead of a pow() per channel.
_ENCODE_LEVELS = 65535


@functools.cache
def _encode_lut() -> np.ndarray:
    lin = np.arange(_ENCODE_LEVELS + 1, dtype=np.float64) / _ENCODE_LEVELS
    enc = np.where(lin > _SRGB_ENCODE_THRESHOLD,
                   (1.0 + _SRGB_OFFSET) * lin ** (1.0 / _SRGB_GAMMA) - _SRGB_OFFSET, lin * _SRGB_SLOPE)
    return np.floor(np.clip(enc, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@functools.cache
def gray_l_lut() -> np.ndarray:
    """L* of each 8-bit gray level (R = G = B), bit-identical to :func:`srgb_to_l` of that pixel."""
    v = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    return srgb_to_l(v)


def _f_inverse_fast(f: np.ndarray, out: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """:func:`_lab_f_inverse` without boolean indexing: both branches, then a select (no gather/scatter)."""
    np.multiply(f, f, out=out)
    out *= f
    np.subtract(f, _F32(_LAB_OFFSET), out=tmp)
    tmp *= _F32(1.0 / _LAB_SLOPE)
    np.copyto(out, tmp, where=f <= _F32(_LAB_F_THRESHOLD))
    return out


def lab_planes_to_srgb_uint8(light: np.ndarray, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Planes L, a, b (float32, same shape [N]) -> ``out`` uint8 [N, 3]: the maths of
    :func:`lab_to_srgb_uint8` in float32 with the sRGB encoding by table (within one code of it).

    Callers pass cache-sized planes (see :data:`_CHUNK`); every temporary is the size of one plane."""
    n = light.shape[0]
    fx, fy, fz, x, y, z, tmp = np.empty((7, n), dtype=np.float32)
    np.add(light, _F32(16.0), out=fy)
    fy *= _F32(1.0 / 116.0)
    np.multiply(a, _F32(1.0 / 500.0), out=fx)
    fx += fy
    np.multiply(b, _F32(-1.0 / 200.0), out=fz)
    fz += fy
    np.maximum(fz, _F32(0.0), out=fz)
    _f_inverse_fast(fx, x, tmp)
    _f_inverse_fast(fy, y, tmp)
    _f_inverse_fast(fz, z, tmp)
    lut = torch.from_numpy(_encode_lut())
    idx = torch.empty(n, dtype=torch.int32)
    code = torch.empty(n, dtype=torch.uint8)
    m = _LINEAR_FROM_XYZN
    for c in range(3):
        lin = _matrix_row(m, c, x, y, z, fx, tmp)
        np.clip(lin, _F32(0.0), _F32(1.0), out=lin)
        lin *= _F32(_ENCODE_LEVELS)
        lin += _F32(0.5)
        idx.numpy()[...] = lin  # truncation of x + 0.5: nearest level
        torch.index_select(lut, 0, idx, out=code)  # ~2x numpy's take on this 64 KiB table
        out[:, c] = code.numpy()
    return out
