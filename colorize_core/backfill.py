"""Scheduled backfills: colorize exactly the objects under a source prefix that are new or changed.

    python -m jobs.backfill --source URI_PREFIX --output URI [--config YAML] [--dry-run] [--wait] [colorize flags]

One backfill at a time per output (a lease in ``_state/backfill.lease``, taken before anything is listed).
The source is listed directory by directory (paginated; one directory's entries in memory at a time) and each
image object is compared with the ledger (``_state/ledger.parquet``: key, ETag or size:mtime, the metrics file
holding its row, status, when done) by 64-bit digests. New and changed objects, and with --retry-errors
objects whose row is an error, are written to a todo manifest (in chunks) and run through the colorize job's
own :func:`colorize_core.pipeline.run`. Only after that run finished is the ledger committed, so a killed
backfill, rerun, finds the same todo (same path, same shard ids) and finishes it exactly once: finished
shards are skipped, finished images reused. Deleted objects are reported; their outputs are kept.

Each object's ``image_id`` is its key relative to --source without the extension; objects of one folder
whose ids would collide (``a.jpg`` and ``a.png``) keep their extension, and the summary counts them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from . import archival, launch, pipeline, runstate, storage
from . import manifest as manifest_mod
from .config import ColorizeConfig
from .errors import UserError
from .launch import EXIT_OK

DEFAULT_EXTENSIONS = ("jpg", "jpeg", "png", "tif", "tiff", "webp", "bmp", "gif")
CHUNK_ROWS = 1000
SHOW = 10
TODO_SCHEMA = pa.schema([("image_id", pa.string()), ("uri", pa.string()), ("key", pa.string()),
                         ("version", pa.string()), ("kind", pa.string())])


class BackfillConfig(ColorizeConfig):
    source: str = Field(..., description="Prefix (local folder or s3://bucket/prefix) whose images to colorize.")
    manifest: str = Field("", description="Not used: the backfill writes its own manifest of new objects.")
    extensions: list[str] = Field(list(DEFAULT_EXTENSIONS), min_length=1,
                                  description="File extensions (case-insensitive) that count as images.")
    lease_seconds: float = Field(600.0, gt=0, description="Lease lifetime; renewed every third of it while "
                                 "the backfill runs, so only a dead backfill's lease expires.")


@dataclass
class Listing:
    """What the source holds compared with the ledger."""

    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    first: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    todo_uri: str | None = None
    todo_rows: int = 0

    def add(self, kind: str, key: str) -> None:
        self.counts[kind] += 1
        if len(self.first[kind]) < SHOW:
            self.first[kind].append(key)


# --------------------------------------------------------------------------------------------- listing


def _group(key: str) -> str:
    """Keys whose ids could collide (same folder, same name up to the first dot) share this; in S3's
    lexicographic listing they are contiguous, so a group is always whole in one batch."""
    folder, _, base = key.rpartition("/")
    return f"{folder}/{base.split('.', 1)[0]}"


def _image(name: str, exts: tuple[str, ...]) -> bool:
    return name.lower().endswith(exts) and not name.rsplit("/", 1)[-1].startswith(".colorize-tmp-")


def iter_source(source: str, options, extensions: tuple[str, ...], skip: str | None = None,
                batch: int = 1000, page_size: int = 1000) -> Iterator[list[tuple[str, str, str]]]:
    """Batches of [(key relative to source, uri, version)] of the image objects under ``source``, in a
    deterministic order, never all keys at once: S3 is listed page by page (1000 keys per request), a local
    tree folder by folder. Objects whose ids could collide are always in the same batch."""
    fs, root = storage.filesystem(source, options)
    root = root.rstrip("/")
    skip_path = storage.filesystem(skip, options)[1].rstrip("/") + "/" if skip else None
    exts = tuple("." + e.lower().lstrip(".") for e in extensions)
    if storage.is_s3(source):
        yield from _iter_s3(fs, source, root, exts, skip_path, batch, page_size)
        return
    if not fs.isdir(root):
        raise UserError(f"--source {source}: no such folder")
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if skip_path is None or os.path.join(folder, d) + "/" != skip_path)
        found = []
        for name in sorted(files):
            path = os.path.join(folder, name)
            if _image(name, exts) and os.path.isfile(path):
                st = os.stat(path)
                found.append((path[len(root):].lstrip("/"), path, f"{st.st_size}:{st.st_mtime_ns}"))
        if found:
            yield found


def _iter_s3(fs, source: str, root: str, exts, skip_path: str | None, batch: int, page_size: int):
    bucket, _, prefix = root.partition("/")
    prefix = prefix + "/" if prefix else ""
    out: list[tuple[str, str, str]] = []
    token = None
    any_object = False
    while True:
        kwargs = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
        if token:
            kwargs["ContinuationToken"] = token
        page = fs.call_s3("list_objects_v2", **kwargs)
        for obj in page.get("Contents", []):
            any_object = True
            path = f"{bucket}/{obj['Key']}"
            if (skip_path and path.startswith(skip_path)) or not _image(obj["Key"], exts):
                continue
            key = obj["Key"][len(prefix):]
            if len(out) >= batch and _group(key) != _group(out[-1][0]):
                yield out
                out = []
            out.append((key, storage.S3_SCHEME + path, storage.version_from_info(obj)))
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            break
    if not any_object:
        raise UserError(f"--source {source}: no object under this prefix")
    if out:
        yield out


def image_ids(keys: list[str]) -> tuple[list[str], int]:
    """ids for keys (whole collision groups): the key without its extension, or the whole key where that would
    collide (``a.jpg`` and ``a.png``; a stem equal to another key). Returns (ids, how many kept the extension)."""
    stems = [k.rsplit(".", 1)[0] for k in keys]
    taken = set(keys)
    seen: dict[str, int] = defaultdict(int)
    for s in stems:
        seen[s] += 1
    ids, kept = [], 0
    for k, s in zip(keys, stems):
        if seen[s] > 1 or s in taken:
            ids.append(k)
            kept += 1
        else:
            ids.append(s)
    return ids, kept


def scan(cfg: BackfillConfig, options, index: runstate.LedgerIndex, write_todo: bool) -> Listing:
    """List the source, classify every image object, and (unless a dry run) write the todo manifest."""
    listing = Listing()
    tmp = tempfile.NamedTemporaryFile(prefix="colorize-todo-", suffix=".parquet", delete=False) if write_todo \
        else None
    writer = pq.ParquetWriter(tmp.name, TODO_SCHEMA) if tmp else None
    # The todo's name is a digest of its rows and of the ledger it was compared with: a rerun after a kill
    # (ledger not committed) finds the same name and so the same shard ids; a later backfill never does.
    digest = hashlib.blake2b(index.generation.encode(), digest_size=12)
    buf: dict[str, list] = {c: [] for c in TODO_SCHEMA.names}

    def flush():
        if writer is not None and buf["key"]:
            writer.write_table(pa.table(buf, schema=TODO_SCHEMA))
            for c in buf:
                buf[c] = []

    try:
        for folder in iter_source(cfg.source, options, tuple(cfg.extensions), skip=cfg.output, batch=CHUNK_ROWS):
            keys = [k for k, _, _ in folder]
            ids, kept = image_ids(keys)
            listing.counts["kept_extension"] += kept
            kinds = index.classify(keys, [v for _, _, v in folder], cfg.retry_errors)
            for (key, uri, version), image_id, kind in zip(folder, ids, kinds):
                listing.counts["listed"] += 1
                problem = manifest_mod.id_problem(image_id)
                if problem:
                    listing.add("invalid", f"{key} ({problem})")
                    continue
                listing.add(kind, key)
                if kind == "unchanged":
                    continue
                for c, v in zip(TODO_SCHEMA.names, (image_id, uri, key, version, kind)):
                    buf[c].append(v)
                digest.update(repr((key, version, kind)).encode())
                listing.todo_rows += 1
                if len(buf["key"]) >= CHUNK_ROWS:
                    flush()
        flush()
        if writer is not None:
            writer.close()
            writer = None
            if listing.todo_rows:
                listing.todo_uri = runstate.state_uri(cfg.output, "backfill", f"todo-{digest.hexdigest()}.parquet")
                _upload(tmp.name, listing.todo_uri, options)
    finally:
        if writer is not None:
            writer.close()
        if tmp is not None:
            tmp.close()
            os.unlink(tmp.name)
    return listing


def _upload(local: str, uri: str, options) -> None:
    fs, path = storage.filesystem(uri, options)
    if storage.is_s3(uri):
        fs.put_file(local, path)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(local, "rb") as f:
            storage.write_bytes(uri, f.read(), options)


def deleted_keys(cfg: BackfillConfig, options, index: runstate.LedgerIndex, listing: Listing) -> None:
    """Ledger keys the listing did not see: reported (never deleted from the output)."""
    if not len(index):
        return
    for batch in runstate.iter_ledger(cfg.output, options):
        keys = batch.column("key").to_pylist()
        pos = np.searchsorted(index.keys, runstate.digest64(keys))
        for k, p in zip(keys, pos):
            if p < len(index.keys) and not index.seen[p]:
                listing.add("deleted", k)


# --------------------------------------------------------------------------------------------- the run


def _prepare(cfg: BackfillConfig, todo_uri: str, options) -> None:
    """Before a todo first runs: remove the outputs of changed objects (and retried errors), so the
    pipeline's reuse of existing images never keeps an image of the old version. Done once per todo."""
    prepared = todo_uri.removesuffix(".parquet") + ".prepared"
    if storage.exists(prepared, options):
        return
    from .imageio import FORMAT_EXTENSIONS

    ext = FORMAT_EXTENSIONS[cfg.output_format]
    for batch in _iter_parquet(todo_uri, options, ["image_id", "kind"]):
        for image_id, kind in zip(batch.column("image_id").to_pylist(), batch.column("kind").to_pylist()):
            if kind != "new":
                storage.remove(storage.join(cfg.output, "images", f"{image_id}.{ext}"), options)
    storage.write_bytes(prepared, runstate.utc_now().encode(), options)


