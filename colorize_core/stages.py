"""Per-batch stages of the colorize pipeline: plain callables on ``dict[str, np.ndarray]`` batches.

Each stage is a dataclass (its fields are its config, so it pickles to any worker) with ``setup()``
for per-process state (the model, a filesystem) and ``__call__(batch)``. The Ray adapter is the only
code that knows these run inside Ray Data; tests call them on plain dicts.

Data flow, and why (one pass: read -> decode/L -> infer -> compose/encode/score -> write): the CPU
``DecodeStage`` fetches each image and decodes it only as far as the model needs (JPEGs at a reduced
DCT scale, :func:`decode_reduced`), sending onward only the model-size L (256x256 float32 = 256 KiB,
:func:`model_input_l`); the ``InferenceStage`` returns model-size ab; the CPU ``ComposeStage`` fetches
the source again (one extra GET, instead of shipping full-resolution pixels through the inference
actors, which on a real cluster sit on other, GPU, nodes) and does the one full-resolution decode and
the one full-resolution pass (:func:`compose_image`: L by table for 8-bit gray, ab upsampled and
converted to sRGB band by band in float32, so memory stays bounded for any scan), then encodes, writes
and scores the written file. A failure in any row becomes ``status='error'`` with a one-line reason;
the batch carries on.

Model evaluation (colorize_core/evaluate.py) reuses the same stages: one ``DecodeStage`` that emits the L of
every distinct model input size, one ``InferenceStage`` per model (each reads its size's L column and
adds its own ab column), then ``EvalComposeStage``, which composes, writes and scores every model's
output (and the ``gray`` baseline, ab = 0) and emits one metrics row per (image, model).
"""

from __future__ import annotations

import io
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from . import color, errors, imageio, metrics, storage
from .hints import paint_hints, sample_hints  # paint_hints lives in hints.py; importable from here as before
from .manifest import Shard, read_shard
from .models.preprocess import Preprocessing
from .schema import METRIC_COLUMNS

log = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]

MAX_ERROR_CHARS = 300


def short_error(exc: BaseException, prefix: str = "") -> str:
    """A one-line reason for an error row: never a traceback, never unbounded."""
    if isinstance(exc, FileNotFoundError):
        text = f"missing object: {exc.filename or exc}" if getattr(exc, "filename", None) else f"missing object: {exc}"
    elif isinstance(exc, imageio.ImageDecodeError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    text = (prefix + text).replace("\n", " ").strip()
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def output_key(output: str, image_id: str, fmt: str) -> str:
    """Where an image's result goes: a pure function of the manifest row (resume depends on it)."""
    return storage.join(output, "images", f"{image_id}.{imageio.FORMAT_EXTENSIONS[fmt]}")


def _obj_column(values: list[Any]) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def _text(value: Any) -> str | None:
    """A string cell, or None: Ray hands back all-null object columns as NaN floats."""
    return value if isinstance(value, str) and value else None


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize to ``size`` = (H, W): uint8 stays uint8; 16-bit comes back as float in [0, 1]."""
    h, w = size
    if rgb.dtype == np.uint8:
        return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BICUBIC))
    # 16-bit: resize each channel in float to keep the precision
    f = imageio.to_float01(rgb)
    return np.stack([np.asarray(Image.fromarray(f[..., c], mode="F").resize((w, h), Image.BICUBIC))
                     for c in range(3)], axis=-1).clip(0, 1)


def model_input_l(rgb: np.ndarray, size: tuple[int, int], resize: str = "bicubic") -> np.ndarray:
    """THE model input: float32 [h, w] L of the image brought to the model's input size as its weights
    entry's :class:`~colorize_core.models.preprocess.Preprocessing` says (the one definition the CLI and
    training validation use too). ``rgb`` may be a reduced decode, see :func:`decode_reduced`."""
    return Preprocessing(tuple(size), resize).model_l(rgb)


# A JPEG is decoded for the model at a DCT scale (1/2, 1/4, 1/8) that keeps at least this many times the
# model's input size on each side, so the bicubic resize to model size still sees a well-sampled image.
DRAFT_OVERSAMPLE = 2


def decode_reduced(data: bytes, size: tuple[int, int], max_pixels: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(pixels at no less than ``DRAFT_OVERSAMPLE`` x ``size``, the image's full (H, W) as displayed).

    8-bit gray and RGB JPEGs (the archive's bulk) are decoded at a reduced DCT scale (Pillow's draft mode):
    a fraction of a full decode. Anything else, and any JPEG the fast path does not take, goes through
    :func:`imageio.decode_image` at full size with its guards and its reasons for bad files."""
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
                arr = np.asarray(im.convert("RGB"))
                if arr.ndim == 3 and arr.shape[2] == 3:
                    return arr, full
    except Exception:  # noqa: BLE001 - the full decode below gives the row its reason
        pass
    rgb = imageio.decode_image(data, max_pixels=max_pixels).rgb
    return rgb, (rgb.shape[0], rgb.shape[1])


