"""Per-batch stages of the colorize pipeline: plain callables on ``dict[str, np.ndarray]`` batches.

Each stage is a dataclass (its fields are its config, so it pickles to any worker) with ``setup()``
for per-process state (the model, a filesystem) and ``__call__(batch)``. The Ray adapter is the only
code that knows these run inside Ray Data; tests call them on plain dicts.

Data flow, and why (one pass: read -> decode/L -> infer -> compose/encode/score -> write): the CPU
``DecodeStage`` fetches each image and decodes it only as far as the model needs (JPEGs at a reduced
DCT scale, :func:`colorize_core.render.decode_reduced`), sending onward only the model-size L its
weights' preprocessing asks for (256x256 float32 = 256 KiB); the ``InferenceStage`` returns model-size
ab; the CPU ``ComposeStage`` fetches the source again (one extra GET, instead of shipping full-resolution
pixels through the inference actors, which on a real cluster sit on other, GPU, nodes) and does the one
full-resolution decode and the one full-resolution pass (:func:`colorize_core.render.compose`, the path
every caller shares), then encodes, writes and scores the written file.

Failures (:mod:`colorize_core.errors`): a failure about a row's input (its source or reference missing,
forbidden, undecodable, too large, a bad hint) becomes ``status='error'`` with a one-line reason and the
batch carries on; a transient one that outlasted the retries becomes ``status='transient'``. Anything else,
a failure to write an output (:class:`~colorize_core.errors.OutputError`) or an exception nobody expected,
propagates: Ray Data fails the run and no shard in flight is recorded as finished.

Model evaluation (colorize_core/evaluate.py) reuses the same stages: one ``DecodeStage`` that emits the L of
every distinct model preprocessing, one ``InferenceStage`` per model (each reads its L column and adds
its own ab column), then ``EvalComposeStage``, which composes, writes and scores every model's
output (and the ``gray`` baseline, ab = 0) and emits one metrics row per (image, model).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from . import archival, errors, fixity, imageio, metadata, metrics, render, storage, torchpath
from .config import ProvenanceConfig
from .errors import InputError, OutputError
from .hints import sample_hints
from .manifest import Shard, read_shard
from .models.preprocess import Preprocessing
from .runstate import metrics_uri
from .schema import FIXITY_COLUMNS, METRIC_COLUMNS, METRICS_SCHEMA

log = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]

MAX_ERROR_CHARS = 300


def short_error(exc: BaseException, prefix: str = "") -> str:
    """A one-line reason for an error row: never a traceback, never unbounded."""
    if isinstance(exc, FileNotFoundError):
        text = f"missing object: {exc.filename or exc}" if getattr(exc, "filename", None) else f"missing object: {exc}"
    elif isinstance(exc, InputError):  # decode's ImageDecodeError included: its message is the reason
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    text = (prefix + text).replace("\n", " ").strip()
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def output_path(image_id: str, fmt: str) -> str:
    """Where an image's result goes, relative to the run's output prefix: a pure function of the manifest row
    (resume depends on it; the metrics' ``output_path``)."""
    return f"images/{image_id}.{imageio.FORMAT_EXTENSIONS[imageio.canonical_format(fmt)]}"


def output_key(output: str, image_id: str, fmt: str) -> str:
    return storage.join(output, output_path(image_id, fmt))


def _obj_column(values: list[Any]) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def _text(value: Any) -> str | None:
    """A string cell, or None: Ray hands back all-null object columns as NaN floats."""
    return value if isinstance(value, str) and value else None


# Evaluation protocols: the geometry an image is scored at. "full" scores the full resolution;
# the 256 ones are the usual protocols of published colorization results (ImageNet val at 256x256).
PROTOCOLS = {
    "full": "full resolution, as decoded",
    "resize256": "resized (bicubic, aspect ratio not kept) to 256x256",
    "center_crop256": "shorter side resized (bicubic) to 256, then the central 256x256",
}


def apply_protocol(rgb: np.ndarray, protocol: str) -> np.ndarray:
    """The uint8 image a model is scored against under ``protocol`` (see :data:`PROTOCOLS`)."""
    rgb = imageio.to_uint8(rgb)
    if protocol == "full":
        return rgb
    if protocol == "resize256":
        return Preprocessing((256, 256), "bicubic").resize_rgb(rgb)
    if protocol == "center_crop256":
        h, w = rgb.shape[:2]
        scale = 256 / min(h, w)
        rh, rw = max(256, round(h * scale)), max(256, round(w * scale))
        resized = Preprocessing((rh, rw), "bicubic").resize_rgb(rgb)
        top, left = (rh - 256) // 2, (rw - 256) // 2
        return np.ascontiguousarray(resized[top: top + 256, left: left + 256])
    raise ValueError(f"unknown protocol {protocol!r}; one of {', '.join(PROTOCOLS)}")


def l_column(pre: Preprocessing) -> str:
    """Name of the model-size L column of another model's preprocessing (DecodeStage ``more``): one per input
    size and resize filter."""
    return f"l_{pre.input_size[0]}x{pre.input_size[1]}_{pre.resize}"


def read_input(uri: str, options: storage.StorageOptions) -> bytes:
    """A row's source or reference. Missing, forbidden, not a file, too large, a scheme we do not read: about
    the input (:class:`InputError`). Transient failures that outlasted the retries propagate as they are."""
    try:
        return storage.read_bytes(uri, options)
    except (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError, storage.NotRegularFileError,
            storage.TooLargeError, storage.UnsupportedSchemeError) as exc:
        raise InputError(short_error(exc)) from exc


def write_and_read_back(rgb: np.ndarray, key: str, settings: archival.OutputSettings, record: archival.Derivation,
                        *, source: bytes, source_format: str | None = None, colour: str | None = None, options,
                        max_pixels: int, root: str) -> tuple[np.ndarray, archival.Finished]:
    """The output finished (metadata, provenance, signature: :func:`colorize_core.archival.write_output`) and
    written under the output ``root``, then the written bytes decoded: metrics score the delivered file, codec
    included. A write that fails is an :class:`OutputError` (see :func:`storage.write_output`)."""
    finished = archival.write_output(rgb, key, settings, record, source=source, source_format=source_format,
                                     colour=colour, options=options, root=root)
    return imageio.decode_image(finished.data, max_pixels=max_pixels).rgb, finished


def output_settings(output_format: str, output_depth: str, quality: int, visible_label: bool,
                    provenance: ProvenanceConfig | None, options) -> archival.OutputSettings:
    """A compose stage's :class:`~colorize_core.archival.OutputSettings`, its signer loaded in this process
    (the driver checked it at start-up)."""
    signer = archival.load_signer(provenance, options)
    return archival.OutputSettings(output_format, output_depth, quality, visible_label, signer,
                                   provenance.tsa_url if provenance is not None else None)


@functools.lru_cache(maxsize=4)
def _recorded(output: str, shard_id: str, options) -> dict[str, dict[str, Any]]:
    try:
        table = storage.read_parquet_table(metrics_uri(output, shard_id), options)
    except FileNotFoundError:
        return {}
    names = [c for c in ("image_id", "status", *FIXITY_COLUMNS) if c in table.column_names]
    return {r["image_id"]: r for r in table.select(names).to_pylist() if r.get("status") == errors.OK}


def recorded_row(output: str, shard_id: str, image_id: str, options) -> dict[str, Any] | None:
    """The ok metrics row an earlier run wrote for an image (its shard's file), or None: what a resumed run
    checks an existing output against (fixity.matches)."""
    return _recorded(output, str(shard_id), options).get(str(image_id))


def read_output(key: str, options: storage.StorageOptions, max_pixels: int) -> tuple[bytes, imageio.DecodedImage]:
    """An output already written (a resumed run reuses it), as (its bytes, decoded). Its absence and a file that
    does not decode are the caller's to judge; any other failure to read it (a folder in the way, no access) is
    an OutputError."""
    try:
        data = storage.read_bytes(key, options)
        return data, imageio.decode_image(data, max_pixels=max_pixels)
    except (FileNotFoundError, imageio.ImageDecodeError, storage.NotRegularFileError, storage.TooLargeError):
        raise
    except Exception as exc:
        if errors.is_transient(exc):
            raise
        raise OutputError(f"cannot read the existing output {storage.redact_uri(key)} ({short_error(exc)}); free "
                          f"the output location and rerun the same command") from exc


def _row_failure(exc: Exception) -> tuple[str, str]:
    """(status, reason) of a failure that is its row's result; anything else is re-raised by the caller."""
    status = errors.row_status(exc)
    if status is None:
        raise exc
    return status, short_error(exc)




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

    ``l`` is the L the weights' ``preprocessing`` asks for; each other preprocessing in ``more`` (evaluation:
    the other models) adds an ``l_<h>x<w>_<resize>`` column (see :meth:`column`), so models share one decode.
    ``protocol`` is applied to the decoded image first (evaluation; the colorize job keeps ``full``)."""

    options: storage.StorageOptions
    output: str
    output_format: str
    preprocessing: Preprocessing
    accepts_hints: bool = False
    hint_radius: int = 2
    max_pixels: int = imageio.DEFAULT_MAX_PIXELS
    check_existing: bool = False
    more: tuple[Preprocessing, ...] = ()
    protocol: str = "full"
    # Evaluation: instead of a manifest's hints, this many sampled from each decoded original (hints.sample_hints).
    sample_hints: int = 0
    hint_seed: int = 0
    # The fetched bytes kept in a 'source' column, for a compose in the same process (fused layout): one GET;
    # and the source decoded once at full resolution (the model's L from it, render.reduce_decoded), kept in a
    # 'decoded' column for that compose where it has at most KEEP_DECODED_PIXELS pixels.
    keep_source: bool = False

    def setup(self) -> None:
        pass

    def column(self, pre: Preprocessing) -> str:
        """The batch column holding the model-size L for ``pre``."""
        same = (pre.input_size, pre.resize) == (self.preprocessing.input_size, self.preprocessing.resize)
        return "l" if same else l_column(pre)

    def _reusable(self, image_id: str, geometry: tuple[int, int], source: bytes, shard_id: str) -> bool:
        """An output already at the row's key is reused only if it decodes, has the source's geometry and, where
        an earlier run's metrics row records it, hashes to that row's ``output_sha256`` from a source that
        hashes to its ``source_sha256``; a truncated, foreign or changed file is colorized again (and
        overwritten)."""
        key = output_key(self.output, image_id, self.output_format)
        try:
            data, existing = read_output(key, self.options, self.max_pixels)
        except FileNotFoundError:
            return False
        except (imageio.ImageDecodeError, storage.NotRegularFileError, storage.TooLargeError) as exc:
            log.warning("redoing %s: the existing output does not decode (%s)", key, short_error(exc))
            return False
        if existing.pixels.shape[:2] != tuple(geometry):
            log.warning("redoing %s: the existing output is %dx%d, the source %dx%d", key, existing.width,
                        existing.height, geometry[1], geometry[0])
            return False
        row = recorded_row(self.output, shard_id, image_id, self.options) or {}
        if not fixity.matches(data, row.get("output_sha256")):
            log.warning("redoing %s: it does not hash to its metrics row (changed since it was written)", key)
            return False
        if not fixity.matches(source, row.get("source_sha256")):
            log.warning("redoing %s: its source changed since it was made", key)
            return False
        return True

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["image_id"])
        pre = self.preprocessing
        h, w = pre.input_size
        l_model = np.zeros((n, 1, h, w), np.float32)
        extra = {self.column(p): p for p in self.more if self.column(p) != "l"}
        extra_l = {name: np.zeros((n, 1, *p.input_size), np.float32) for name, p in extra.items()}
        largest = max((pre.input_size, *(p.input_size for p in extra.values())), key=max)
        hint_ab = np.zeros((n, 2, h, w), np.float32) if self.accepts_hints else None
        hint_mask = np.zeros((n, 1, h, w), np.float32) if self.accepts_hints else None
        status, error, reuse, seconds = [], [], np.zeros(n, bool), np.zeros(n, np.float64)
        sources: list[bytes | None] = [None] * n
        decoded: list[imageio.DecodedImage | None] = [None] * n
        for i in range(n):
            t0 = time.perf_counter()
            image_id, uri = batch["image_id"][i], batch["uri"][i]
            try:
                data = read_input(uri, self.options)
                sources[i] = data if self.keep_source else None
                if self.protocol == "full" and self.keep_source:
                    image = imageio.decode_image(data, max_pixels=self.max_pixels)
                    rgb, geometry = render.reduce_decoded(image.pixels, largest), image.pixels.shape[:2]
                    decoded[i] = image if image.width * image.height <= KEEP_DECODED_PIXELS else None
                elif self.protocol == "full":
                    rgb, geometry = render.decode_reduced(data, largest, self.max_pixels)
                else:
                    rgb = apply_protocol(imageio.decode_image(data, max_pixels=self.max_pixels).rgb, self.protocol)
                    geometry = rgb.shape[:2]
                if self.check_existing and self._reusable(image_id, geometry, data, batch["shard_id"][i]):
                    reuse[i] = True
                else:
                    l_model[i, 0] = pre.model_l(rgb)
                    for name, p in extra.items():
                        extra_l[name][i, 0] = p.model_l(rgb)
                    if self.accepts_hints and self.sample_hints:
                        hints = sample_hints(rgb, self.sample_hints, str(image_id), size=pre.input_size,
                                             radius=self.hint_radius, seed=self.hint_seed)
                        hint_ab[i], hint_mask[i] = render.hint_maps(hints, pre, self.hint_radius)
                    elif self.accepts_hints and "hints" in batch:
                        hint_ab[i], hint_mask[i] = render.hint_maps(batch["hints"][i], pre, self.hint_radius)
                status.append(errors.OK)
                error.append(None)
            except Exception as exc:  # noqa: BLE001 - a failure about the input is this row's result; others raise
                row_status, reason = _row_failure(exc)
                status.append(row_status)
                error.append(reason)
            seconds[i] = time.perf_counter() - t0
        out = {k: v for k, v in batch.items() if k != "hints"}
        out.update(l=l_model, **extra_l, status=_obj_column(status), error=_obj_column(error), reuse=reuse,
                   seconds=seconds)
        if self.accepts_hints:
            out.update(hint_ab=hint_ab, hint_mask=hint_mask)
        if self.keep_source:
            out["source"], out["decoded"] = _obj_column(sources), _obj_column(decoded)
        return out


# A fused actor keeps a decoded source from its decode to its compose up to this size (an inference batch of
# 8 RGB scans of 16 MP holds 384 MB); a larger one is decoded again by the compose, one at a time.
KEEP_DECODED_PIXELS = 16_000_000


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


# Colourfulness of the job's outputs on every other row and column (metrics.colorfulness): a quarter of its cost.
COLORFULNESS_STEP = 2


@dataclass
class ComposeStage:
    """Full-resolution output, encoded and written, scored; emits metrics rows.

    Colourfulness alone (no reference: a gray scan) is scored on the pixels being encoded (on the CPU on every
    other row and column, :data:`COLORFULNESS_STEP`): the JPEG moves it by 0.02-0.17%, and decoding the
    written file again costs as much as the encode. With a reference (a
    ``reference_uri``, or a colour source scored against itself) the written file is decoded and scored, since
    the codec moves SSIM by up to 0.02."""

    options: storage.StorageOptions
    output: str
    preprocessing: Preprocessing
    output_format: str = "jpeg"
    quality: int = 95
    saturation: float = 1.0
    model_name: str = ""
    max_pixels: int = imageio.DEFAULT_MAX_PIXELS
    output_depth: str = "auto"
    visible_label: bool = False
    provenance: ProvenanceConfig | None = None  # the signer is loaded in setup(): it never pickles
    weights_sha256: str | None = None
    # The full-resolution work (compose and scores) in torch on this device (a GPU actor's), else numpy/skimage.
    device: str | None = None

    def setup(self) -> None:
        self.settings  # noqa: B018 - the signer is loaded here, so a failure to load it raises from setup()

    @functools.cached_property
    def settings(self) -> archival.OutputSettings:
        return output_settings(self.output_format, self.output_depth, self.quality, self.visible_label,
                               self.provenance, self.options)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "settings"}  # a signer never pickles

    def _existing(self, key: str, rel: str, row: dict[str, Any], source: bytes,
                  decoded: imageio.DecodedImage) -> tuple[np.ndarray, dict[str, Any]]:
        """The output the decode stage found reusable and its fixity columns (the earlier row's metadata note
        where there is one); gone or unreadable now, it is the output's problem."""
        try:
            data, existing = read_output(key, self.options, self.max_pixels)
        except (FileNotFoundError, imageio.ImageDecodeError, storage.NotRegularFileError, storage.TooLargeError) as exc:
            raise OutputError(f"cannot read back the existing output {storage.redact_uri(key)} "
                              f"({short_error(exc)}); rerun the same command") from exc
        earlier = recorded_row(self.output, row["shard_id"], row["image_id"], self.options)
        note = earlier.get("metadata") if earlier else metadata.summarize(
            metadata.read_metadata(source).dropped, archival.colour_dropped(decoded.colour))
        return existing.rgb, {"output_path": rel, "source_sha256": fixity.sha256_hex(source),
                              "output_sha256": fixity.sha256_hex(data), "output_bytes": len(data), "metadata": note}

    def _one(self, row: dict[str, Any]) -> dict[str, Any]:
        image_id = row["image_id"]
        data = row.get("source")  # the bytes the decode stage fetched, where it ran in this process (fused)
        data = data if isinstance(data, bytes) else read_input(row["uri"], self.options)
        source = row.get("decoded")  # decoded once by the decode stage in this process (fused), if kept
        if not isinstance(source, imageio.DecodedImage):
            source = imageio.decode_image(data, max_pixels=self.max_pixels)
        rel = output_path(image_id, self.output_format)
        key = storage.join(self.output, rel)
        ref_uri = _text(row.get("reference_uri"))
        colourful = None  # accumulated on the device during the compose
        if row["reuse"]:
            result, fix = self._existing(key, rel, row, data, source)
        else:
            acc = torchpath.Colourfulness() if self.device else None
            rgb = render.compose(source.pixels, row["ab"], self.preprocessing, saturation=self.saturation,
                                 is_gray=source.is_gray, depth=self.settings.depth(source.bit_depth),
                                 device=self.device, scores=acc)
            record = archival.derivation(storage.redact_uri(row["uri"]), data, self.model_name, self.weights_sha256,
                                         source.source_format)
            finished = archival.write_output(rgb, key, self.settings, record, source=data,
                                             source_format=source.source_format, colour=source.colour,
                                             options=self.options, root=self.output)
            fix = finished.columns(rel)
            # Scored from the pixels being encoded, unless a reference needs the delivered file itself.
            has_reference = bool(ref_uri) or not source.is_gray
            result = imageio.decode_image(finished.data, max_pixels=self.max_pixels).rgb if has_reference else rgb
            colourful = None if has_reference or acc is None or rgb.dtype != np.uint8 else acc.value()
        result = imageio.to_uint8(result)  # scores are of 8-bit values, whatever the output's depth
        against = None
        reference = None
        if ref_uri:
            reference = imageio.to_uint8(imageio.decode_image(
                read_input(ref_uri, self.options), max_pixels=self.max_pixels).rgb)
            against = "reference_uri"
            if reference.shape != result.shape:
                raise InputError(f"reference is {reference.shape[1]}x{reference.shape[0]}, "
                                 f"input is {result.shape[1]}x{result.shape[0]}")
        elif not source.is_gray:
            reference, against = imageio.to_uint8(source.rgb), "input"
        m = metrics.compute_metrics(result, reference, COLORFULNESS_STEP) if self.device is None else \
            torchpath.compute_metrics(result, reference, self.device, colourful)
        return {**m, "width": source.width, "height": source.height, "metrics_against": against, **fix}

    def __call__(self, batch: Batch) -> Batch:
        rows = _metric_rows()
        for i in range(len(batch["image_id"])):
            t0 = time.perf_counter()
            row = {k: batch[k][i] for k in batch}
            status, error = row["status"], row["error"]
            values: dict[str, Any] = {}
            if status == errors.OK:
                try:
                    values = self._one(row)
                except Exception as exc:  # noqa: BLE001 - a bad input is a row; an output failure or a bug raises
                    status, error = _row_failure(exc)
            _add_row(rows, row, status, error, self.model_name, float(row["seconds"]) + time.perf_counter() - t0,
                     values)
        return _metric_batch(rows)