def _iter_parquet(uri: str, options, columns: list[str]):
    fs, path = storage.filesystem(uri, options)
    with fs.open(path, "rb") as f:
        yield from pq.ParquetFile(f).iter_batches(columns=columns, batch_size=65536)


def _prune_old_rows(cfg: BackfillConfig, todo_uri: str, options) -> None:
    """Drop the replaced rows of changed and retried objects from the metrics files that held them, so each
    image keeps one current metrics row. Idempotent (a rerun after a crash here prunes nothing twice)."""
    redone: set[str] = set()  # keys of changed and retried objects: bounded by this backfill's work
    for batch in _iter_parquet(todo_uri, options, ["key", "kind"]):
        redone.update(k for k, kind in zip(batch.column("key").to_pylist(), batch.column("kind").to_pylist())
                      if kind != "new")
    by_shard: dict[str, set[str]] = defaultdict(set)
    if redone:
        for batch in runstate.iter_ledger(cfg.output, options):
            for k, image_id, shard in zip(batch.column("key").to_pylist(), batch.column("image_id").to_pylist(),
                                          batch.column("shard_id").to_pylist()):
                if k in redone and shard:
                    by_shard[shard].add(image_id)
    for shard_id, ids in by_shard.items():
        uri = runstate.metrics_uri(cfg.output, shard_id)
        try:
            table = storage.read_parquet_table(uri, options)
        except FileNotFoundError:
            continue
        keep = pa.array([i not in ids for i in table.column("image_id").to_pylist()])
        if not all(keep.to_pylist()):
            storage.write_parquet_table(table.filter(keep), uri, options)