# Evaluation protocols: the geometry an image is scored at. "full" scores the full resolution;
# the 256 ones are the usual protocols of published colorization results (ImageNet val at 256x256).
PROTOCOLS = {
    "full": "full resolution, as decoded",
    "resize256": "resized (bicubic, aspect ratio not kept) to 256x256",
    "center_crop256": "shorter side resized (bicubic) to 256, then the central 256x256",
}


def apply_protocol(rgb: np.ndarray, protocol: str) -> np.ndarray:
    """The uint8 image a model is scored against under ``protocol`` (see :data:`PROTOCOLS`)."""
    rgb = to_uint8(rgb)
    if protocol == "full":
        return rgb
    if protocol == "resize256":
        return resize_rgb(rgb, (256, 256))
    if protocol == "center_crop256":
        h, w = rgb.shape[:2]
        scale = 256 / min(h, w)
        rh, rw = max(256, round(h * scale)), max(256, round(w * scale))
        resized = resize_rgb(rgb, (rh, rw))
        top, left = (rh - 256) // 2, (rw - 256) // 2
        return np.ascontiguousarray(resized[top: top + 256, left: left + 256])
    raise ValueError(f"unknown protocol {protocol!r}; one of {', '.join(PROTOCOLS)}")


def l_column(size: tuple[int, int]) -> str:
    """Name of the model-size L column for an extra input size (DecodeStage ``sizes``)."""
    return f"l_{size[0]}x{size[1]}"


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    if rgb.dtype == np.uint8:
        return rgb
    return np.clip(np.rint(rgb.astype(np.float32) / 257.0), 0, 255).astype(np.uint8)


@dataclass
class ExpandShards:
    """Shard descriptors -> manifest rows tagged with their shard (the manifest is never loaded whole)."""

    options: storage.StorageOptions
    columns: tuple[str, ...]

    def setup(self) -> None:
        pass

    def __call__(self, batch: Batch) -> Batch:
        tables = []
        for i in range(len(batch["shard_id"])):
            shard = Shard(str(batch["shard_id"][i]), str(batch["file"][i]), int(batch["start"][i]),
                          int(batch["stop"][i]))
            t = read_shard(shard, self.options, self.columns)
            tables.append(t.append_column("shard_id", [[shard.shard_id] * t.num_rows]))
        out: Batch = {}
        for name in (*self.columns, "shard_id"):
            out[name] = _obj_column([v for t in tables for v in t.column(name).to_pylist()])
        return out


