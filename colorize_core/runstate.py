"""Run state under an output prefix: what is done, what produced it, and who may write there now.

Every job that writes under ``--output`` keeps its state in ``<output>/_state/``:

    run.json                        the run identity: every setting that changes an output byte
    completions/<shard>__<rows>.done   one current marker per shard (metrics first, then the marker)
    ledger.parquet                  backfills: one row per source object colorized (key, version, ...)
    backfill.lease                  backfills: who holds the output now, and until when

A marker stands beside a complete metrics file only; a shard with a ``transient`` row gets none, so a plain
rerun finishes it. The identity refuses to mix outputs of different weights *content* or settings.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import storage
from .errors import OK, TRANSIENT, UserError
from .schema import METRICS_SCHEMA

STATE = "_state"
MARKERS = "completions"


def state_uri(output: str, *parts: str) -> str:
    return storage.join(output, STATE, *parts)


def utc_now(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


# --------------------------------------------------------------------------------------------- run identity


def check_identity(output: str, identity: dict[str, Any], options, *, overwrite: bool) -> bool:
    """Record ``identity`` (settings that change outputs, weights by content hash) in run.json.

    Returns True when an earlier run's progress exists, so rows must be checked against written images.
    Raises UserError when the output holds a run with another identity (one line, says what to do)."""
    uri = state_uri(output, "run.json")
    if overwrite:  # the run's own state only: a backfill's lease and ledger stay
        storage.remove(uri, options)
        storage.remove(state_uri(output, MARKERS), options)
        storage.remove(storage.join(output, "metrics"), options)
        previous = None
    else:
        try:
            previous = json.loads(storage.read_bytes(uri, options))
        except FileNotFoundError:
            previous = None
    if previous is not None and previous != identity:
        keys = sorted(set(previous) | set(identity))
        diff = {k: (previous.get(k), identity.get(k)) for k in keys if previous.get(k) != identity.get(k)}
        shown = ", ".join(f"{k}: {_short(a)} -> {_short(b)}" for k, (a, b) in diff.items())
        raise UserError(f"{output} holds a run with other settings ({shown}); use --overwrite to redo it, "
                        f"or another --output")
    if previous is None:  # a resumed run leaves the record as it is
        storage.write_output(uri, json.dumps(identity, sort_keys=True).encode(), options, root=output)
    return previous is not None


def reset_evaluation(output: str, options) -> None:
    """Before an evaluation: remove the previous evaluation's metrics, state and report (an evaluation
    scores every row again; its images are overwritten). Refused, with one line, where ``output`` holds a
    colorize run: its metrics and markers are not an evaluation's to delete."""
    if storage.exists(state_uri(output, "run.json"), options):
        raise UserError(f"{output} holds a colorize job's output; evaluate into another --output")
    for stale in (storage.join(output, "metrics"), state_uri(output), storage.join(output, "report")):
        storage.remove(stale, options)


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text[:12] + "..." if isinstance(value, str) and len(value) == 64 else text


# --------------------------------------------------------------------------------------------- markers


def completed(output: str, options) -> dict[str, int]:
    """shard_id -> rows its current marker covers. Where an interrupted clean-up left two markers for one
    shard, the larger covers the smaller (shard rows always start at the shard's first row)."""
    done: dict[str, int] = {}
    for uri in storage.list_files(state_uri(output, MARKERS), options, suffix=".done"):
        name = uri.rsplit("/", 1)[-1].removesuffix(".done")
        shard_id, _, rows = name.rpartition("__")
        if rows.isdigit():
            done[shard_id] = max(done.get(shard_id, 0), int(rows))
    return done


def is_done(done: dict[str, int], shard_id: str, num_rows: int) -> bool:
    return done.get(shard_id, -1) >= num_rows


def _marker(output: str, shard_id: str, rows: int) -> str:
    return state_uri(output, MARKERS, f"{shard_id}__{rows}.done")


