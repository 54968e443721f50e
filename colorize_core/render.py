"""How an image is colorized: the one path the job's stages, the evaluate job, the CLI, training validation and
the bench all run, so a score, a delivered file and a benchmark figure come from the same code.

The weights' :class:`~colorize_core.models.preprocess.Preprocessing` owns it:

1. **model L**: the image decoded only as far as the model needs (:func:`decode_reduced`: JPEGs at a reduced
   DCT scale), resized to ``input_size`` with the weights' ``resize`` filter and converted to L
   (``Preprocessing.model_l``); hint maps at that size (:func:`hint_maps`);
2. the model's ab at model size (:func:`predict_ab` in process; the job's inference actors do the same forward
   at the precision they chose);
3. **compose** (:func:`compose`): the original full-resolution L, kept untouched, joined with the ab upsampled
   with the weights' ``ab_upsample`` (bilinear or bicubic, as ``torch.nn.functional.interpolate`` with
   ``align_corners=False``) and converted to sRGB at the output's depth, band by band, so a 100 MP scan needs
   the source and output buffers plus a few MB.

Encoding is :func:`colorize_core.imageio.encode_image`, the one encoder every caller uses.

Numerics, and why they are the ones for evaluation too: an 8-bit output goes through
:func:`color.lab_planes_to_srgb_uint8` (float32, the sRGB curve by table). Against the float64 reference
(scikit-image ``lab2rgb`` of float64 L and float64-upsampled ab, rounded) it is within 1 code everywhere
and differs in fewer than 1% of the values (0.2% measured; ``tests/test_render.py`` pins both), which
moves PSNR by well under 0.01 dB; so evaluation scores exactly the pixels the job delivers, rather than a
slower exact conversion that no user receives. An 8-bit gray source composed to 8 bits (the archive's bulk)
goes through :mod:`colorize_core.graytable` instead: ab rounded to whole Lab units and one table gather per
pixel, 0.14-0.27x the cost (docs/cost.md); its only error is ab's (at most 1 unit in a and b), 48-52 dB
PSNR against the same reference (the bound is 40 dB), up to ~12 codes on single channels where the sRGB
curve is steep near black. A 16-bit output (``depth=16``) goes through the float32 :func:`color.lab_to_srgb`
and is within 2 codes of 65535 of the same reference.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from . import color, graytable, imageio, torchpath
from .errors import InputError
from .hints import paint_hints
from .models.preprocess import Preprocessing

DEPTHS = (8, 16)

# A JPEG is decoded for the model at a DCT scale (1/2, 1/4, 1/8) that keeps at least this many times the
# model's input size on each side, so the resize to model size still sees a well-sampled image.
DRAFT_OVERSAMPLE = 2

# Pixels of the full-resolution image composed at a time: bounds every temporary (a 100 MP scan included) to a
# few cache-sized float32 planes, whatever the image size.
COMPOSE_CHUNK_PIXELS = 1 << 16

# 8-bit gray to 8 bits through graytable's table (ab at whole units: 48-52 dB of the float64 reference at
# 0.14-0.27x the cost); False takes the float32 path (within 1 code), as phase 1 did: the bench's "before".
GRAY_TABLE = True

# torch's bicubic kernel (upsample_bicubic2d): Keys' cubic convolution with a = -0.75.
_CUBIC_A = -0.75


# --------------------------------------------------------------------------- 1. model L and hints


def decode_reduced(data: bytes, size: tuple[int, int], max_pixels: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(pixels at no less than ``DRAFT_OVERSAMPLE`` x ``size``, the image's full (H, W) as displayed); gray
    sources one channel ``[h, w]``, as :attr:`imageio.DecodedImage.pixels`.

    8-bit gray and RGB JPEGs (the archive's bulk) are decoded at a reduced DCT scale (Pillow's draft mode):
    a fraction of a full decode, with the embedded ICC profile applied as :func:`imageio.decode_image` applies
    it (:func:`colorize_core.icc.apply_profile`), so the model sees the L the compose keeps. Anything else, and
    any JPEG the fast path does not take, goes through :func:`imageio.decode_image` at full size with its
    guards and its reasons for bad files."""
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as im:
            if im.format == "JPEG" and im.mode in ("L", "RGB") and im.width * im.height <= max_pixels:
                side = DRAFT_OVERSAMPLE * max(size)
                try:
                    orientation = int(im.getexif().get(0x0112, 1))
                except Exception:  # noqa: BLE001 - unreadable EXIF keeps the stored orientation
                    orientation = 1
                full = (im.width, im.height) if orientation in (5, 6, 7, 8) else (im.height, im.width)
                im.draft(im.mode, (side, side))
                im.load()
                try:
                    ImageOps.exif_transpose(im, in_place=True)
                except Exception:  # noqa: BLE001 - as imageio.decode_image: bad EXIF must not cost pixels
                    pass
                arr = np.asarray(im)
                if arr.shape[:2] and (arr.ndim == 2 or arr.shape[2] == 3):
                    profile = im.info.get("icc_profile")
                    if profile:
                        arr = imageio.managed_pixels(arr, profile, gray_source=im.mode == "L")[0]
                    return arr, full
    except Exception:  # noqa: BLE001 - the full decode below gives the row its reason
        pass
    pixels = imageio.decode_image(data, max_pixels=max_pixels).pixels
    return pixels, (pixels.shape[0], pixels.shape[1])