@dataclass
class DecodeStage:
    """Fetch + reduced decode + model-size L (and hint maps). On a resumed run a row whose output already
    exists, decodes and has the source's geometry is marked ``reuse`` (no L): the compose stage scores
    that file instead; any other file at the key is redone and overwritten.

    ``l`` is the L at ``input_size``; each other size in ``sizes`` adds an ``l_<h>x<w>`` column (see
    :meth:`column`), so models of different input sizes share one decode. ``protocol`` is applied to
    the decoded image first (evaluation; the colorize job keeps ``full``)."""

    options: storage.StorageOptions
    output: str
    output_format: str
    input_size: tuple[int, int]
    accepts_hints: bool = False
    hint_radius: int = 2
    max_pixels: int = imageio.DEFAULT_MAX_PIXELS
    check_existing: bool = False
    sizes: tuple[tuple[int, int], ...] = ()
    protocol: str = "full"
    resize: str = "bicubic"  # the weights entry's Preprocessing.resize
    # Evaluation: instead of a manifest's hints, this many sampled from each decoded original (hints.sample_hints).
    sample_hints: int = 0
    hint_seed: int = 0

    def setup(self) -> None:
        pass

    def column(self, size: tuple[int, int]) -> str:
        """The batch column holding the model-size L for ``size``."""
        return "l" if tuple(size) == tuple(self.input_size) else l_column(size)

    def all_sizes(self) -> list[tuple[int, int]]:
        return [tuple(self.input_size), *(tuple(s) for s in self.sizes)]

    def _reusable(self, image_id: str, geometry: tuple[int, int]) -> bool:
        """An output already at the row's key is reused only if it decodes and has the source's geometry;
        a truncated or foreign file is colorized again (and overwritten)."""
        key = output_key(self.output, image_id, self.output_format)
        try:
            existing = imageio.decode_image(storage.read_bytes(key, self.options), max_pixels=self.max_pixels)
        except FileNotFoundError:
            return False
        except Exception as exc:  # noqa: BLE001 - unreadable: redo it
            log.warning("redoing %s: the existing output does not decode (%s)", key, short_error(exc))
            return False
        if existing.rgb.shape[:2] != tuple(geometry):
            log.warning("redoing %s: the existing output is %dx%d, the source %dx%d", key, existing.width,
                        existing.height, geometry[1], geometry[0])
            return False
        return True

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["image_id"])
        h, w = self.input_size
        l_model = np.zeros((n, 1, h, w), np.float32)
        extra = {l_column(s): np.zeros((n, 1, *s), np.float32)
                 for s in dict.fromkeys(tuple(s) for s in self.sizes) if s != tuple(self.input_size)}
        hint_ab = np.zeros((n, 2, h, w), np.float32) if self.accepts_hints else None
        hint_mask = np.zeros((n, 1, h, w), np.float32) if self.accepts_hints else None
        status, error, reuse, seconds = [], [], np.zeros(n, bool), np.zeros(n, np.float64)
        for i in range(n):
            t0 = time.perf_counter()
            image_id, uri = batch["image_id"][i], batch["uri"][i]
            try:
                data = storage.read_bytes(uri, self.options)
                if self.protocol == "full":
                    rgb, geometry = decode_reduced(data, max(self.all_sizes(), key=max), self.max_pixels)
                else:
                    rgb = apply_protocol(imageio.decode_image(data, max_pixels=self.max_pixels).rgb, self.protocol)
                    geometry = rgb.shape[:2]
                if self.check_existing and self._reusable(image_id, geometry):
                    reuse[i] = True
                else:
                    l_model[i, 0] = model_input_l(rgb, self.input_size, self.resize)
                    for name, column in extra.items():
                        column[i, 0] = model_input_l(rgb, column.shape[-2:], self.resize)
                    if self.accepts_hints and self.sample_hints:
                        hints = sample_hints(rgb, self.sample_hints, str(image_id), size=self.input_size,
                                             radius=self.hint_radius, seed=self.hint_seed)
                        hint_ab[i], hint_mask[i] = paint_hints(hints, self.input_size, self.hint_radius)
                    elif self.accepts_hints and "hints" in batch:
                        hint_ab[i], hint_mask[i] = paint_hints(batch["hints"][i], self.input_size, self.hint_radius)
                status.append("ok")
                error.append(None)
            except Exception as exc:  # noqa: BLE001 - every failure becomes this row's error
                status.append(errors.TRANSIENT if errors.is_transient(exc) else errors.ERROR)
                error.append(short_error(exc))
            seconds[i] = time.perf_counter() - t0
        out = {k: v for k, v in batch.items() if k != "hints"}
        out.update(l=l_model, **extra, status=_obj_column(status), error=_obj_column(error), reuse=reuse,
                   seconds=seconds)
        if self.accepts_hints:
            out.update(hint_ab=hint_ab, hint_mask=hint_mask)
        return out


# CPU-stage cost per image megapixel on one core: reduced decode + model L, the full decode, compose,
# encode, write, read-back and score (bench/throughput.py prints it per stage; ~55-65 ms/MP on a 2-core
# AMD EPYC with AVX2 measured under load). Used only to split a CPU-only node between inference and the
# CPU stages (colorize_core.ray_adapter.plan_resources); a GPU node needs this many cores per GPU:
# cores = images/s of the GPU x CPU_STAGE_MS_PER_MP x megapixels / 1000.
CPU_STAGE_MS_PER_MP = 60.0
TYPICAL_MEGAPIXELS = 1.7