def mark_complete(output: str, shard_id: str, rows: list[dict[str, Any]], options,
                  known: dict[str, int] | None = None) -> None:
    """Write the shard's marker, then remove its older markers (one current marker per shard)."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    body = {"rows": len(rows), **counts, "finished_at": utc_now()}
    storage.write_output(_marker(output, shard_id, len(rows)), json.dumps(body).encode(), options, root=output)
    old = known.get(shard_id) if known is not None else None
    if known is None:
        for uri in storage.list_files(state_uri(output, MARKERS), options, suffix=".done"):
            name = uri.rsplit("/", 1)[-1].removesuffix(".done")
            sid, _, n = name.rpartition("__")
            if sid == shard_id and n.isdigit() and int(n) != len(rows):
                storage.remove(uri, options)
    elif old is not None and old != len(rows):
        storage.remove(_marker(output, shard_id, old), options)


def metrics_uri(output: str, shard_id: str) -> str:
    return storage.join(output, "metrics", f"{shard_id}.parquet")


def metrics_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows from the pipeline (numpy scalars, NaN for missing) as a table of METRICS_SCHEMA."""
    cols = {}
    for name in METRICS_SCHEMA.names:
        vals = [r.get(name) for r in rows]
        if METRICS_SCHEMA.field(name).type == pa.int64():  # -1: none (sizes of error rows)
            vals = [None if v is None or v < 0 else int(v) for v in vals]
        elif METRICS_SCHEMA.field(name).type == pa.float64():
            vals = [None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v) for v in vals]
        else:  # Ray turns an all-None object column into NaNs on the way back
            vals = [v if isinstance(v, str) else None for v in vals]
        cols[name] = pa.array(vals, type=METRICS_SCHEMA.field(name).type)
    return pa.table(cols, schema=METRICS_SCHEMA)


def finish_shard(output: str, shard_id: str, rows: list[dict[str, Any]], options,
                 known: dict[str, int] | None = None) -> bool:
    """Metrics first, then the marker: a marker only ever stands beside a complete metrics file. A shard
    with a transient row gets its metrics (the good rows are kept) but no marker. Returns whether marked.
    A write that fails is an OutputError (the run stops; the shard stays unmarked, so a rerun redoes it)."""
    storage.write_output_table(metrics_table(rows), metrics_uri(output, shard_id), options, root=output)
    if any(r["status"] == TRANSIENT for r in rows):
        return False
    mark_complete(output, shard_id, rows, options, known)
    return True


# --------------------------------------------------------------------------------------------- current rows
#
# An image has one current metrics row. A manifest run into an output that already holds rows of its images in
# other shards' metrics (a re-render of reviewed images: ``--manifest RUN/review/hints.parquet``) renders
# those images again and then drops their older rows (:func:`drop_rows`). Until that clean-up has run (a
# re-render in progress or killed), an image can have two rows: readers keep the one from the metrics file
# written last (:func:`current_rows`, over :func:`metrics_listing`'s order).


def metrics_listing(output: str, options) -> dict[str, str]:
    """URI -> version of every metrics file, oldest write first: the order :func:`current_rows` expects."""
    return storage.list_file_versions(storage.join(output, "metrics"), options, suffix=".parquet",
                                      oldest_first=True)


def current_rows(table: pa.Table) -> pa.Table:
    """One row per ``image_id``: the last of each in ``table``'s order (files concatenated oldest first)."""
    if pc.count_distinct(table["image_id"]).as_py() == table.num_rows:
        return table
    rows = table.append_column("_row", pa.array(np.arange(table.num_rows), pa.int64()))
    last = rows.group_by("image_id", use_threads=False).aggregate([("_row", "max")])
    return table.take(np.sort(last["_row_max"].to_numpy()))


def shard_of(metrics_file: str) -> str:
    return metrics_file.rsplit("/", 1)[-1].removesuffix(".parquet")


def _read_ids(files: list[str], options, ids: pa.Array | None = None, threads: int = 16) -> dict[str, pa.Array]:
    """metrics file -> its image ids (only those in ``ids`` when given), image_id columns read in parallel; a
    file removed since the listing holds none."""
    def one(uri: str) -> pa.Array:
        try:
            column = storage.read_parquet_table(uri, options, columns=["image_id"])["image_id"].combine_chunks()
        except FileNotFoundError:
            return pa.array([], pa.string())
        return column if ids is None else column.filter(pc.is_in(column, value_set=ids))

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(files)))) as pool:
        return dict(zip(files, pool.map(one, files)))


def rows_held(files: Iterable[str], ids: pa.Array, options) -> dict[str, pa.Array]:
    """metrics file -> those of ``ids`` it holds a row of, for the files holding any."""
    files = list(files)
    if not len(ids) or not files:
        return {}
    return {uri: hit for uri, hit in _read_ids(files, options, ids).items() if len(hit)}