def _commit_ledger(cfg: BackfillConfig, todo_uri: str | None, shard_rows: int, options,
                   index: runstate.LedgerIndex) -> None:
    """New ledger = old rows still listed and not redone + the todo's rows with their shard and status."""
    replaced = set()
    tmp = tempfile.NamedTemporaryFile(prefix="colorize-ledger-", suffix=".parquet", delete=False)
    tmp.close()
    writer = pq.ParquetWriter(tmp.name, runstate.LEDGER_SCHEMA)
    try:
        now = runstate.utc_now()
        if todo_uri:
            info = manifest_mod.validate(todo_uri, options)
            for shard in manifest_mod.plan_shards(info, shard_rows):
                metrics = storage.read_parquet_table(runstate.metrics_uri(cfg.output, shard.shard_id), options,
                                                     columns=["image_id", "status"])
                status = dict(zip(metrics.column("image_id").to_pylist(), metrics.column("status").to_pylist()))
                rows = manifest_mod.read_shard(shard, options, ("image_id", "key", "version"))
                ids, keys = rows.column("image_id").to_pylist(), rows.column("key").to_pylist()
                replaced.update(keys)
                writer.write_table(pa.table({
                    "key": keys, "version": rows.column("version").to_pylist(), "image_id": ids,
                    "shard_id": [shard.shard_id] * len(ids), "status": [status.get(i) for i in ids],
                    "done_at": [now] * len(ids)}, schema=runstate.LEDGER_SCHEMA))
        for batch in runstate.iter_ledger(cfg.output, options):
            t = pa.Table.from_batches([batch]).cast(runstate.LEDGER_SCHEMA)
            keys = t.column("key").to_pylist()
            pos = np.searchsorted(index.keys, runstate.digest64(keys)) if len(index) else np.zeros(len(keys), int)
            keep = [k not in replaced and (len(index) == 0 or (p < len(index.keys) and index.seen[p]))
                    for k, p in zip(keys, pos)]
            writer.write_table(t.filter(pa.array(keep)))
        writer.close()
        writer = None
        _upload(tmp.name, runstate.ledger_uri(cfg.output), options)
    finally:
        if writer is not None:
            writer.close()
        os.unlink(tmp.name)


