"""The full-resolution work in torch, on any device: ab upsampling, Lab -> sRGB, output depth, scores.

Why torch: on a GPU node the CPU cores cannot feed the GPU if they do the full-resolution pass (about
160 core-ms for a 1.7 MP image against a forward of well under a millisecond), so the inference actor
does it on its device. The same functions run on the CPU device, which is how the tests exercise them
without a GPU, and how the bench (``bench/compose_cost.py``) compares them with the numpy, Pillow and
table kernels on CPUs.

Every definition is the project's own, not a look-alike:

* ab upsampling is :meth:`Preprocessing.upsample_ab` (``F.interpolate``, bilinear or bicubic,
  ``align_corners=False``), done separably: across once at model height (``F.interpolate`` itself, the
  vertical taps are then exactly 0/1), then down band by band with the same taps and weights torch uses;
  so a band of output rows needs a band of memory, whatever the image size.
* Lab -> sRGB is :mod:`colorize_core.color`'s (skimage's constants, D65), in float32; a gray source's
  L comes from the table :func:`color.gray_l_lut` (bit-identical to ``srgb_to_l``).
* Quantisation is ``floor(clip(x) * max + 0.5)`` for uint8 (max 255) and uint16 (max 65535), as
  :func:`color.lab_to_srgb_uint8`.
* Scores reproduce scikit-image's settings: PSNR from an exact integer sum of squared differences with
  ``data_range`` the dtype's maximum (255 / 65535); SSIM with the 7x7 uniform window, K1 0.01, K2 0.03,
  sample covariance, the mean over the window-valid region (skimage's ``crop(S, pad)``) and over
  channels; the window sums are exact int64 sums and the moments float64, so the result equals skimage's
  float64 computation to rounding. Colourfulness is :func:`metrics.colorfulness` (Hasler & Suesstrunk M3
  from exact integer sums), in 0..255 units for uint16 pixels too.

Layout: images are channel-last ``[H, W]`` (gray, one channel end to end) or ``[H, W, 3]``, as decoded;
the work is done in bands of rows (``band_pixels`` per band) so every temporary is a band.

JPEG decode/encode on the GPU (nvJPEG through ``torchvision.io``) is a hook: :func:`decode_jpeg_on_device`
and :func:`encode_jpeg_on_device` return None where it does not apply (no torchvision, not a CUDA
device, a JPEG nvJPEG does not take), and the caller uses Pillow (:mod:`colorize_core.imageio`).
"""

from __future__ import annotations

import functools
import importlib
import math
import struct
import warnings
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from . import color
from .metrics import _ssim_window

__all__ = [
    "DEFAULT_BAND_PIXELS",
    "AbUpsampler",
    "upsample_taps",
    "source_l",
    "lab_to_srgb_codes",
    "compose_bands",
    "compose",
    "Colourfulness",
    "colourfulness",
    "psnr",
    "ssim",
    "compute_metrics",
    "jpeg_gpu_decodable",
    "decode_jpeg_on_device",
    "encode_jpeg_on_device",
]

# Pixels per band: on a CPU a band's float32 planes stay in cache; a GPU wants far larger bands (one
# kernel launch per op per band), so callers on CUDA pass e.g. 1 << 22.
DEFAULT_BAND_PIXELS = 1 << 16
DEVICE_BAND_PIXELS = 1 << 22  # a GPU's: ~4 MP per kernel launch



def _as_tensor(x, device: torch.device) -> torch.Tensor:
    """numpy / tensor -> tensor on ``device``; uint16 travels as its int16 bit pattern (torch's uint16 has
    few kernels) and is widened to int32 on arrival."""
    if isinstance(x, torch.Tensor):
        t = x
    else:
        arr = np.ascontiguousarray(x)
        with warnings.catch_warnings():  # decoded images are read-only numpy arrays; torch only reads them here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            t = torch.from_numpy(arr.view(np.int16) if arr.dtype == np.uint16 else arr)
        if arr.dtype == np.uint16:
            return t.to(device).to(torch.int32).bitwise_and_(0xFFFF)
    if t.dtype == torch.uint16:
        t = t.view(torch.int16).to(torch.int32).bitwise_and_(0xFFFF)
    return t.to(device)