def other_metrics(output: str, options, own: set[str]) -> list[str]:
    """Metrics files of shards other than ``own``: another manifest's rows in this output."""
    return [u for u in metrics_listing(output, options) if shard_of(u) not in own]


def held_in(files: list[str], ids: pa.Array, options) -> set[str]:
    """Those of ``ids`` that ``files`` hold a row of: for a run of another manifest, images it renders again
    (their outputs are not reused)."""
    return {i for hit in rows_held(files, ids, options).values() for i in hit.to_pylist()}


def drop_superseded(output: str, options, own: set[str], written: set[str]) -> int:
    """After a run of the shards ``own`` (of which ``written`` were written just now): drop, from the metrics
    files of other shards, the rows of images that a newer file of ``own`` holds, so each image keeps one
    current row. Idempotent: a rerun after a crash here finishes the clean-up. Returns how many rows went."""
    listing = list(metrics_listing(output, options))
    others = [(i, u) for i, u in enumerate(listing) if shard_of(u) not in own]
    if not others:
        return 0
    mine = [(i, u) for i, u in enumerate(listing) if shard_of(u) in own
            and (shard_of(u) in written or i > others[0][0])]
    if not mine:
        return 0
    ids = _read_ids([u for _, u in mine], options)
    groups: dict[tuple[str, ...], list[str]] = {}  # the own files newer than an other file -> those files
    for i, uri in others:
        newer = tuple(u for j, u in mine if shard_of(u) in written or j > i)
        if newer:
            groups.setdefault(newer, []).append(uri)
    dropped = 0
    for newer, files in groups.items():
        value_set = pa.concat_arrays([ids[u].cast(pa.string()) for u in newer]).unique()
        for uri, hit in rows_held(files, value_set, options).items():
            dropped += drop_rows(uri, hit, options, root=output)
    return dropped


def drop_rows(uri: str, ids: pa.Array, options, *, root: str) -> int:
    """Rewrite one metrics file without the rows of ``ids`` (whole or not at all); returns how many went.
    The shard's marker stays: its rows are done, some of them since replaced by a later render."""
    try:
        table = storage.read_parquet_table(uri, options)
    except FileNotFoundError:
        return 0
    keep = pc.invert(pc.is_in(table["image_id"], value_set=ids))
    kept = table.filter(keep)
    if kept.num_rows < table.num_rows:
        storage.write_output_table(kept, uri, options, root=root)
    return table.num_rows - kept.num_rows


def shards_with_errors(output: str, shard_ids: Iterable[str], options) -> set[str]:
    """Shards whose metrics hold a row that is neither ok (earlier permanent errors, to be retried)."""
    out = set()
    for sid in shard_ids:
        try:
            status = storage.read_parquet_table(metrics_uri(output, sid), options, columns=["status"])
        except FileNotFoundError:
            continue
        if any(s != OK for s in status.column("status").to_pylist()):
            out.add(sid)
    return out


# --------------------------------------------------------------------------------------------- ledger

LEDGER_SCHEMA = pa.schema([
    ("key", pa.string()),        # object key relative to --source
    ("version", pa.string()),    # ETag, or size:mtime where the store has none
    ("image_id", pa.string()),
    ("shard_id", pa.string()),   # the metrics file holding the image's current row
    ("status", pa.string()),     # ok / error of that row
    ("done_at", pa.string()),
])


def digest64(values: Iterable[str]) -> np.ndarray:
    """64-bit digests: the ledger is compared by digest, 16 bytes per key, never a set of strings."""
    import hashlib

    return np.fromiter((int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8).digest(), "little")
                        for v in values), dtype=np.uint64)


class LedgerIndex:
    """Sorted digests of the ledger's keys and versions, for membership and change tests by key."""

    def __init__(self, keys: np.ndarray, versions: np.ndarray, errors: np.ndarray, generation: str = ""):
        self.generation = generation  # a digest of the whole ledger: changes with every commit
        order = np.argsort(keys, kind="stable")
        self.keys, self.versions, self.errors = keys[order], versions[order], errors[order]
        self.seen = np.zeros(len(self.keys), bool)

    def __len__(self) -> int:
        return len(self.keys)

    def classify(self, keys: list[str], versions: list[str], retry_errors: bool) -> list[str]:
        """'new', 'changed', 'retry' (an error row, with retry_errors) or 'unchanged' per object."""
        kd, vd = digest64(keys), digest64(versions)
        pos = np.searchsorted(self.keys, kd)
        pos_c = np.minimum(pos, max(len(self.keys) - 1, 0))
        found = (pos < len(self.keys)) & (self.keys[pos_c] == kd) if len(self.keys) else np.zeros(len(kd), bool)
        out = []
        for i in range(len(kd)):
            if not found[i]:
                out.append("new")
                continue
            j = pos_c[i]
            self.seen[j] = True
            if self.versions[j] != vd[i]:
                out.append("changed")
            elif retry_errors and self.errors[j]:
                out.append("retry")
            else:
                out.append("unchanged")
        return out