def backfill(cfg: BackfillConfig, *, dry_run: bool = False, wait: bool = False, ray_address: str | None = None,
             progress: bool = True, verbose: bool = False) -> dict[str, Any]:
    t0 = time.monotonic()
    options = cfg.storage.options()
    pipeline.check_model_name(cfg.model)
    archival.load_signer(cfg.provenance, options, check=True)  # before the lease and the listing
    if dry_run:
        index = runstate.load_ledger_index(cfg.output, options)
        listing = scan(cfg, options, index, write_todo=False)
        deleted_keys(cfg, options, index, listing)
        return _summary(cfg, listing, t0, None, dry_run=True)
    lease = runstate.Lease(cfg.output, options, ttl_s=cfg.lease_seconds).acquire(wait=wait)
    try:
        # --overwrite: every listed object is redone, as if no backfill had run before.
        index = runstate.LedgerIndex(*(np.zeros(0, t) for t in (np.uint64, np.uint64, bool))) if cfg.overwrite \
            else runstate.load_ledger_index(cfg.output, options)
        listing = scan(cfg, options, index, write_todo=True)
        deleted_keys(cfg, options, index, listing)
        run_summary = None
        if listing.todo_uri:
            _prepare(cfg, listing.todo_uri, options)
            inner = cfg.model_copy(update={"manifest": listing.todo_uri, "retry_errors": False, "limit": None})
            run_summary = pipeline.run(inner, ray_address=ray_address, progress=progress, verbose=verbose,
                                       supersede=False)  # the ledger knows what a todo replaces
            if run_summary["counts"].get("transient"):
                summary = _summary(cfg, listing, t0, run_summary, lease=lease)
                pipeline.check_counts(run_summary["counts"], cfg.max_error_fraction)  # raises Unfinished
            _prune_old_rows(cfg, listing.todo_uri, options)
        if listing.todo_uri or listing.counts["deleted"]:
            _commit_ledger(cfg, listing.todo_uri, cfg.shard_rows, options, index)
        if listing.todo_uri:
            storage.remove(listing.todo_uri, options)
            storage.remove(listing.todo_uri.removesuffix(".parquet") + ".prepared", options)
        summary = _summary(cfg, listing, t0, run_summary, lease=lease)
    finally:
        lease.release()
    return summary


