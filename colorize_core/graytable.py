"""The CPU compose for 8-bit gray scans, the archive's bulk: one table gather per pixel, no float per pixel.

A gray source keeps its L exactly, so an output pixel is a function of (a, b, gray level) alone. With a and b
rounded to whole Lab units, that function is a table of 256 x 256 x 256 RGBX words (64 MiB, each slice of one
a value built on first use from :func:`torchpath.lab_to_srgb_codes`, i.e. color.py's maths). ab is upsampled
as bytes (``round(x) + 128``, clipped to [-128, 127]) by torch's uint8 bilinear kernel, two bytes of one
32-bit word per pixel; the gray level goes into the word's spare byte, and the word *is* the table index.
The result is RGBX words, which Pillow's JPEG encoder takes without a copy (:func:`encode_jpeg`).

Fidelity (bench/compose_cost.py, docs/cost.md): the only error is ab's, at most 1 unit in a and in b (half
from rounding the model's ab, half from the kernel's rounding), so dE76 <= 1.41 before the output's own 8-bit
rounding; 51 dB PSNR against the float64 per-image loop (the bound is 40 dB). Cost: 0.14-0.27x the float32
compose of stages.compose_image, measured side by side. Bilinear only: torch's uint8 bicubic is another kernel
than ``F.interpolate``'s float bicubic, so a bicubic ``ab_upsample`` uses :class:`torchpath.AbUpsampler` and
rounds (:func:`compose_gray8` with ``mode="bicubic"``).
"""

from __future__ import annotations

import functools
import io
import threading
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import color, torchpath

__all__ = ["STRIP_COLUMNS", "table", "compose_gray8", "rgb_view", "encode_jpeg"]

STRIP_COLUMNS = 128
"""Columns per strip: the upsampled words of one strip are H x 128 x 4 bytes (5 MB for a 10,000-row scan)."""


class _Table:
    """The [a][b][gray] RGBX words, filled one a-slice at a time as images need them (an image's a range
    spans a few dozen of the 256 slices; a slice is 65,536 conversions, ~10 ms)."""

    def __init__(self) -> None:
        self.words = torch.empty(1 << 24, dtype=torch.int32)  # pages are touched only where slices are built
        self.built = np.zeros(256, bool)
        self.lock = threading.Lock()
        light = torch.from_numpy(color.gray_l_lut())
        self._light = light[None, :].expand(256, 256).contiguous()  # [b, gray]
        self._b = (torch.arange(256, dtype=torch.float32) - 128)[:, None].expand(256, 256).contiguous()

    def ensure(self, lo: int, hi: int) -> None:
        """Build the slices of a indices lo..hi (inclusive) that are missing."""
        with self.lock:
            for i in np.flatnonzero(~self.built[lo: hi + 1]) + lo:
                rgb = torchpath.lab_to_srgb_codes(self._light, torch.full((256, 256), float(i - 128)), self._b)
                rgbx = torch.full((256, 256, 4), 255, dtype=torch.uint8)
                rgbx[..., :3] = rgb
                self.words[i << 16: (i + 1) << 16] = rgbx.view(torch.int32).reshape(-1)
                self.built[i] = True


@functools.cache
def table() -> _Table:
    """The process's table (one per Ray worker process, shared by its threads)."""
    return _Table()


def _ab_indices(ab: np.ndarray, saturation: float) -> np.ndarray:
    """Model-size ab [2, h, w] -> uint8 indices round(x * saturation) + 128, clipped to 0..255."""
    return np.clip(np.rint(np.asarray(ab, np.float32) * np.float32(saturation)) + 128, 0, 255).astype(np.uint8)


def _packed(q: np.ndarray) -> torch.Tensor:
    """[1, 4, h, w] uint8 channels-last, bytes (0, b, a, 0) per pixel: a pixel's word is a << 16 | b << 8."""
    x = torch.zeros((1, 4, *q.shape[1:]), dtype=torch.uint8)
    x[0, 1], x[0, 2] = torch.from_numpy(q[1]), torch.from_numpy(q[0])
    return x.contiguous(memory_format=torch.channels_last)


