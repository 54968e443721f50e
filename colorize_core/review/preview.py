"""The images the review page shows: thumbnails (cached under ``RUN/review/thumbs/``), previews rendered by
the run's model with a reviewer's hints, the colour at a point, and the ab plane a point's colour is picked
from. All of it is blocking code; the server runs it in a thread pool so its event loop never waits.

A preview runs the model at its own input size and composes at most :data:`PREVIEW_MAX_SIDE` pixels on the
long side: the model's cost does not depend on the scan's size, and the compose of a 1 MP preview is tens of
milliseconds, so a preview takes about one forward pass whatever the archive's resolution. The decoded,
reduced source of the last few images is kept, so moving a point does not fetch and decode the scan again.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from PIL import Image

from .. import color, imageio, render, storage
from ..render import DRAFT_OVERSAMPLE, decode_reduced
from .records import REVIEW, RunSettings

log = logging.getLogger(__name__)

PREVIEW_MAX_SIDE = 1024
PREVIEW_QUALITY = 90
THUMB_QUALITY = 85
MIN_SIDE, MAX_SIDE = 32, 2048
# The ab picker spans a, b in [-GAMUT_AB, GAMUT_AB] (sRGB's gamut lies inside at every L); pixel (i, j) of a
# GAMUT_SIZE image is a = -GAMUT_AB + 2 GAMUT_AB (i + 0.5) / GAMUT_SIZE, b = GAMUT_AB - 2 GAMUT_AB (j + 0.5) / GAMUT_SIZE.
GAMUT_AB = 110.0
GAMUT_SIZE = 256
# A colour is in gamut when sRGB represents it within this Lab distance (clipping moves it further).
GAMUT_TOLERANCE = 1.0
# Bump when thumbnails are made differently, so cached ones are not served.
THUMB_RECIPE = "1"
WORKING_IMAGES = 8
THUMBS_IN_MEMORY = 512


class PreviewUnavailable(RuntimeError):
    """The run's model cannot render previews here (its weights are missing or are not the run's)."""


def colorize_with_hints(module: torch.nn.Module, info, rgb: np.ndarray, hints: list[dict[str, float]],
                        hint_radius: int, saturation: float) -> np.ndarray:
    """A decoded image colorized with a reviewer's hints through the one colorize path
    (:func:`colorize_core.render.colorize`: the weights' own preprocessing, hint maps painted at model size
    with the run's ``hint_radius``, one forward, ab composed with the image's L), so a preview shows what the
    job would render."""
    return render.colorize(module, [rgb], info.preprocessing, saturation=saturation,
                           hints=[hints] if info.accepts_hints and hints else None, hint_radius=hint_radius)[0]


def fit(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """uint8 RGB with its long side at most ``max_side`` (bicubic, antialiased when shrinking)."""
    rgb = imageio.to_uint8(rgb)
    h, w = rgb.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return np.ascontiguousarray(rgb)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0))


def load_fitted(uri: str, max_side: int, options, max_pixels: int) -> np.ndarray:
    """Fetch and decode an image as far as ``max_side`` needs (JPEGs at a reduced DCT scale), fitted to it."""
    data = storage.read_bytes(uri, options)
    side = math.ceil(max_side / DRAFT_OVERSAMPLE)
    pixels, _ = decode_reduced(data, (side, side), max_pixels)
    return fit(pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=2), max_side)


def _patch_mean(plane: np.ndarray, x: float, y: float, radius: int = 2) -> np.ndarray:
    h, w = plane.shape[:2]
    cx, cy = min(int(x * w), w - 1), min(int(y * h), h - 1)
    patch = plane[max(cy - radius, 0): cy + radius + 1, max(cx - radius, 0): cx + radius + 1]
    return patch.reshape(-1, *plane.shape[2:]).mean(axis=0)


def gamut_png(lightness: float, size: int = GAMUT_SIZE) -> bytes:
    """The ab plane at ``lightness`` as an RGBA PNG: colours sRGB cannot show are transparent."""
    step = 2 * GAMUT_AB / size
    a = -GAMUT_AB + step * (np.arange(size) + 0.5)
    b = GAMUT_AB - step * (np.arange(size) + 0.5)
    aa, bb = np.meshgrid(a, b)
    lab = np.stack([np.full_like(aa, lightness), aa, bb], axis=-1).astype(np.float32)
    rgb = color.lab_to_srgb(lab)
    inside = np.linalg.norm(color.srgb_to_lab(rgb) - lab, axis=-1) <= GAMUT_TOLERANCE
    rgba = np.concatenate([np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8),
                           (inside * 255).astype(np.uint8)[..., None]], axis=-1)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    return buf.getvalue()


class _Lru(OrderedDict):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def put(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


class Previewer:
    """The run's model, loaded once, and the images a review works on. Thread-safe: the forward passes are
    serialised (one at a time uses every core; two at once would only contend), the rest runs in parallel."""

    def __init__(self, settings: RunSettings, options, max_side: int = PREVIEW_MAX_SIDE):
        self.settings = settings
        self.options = options
        self.max_side = max_side
        self._load_lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._model: tuple[torch.nn.Module, Any] | None = None
        self._unavailable: str | None = None
        self._cache_lock = threading.Lock()
        self._working = _Lru(WORKING_IMAGES)

    def model(self) -> tuple[torch.nn.Module, Any]:
        """(module, info) of the run's model; PreviewUnavailable says why there is none."""
        with self._load_lock:
            if self._model is None and self._unavailable is None:
                self._load()
            if self._unavailable is not None:
                raise PreviewUnavailable(self._unavailable)
            return self._model

    def _load(self) -> None:
        from ..models import WeightsError, load_model

        s = self.settings
        kwargs = {"temperature": s.temperature} if s.temperature is not None else {}
        try:
            module, info = load_model(s.model, s.weights, storage_options=self.options, **kwargs)
        except (WeightsError, FileNotFoundError, OSError) as exc:
            self._unavailable = f"the run's model {storage.redact_uri(s.model)} cannot be loaded here: {exc}"
            return
        if s.weights_sha256 and info.weights_sha256 != s.weights_sha256:
            self._unavailable = (f"the weights found now for {storage.redact_uri(s.model)} are not the run's "
                                 f"(sha256 {info.weights_sha256[:12]}... against {s.weights_sha256[:12]}...): "
                                 f"previews would not show what the job renders")
            return
        self._model = (module, info)
        log.info("preview model ready: %s at %s, hints %s", info.name, info.input_size, info.accepts_hints)

    @property
    def accepts_hints(self) -> bool | None:
        """Whether the run's model reads hints (None until it is loaded, or if it cannot be)."""
        return None if self._model is None else bool(self._model[1].accepts_hints)

    def working(self, uri: str) -> np.ndarray:
        """The image at ``uri`` at preview size, cached by its version (a re-rendered output is read again)."""
        key = (uri, storage.version(uri, self.options))
        with self._cache_lock:
            if key in self._working:
                self._working.move_to_end(key)
                return self._working[key]
        rgb = load_fitted(uri, self.max_side, self.options, self.settings.max_pixels)
        with self._cache_lock:
            self._working.put(key, rgb)
        return rgb

    def preview(self, source_uri: str, hints: list[dict[str, float]]) -> bytes:
        """JPEG of the image colorized by the run's model with ``hints``, at preview size."""
        module, info = self.model()
        rgb = self.working(source_uri)
        with self._model_lock:
            out = colorize_with_hints(module, info, rgb, hints, self.settings.hint_radius, self.settings.saturation)
        return imageio.encode_image(out, "jpeg", quality=PREVIEW_QUALITY)

    def sample(self, source_uri: str, output_uri: str | None, x: float, y: float) -> dict[str, float | None]:
        """The input's L at (x, y) and the output's a, b there (5x5 px means at preview size): what a new
        point starts with, and the lightness its picker shows."""
        light = float(_patch_mean(color.srgb_to_l(self.working(source_uri)), x, y))
        a = b = None
        if output_uri is not None:
            try:
                lab = _patch_mean(color.srgb_to_lab(self.working(output_uri)), x, y)
                a, b = float(lab[1]), float(lab[2])
            except FileNotFoundError:
                pass
        return {"l": light, "a": a, "b": b}


