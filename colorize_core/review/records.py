"""What the review page reads and writes of a finished run: its settings, its metrics, where each image came
from, and the hints a reviewer saved.

Everything is looked up by ``image_id`` in the run's own records (the metrics dataset and the manifest it
ran): an id is never joined into a path unless the metrics hold it and :func:`~colorize_core.manifest.id_problem`
passes it, and the only place written is ``RUN/review/``.

The metrics are read with pyarrow, only the columns the page shows, and kept in memory per run; the table is
read again only when the listing of ``metrics/`` changes (checked at most every ``refresh_s``), so a
100,000-row run answers a page as fast as a 10-row one: the filter, the sort and the slice run in Arrow.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import manifest as manifest_mod
from .. import imageio, runstate, storage
from ..config import explain
from ..errors import STATUSES, TransientError, UserError
from ..schema import HINTS_TYPE, METRICS_SCHEMA
from ..stages import output_key

log = logging.getLogger(__name__)

REVIEW = "review"
HINTS_FILE = "hints.parquet"
LIST_COLUMNS = ("image_id", "status", "error", "model", "width", "height", "psnr", "ssim", "rmse", "colorfulness",
                "deltae2000", "metrics_against")
RANGE_COLUMNS = ("psnr", "ssim", "rmse", "colorfulness", "deltae2000")
SORT_COLUMNS = ("image_id", "status", "width", "height", *RANGE_COLUMNS)
MAX_PAGE = 500
# Lab's a and b span [-128, 127] in every encoding of it (sRGB's gamut lies well inside: about -86..98 for a,
# -108..95 for b); a value outside is a client bug, not a colour.
AB_LIMIT = 128.0
MAX_HINTS = 512
REFRESH_S = 2.0
ORDERS_KEPT = 16  # filtered, sorted orders of the current table kept for paging


class BadRequest(ValueError):
    """A request the client must change: answered 400 with this message."""


class UnknownImage(LookupError):
    """An id the run's records do not hold (or whose source they do not name): answered 404."""

    def __str__(self) -> str:
        return self.args[0]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hint(_Strict):
    """One colour point, as in manifests: x, y in [0, 1] of the image's width and height, a and b in Lab."""

    x: float = Field(ge=0, le=1, allow_inf_nan=False, strict=True)
    y: float = Field(ge=0, le=1, allow_inf_nan=False, strict=True)
    a: float = Field(ge=-AB_LIMIT, le=AB_LIMIT, allow_inf_nan=False, strict=True)
    b: float = Field(ge=-AB_LIMIT, le=AB_LIMIT, allow_inf_nan=False, strict=True)


class HintsBody(_Strict):
    hints: list[Hint] = Field(max_length=MAX_HINTS)


def parse_hints(payload: Any) -> list[dict[str, float]]:
    """The body of ``POST /api/preview/<id>`` and ``/api/hints/<id>``, checked; BadRequest says what is wrong."""
    try:
        body = HintsBody.model_validate(payload)
    except ValidationError as exc:
        raise BadRequest(explain(exc, HintsBody)) from None
    return [h.model_dump() for h in body.hints]


class ImageQuery(_Strict):
    """``GET /api/images`` parameters. Range filters (``psnr_min`` ...) keep only rows that have the metric."""

    sort: Literal[SORT_COLUMNS] = "image_id"  # type: ignore[valid-type]
    order: Literal["asc", "desc"] = "asc"
    status: Literal[STATUSES] | None = None  # type: ignore[valid-type]
    reviewed: bool | None = None
    offset: int = Field(0, ge=0)
    limit: int = Field(50, ge=1, le=MAX_PAGE)
    psnr_min: float | None = None
    psnr_max: float | None = None
    ssim_min: float | None = None
    ssim_max: float | None = None
    rmse_min: float | None = None
    rmse_max: float | None = None
    colorfulness_min: float | None = None
    colorfulness_max: float | None = None
    deltae2000_min: float | None = None
    deltae2000_max: float | None = None

    @classmethod
    def parse(cls, params: dict[str, str]) -> "ImageQuery":
        try:
            return cls.model_validate({k: v for k, v in params.items() if v != ""})
        except ValidationError as exc:
            raise BadRequest(explain(exc, cls)) from None