def _summary(cfg: BackfillConfig, listing: Listing, t0: float, run_summary: dict | None, *, dry_run: bool = False,
             lease: runstate.Lease | None = None) -> dict[str, Any]:
    c = listing.counts
    rc = (run_summary or {}).get("counts", {})
    summary = {
        "source": cfg.source, "output": cfg.output, "dry_run": dry_run,
        "counts": {"listed": c["listed"], "new": c["new"], "changed": c["changed"], "retried": c["retry"],
                   "unchanged": c["unchanged"], "deleted": c["deleted"], "invalid": c["invalid"],
                   "kept_extension": c["kept_extension"], "processed": listing.todo_rows,
                   "ok": rc.get("ok", 0), "error": rc.get("error", 0), "transient": rc.get("transient", 0),
                   "skipped": rc.get("skipped", 0)},
        "first": {k: listing.first[k] for k in ("new", "changed", "retry", "deleted", "invalid") if listing.first[k]},
        "wall_seconds": time.monotonic() - t0,
        "finished_at": runstate.utc_now(),
    }
    if c["kept_extension"]:
        summary["note"] = (f"{c['kept_extension']} object(s) kept their extension in image_id: another object "
                           f"of the same folder has the same name without extension")
    if lease is not None:
        summary["lease"] = {"holder": lease.holder, "conditional_write": lease.conditional}
    if not dry_run and (listing.todo_rows or c["deleted"]):
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        storage.write_bytes(storage.join(cfg.output, "backfills", stamp, "summary.json"),
                            json.dumps(summary, indent=2).encode(), cfg.storage.options())
    return summary


# --------------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = launch.job_parser("python -m jobs.backfill", __doc__)
    p.add_argument("--source", help="prefix to backfill from: local folder or s3://bucket/prefix")
    p.add_argument("--extensions", help=f"comma-separated image extensions (default: {','.join(DEFAULT_EXTENSIONS)})")
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="print what would run; write nothing")
    p.add_argument("--wait", action="store_true", help="wait for another backfill of this output to finish")
    p.add_argument("--lease-seconds", dest="lease_seconds", type=float)
    launch.add_colorize_flags(p)
    return p


def config_from_args(args: argparse.Namespace) -> BackfillConfig:
    flags = {"source": args.source, "output": args.output, "lease_seconds": args.lease_seconds,
             **pipeline.colorize_flags(args)}
    if args.extensions:
        flags["extensions"] = [e.strip().lstrip(".") for e in args.extensions.split(",") if e.strip()]
    return launch.load_config(BackfillConfig, args, flags)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        cfg = config_from_args(args)
        summary = backfill(cfg, dry_run=args.dry_run, wait=args.wait, ray_address=args.ray_address,
                           progress=not args.quiet, verbose=args.verbose)
        c = summary["counts"]
        if args.dry_run:
            print(f"dry run: {c['new']} new, {c['changed']} changed, {c['retried']} to retry, "
                  f"{c['unchanged']} unchanged, {c['deleted']} deleted, {c['invalid']} invalid; nothing written")
            for kind, keys in summary["first"].items():
                print(f"  {kind}: " + ", ".join(keys) + (" ..." if len(keys) == SHOW else ""))
            return EXIT_OK
        print(json.dumps({"output": summary["output"], **c, "wall_seconds": summary["wall_seconds"]}))
        return pipeline.check_counts({"ok": c["ok"], "error": c["error"], "transient": c["transient"]},
                                     cfg.max_error_fraction)

    return launch.main_wrapper(body, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