def reduce_decoded(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A full-resolution decode brought down for the model as :func:`decode_reduced`'s draft scale would be:
    by the largest factor of 2, 4 or 8 that keeps at least ``DRAFT_OVERSAMPLE`` x ``size`` on each side, here
    as a box average (Pillow's ``reduce``; the draft's scaled IDCT is a low-pass of the same blocks). For a
    process that decodes the source at full resolution anyway (the fused layout's actor): one decode, not two.
    Anything but 8-bit gray or RGB comes back as it is (the model's resize takes it whole)."""
    if pixels.dtype != np.uint8 or not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)):
        return pixels
    side = DRAFT_OVERSAMPLE * max(size)
    height, width = pixels.shape[:2]
    factor = next((k for k in (8, 4, 2) if -(-width // k) >= side and -(-height // k) >= side), 1)
    if factor == 1:
        return pixels
    return np.asarray(Image.fromarray(np.ascontiguousarray(pixels)).reduce(factor))


def hint_maps(hints: Any, pre: Preprocessing, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """SIGGRAPH17 hint map [2,h,w] and mask [1,h,w] at the model's input size; a bad hint is the input's fault
    (:class:`InputError`)."""
    try:
        return paint_hints(hints, pre.input_size, radius)
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"bad hint: {exc}") from exc


# --------------------------------------------------------------------------- 2. the model's ab


@torch.inference_mode()
def predict_ab(module: torch.nn.Module, l: np.ndarray, hint_ab: np.ndarray | None = None,
               hint_mask: np.ndarray | None = None) -> np.ndarray:
    """Model-size L [B,1,h,w] (and hint maps) -> ab [B,2,h,w] float32, fp32 on the module's device."""
    device = next(module.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(l, dtype=np.float32)).to(device)
    if hint_ab is None:
        out = module(x)
    else:
        out = module(x, torch.from_numpy(np.ascontiguousarray(hint_ab, dtype=np.float32)).to(device),
                     torch.from_numpy(np.ascontiguousarray(hint_mask, dtype=np.float32)).to(device))
    return out.float().cpu().numpy()


# --------------------------------------------------------------------------- 3. compose


def axis_weights(n_out: int, n_in: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Source indices [n_out, taps] and weights [n_out, taps] of a 1-D resize from ``n_in`` to ``n_out``
    samples, as ``torch.nn.functional.interpolate(mode=..., align_corners=False)`` computes them (bilinear:
    2 taps, negative source positions clamped to 0; bicubic: 4 taps, a = -0.75, indices clamped at the
    borders)."""
    scale = n_in / n_out
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    if mode == "bilinear":
        src = np.clip(src, 0, None)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        t = src - i0
        idx = np.stack([i0, np.minimum(i0 + 1, n_in - 1)], axis=1)
        w = np.stack([1.0 - t, t], axis=1)
    elif mode == "bicubic":
        i0 = np.floor(src).astype(np.int64)
        t = src - i0
        a = _CUBIC_A

        def near(x):  # |x| <= 1
            return ((a + 2) * x - (a + 3)) * x * x + 1

        def far(x):  # 1 < |x| < 2
            return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

        idx = np.clip(np.stack([i0 - 1, i0, i0 + 1, i0 + 2], axis=1), 0, n_in - 1)
        w = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)
    else:
        raise ValueError(f"ab upsampling must be 'bilinear' or 'bicubic', got {mode!r}")
    return idx, w.astype(np.float32)


def _l_rows(source: np.ndarray, is_gray: bool):
    """``(start, stop) -> L of those rows``: a table for gray (one channel ``[H, W]``, or ``is_gray`` RGB read from
    channel 0), else :func:`color.srgb_to_l` per band, so no full-resolution float image is ever held."""
    if source.ndim == 2 or is_gray:
        plane = source if source.ndim == 2 else source[..., 0]
        lut = torchpath.gray_l_table(8 if plane.dtype == np.uint8 else 16)
        return lambda s, e: np.take(lut, plane[s:e])
    return lambda s, e: color.srgb_to_l(source[s:e])


def _gray8(source: np.ndarray, is_gray: bool) -> np.ndarray | None:
    """The 8-bit gray plane ``[H, W]`` the table compose takes, or None when the source is not 8-bit gray."""
    if source.dtype != np.uint8:
        return None
    if source.ndim == 2:
        return source
    return source[..., 0] if is_gray else None


def compose(source: np.ndarray, ab_model: np.ndarray, pre: Preprocessing, *, saturation: float = 1.0,
            is_gray: bool = False, depth: int = 8, device: str | None = None,
            scores: torchpath.Colourfulness | None = None) -> np.ndarray:
    """The decoded source (gray ``[H,W]`` or RGB ``[H,W,3]``, uint8 or uint16) + model-size ab [2,h,w] -> sRGB
    [H,W,3] at ``depth`` bits (uint8 or uint16).

    The source's L is kept untouched, so the output's luminance and geometry are the input's; the ab is
    scaled by ``saturation`` and upsampled as ``pre.ab_upsample`` says. ``is_gray`` (an RGB source with no
    colour) lets L come from channel 0 by table; a one-channel source is gray. ``ab_model`` of shape [2,1,1]
    zeros is the gray baseline.

    An 8-bit gray source composed to 8 bits (the archive's bulk) takes :func:`graytable.compose_gray8`: one
    table gather per pixel, no float per pixel; the result is then the ``[H,W,3]`` view of RGBX words
    (:func:`graytable.rgb_view`), which :func:`imageio.encode_image` encodes without a copy. Everything else
    goes in one float32 pass over bands of rows (separable upsampling: across once at model height, then down
    per band, the same weights as torch's).

    ``device`` (a GPU actor's, or ``"cpu"``) does the whole full-resolution pass in torch there instead
    (:func:`torchpath.compose`: the same upsampling, color.py's Lab -> sRGB with the sRGB curve by pow, ~98 dB
    of the float64 reference), in large bands; ``scores`` (a :class:`torchpath.Colourfulness`) then sees each
    band on the device. Only the finished image comes back to the host."""
    if depth not in DEPTHS:
        raise ValueError(f"depth must be one of {DEPTHS}, got {depth!r}")
    if not (source.ndim == 2 or (source.ndim == 3 and source.shape[2] == 3)):
        raise ValueError(f"compose expects the source as gray [H,W] or RGB [H,W,3], got shape {source.shape}")
    ab_model = np.asarray(ab_model)
    if ab_model.ndim != 3 or ab_model.shape[0] != 2:
        raise ValueError(f"compose expects ab as [2,h,w], got shape {ab_model.shape}")
    if device is not None:
        gray_plane = source[..., 0] if source.ndim == 3 and is_gray else source  # one channel to the device
        band = torchpath.DEVICE_BAND_PIXELS if torch.device(device).type == "cuda" else torchpath.DEFAULT_BAND_PIXELS
        return torchpath.compose(np.ascontiguousarray(gray_plane), ab_model, mode=pre.ab_upsample, bits=depth,
                                 saturation=saturation, device=device, band_pixels=band, scores=scores)
    if scores is not None:
        raise ValueError("scores are accumulated on a device: pass device")
    plane = _gray8(source, is_gray) if GRAY_TABLE else None
    if plane is not None and depth == 8:
        return graytable.rgb_view(graytable.compose_gray8(plane, ab_model, mode=pre.ab_upsample,
                                                          saturation=saturation))
    height, width = source.shape[:2]
    l_rows = _l_rows(source, is_gray)
    ab = torch.from_numpy(np.array(ab_model, dtype=np.float32))  # a writable copy
    if saturation != 1.0:
        ab *= saturation
    h = ab.shape[-2]
    ab_x = torch.nn.functional.interpolate(ab[None], size=(h, width), mode=pre.ab_upsample, align_corners=False)[0]
    idx, w = (torch.from_numpy(v) for v in axis_weights(height, h, pre.ab_upsample))
    out = np.empty((height, width, 3), np.uint8 if depth == 8 else np.uint16)
    band = max(1, COMPOSE_CHUNK_PIXELS // max(width, 1))
    for s in range(0, height, band):
        e = min(height, s + band)
        ab_band = ab_x.index_select(1, idx[s:e, 0]) * w[None, s:e, 0, None]
        for k in range(1, idx.shape[1]):
            ab_band.addcmul_(ab_x.index_select(1, idx[s:e, k]), w[None, s:e, k, None])
        a, b = ab_band.reshape(2, -1).numpy()
        light = np.ascontiguousarray(l_rows(s, e), dtype=np.float32).reshape(-1)
        if depth == 8:
            color.lab_planes_to_srgb_uint8(light, a, b, out[s:e].reshape(-1, 3))
        else:
            srgb = color.lab_to_srgb(np.stack([light, a, b], axis=-1))
            out[s:e] = np.floor(srgb * np.float32(65535.0) + np.float32(0.5)).reshape(e - s, width, 3)
    return out


def gray(rgb: np.ndarray, *, is_gray: bool = False, depth: int = 8) -> np.ndarray:
    """The gray baseline: the source's L alone (ab = 0), through the same compose."""
    return compose(rgb, np.zeros((2, 1, 1), np.float32), _GRAY, is_gray=is_gray, depth=depth)


_GRAY = Preprocessing((1, 1))  # any will do: a constant ab upsamples to itself


# --------------------------------------------------------------------------- in process: all three


def colorize(module: torch.nn.Module, images: Sequence[np.ndarray | imageio.DecodedImage], pre: Preprocessing, *,
             saturation: float = 1.0, hints: Sequence[Any] | None = None, hint_radius: int = 2,
             batch_size: int = 8, depth: int = 8) -> list[np.ndarray]:
    """Decoded images (RGB arrays or :class:`~colorize_core.imageio.DecodedImage`) -> colorized RGB at full
    resolution, in batches of ``batch_size``: the CLI's and training validation's path, the job's stages in one
    process. ``hints`` (one entry per image, each a list of {x, y, a, b} or None) go to a model that takes them;
    without any, the model gets L alone."""
    module.eval()
    out: list[np.ndarray] = []
    for s in range(0, len(images), batch_size):
        chunk = images[s: s + batch_size]
        rgbs = [im.pixels if isinstance(im, imageio.DecodedImage) else im for im in chunk]
        grays = [im.is_gray if isinstance(im, imageio.DecodedImage) else False for im in chunk]
        l = np.stack([pre.model_l(rgb) for rgb in rgbs])[:, None]
        chunk_hints = list(hints[s: s + batch_size]) if hints is not None else []
        if any(h for h in chunk_hints):
            maps = [hint_maps(h, pre, hint_radius) for h in chunk_hints]
            ab = predict_ab(module, l, np.stack([m[0] for m in maps]), np.stack([m[1] for m in maps]))
        else:
            ab = predict_ab(module, l)
        out += [compose(rgb, a, pre, saturation=saturation, is_gray=g, depth=depth)
                for rgb, a, g in zip(rgbs, ab, grays)]
    return out
