"""Fixity: the sha256 of every source read and output written, and the checks that use them later.

The metrics rows hold ``source_sha256`` (of the bytes the job read), ``output_sha256`` and ``output_bytes``
(of the bytes it wrote, after signing) and ``output_path`` (the output's key relative to the run's output
prefix). From them:

* :func:`verify` re-hashes a run's outputs and names the missing and changed ones (``colorize verify``);
* :func:`write_bagit` writes a BagIt-style ``manifest-sha256.txt`` at the run's root: BagIt's payload-manifest
  format (RFC 8493, ``<sha256>  <path>``, which ``sha256sum -c`` also reads), paths relative to the run's root.
  No ``bagit.txt``: the run's layout is not moved under ``data/``, so the run is not a bag, and a
  declaration would make BagIt validators reject it. To bag a run, put its files under ``data/`` and prefix
  the manifest's paths with ``data/``;
* :func:`matches` decides whether a resumed run may reuse an existing output: only if it hashes to its row.

A run without ``output_path`` (written before it existed) falls back to the colorize job's layout:
``images/<image_id>.<ext>`` with the extension of its ``config.json``'s ``output_format``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from . import runstate, storage
from .errors import OK, UserError

__all__ = ["Expected", "Report", "matches", "sha256_hex", "verify", "write_bagit"]

_CHUNK = 8 << 20
_READ_COLUMNS = ("image_id", "status", "output_path", "output_sha256", "output_bytes")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def matches(data: bytes, recorded_sha256: str | None) -> bool:
    """Whether bytes already at an output's key may be reused: they hash to the row's ``output_sha256``, or
    there is no row to compare with (then the caller's decode-and-geometry check is all there is)."""
    return recorded_sha256 is None or sha256_hex(data) == recorded_sha256


@dataclass(frozen=True)
class Expected:
    path: str  # relative to the run's output prefix
    sha256: str
    size: int | None


@dataclass(frozen=True)
class Report:
    checked: int
    missing: tuple[str, ...]
    changed: tuple[str, ...]
    unrecorded: int  # ok rows without a hash (written before fixity existed): not checked

    @property
    def ok(self) -> bool:
        return not self.missing and not self.changed

    def lines(self) -> list[str]:
        out = [f"missing: {p}" for p in self.missing] + [f"changed: {p}" for p in self.changed]
        summary = f"{self.checked} outputs checked: {len(self.missing)} missing, {len(self.changed)} changed"
        if self.unrecorded:
            summary += f"; {self.unrecorded} ok rows carry no hash and were not checked"
        return out + [summary]


def _fallback_extension(output: str, options) -> str | None:
    from .imageio import FORMAT_EXTENSIONS

    try:
        cfg = json.loads(storage.read_bytes(storage.join(output, "config.json"), options))
    except (FileNotFoundError, ValueError):
        return None
    return FORMAT_EXTENSIONS.get(str(cfg.get("output_format", "")).lower())


def expected_outputs(output: str, options: storage.StorageOptions | None = None) -> tuple[list[Expected], int]:
    """(every output the run's metrics record with a hash, the number of ok rows without one)."""
    files = list(runstate.metrics_listing(output, options))  # oldest first: an image's newest row is the one kept
    if not files:
        raise UserError(f"no metrics under {storage.redact_uri(output)}/metrics: not a run's output prefix")
    expected: dict[str, Expected] = {}
    unrecorded = 0
    ext = None
    for uri in files:
        table = storage.read_parquet_table(uri, options)
        cols = {name: table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows
                for name in _READ_COLUMNS}
        for image_id, status, path, sha, size in zip(*(cols[c] for c in _READ_COLUMNS)):
            if status != OK:
                continue
            if not sha:
                unrecorded += 1
                continue
            if not path:
                ext = ext or _fallback_extension(output, options)
                if ext is None:
                    raise UserError(f"metrics of {storage.redact_uri(output)} have no output_path and its "
                                    "config.json names no output_format")
                path = f"images/{image_id}.{ext}"
            expected[path] = Expected(path, sha, None if size is None else int(size))
    return sorted(expected.values(), key=lambda e: e.path), unrecorded


def _hash_uri(uri: str, options) -> tuple[str, int] | None:
    """(sha256, size) of a file read in chunks, or None if it does not exist."""
    fs, path = storage.filesystem(uri, options)

    def digest() -> tuple[str, int] | None:
        h, n = hashlib.sha256(), 0
        try:
            f = fs.open(path, "rb")
        except FileNotFoundError:
            return None
        with f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                n += len(chunk)
        return h.hexdigest(), n

    return storage.retrying("hash", uri, options, digest)


def _check(output: str, options, items: list[Expected], threads: int) -> Iterator[tuple[Expected, str | None]]:
    def one(e: Expected) -> tuple[Expected, str | None]:
        got = _hash_uri(storage.join(output, e.path), options)
        if got is None:
            return e, "missing"
        sha, size = got
        return e, None if sha == e.sha256 and (e.size is None or size == e.size) else "changed"

    with ThreadPoolExecutor(max_workers=threads) as pool:
        yield from pool.map(one, items)


def verify(output: str, options: storage.StorageOptions | None = None, *, threads: int = 16) -> Report:
    """Re-hash every output a run's metrics record and report the missing and the changed ones."""
    items, unrecorded = expected_outputs(output, options)
    missing, changed = [], []
    for e, problem in _check(output, options, items, threads):
        if problem == "missing":
            missing.append(e.path)
        elif problem == "changed":
            changed.append(e.path)
    return Report(len(items), tuple(missing), tuple(changed), unrecorded)


def _bagit_path(path: str) -> str:
    """BagIt (RFC 8493, 2.1.3): CR, LF and % in a manifest path are percent-encoded."""
    return path.replace("%", "%25").replace("\n", "%0A").replace("\r", "%0D")


def write_bagit(output: str, options: storage.StorageOptions | None = None) -> str:
    """``manifest-sha256.txt`` at the run's root: one ``<sha256>  <path>`` line per recorded output, from the
    metrics (run :func:`verify` first to know they still hold). Returns its URI."""
    items, _ = expected_outputs(output, options)
    lines = "".join(f"{e.sha256}  {_bagit_path(e.path)}\n" for e in items)
    uri = storage.join(output, "manifest-sha256.txt")
    storage.write_bytes(uri, lines.encode("utf-8"), options)
    return uri