@dataclass(frozen=True)
class RunSettings:
    """What the review needs of the run: its model and the settings that shaped every output."""

    output: str
    manifest: str | None
    model: str
    weights: str | None
    temperature: float | None
    output_format: str
    saturation: float
    hint_radius: int
    max_pixels: int
    weights_sha256: str | None

    @classmethod
    def read(cls, output: str, options) -> "RunSettings":
        """The run's settings; UserError (one line) when ``output`` is not a run, cannot be read or reached."""
        try:
            with storage.access_checked(output):
                config = json.loads(storage.read_bytes(storage.join(output, "config.json"), options))
                try:
                    identity = json.loads(storage.read_bytes(runstate.state_uri(output, "run.json"), options))
                except FileNotFoundError:
                    identity = {}
        except FileNotFoundError:
            raise UserError(f"{output} holds no config.json: give the --output of a colorize run") from None
        except TransientError as exc:
            raise UserError(f"cannot reach {storage.redact_uri(output)}: {exc}") from None
        manifest = config.get("manifest")
        return cls(output=output, manifest=manifest if isinstance(manifest, str) else None,
                   model=config.get("model") or "effnet_unet", weights=config.get("weights"),
                   temperature=config.get("temperature"), output_format=config.get("output_format", "jpeg"),
                   saturation=float(config.get("saturation", 1.0)), hint_radius=int(config.get("hint_radius", 2)),
                   max_pixels=int(config.get("max_pixels") or imageio.DEFAULT_MAX_PIXELS),
                   weights_sha256=identity.get("weights_sha256"))

    def public(self) -> dict[str, Any]:
        return {"output": storage.redact_uri(self.output), "model": storage.redact_uri(self.model),
                "weights": storage.redact_uri(self.weights), "output_format": self.output_format,
                "saturation": self.saturation, "hint_radius": self.hint_radius, "temperature": self.temperature}


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