def inference_share(module: torch.nn.Module, input_size: tuple[int, int],
                    megapixels: float = TYPICAL_MEGAPIXELS) -> float:
    """forward / (forward + CPU stages) of one image's single-core cost: the fraction of a CPU-only node's
    cores the inference replicas should reserve. One batch-1 fp32 forward is timed after a warm-up."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.full((1, 1, *input_size), 50.0)
        with torch.inference_mode():
            module(x)
            t0 = time.perf_counter()
            module(x)
            forward_ms = 1000 * (time.perf_counter() - t0)
    except Exception:  # noqa: BLE001 - a model needing other inputs (hints): fall back to half
        return 0.5
    finally:
        torch.set_num_threads(threads)
    return forward_ms / (forward_ms + CPU_STAGE_MS_PER_MP * megapixels)


def cpu_supports_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - older builds lack the probe
        return False


@dataclass
class InferenceStage:
    """Holds one model replica; batched forward on model-size L. Returns model-size ab.

    Column names are configurable so several models can run one after another on the same batch
    (evaluation): each reads its ``input_column``, writes its ``output_column`` and adds its time to
    ``seconds_column``; ``keep_input`` leaves the L (and hints) for the models after it."""

    model: str
    weights: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    options: storage.StorageOptions | None = None
    device: str = "cpu"
    precision: str = "auto"
    max_precision_error: float = 1.0
    channels_last: bool = True
    threads: int | None = None
    batch_size: int = 16
    input_column: str = "l"
    output_column: str = "ab"
    seconds_column: str = "seconds"
    keep_input: bool = False
    use_hints: bool = True  # False: a hint-taking model scored without the batch's hints (evaluation)

    def setup(self) -> None:
        from .models import load_model

        if self.device == "cpu" and self.threads:
            torch.set_num_threads(self.threads)
        module, self.info = load_model(self.model, self.weights, storage_options=self.options, **self.model_kwargs)
        self.torch_device = torch.device(self.device)
        module = module.to(self.torch_device)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module
        self.active_precision, self.precision_error = self._choose_precision()
        log.info("inference replica ready: %s on %s, %s (mean |ab| diff vs fp32 %.4f)", self.info.name,
                 self.device, self.active_precision, self.precision_error)

    def _autocast(self, precision: str):
        if precision == "fp32":
            return torch.autocast(self.torch_device.type, enabled=False)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(self.torch_device.type, dtype=dtype)

    def _probe(self) -> torch.Tensor:
        """A deterministic, textured L image at model size: gradients, edges and noise."""
        h, w = self.info.input_size
        yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
        g = torch.Generator().manual_seed(0)
        img = 50 + 35 * torch.sin(12 * xx) * torch.cos(9 * yy) + 10 * torch.rand(h, w, generator=g)
        img[h // 4: h // 2, w // 4: w // 2] = 90
        return img.clamp(0, 100)[None, None].repeat(2, 1, 1, 1)

    def _choose_precision(self) -> tuple[str, float]:
        wanted = self.precision
        if wanted == "auto":
            if self.torch_device.type == "cuda":
                wanted = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            else:
                wanted = "bf16" if cpu_supports_bf16() else "fp32"
        if wanted == "fp32":
            return "fp32", 0.0
        probe = self._probe()
        ref = self._forward(probe, None, None, "fp32")
        low = self._forward(probe, None, None, wanted)
        err = float((ref - low).abs().mean())
        if not math.isfinite(err) or err > self.max_precision_error:
            if self.precision != "auto":
                raise RuntimeError(f"{wanted} changes the output by {err:.3f} ab units on average "
                                   f"(> max_precision_error {self.max_precision_error}); use precision fp32")
            log.warning("%s rejected: mean |ab| diff %.3f > %.3f; using fp32", wanted, err, self.max_precision_error)
            return "fp32", err
        return wanted, err

    @torch.inference_mode()
    def _forward(self, l, hint_ab, hint_mask, precision: str) -> torch.Tensor:
        mf = torch.channels_last if self.channels_last else torch.contiguous_format
        if self.torch_device.type == "cuda":  # page-locked host memory: the copy overlaps the previous batch
            l, hint_ab, hint_mask = (t.pin_memory().to(self.torch_device, non_blocking=True) if t is not None
                                     else None for t in (l, hint_ab, hint_mask))
        l = l.to(self.torch_device).contiguous(memory_format=mf)
        with self._autocast(precision):
            # A batch without any hint runs the plain forward (the same output for the hint models here, cheaper).
            if self.info.accepts_hints and hint_ab is not None and bool(hint_mask.any()):
                out = self.module(l, hint_ab.to(self.torch_device).contiguous(memory_format=mf),
                                  hint_mask.to(self.torch_device).contiguous(memory_format=mf))
            else:
                out = self.module(l)
        return out.float().cpu()

    def __call__(self, batch: Batch) -> Batch:
        t0 = time.perf_counter()
        l = batch[self.input_column]
        n = len(l)
        h, w = self.info.input_size
        ab = np.zeros((n, 2, h, w), np.float32)
        todo = np.flatnonzero((batch["status"] == "ok") & ~batch["reuse"].astype(bool))
        for s in range(0, len(todo), self.batch_size):
            idx = todo[s: s + self.batch_size]
            hinted = self.use_hints and "hint_ab" in batch
            hint_ab = torch.from_numpy(batch["hint_ab"][idx]) if hinted else None
            hint_mask = torch.from_numpy(batch["hint_mask"][idx]) if hinted else None
            ab[idx] = self._forward(torch.from_numpy(np.ascontiguousarray(l[idx])), hint_ab, hint_mask,
                                    self.active_precision).numpy()
        drop = () if self.keep_input else (self.input_column, "hint_ab", "hint_mask")
        out = {k: v for k, v in batch.items() if k not in drop}
        out[self.output_column] = ab
        per_image = (time.perf_counter() - t0) / max(len(todo), 1)
        before = batch[self.seconds_column] if self.seconds_column in batch else np.zeros(n, np.float64)
        out[self.seconds_column] = before + np.where(np.isin(np.arange(n), todo), per_image, 0.0)
        return out


# Rows of the full-resolution image composed at a time: bounds every temporary (a 100 MP scan included) to a
# few cache-sized float32 planes, whatever the image size.
COMPOSE_CHUNK_PIXELS = 1 << 16


def _bilinear_weights(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of a 1-D bilinear resize, as torch's interpolate(align_corners=False)."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0, None)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def _compose_rows(l_rows, height: int, width: int, ab_model: np.ndarray, saturation: float,
                  exact: bool = False) -> np.ndarray:
    """The one full-resolution pass: for each band of rows, L (from ``l_rows(start, stop)``), ab upsampled
    bilinearly (separable, as ``interpolate(mode="bilinear", align_corners=False)``: across once at model
    height, then down per band with one lerp), Lab -> sRGB uint8."""
    ab = torch.from_numpy(np.array(ab_model, dtype=np.float32))  # a writable copy
    if saturation != 1.0:
        ab *= saturation
    h = ab.shape[-2]
    ab_x = torch.nn.functional.interpolate(ab[None], size=(h, width), mode="bilinear", align_corners=False)[0]
    y0, y1, wy = (torch.from_numpy(v) for v in _bilinear_weights(height, h))
    out = np.empty((height, width, 3), np.uint8)
    band = max(1, COMPOSE_CHUNK_PIXELS // max(width, 1))
    for s in range(0, height, band):
        e = min(height, s + band)
        ab_band = torch.lerp(ab_x.index_select(1, y0[s:e]), ab_x.index_select(1, y1[s:e]), wy[None, s:e, None])
        a, b = ab_band.reshape(2, -1).numpy()
        light = np.ascontiguousarray(l_rows(s, e), dtype=np.float32).reshape(-1)
        if exact:
            out[s:e] = color.lab_to_srgb_uint8(np.stack([light, a, b], axis=-1)).reshape(e - s, width, 3)
        else:
            color.lab_planes_to_srgb_uint8(light, a, b, out[s:e].reshape(-1, 3))
    return out


def compose(l_full: np.ndarray, ab_model: np.ndarray, saturation: float = 1.0, exact: bool = False) -> np.ndarray:
    """Full-resolution L [H,W] + model-size ab [2,h,w] -> sRGB uint8 [H,W,3].

    ab is upsampled bilinearly; the original L is kept untouched, so the output's luminance and
    geometry are the input's. ``exact`` converts with :func:`color.lab_to_srgb_uint8` (bit for bit)
    instead of the table-encoded fast path (within one code of it): evaluation scores use it."""
    H, W = l_full.shape
    return _compose_rows(lambda s, e: l_full[s:e], H, W, ab_model, saturation, exact)


def full_l_rows(rgb: np.ndarray, is_gray: bool):
    """``(start, stop) -> L of those rows``: a 256-entry table for 8-bit gray, else :func:`color.srgb_to_l`
    per band, so no full-resolution float image is ever held."""
    if is_gray and rgb.dtype == np.uint8:
        lut = color.gray_l_lut()
        return lambda s, e: np.take(lut, rgb[s:e, :, 0])
    return lambda s, e: color.srgb_to_l(rgb[s:e])


def compose_image(rgb: np.ndarray, ab_model: np.ndarray, saturation: float = 1.0, is_gray: bool = False) -> np.ndarray:
    """:func:`compose` straight from the decoded source (uint8/uint16 [H,W,3]), L computed band by band."""
    return _compose_rows(full_l_rows(rgb, is_gray), rgb.shape[0], rgb.shape[1], ab_model, saturation)


def write_and_read_back(rgb: np.ndarray, key: str, output_format: str, quality: int, options,
                        max_pixels: int) -> np.ndarray:
    """Encode, write, decode the written bytes: metrics score the delivered file, codec included."""
    written = imageio.encode_image(rgb, output_format, quality=quality)
    storage.write_bytes(key, written, options)
    return imageio.decode_image(written, max_pixels=max_pixels).rgb


@dataclass
class ComposeStage:
    """Full-resolution output, encoded and written, scored from the written file; emits metrics rows."""

    options: storage.StorageOptions
    output: str
    output_format: str = "jpeg"
    quality: int = 95
    saturation: float = 1.0
    model_name: str = ""
    max_pixels: int = imageio.DEFAULT_MAX_PIXELS

    def setup(self) -> None:
        pass

    def _one(self, row: dict[str, Any]) -> dict[str, Any]:
        image_id = row["image_id"]
        source = imageio.decode_image(storage.read_bytes(row["uri"], self.options), max_pixels=self.max_pixels)
        key = output_key(self.output, image_id, self.output_format)
        if row["reuse"]:
            result = imageio.decode_image(storage.read_bytes(key, self.options), max_pixels=self.max_pixels).rgb
        else:
            rgb = compose_image(source.rgb, row["ab"], self.saturation, source.is_gray)
            result = write_and_read_back(rgb, key, self.output_format, self.quality, self.options, self.max_pixels)
        ref_uri = _text(row.get("reference_uri"))
        against = None
        reference = None
        if ref_uri:
            reference = to_uint8(imageio.decode_image(
                storage.read_bytes(ref_uri, self.options), max_pixels=self.max_pixels).rgb)
            against = "reference_uri"
            if reference.shape != result.shape:
                raise ValueError(f"reference is {reference.shape[1]}x{reference.shape[0]}, "
                                 f"input is {result.shape[1]}x{result.shape[0]}")
        elif not source.is_gray:
            reference, against = to_uint8(source.rgb), "input"
        m = metrics.compute_metrics(result, reference)
        return {**m, "width": source.width, "height": source.height, "metrics_against": against}

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["image_id"])
        rows: dict[str, list[Any]] = {c: [] for c in (*METRIC_COLUMNS, "shard_id")}
        for i in range(n):
            t0 = time.perf_counter()
            row = {k: batch[k][i] for k in batch}
            status, error = row["status"], row["error"]
            values: dict[str, Any] = {}
            if status == "ok":
                try:
                    values = self._one(row)
                except Exception as exc:  # noqa: BLE001 - a bad image is a row, not a crash
                    status, error = errors.TRANSIENT if errors.is_transient(exc) else errors.ERROR, short_error(exc)
            rows["image_id"].append(row["image_id"])
            rows["shard_id"].append(row["shard_id"])
            rows["status"].append(status)
            rows["error"].append(error)
            rows["model"].append(self.model_name)
            rows["seconds"].append(float(row["seconds"]) + time.perf_counter() - t0)
            for c in ("width", "height", "psnr", "ssim", "rmse", "colorfulness", "deltae2000", "metrics_against"):
                rows[c].append(values.get(c))
        return _metric_batch(rows)


def _metric_batch(rows: dict[str, list[Any]]) -> Batch:
    """Metrics rows as typed columns: -1 for a missing size, NaN for a missing score."""
    out: Batch = {}
    for c, vals in rows.items():
        if c in ("width", "height"):
            out[c] = np.array([-1 if v is None else v for v in vals], np.int64)
        elif c in ("psnr", "ssim", "rmse", "colorfulness", "deltae2000", "seconds"):
            out[c] = np.array([np.nan if v is None else v for v in vals], np.float64)
        else:
            out[c] = _obj_column(vals)
    return out


GRAY_BASELINE = "gray"


def eval_output_key(output: str, model: str, image_id: str, fmt: str) -> str:
    """Where evaluation writes a model's output for an image: images/<model>/<image_id>.<ext>."""
    return storage.join(output, "images", model, f"{image_id}.{imageio.FORMAT_EXTENSIONS[fmt]}")