# The metrics columns a compose stage fills from the scores (the rest come from the row itself).
_VALUE_COLUMNS = tuple(c for c in METRIC_COLUMNS if c not in ("image_id", "status", "error", "model", "seconds"))


def _metric_rows() -> dict[str, list[Any]]:
    return {c: [] for c in (*METRIC_COLUMNS, "shard_id")}


def _add_row(rows: dict[str, list[Any]], row: dict[str, Any], status: str, error: str | None, model: str,
             seconds: float, values: dict[str, Any]) -> None:
    rows["image_id"].append(row["image_id"])
    rows["shard_id"].append(row["shard_id"])
    rows["status"].append(status)
    rows["error"].append(error)
    rows["model"].append(model)
    rows["seconds"].append(seconds)
    for c in _VALUE_COLUMNS:
        rows[c].append(values.get(c))


def _metric_batch(rows: dict[str, list[Any]]) -> Batch:
    """Metrics rows as typed columns (:data:`~colorize_core.schema.METRICS_SCHEMA`): -1 for a missing integer
    (a size), NaN for a missing score."""
    out: Batch = {}
    for c, vals in rows.items():
        kind = METRICS_SCHEMA.field(c).type if c in METRICS_SCHEMA.names else None
        if kind == pa.int64():
            out[c] = np.array([-1 if v is None else v for v in vals], np.int64)
        elif kind == pa.float64():
            out[c] = np.array([np.nan if v is None else v for v in vals], np.float64)
        else:
            out[c] = _obj_column(vals)
    return out