def compose_gray8(gray: np.ndarray, ab: np.ndarray, *, mode: str = "bilinear", saturation: float = 1.0) -> np.ndarray:
    """8-bit gray ``[H, W]`` + model-size ab ``[2, h, w]`` -> RGBX words ``[H, W]`` (uint32; R in the low byte).

    Bilinear: the uint8 kernel, across once at model height (``[h, W]`` words), then each strip of columns
    down (F.interpolate with an unchanged width is the identity across, so each strip equals the whole-image
    call bit for bit). Bicubic: ab upsampled in float32 by :class:`torchpath.AbUpsampler` band by band and
    rounded. Memory beyond the output: a strip or a band."""
    gray = np.asarray(gray)
    if gray.dtype != np.uint8 or gray.ndim != 2:
        raise ValueError(f"compose_gray8 takes 8-bit gray [H, W], got {gray.dtype} {gray.shape}")
    height, width = gray.shape
    q = _ab_indices(ab, saturation)
    lut = table()
    lut.ensure(int(q[0].min()), int(q[0].max()))  # bilinear stays within the model's range; bicubic below
    out = np.empty((height, width), np.uint32)
    out_t = torch.from_numpy(out.view(np.int32))
    with warnings.catch_warnings():  # a decoded image is often read-only (Pillow's buffer); it is only read here
        warnings.simplefilter("ignore", UserWarning)
        g = torch.from_numpy(gray)
    if mode == "bilinear":
        across = F.interpolate(_packed(q), size=(q.shape[1], width), mode="bilinear", align_corners=False)
        for c0 in range(0, width, STRIP_COLUMNS):
            c1 = min(width, c0 + STRIP_COLUMNS)
            words = F.interpolate(across[:, :, :, c0:c1], size=(height, c1 - c0), mode="bilinear",
                                  align_corners=False).contiguous(memory_format=torch.channels_last)  # (1x1 ab)
            words[0, 0] = g[:, c0:c1]  # byte 0 of each word (channels-last: a pixel's first byte)
            out_t[:, c0:c1] = lut.words.index_select(0, words.permute(0, 2, 3, 1).view(torch.int32).reshape(-1)
                                                     ).view(height, c1 - c0)
        return out
    up = torchpath.AbUpsampler(ab, (height, width), mode, saturation=saturation)
    rows = max(1, torchpath.DEFAULT_BAND_PIXELS // width)
    for s in range(0, height, rows):
        e = min(height, s + rows)
        idx = up.rows(s, e).add_(128.5).clamp_(0.0, 255.0).to(torch.int32)  # round half up, clipped
        lut.ensure(int(idx[0].min()), int(idx[0].max()))  # bicubic may overshoot the model's range
        word = (idx[0] << 16).bitwise_or_(idx[1] << 8).bitwise_or_(g[s:e].to(torch.int32))
        out_t[s:e] = lut.words.index_select(0, word.reshape(-1)).view(e - s, width)
    return out


def rgb_view(words: np.ndarray) -> np.ndarray:
    """The ``[H, W, 3]`` uint8 view of RGBX words (no copy; strided: np.ascontiguousarray where needed)."""
    return words.view(np.uint8).reshape(*words.shape, 4)[..., :3]


def encode_jpeg(words: np.ndarray, quality: int = 95) -> bytes:
    """RGBX words -> JPEG 4:4:4 as imageio.encode_image writes it (the same bytes), without the copy that
    ``Image.fromarray`` makes of an [H, W, 3] array."""
    height, width = words.shape
    im = Image.frombuffer("RGBX", (width, height), np.ascontiguousarray(words), "raw", "RGBX", 0, 1)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, subsampling=0)
    return buf.getvalue()