class Thumbnails:
    """Reduced JPEGs of a run's inputs and outputs, made on demand and cached under ``RUN/review/thumbs/``,
    keyed by a hash of (uri, the object's version, size): never by the id, and a replaced object (a
    re-rendered output) gets a new thumbnail. The last few hundred are also kept in memory."""

    def __init__(self, output: str, options, max_pixels: int):
        self.root = storage.join(output, REVIEW, "thumbs")
        self.options = options
        self.max_pixels = max_pixels
        self._lock = threading.Lock()
        self._memory = _Lru(THUMBS_IN_MEMORY)

    def get(self, uri: str, side: int) -> tuple[bytes, str]:
        """(JPEG bytes, their ETag) of ``uri`` with its long side at most ``side``."""
        version = storage.version(uri, self.options)
        key = hashlib.sha256(f"{THUMB_RECIPE}\n{uri}\n{version}\n{side}".encode()).hexdigest()
        with self._lock:
            if key in self._memory:
                return self._memory[key], key
        cached = storage.join(self.root, key[:2], f"{key}.jpg")
        try:
            data = storage.read_bytes(cached, self.options)
        except FileNotFoundError:
            rgb = load_fitted(uri, side, self.options, self.max_pixels)
            data = imageio.encode_image(rgb, "jpeg", quality=THUMB_QUALITY)
            storage.write_bytes(cached, data, self.options)
        with self._lock:
            self._memory.put(key, data)
        return data, key