def ledger_uri(output: str) -> str:
    return state_uri(output, "ledger.parquet")


def iter_ledger(output: str, options, batch_size: int = 65536) -> Iterator[pa.RecordBatch]:
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(ledger_uri(output), options)
    try:
        f = fs.open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        yield from pq.ParquetFile(f).iter_batches(batch_size=batch_size)


def load_ledger_index(output: str, options) -> LedgerIndex:
    import hashlib

    keys, versions, errors = [], [], []
    generation = hashlib.blake2b(digest_size=12)
    for batch in iter_ledger(output, options):
        for name in ("key", "version", "shard_id", "status", "done_at"):
            generation.update(repr(batch.column(name).to_pylist()).encode())
        keys.append(digest64(batch.column("key").to_pylist()))
        versions.append(digest64(batch.column("version").to_pylist()))
        errors.append(np.array([s != OK for s in batch.column("status").to_pylist()], bool))
    cat = (lambda xs, t: np.concatenate(xs) if xs else np.zeros(0, t))
    return LedgerIndex(cat(keys, np.uint64), cat(versions, np.uint64), cat(errors, bool), generation.hexdigest())


# --------------------------------------------------------------------------------------------- lease


def _precondition_failed(exc: BaseException) -> bool:
    """A conditional PUT lost: 412 PreconditionFailed, or 409 ConditionalRequestConflict (a concurrent one)."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return True
        if "pre-condition" in str(e) or "PreconditionFailed" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _parse_lease(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    return body if isinstance(body, dict) else {"holder": "unreadable lease", "expires_at": 0}


_PROBED: dict[str, bool] = {}  # endpoint -> whether it refuses If-None-Match on an existing object


class LeaseHeld(UserError):
    """Another backfill holds the output; the message names the holder and the expiry."""


@dataclass
class Lease:
    """One writer per output: ``<output>/_state/backfill.lease`` = {holder, expires_at}.

    Taken with a conditional write where the store has one: S3 ``If-None-Match: *`` to create, ``If-Match:
    <etag>`` to take over an expired lease or renew our own; a local file created by hard link (fails if it
    exists) and taken over by an atomic, checked rename. Where an S3 server ignores the condition, each write is read back and verified
    (``conditional`` says which mode ran). A lease whose holder ran on this host and whose process is gone is
    expired at once (a killed backfill, rerun)."""

    output: str
    options: Any
    ttl_s: float = 600.0
    holder: str = ""
    conditional: str = ""

    def __post_init__(self):
        self.holder = self.holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.uri = state_uri(self.output, "backfill.lease")
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading

    def read(self) -> tuple[dict[str, Any] | None, str | None]:
        """(lease body, etag or local token) or (None, None) when there is none."""
        try:
            if storage.is_s3(self.uri):
                fs, path = storage.filesystem(self.uri, self.options)
                etag = fs.info(path).get("ETag")  # a change between the two makes If-Match fail: safe
                return _parse_lease(fs.cat_file(path)), etag
            return _parse_lease(storage.read_bytes(self.uri, self.options)), None
        except FileNotFoundError:
            return None, None

    @staticmethod
    def expired(body: dict[str, Any]) -> bool:
        if float(body.get("expires_at", 0)) < time.time():
            return True
        host, _, rest = str(body.get("holder", "")).partition(":")
        pid = rest.partition(":")[0]
        if host == socket.gethostname() and pid.isdigit():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False

    def _body(self) -> bytes:
        now = time.time()
        return json.dumps({"holder": self.holder, "taken_at": utc_now(now), "expires_at": now + self.ttl_s,
                           "expires": utc_now(now + self.ttl_s)}).encode()

    # -- writing

    def _put_s3(self, condition: dict[str, str]) -> bool:
        fs, path = storage.filesystem(self.uri, self.options)
        bucket, key = path.split("/", 1)
        try:
            resp = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=self._body(), **condition)
        except Exception as exc:  # noqa: BLE001 - botocore errors arrive wrapped by s3fs (OSError EINVAL)
            if _precondition_failed(exc):
                return False
            raise
        self._etag = resp.get("ETag")
        # Read back: where the server ignored the condition, the last writer wins, and the loser sees it here.
        body, etag = self.read()
        mine = body is not None and body.get("holder") == self.holder
        if mine:
            self._etag = etag
        return mine

    def _create_local(self) -> bool:
        """Create the lease file whole or not at all: written beside it, then hard-linked into place (link
        fails if the name exists, like O_EXCL, and no reader ever sees an empty lease)."""
        fs, path = storage.filesystem(self.uri, self.options)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.new-{uuid.uuid4().hex[:8]}"
        with open(tmp, "xb") as f:
            f.write(self._body())
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def try_acquire(self) -> tuple[bool, dict[str, Any] | None]:
        """Take the lease if free or expired. Returns (taken, the other holder's lease when not)."""
        s3 = storage.is_s3(self.uri)
        body, etag = self.read()
        if body is None:
            if s3 and self._put_s3({"IfNoneMatch": "*"}):
                self.conditional = "If-None-Match" if self._honours_conditions() else "read-back"
                return True, None
            if not s3 and self._create_local():
                self.conditional = "O_EXCL + link"
                return True, None
            body, etag = self.read()
            return (False, body) if body is not None else self.try_acquire()
        if body.get("holder") == self.holder or self.expired(body):
            if s3:
                if self._put_s3({"IfMatch": etag} if etag else {}):
                    self.conditional = self.conditional or "If-Match"
                    return True, None
                return False, self.read()[0]
            fs, path = storage.filesystem(self.uri, self.options)
            moved = f"{path}.expired-{uuid.uuid4().hex[:8]}"
            try:  # atomic: of two takers, one rename succeeds
                os.rename(path, moved)
            except FileNotFoundError:
                return False, self.read()[0]
            with open(moved, "rb") as f:
                was = f.read()
            if _parse_lease(was) != body:  # we moved a lease taken meanwhile: put it back, lose
                try:
                    os.link(moved, path)
                except FileExistsError:
                    pass
                os.unlink(moved)
                return False, self.read()[0]
            os.unlink(moved)
            if self._create_local():
                self.conditional = "O_EXCL + link"
                return True, None
            return False, self.read()[0]
        return False, body

    def _honours_conditions(self) -> bool:
        """Whether the S3 server refuses If-None-Match on an existing object (cached per endpoint)."""
        endpoint = str(getattr(self.options, "endpoint_url", None))
        if endpoint not in _PROBED:
            fs, path = storage.filesystem(self.uri, self.options)
            bucket, key = path.split("/", 1)
            try:
                fs.call_s3("put_object", Bucket=bucket, Key=key, Body=self._body(), IfNoneMatch="*")
                _PROBED[endpoint] = False
                _, self._etag = self.read()
            except Exception as exc:  # noqa: BLE001
                if not _precondition_failed(exc):
                    raise
                _PROBED[endpoint] = True
        return _PROBED[endpoint]

    def acquire(self, wait: bool = False, poll_s: float = 5.0) -> Lease:
        while True:
            taken, other = self.try_acquire()
            if taken:
                self._start_renewal()
                return self
            if not wait:
                other = other or {}
                raise LeaseHeld(f"another backfill holds {self.output}: {other.get('holder')} until "
                                f"{other.get('expires') or utc_now(float(other.get('expires_at', 0)))}; "
                                f"pass --wait to wait for it, or try again after that")
            time.sleep(poll_s)

    def _start_renewal(self) -> None:
        def renew():
            while not self._stop.wait(self.ttl_s / 3):
                try:
                    if storage.is_s3(self.uri):
                        self._put_s3({"IfMatch": self._etag} if self._etag else {})
                    else:
                        storage.write_bytes(self.uri, self._body(), self.options)
                except Exception:  # noqa: BLE001 - the next renewal tries again
                    pass

        self._thread = threading.Thread(target=renew, name="lease-renewal", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        body, _ = self.read()
        if body is not None and body.get("holder") == self.holder:
            storage.remove(self.uri, self.options)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