def _bits(x) -> int:
    dtype = x.dtype
    if dtype in (np.uint8, torch.uint8):
        return 8
    if dtype in (np.uint16, torch.uint16):
        return 16
    raise ValueError(f"expected uint8 or uint16 pixels, got {dtype}; decode with colorize_core.imageio")


# --------------------------------------------------------------------------- ab upsampling


def upsample_taps(n_out: int, n_in: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Source rows and weights ``[n_out, taps]`` of a 1-D resize as ``F.interpolate(align_corners=False)``:
    :func:`colorize_core.render.axis_weights`, the one home of these taps (host and device upsample alike)."""
    from .render import axis_weights  # render imports this module

    return axis_weights(n_out, n_in, mode)


class AbUpsampler:
    """Model-size ab ``[2, h, w]`` -> any band of rows of the full-size ab ``[2, rows, W]``.

    The horizontal pass runs once, at model height, through ``F.interpolate`` (``[2, h, W]``: 20 MB for a
    10,000-pixel-wide scan at h = 256); :meth:`rows` applies the vertical taps to one band."""

    def __init__(self, ab, size: tuple[int, int], mode: str = "bilinear", device="cpu", saturation: float = 1.0):
        device = torch.device(device)
        ab = _as_tensor(ab, device).float()
        if ab.ndim != 3 or ab.shape[0] != 2:
            raise ValueError(f"ab must be [2, h, w], got {tuple(ab.shape)}")
        if saturation != 1.0:
            ab = ab * saturation
        height, width = size
        h, w = ab.shape[-2:]
        self.size = (int(height), int(width))
        self.ab_x = ab if w == width else F.interpolate(ab[None], size=(h, width), mode=mode,
                                                        align_corners=False)[0]
        idx, weights = upsample_taps(height, h, mode)
        self.idx = torch.from_numpy(idx).to(device)
        self.weights = torch.from_numpy(weights).to(device)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        idx, weights = self.idx[start:stop], self.weights[start:stop]
        out = self.ab_x.index_select(1, idx[:, 0]) * weights[None, :, 0, None]
        for k in range(1, idx.shape[1]):
            out.addcmul_(self.ab_x.index_select(1, idx[:, k]), weights[None, :, k, None])
        return out


# --------------------------------------------------------------------------- Lab -> sRGB


@functools.cache
def gray_l_table(bits: int) -> np.ndarray:
    """L* of every gray level of a ``bits``-bit channel (R = G = B), as :func:`color.srgb_to_l` gives it."""
    if bits == 8:
        return color.gray_l_lut()
    levels = np.arange(2**bits, dtype=np.uint16)
    return color.srgb_to_l(np.repeat(levels[:, None], 3, axis=1))


@functools.lru_cache(maxsize=8)
def _table_on(name: str, bits: int, device: str) -> torch.Tensor:
    if name == "gray_l":
        table = gray_l_table(bits)
    elif name == "decode":
        table = color._decode_lut(bits)
    else:  # "encode8": linear light at 16-bit steps -> uint8 code
        table = color._encode_lut()
    return torch.from_numpy(np.ascontiguousarray(table)).to(device)


def source_l(pixels: torch.Tensor) -> torch.Tensor:
    """L* (float32 ``[rows, W]``) of a band of decoded pixels: gray ``[rows, W]`` by table, colour
    ``[rows, W, 3]`` by the luminance row of color.py's matrix and the CIE f, all in float32.

    ``pixels`` holds codes as uint8 or as int32 (16-bit codes, see :func:`_as_tensor`)."""
    bits = 8 if pixels.dtype == torch.uint8 else 16
    device = str(pixels.device)
    if pixels.ndim == 2:
        return _table_on("gray_l", bits, device)[pixels.long()]
    lut = _table_on("decode", bits, device)
    m = color._XYZN_FROM_LINEAR[1]
    y = lut[pixels[..., 0].long()] * float(m[0])
    y.add_(lut[pixels[..., 1].long()], alpha=float(m[1])).add_(lut[pixels[..., 2].long()], alpha=float(m[2]))
    f = torch.where(y > color._LAB_EPSILON, y.clamp_min(color._LAB_EPSILON).pow(1.0 / 3.0),
                    y * color._LAB_SLOPE + color._LAB_OFFSET)
    return f.mul_(116.0).sub_(16.0)


def _f_inverse(f: torch.Tensor) -> torch.Tensor:
    return torch.where(f > color._LAB_F_THRESHOLD, f * f * f, (f - color._LAB_OFFSET) * (1.0 / color._LAB_SLOPE))


def lab_to_srgb_codes(light: torch.Tensor, a: torch.Tensor, b: torch.Tensor, bits: int = 8,
                      encode: str = "pow") -> torch.Tensor:
    """Planes L, a, b (float32, one shape ``S``) -> sRGB codes ``[*S, 3]``: uint8 for 8 bits, int32 holding
    0..65535 for 16 (the caller narrows it where it lands).

    ``encode``: "pow" evaluates the sRGB curve; "table" (8 bits only) quantises linear light to 16 bits and
    looks the code up (color.py's fast-path table: within one code of "pow")."""
    fy = (light + 16.0) * (1.0 / 116.0)
    xyz = (_f_inverse(a * (1.0 / 500.0) + fy), _f_inverse(fy), _f_inverse((fy - b * (1.0 / 200.0)).clamp_min_(0.0)))
    m = color._LINEAR_FROM_XYZN
    out = torch.empty((*light.shape, 3), dtype=torch.uint8 if bits == 8 else torch.int32, device=light.device)
    peak = float(2**bits - 1)
    for c in range(3):
        lin = xyz[0] * float(m[c, 0])
        lin.add_(xyz[1], alpha=float(m[c, 1])).add_(xyz[2], alpha=float(m[c, 2])).clamp_(0.0, 1.0)
        if encode == "table" and bits == 8:
            idx = lin.mul_(float(color._ENCODE_LEVELS)).add_(0.5).to(torch.int32)
            out[..., c] = _table_on("encode8", 8, str(light.device))[idx.long()]
            continue
        small = lin <= color._SRGB_ENCODE_THRESHOLD
        enc = lin.clamp_min(color._SRGB_ENCODE_THRESHOLD).pow_(1.0 / color._SRGB_GAMMA)
        enc.mul_(1.0 + color._SRGB_OFFSET).sub_(color._SRGB_OFFSET)
        enc = torch.where(small, lin * color._SRGB_SLOPE, enc).clamp_(0.0, 1.0)
        out[..., c] = enc.mul_(peak).add_(0.5).floor_().to(out.dtype)
    return out


# --------------------------------------------------------------------------- compose


def compose_bands(source, ab, *, mode: str = "bilinear", bits: int | None = None, saturation: float = 1.0,
                  device="cpu", band_pixels: int = DEFAULT_BAND_PIXELS,
                  encode: str = "pow") -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield ``(start, stop, rgb)`` for each band of rows of the colorized image: ``rgb`` is ``[rows, W, 3]``
    on ``device`` (uint8, or int32 codes for 16 bits). ``source`` is the decoded image ``[H, W]`` (gray) or
    ``[H, W, 3]``, uint8 or uint16, numpy or a tensor; its L is kept, ab comes from the model. ``bits`` is the
    output depth (default: the source's). A caller scores or copies each band before asking for the next."""
    device = torch.device(device)
    height, width = int(source.shape[0]), int(source.shape[1])
    out_bits = bits or _bits(source)
    up = AbUpsampler(ab, (height, width), mode, device, saturation)
    rows = max(1, band_pixels // max(width, 1))
    on_device = isinstance(source, torch.Tensor) and source.device == device
    for s in range(0, height, rows):
        e = min(height, s + rows)
        band = source[s:e] if on_device else _as_tensor(source[s:e], device)
        ab_band = up.rows(s, e)
        yield s, e, lab_to_srgb_codes(source_l(band), ab_band[0], ab_band[1], out_bits, encode)


def compose(source, ab, *, mode: str = "bilinear", bits: int | None = None, saturation: float = 1.0,
            device="cpu", band_pixels: int = DEFAULT_BAND_PIXELS, encode: str = "pow",
            scores: "Colourfulness | None" = None) -> np.ndarray:
    """The colorized image as a host numpy array ``[H, W, 3]`` (uint8 or uint16), band by band; ``scores``
    (a :class:`Colourfulness`) sees every band on the device as it is made."""
    height, width = int(source.shape[0]), int(source.shape[1])
    out_bits = bits or _bits(source)
    out = np.empty((height, width, 3), np.uint8 if out_bits == 8 else np.uint16)
    host = torch.from_numpy(out.view(np.int16) if out_bits == 16 else out)
    for s, e, rgb in compose_bands(source, ab, mode=mode, bits=out_bits, saturation=saturation, device=device,
                                   band_pixels=band_pixels, encode=encode):
        if scores is not None:
            scores.add(rgb, out_bits)
        host[s:e].copy_(rgb if out_bits == 8 else rgb.to(torch.int16))  # int16 bit pattern = the uint16 code
    return out


# --------------------------------------------------------------------------- scores


class Colourfulness:
    """Hasler & Suesstrunk M3 accumulated band by band from exact integer sums (:func:`metrics.colorfulness`'s
    statistic); 16-bit codes are scored in 0..255 units, like an 8-bit rendering of the same image."""

    def __init__(self) -> None:
        self.n = 0
        self.sums = [0, 0, 0, 0]  # rg, rg^2, 2yb, (2yb)^2
        self.scale = 1.0

    def add(self, rgb: torch.Tensor, bits: int = 8) -> None:
        px = rgb.reshape(-1, 3).to(torch.int64)
        self._add(px[:, 0], px[:, 1], px[:, 2])
        self.scale = 255.0 / (2**bits - 1)

    def add_words(self, words: torch.Tensor) -> None:
        """8-bit pixels packed as int32 words, R in the low byte (RGBX, little-endian, what a table compose
        produces): unpacked with shifts, no copy of the image."""
        words = words.reshape(-1)
        self._add(words & 255, (words >> 8) & 255, (words >> 16) & 255)

    def _add(self, r: torch.Tensor, g: torch.Tensor, b: torch.Tensor) -> None:
        rg = r - g
        yb2 = r + g - 2 * b  # int32 squares stay below 2**31 for 8-bit codes; int64 for 16-bit ones
        sums = torch.stack([rg.sum(), (rg * rg).sum(), yb2.sum(), (yb2 * yb2).sum()]).tolist()
        self.sums = [x + int(y) for x, y in zip(self.sums, sums)]
        self.n += r.numel()

    def value(self) -> float:
        s_rg, s_rg2, s_yb, s_yb2 = self.sums
        n = self.n
        if n == 0 or (s_rg2 == 0 and s_yb2 == 0):
            return 0.0
        var_rg = (s_rg2 - s_rg * s_rg / n) / n
        var_yb = (s_yb2 - s_yb * s_yb / n) / n / 4.0
        std_root = math.sqrt(max(var_rg + var_yb, 0.0))
        mean_root = math.sqrt((s_rg / n) ** 2 + (s_yb / n / 2.0) ** 2)
        return float(std_root + 0.3 * mean_root) * self.scale


def _rows_per_band(image, band_pixels: int) -> int:
    per_row = int(np.prod(image.shape[1:]))
    return max(1, band_pixels // max(per_row, 1))


def colourfulness(rgb, device="cpu", band_pixels: int = DEFAULT_BAND_PIXELS) -> float:
    """Colourfulness of an RGB image ``[H, W, 3]`` (uint8 / uint16; 0 for gray)."""
    acc, bits = Colourfulness(), _bits(rgb)
    rows = _rows_per_band(rgb, band_pixels)
    for s in range(0, rgb.shape[0], rows):
        acc.add(_as_tensor(rgb[s: s + rows], torch.device(device)), bits)
    return acc.value()


def _check_pair(pred, ref) -> int:
    if tuple(pred.shape) != tuple(ref.shape):
        raise ValueError(f"pred and ref must have the same shape, got {tuple(pred.shape)} and {tuple(ref.shape)}")
    bits = _bits(ref)
    if _bits(pred) != bits:
        raise ValueError(f"pred and ref must have the same dtype, got {pred.dtype} and {ref.dtype}")
    if len(ref.shape) not in (2, 3) or (len(ref.shape) == 3 and ref.shape[2] != 3):
        raise ValueError(f"expected [H, W] or [H, W, 3] images, got shape {tuple(ref.shape)}")
    return bits


def psnr(pred, ref, device="cpu", band_pixels: int = DEFAULT_BAND_PIXELS) -> float:
    """PSNR in dB as ``skimage.metrics.peak_signal_noise_ratio(ref, pred)`` (``data_range`` 255 or 65535);
    the mean squared error is an exact int64 sum. Identical images give ``inf``."""
    bits = _check_pair(pred, ref)
    device = torch.device(device)
    total = 0
    rows = _rows_per_band(ref, band_pixels)
    for s in range(0, ref.shape[0], rows):
        d = _as_tensor(pred[s: s + rows], device).to(torch.int64) - _as_tensor(ref[s: s + rows], device).to(torch.int64)
        total += int((d * d).sum())
    if total == 0:
        return math.inf
    mse = total / int(np.prod(ref.shape))
    return 10.0 * math.log10(float(2**bits - 1) ** 2 / mse)


def _window_sums(x: torch.Tensor, win: int) -> torch.Tensor:
    """Sums over every complete win x win window of ``x`` [rows, W, C] (int64, exact): [rows-win+1, W-win+1, C]."""
    c = F.pad(x.cumsum(0), (0, 0, 0, 0, 1, 0))
    x = c[win:] - c[:-win]
    c = F.pad(x.cumsum(1), (0, 0, 1, 0))
    return c[:, win:] - c[:, :-win]


def ssim(pred, ref, device="cpu", band_pixels: int = DEFAULT_BAND_PIXELS) -> float:
    """Mean SSIM as ``skimage.metrics.structural_similarity(ref, pred, data_range=255 or 65535)`` with its
    defaults (7x7 uniform window, K1 0.01, K2 0.03, sample covariance; ``channel_axis=-1`` for colour: the
    mean of the channels' means). Images under 7 pixels on a side use :func:`metrics._ssim_window`'s
    smaller window; under 3, NaN. Bands of rows overlap by the window, so memory is a band."""
    bits = _check_pair(pred, ref)
    win = _ssim_window(int(ref.shape[0]), int(ref.shape[1]))
    if win is None:
        return math.nan
    device = torch.device(device)
    peak = float(2**bits - 1)
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    n_win = win * win
    cov_norm = n_win / (n_win - 1)
    height = int(ref.shape[0])
    channels = 1 if len(ref.shape) == 2 else 3
    total = torch.zeros(channels, dtype=torch.float64, device=device)
    rows = max(_rows_per_band(ref, band_pixels), 2 * win)
    for s in range(0, height - win + 1, rows):
        e = min(height, s + rows + win - 1)  # windows starting in s .. s+rows-1
        x = _as_tensor(ref[s:e], device).to(torch.int64).reshape(e - s, int(ref.shape[1]), channels)
        y = _as_tensor(pred[s:e], device).to(torch.int64).reshape(e - s, int(ref.shape[1]), channels)
        sx, sy, sxx, syy, sxy = (_window_sums(v, win).double() / n_win for v in (x, y, x * x, y * y, x * y))
        vx = cov_norm * (sxx - sx * sx)
        vy = cov_norm * (syy - sy * sy)
        vxy = cov_norm * (sxy - sx * sy)
        s_map = ((2 * sx * sy + c1) * (2 * vxy + c2)) / ((sx * sx + sy * sy + c1) * (vx + vy + c2))
        total += s_map.sum(dim=(0, 1))
    count = (height - win + 1) * (int(ref.shape[1]) - win + 1)
    return float((total / count).mean())


def compute_metrics(pred: np.ndarray, ref: np.ndarray | None = None, device="cpu",
                    colourfulness_value: float | None = None) -> dict[str, float | None]:
    """:func:`metrics.compute_metrics` with PSNR, SSIM, RMSE and colourfulness on ``device`` (equal to it
    within 1e-4: exact integer sums, float64 moments); CIEDE2000 stays with scikit-image on the host.
    ``colourfulness_value``: already accumulated (a :class:`Colourfulness` fed during the compose)."""
    from . import metrics

    band = DEVICE_BAND_PIXELS if torch.device(device).type == "cuda" else DEFAULT_BAND_PIXELS
    colourful = colourfulness(pred, device, band) if colourfulness_value is None else colourfulness_value
    if ref is None:
        return {"psnr": None, "ssim": None, "rmse": None, "colorfulness": colourful, "deltae2000": None}
    bits = _check_pair(pred, ref)
    value = psnr(pred, ref, device, band)
    peak = float(2**bits - 1)
    return {"psnr": value, "ssim": ssim(pred, ref, device, band),
            "rmse": 0.0 if math.isinf(value) else peak / 10.0 ** (value / 20.0),
            "colorfulness": colourful, "deltae2000": metrics.deltae2000(pred, ref)}


# --------------------------------------------------------------------------- nvJPEG hook

_SOF_MARKERS = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame; C4 DHT, C8 JPG, CC DAC


def _jpeg_frame(data: bytes) -> tuple[int, int, int, bool] | None:
    """(SOF marker, sample precision, components, Adobe colour transform 0 seen) from a JPEG's header, or
    None if it is not a readable JPEG header. Reads marker segments only, never entropy-coded data."""
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        return None
    pos, adobe_rgb_or_cmyk = 2, False
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack(">H", data[pos + 2: pos + 4])
        segment = data[pos + 4: pos + 2 + length]
        if marker == 0xEE and segment[:5] == b"Adobe" and len(segment) >= 12:
            adobe_rgb_or_cmyk = segment[11] == 0  # transform 0: RGB or CMYK samples, not YCbCr/YCCK
        if marker in _SOF_MARKERS:
            if len(segment) < 6:
                return None
            return marker, segment[0], segment[5], adobe_rgb_or_cmyk
        if marker == 0xDA:  # start of scan before any frame header
            return None
        pos += 2 + length
    return None


def jpeg_gpu_decodable(data: bytes) -> bool:
    """True for the JPEGs handed to nvJPEG: baseline or extended sequential Huffman (SOF0/SOF1), 8-bit, gray
    or YCbCr colour. Progressive, lossless, arithmetic-coded, 12-bit, CMYK/YCCK and Adobe-RGB JPEGs go to
    Pillow, whose decoder handles all of them (and gives a bad file its row's reason)."""
    frame = _jpeg_frame(data)
    if frame is None:
        return False
    marker, precision, components, adobe_transform0 = frame
    return marker in (0xC0, 0xC1) and precision == 8 and components in (1, 3) and not adobe_transform0


@functools.cache
def _torchvision_io():
    """torchvision.io where it imports beside this torch (a mismatched build fails at import:
    'operator torchvision::nms does not exist'), else None."""
    try:
        return importlib.import_module("torchvision.io")
    except Exception:  # noqa: BLE001 - absent or built for another torch: the Pillow path serves
        return None


def decode_jpeg_on_device(data: bytes, device) -> torch.Tensor | None:
    """A JPEG decoded by nvJPEG on a CUDA ``device`` as stored (``[H, W]`` gray or ``[H, W, 3]`` uint8), or
    None: no torchvision, not CUDA, or a JPEG :func:`jpeg_gpu_decodable` refuses. The caller applies the EXIF
    orientation (read from the header, as imageio does) and falls back to Pillow on None."""
    device = torch.device(device)
    tvio = _torchvision_io()
    if tvio is None or device.type != "cuda" or not jpeg_gpu_decodable(data):
        return None
    frame = _jpeg_frame(data)
    mode = tvio.ImageReadMode.GRAY if frame[2] == 1 else tvio.ImageReadMode.RGB
    chw = tvio.decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode, device=device)
    return chw[0] if frame[2] == 1 else chw.permute(1, 2, 0)


def encode_jpeg_on_device(rgb: torch.Tensor, quality: int) -> bytes | None:
    """uint8 ``[H, W, 3]`` on a CUDA device -> JPEG bytes by nvJPEG (torchvision's CUDA encoder sets 4:4:4
    chroma, as imageio's Pillow encode), or None off CUDA or without torchvision: torchvision's CPU encoder
    subsamples chroma 4:2:0 with no option, so CPU encodes stay with Pillow. The bytes carry no metadata
    segments; a caller that needs them (EXIF, XMP, C2PA) inserts them after SOI."""
    tvio = _torchvision_io()
    if tvio is None or rgb.device.type != "cuda" or rgb.dtype != torch.uint8:
        return None
    return bytes(tvio.encode_jpeg(rgb.permute(2, 0, 1).contiguous(), quality=quality).cpu().numpy())