GRAY_BASELINE = "gray"


def eval_output_path(model: str, image_id: str, fmt: str) -> str:
    """Where evaluation writes a model's output for an image, relative to its output: images/<model>/<id>.<ext>."""
    return output_path(f"{model}/{image_id}", fmt)


def eval_output_key(output: str, model: str, image_id: str, fmt: str) -> str:
    return storage.join(output, eval_output_path(model, image_id, fmt))


@dataclass(frozen=True)
class ScoredModel:
    """One column of an evaluation: its label, the batch columns its ab and time are in, and its weights'
    preprocessing (how its ab is upsampled). The gray baseline has neither: its ab is 0, so the output is the
    input's L alone."""

    label: str
    ab_column: str | None = None
    seconds_column: str | None = None
    preprocessing: Preprocessing = Preprocessing((1, 1))
    name: str | None = None  # the model's name and weights' sha256, as its outputs' provenance records them
    weights_sha256: str | None = None


@dataclass
class EvalComposeStage:
    """Evaluation: for every image, compose each model's ab with the L of the reference (the colour
    original under ``protocol``) with the colorize job's own compose, write it, and score it against the
    reference with the colorize job's metric code. Emits one metrics row per (image, model),
    ``metrics_against='input'``."""

    options: storage.StorageOptions
    output: str
    models: tuple[ScoredModel, ...]
    protocol: str = "full"
    output_format: str = "png"
    quality: int = 95
    max_pixels: int = imageio.DEFAULT_MAX_PIXELS
    provenance: ProvenanceConfig | None = None

    def setup(self) -> None:
        self.settings  # noqa: B018 - the signer is loaded here, so a failure to load it raises from setup()

    @functools.cached_property
    def settings(self) -> archival.OutputSettings:
        # Evaluation outputs are 8-bit (scored against the 8-bit reference) and never labelled.
        return output_settings(self.output_format, "8", self.quality, False, self.provenance, self.options)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "settings"}  # a signer never pickles

    def _reference(self, uri: str) -> tuple[bytes, imageio.DecodedImage, np.ndarray]:
        data = read_input(uri, self.options)
        source = imageio.decode_image(data, max_pixels=self.max_pixels)
        if source.is_gray:
            raise InputError("not a colour image: a held-out set needs colour originals to score against")
        return data, source, apply_protocol(source.rgb, self.protocol)

    def _score(self, model: ScoredModel, row: dict[str, Any], original: tuple) -> dict[str, Any]:
        data, source, reference = original
        ab = row[model.ab_column] if model.ab_column else np.zeros((2, 1, 1), np.float32)
        rel = eval_output_path(model.label, row["image_id"], self.output_format)
        rgb = render.compose(reference, ab, model.preprocessing)
        name = model.name or (f"{model.label} (baseline: ab = 0)" if model.ab_column is None else model.label)
        record = archival.derivation(storage.redact_uri(row["uri"]), data, name, model.weights_sha256,
                                     source.source_format)
        result, finished = write_and_read_back(rgb, storage.join(self.output, rel), self.settings, record,
                                               source=data, source_format=source.source_format,
                                               colour=source.colour, options=self.options,
                                               max_pixels=self.max_pixels, root=self.output)
        return {**metrics.compute_metrics(result, reference), "width": reference.shape[1],
                "height": reference.shape[0], "metrics_against": "input", **finished.columns(rel)}

    def __call__(self, batch: Batch) -> Batch:
        rows = _metric_rows()
        for i in range(len(batch["image_id"])):
            t0 = time.perf_counter()
            row = {k: batch[k][i] for k in batch}
            reference = None
            image_status, image_error = row["status"], row["error"]
            if image_status == errors.OK:
                try:
                    reference = self._reference(row["uri"])
                except Exception as exc:  # noqa: BLE001 - a bad input is a row; anything else raises
                    image_status, image_error = _row_failure(exc)
            shared = time.perf_counter() - t0
            for model in self.models:
                t1 = time.perf_counter()
                values: dict[str, Any] = {}
                status, error = image_status, image_error
                if reference is not None:
                    values = self._score(model, row, reference)
                inference = float(row[model.seconds_column]) if model.seconds_column else 0.0
                _add_row(rows, row, status, error, model.label,
                         float(row["seconds"]) + inference + shared + time.perf_counter() - t1, values)
        return _metric_batch(rows)