@dataclass(frozen=True)
class ScoredModel:
    """One column of an evaluation: its label and the batch columns its ab and time are in. The gray
    baseline has neither: its ab is 0, so the output is the input's L alone."""

    label: str
    ab_column: str | None = None
    seconds_column: str | None = None


@dataclass
class EvalComposeStage:
    """Evaluation: for every image, compose each model's ab with the L of the reference (the colour
    original under ``protocol``), write it, and score it against the reference with the colorize job's
    metric code. Emits one metrics row per (image, model), ``metrics_against='input'``."""

    options: storage.StorageOptions
    output: str
    models: tuple[ScoredModel, ...]
    protocol: str = "full"
    output_format: str = "png"
    quality: int = 95
    max_pixels: int = imageio.DEFAULT_MAX_PIXELS

    def setup(self) -> None:
        pass

    def _reference(self, uri: str) -> np.ndarray:
        source = imageio.decode_image(storage.read_bytes(uri, self.options), max_pixels=self.max_pixels)
        if source.is_gray:
            raise ValueError("not a colour image: a held-out set needs colour originals to score against")
        return apply_protocol(source.rgb, self.protocol)

    def _score(self, model: ScoredModel, row: dict[str, Any], l_full: np.ndarray,
               reference: np.ndarray) -> dict[str, Any]:
        ab = row[model.ab_column] if model.ab_column else np.zeros((2, 1, 1), np.float32)
        key = eval_output_key(self.output, model.label, row["image_id"], self.output_format)
        # Exact Lab -> sRGB: published scores must not move with the job's table rounding (one code, rarely).
        result = write_and_read_back(compose(l_full, ab, exact=True), key, self.output_format, self.quality,
                                     self.options, self.max_pixels)
        return {**metrics.compute_metrics(result, reference), "width": reference.shape[1],
                "height": reference.shape[0], "metrics_against": "input"}

    def __call__(self, batch: Batch) -> Batch:
        rows: dict[str, list[Any]] = {c: [] for c in (*METRIC_COLUMNS, "shard_id")}
        for i in range(len(batch["image_id"])):
            t0 = time.perf_counter()
            row = {k: batch[k][i] for k in batch}
            reference = l_full = None
            image_error, image_status = row["error"], row["status"]
            if row["status"] == "ok":
                try:
                    reference = self._reference(row["uri"])
                    l_full = color.srgb_to_l(reference)
                except Exception as exc:  # noqa: BLE001 - a bad image is a row, not a crash
                    image_error = short_error(exc)
                    image_status = errors.TRANSIENT if errors.is_transient(exc) else errors.ERROR
            shared = time.perf_counter() - t0
            for model in self.models:
                t1 = time.perf_counter()
                values: dict[str, Any] = {}
                status, error = ("ok", None) if reference is not None else (image_status, image_error)
                if reference is not None:
                    try:
                        values = self._score(model, row, l_full, reference)
                    except Exception as exc:  # noqa: BLE001 - one model's failure is that row's error
                        status, error = errors.TRANSIENT if errors.is_transient(exc) else errors.ERROR, short_error(exc)
                inference = float(row[model.seconds_column]) if model.seconds_column else 0.0
                rows["image_id"].append(row["image_id"])
                rows["shard_id"].append(row["shard_id"])
                rows["status"].append(status)
                rows["error"].append(error)
                rows["model"].append(model.label)
                rows["seconds"].append(float(row["seconds"]) + inference + shared + time.perf_counter() - t1)
                for c in ("width", "height", "psnr", "ssim", "rmse", "colorfulness", "deltae2000", "metrics_against"):
                    rows[c].append(values.get(c))
        return _metric_batch(rows)