class RunRecords:
    """One run's records for the review page; safe to call from several threads."""

    def __init__(self, output: str, options: storage.StorageOptions, refresh_s: float = REFRESH_S):
        self.output = output.rstrip("/")
        self.options = options
        self.refresh_s = refresh_s
        self.settings = RunSettings.read(self.output, options)
        self._lock = threading.Lock()
        self._table: pa.Table | None = None
        self._listing: dict[str, str] | None = None
        self._checked = -math.inf
        self._sources: pa.Table | None = None
        self._orders: dict[tuple, tuple] = {}
        self._hints_lock = threading.Lock()
        self._hints: dict[str, dict[str, Any]] | None = None

    # ------------------------------------------------------------------------------------------ metrics

    def metrics(self) -> pa.Table:
        """The run's metrics, one row per image (columns :data:`LIST_COLUMNS`)."""
        with self._lock:
            now = time.monotonic()
            if self._table is None or now - self._checked >= self.refresh_s:
                listing = runstate.metrics_listing(self.output, self.options)
                if listing != self._listing or self._table is None:
                    self._table = self._read_metrics(list(listing))
                    self._listing = listing
                self._checked = now
            return self._table

    def _read_metrics(self, files: list[str]) -> pa.Table:
        schema = pa.schema([METRICS_SCHEMA.field(c) for c in LIST_COLUMNS])
        if not files:
            return schema.empty_table()
        fs, _ = storage.pyarrow_filesystem(files[0], self.options)
        paths = [storage.pyarrow_filesystem(f, self.options)[1] for f in files]

        def read() -> pa.Table:
            return pads.dataset(paths, schema=METRICS_SCHEMA, format="parquet", filesystem=fs).to_table(
                columns=list(LIST_COLUMNS))

        # Files oldest first: where a re-render has not yet dropped an image's older row, the newer one is shown.
        table = storage.retrying("read", storage.join(self.output, "metrics"), self.options, read)
        return runstate.current_rows(table).combine_chunks()

    def page(self, q: ImageQuery) -> dict[str, Any]:
        """One page of rows, filtered and sorted as ``q`` says, with the total that matched and the counts of
        the whole run by status. The filtered order is kept per query (offset and limit aside), so paging
        through a large run sorts it once."""
        table = self.metrics()
        saved = self.saved_hints()
        counts, matched, indices = self._ordered(table, q, saved)
        rows = matched.take(indices[q.offset: q.offset + q.limit]).to_pylist()
        for row in rows:
            for k, v in row.items():
                row[k] = _finite(v)
            hints = saved.get(row["image_id"])
            row["hints"] = None if hints is None else len(hints["hints"])
        return {"total": matched.num_rows, "offset": q.offset, "limit": q.limit, "counts": counts, "rows": rows}

    def _ordered(self, table: pa.Table, q: ImageQuery, saved: dict) -> tuple[dict[str, int], pa.Table, pa.Array]:
        key = (json.dumps(q.model_dump(exclude={"offset", "limit"}), sort_keys=True),
               tuple(sorted(saved)) if q.reviewed is not None else None)
        with self._lock:
            hit = self._orders.get(key)
            if hit is not None and hit[0] is table:
                return hit[1:]
        counts = {s: 0 for s in STATUSES}
        for item in pc.value_counts(table["status"]).to_pylist():
            if item["values"] is not None:
                counts[item["values"]] = item["counts"]
        counts["all"] = table.num_rows
        mask = None

        def both(m):
            return m if mask is None else pc.and_kleene(mask, m)

        if q.status is not None:
            mask = both(pc.equal(table["status"], q.status))
        for column in RANGE_COLUMNS:
            lo, hi = getattr(q, f"{column}_min"), getattr(q, f"{column}_max")
            if lo is not None:
                mask = both(pc.greater_equal(table[column], lo))
            if hi is not None:
                mask = both(pc.less_equal(table[column], hi))
        if q.reviewed is not None:
            member = pc.is_in(table["image_id"], value_set=pa.array(sorted(saved), pa.string()))
            mask = both(member if q.reviewed else pc.invert(member))
        matched = table.filter(mask) if mask is not None else table  # a null (metric missing) drops the row
        order = "ascending" if q.order == "asc" else "descending"
        keys = [(q.sort, order)] + ([("image_id", "ascending")] if q.sort != "image_id" else [])
        indices = pc.sort_indices(matched, sort_keys=keys)  # nulls last, whatever the order
        with self._lock:
            if len(self._orders) >= ORDERS_KEPT:
                self._orders.pop(next(iter(self._orders)))
            self._orders[key] = (table, counts, matched, indices)
        return counts, matched, indices

    def row(self, image_id: str) -> dict[str, Any] | None:
        """The image's metrics row, or None for an id the run does not hold (the server answers 404)."""
        table = self.metrics()
        at = pc.index(table["image_id"], image_id).as_py()
        if at < 0:
            return None
        return {k: _finite(v) for k, v in table.slice(at, 1).to_pylist()[0].items()}

    def require(self, image_id: str) -> dict[str, Any]:
        """:meth:`row`, or UnknownImage for an id the run does not hold."""
        row = self.row(image_id)
        if row is None:
            raise UnknownImage(f"this run holds no image {image_id!r}")
        return row

    def output_uri(self, image_id: str) -> str:
        """Where the run wrote the image, for an id its metrics hold and that is a valid id (UnknownImage)."""
        self.require(image_id)
        if manifest_mod.id_problem(image_id) is not None:
            raise UnknownImage(f"this run holds no image {image_id!r}")
        return output_key(self.output, image_id, self.settings.output_format)

    # ------------------------------------------------------------------------------------------ sources

    def _source_table(self) -> pa.Table:
        """image_id, uri, reference_uri of the run's manifest (read once, two or three columns)."""
        with self._lock:
            if self._sources is None:
                self._sources = self._read_sources()
            return self._sources

    def _read_sources(self) -> pa.Table:
        schema = pa.schema([("image_id", pa.string()), ("uri", pa.string()), ("reference_uri", pa.string())])
        if not self.settings.manifest:
            return schema.empty_table()
        try:
            _, files = manifest_mod.manifest_files(self.settings.manifest, self.options)
        except (FileNotFoundError, manifest_mod.ManifestError) as exc:
            log.warning("the run's manifest %s cannot be read (%s): inputs are not shown",
                        storage.redact_uri(self.settings.manifest), exc)
            return schema.empty_table()
        parts = []
        for f in files:
            fs, path = storage.pyarrow_filesystem(f, self.options)
            names = storage.retrying("read", f, self.options, lambda: pq.read_schema(path, filesystem=fs).names)
            wanted = ["image_id", "uri"] + (["reference_uri"] if "reference_uri" in names else [])
            table = storage.read_parquet_table(f, self.options, columns=wanted)
            cols = {"image_id": table["image_id"].cast(pa.string()), "uri": table["uri"].cast(pa.string())}
            cols["reference_uri"] = (table["reference_uri"].cast(pa.string()) if "reference_uri" in table.column_names
                                     else pa.nulls(table.num_rows, pa.string()))
            parts.append(pa.table(cols, schema=schema))
        return pa.concat_tables(parts).combine_chunks() if parts else schema.empty_table()

    @property
    def has_references(self) -> bool:
        return self._source_table()["reference_uri"].null_count < self._source_table().num_rows

    def source(self, image_id: str) -> dict[str, str | None]:
        """``{"uri", "reference_uri"}`` the run read for an image it holds; UnknownImage otherwise."""
        self.require(image_id)
        saved = self.saved_hints().get(image_id)
        if saved is not None:
            return {"uri": saved["uri"], "reference_uri": saved.get("reference_uri")}
        table = self._source_table()
        at = pc.index(table["image_id"], image_id).as_py()
        if at < 0:
            raise UnknownImage(f"the run's manifest names no input for image {image_id!r}")
        row = table.slice(at, 1).to_pylist()[0]
        return {"uri": row["uri"], "reference_uri": row["reference_uri"]}

    # ------------------------------------------------------------------------------------------ hints

    @property
    def hints_uri(self) -> str:
        return storage.join(self.output, REVIEW, HINTS_FILE)

    def rerender_command(self) -> str:
        """The colorize command that renders the saved hints into this run with its settings (the run's
        identity: a flag for each setting not at its default; ``hint_radius`` and signing have no plain flag,
        so a run that set them names its ``--config``)."""
        import shlex

        from ..config import ColorizeConfig
        from ..models.registry import DEFAULT_MODEL

        try:
            config = json.loads(storage.read_bytes(storage.join(self.output, "config.json"), self.options))
        except (FileNotFoundError, ValueError, TransientError):
            config = {}
        defaults = ColorizeConfig.model_fields
        words = ["python", "-m", "jobs.colorize", "--manifest", storage.redact_uri(self.hints_uri), "--output",
                 storage.redact_uri(self.output)]
        if self.settings.model != DEFAULT_MODEL:
            words += ["--model", storage.redact_uri(self.settings.model)]
        for key in ("weights", "temperature", "output_format", "output_depth", "quality", "saturation", "shard_rows"):
            value = config.get(key)
            if value is not None and value != defaults[key].default:
                words += [f"--{key.replace('_', '-')}", storage.redact_uri(str(value))]
        if config.get("visible_label"):
            words.append("--visible-label")
        command = shlex.join(words)
        signed = (config.get("provenance") or {}).get("cert")
        if self.settings.hint_radius != defaults["hint_radius"].default or signed:
            command += "  # with the run's hint_radius and signing settings: --config <the run's YAML>"
        return command

    def saved_hints(self) -> dict[str, dict[str, Any]]:
        """image_id -> saved manifest row (``image_id, uri, hints[, reference_uri]``)."""
        with self._hints_lock:
            if self._hints is None:
                try:
                    rows = storage.read_parquet_table(self.hints_uri, self.options).to_pylist()
                except FileNotFoundError:
                    rows = []
                self._hints = {r["image_id"]: r for r in rows}
            return dict(self._hints)

    def save_hints(self, image_id: str, hints: list[dict[str, float]]) -> dict[str, Any]:
        """Put the image's row into ``RUN/review/hints.parquet`` (replacing its earlier one), written whole.

        The file is a manifest the colorize job takes as it is: ``image_id``, ``uri``, ``hints`` and, where the
        run's manifest had one, ``reference_uri``. An empty list is kept: re-rendering then removes the
        image's earlier hints. Returns the row."""
        source = self.source(image_id)
        with_reference = self.has_references
        self.saved_hints()
        with self._hints_lock:
            row: dict[str, Any] = {"image_id": image_id, "uri": source["uri"], "hints": hints}
            if with_reference:
                row["reference_uri"] = source["reference_uri"]
            rows = {**self._hints, image_id: row}
            ordered = [rows[k] for k in sorted(rows)]
            fields = [("image_id", pa.string()), ("uri", pa.string()), ("hints", HINTS_TYPE)]
            if with_reference:
                fields.append(("reference_uri", pa.string()))
            schema = pa.schema(fields)
            table = pa.table({name: pa.array([r.get(name) for r in ordered], schema.field(name).type)
                              for name in schema.names}, schema=schema)
            storage.write_parquet_table(table, self.hints_uri, self.options)
            self._hints = rows
            return row
