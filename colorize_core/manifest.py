"""The manifest schema, its validation, and its split into shards (the unit of resume).

A manifest is a Parquet file or a prefix of Parquet files with columns ``image_id`` (string, unique),
``uri`` (string) and optionally ``reference_uri`` (string, colour ground truth) and ``hints``
(list of {x, y, a, b}: SIGGRAPH17 colour points, x and y in [0, 1] of the image width and height,
a and b in Lab units). Validation reads only the columns it checks, file by file.
"""

from __future__ import annotations

import hashlib
import os
import re
import dataclasses
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import errors, storage

REQUIRED = ("image_id", "uri")
OPTIONAL = ("reference_uri", "hints")
OPTIONAL_TYPES = {"reference_uri": pa.string(),
                  "hints": pa.list_(pa.struct([("x", pa.float64()), ("y", pa.float64()), ("a", pa.float64()),
                                               ("b", pa.float64())]))}
# An id becomes the key images/<id>.<ext>. Local file systems cap each path component at 255 bytes
# (NAME_MAX), so the last component plus the longest extension (".webp") must fit; S3 caps a key at 1024
# bytes, so the whole id is capped well below that to leave room for the output prefix (checked exactly when
# the output is known, see validate()).
MAX_COMPONENT_BYTES = storage.MAX_NAME_BYTES - len(".webp")
MAX_ID_BYTES = 900
MAX_ID_LENGTH = MAX_ID_BYTES  # bytes of UTF-8; the old name, kept for callers
_OUTPUT_EXTENSIONS = ("jpg", "png", "webp", "tif")  # imageio.FORMAT_EXTENSIONS values (not imported: no PIL here)
MAX_REPORTED = 10
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ManifestError(ValueError):
    """The manifest cannot be used as it is; the message names the offending rows."""


@dataclass(frozen=True)
class Shard:
    """Rows [start, stop) of one manifest file. ``shard_id`` depends on the file's full URI, on its content
    (a digest of its ids and uris) and on ``start`` (a multiple of shard_rows): stable across runs of the same
    manifest, and never shared by two manifests that happen to have the same relative name."""

    shard_id: str
    file: str
    start: int
    stop: int

    @property
    def num_rows(self) -> int:
        return self.stop - self.start

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ManifestInfo:
    root: str
    files: tuple[str, ...]
    rows_per_file: tuple[int, ...]
    columns: tuple[str, ...]
    digests: tuple[str, ...] = ()  # per file: blake2b of its (image_id, uri[, hints]) rows, in order
    sources: tuple[str, ...] = ()  # per file: the manifest file it was restaged from (shard identity); () = files

    @property
    def num_rows(self) -> int:
        return sum(self.rows_per_file)


_BAD_PARTS = frozenset({"", ".", ".."})
_DRIVE = re.compile(r"[A-Za-z]:")
_SHORT = MAX_COMPONENT_BYTES // 4  # this many characters fit whatever they are (UTF-8: at most 4 bytes each)


def id_problem(image_id: object) -> str | None:
    """Why ``image_id`` cannot name an output object, or None. Ids may contain '/' (sub-folders)
    but must stay inside the output prefix, and each part must fit a file name. (Called once per manifest
    row: written for speed, checks ordered cheapest first.)"""
    if not isinstance(image_id, str):
        return "image_id is null"
    if not image_id:
        return "image_id is empty"
    size = len(image_id) if len(image_id) <= _SHORT else len(image_id.encode("utf-8", "surrogatepass"))
    if size > MAX_ID_BYTES:
        return f"image_id longer than {MAX_ID_BYTES} bytes of UTF-8 ({size}): output keys would not fit"
    if _CONTROL.search(image_id):
        return "image_id contains control characters"
    if image_id[0] == "/" or "\\" in image_id or _DRIVE.match(image_id):
        return "image_id is an absolute path"
    parts = image_id.split("/")
    if not _BAD_PARTS.isdisjoint(parts):
        return "image_id has an empty, '.' or '..' path component (would escape the output prefix)"
    if size > MAX_COMPONENT_BYTES and any(len(p.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES
                                          for p in parts):
        return (f"image_id has a path component longer than {MAX_COMPONENT_BYTES} bytes: with its extension it "
                f"would not fit a file name (255 bytes)")
    return None


def _dir_claims(image_id: str, extensions: tuple[str, ...]):
    """Ids whose output FILE would sit where this id needs a DIRECTORY: for ``a.jpg/b`` that is ``a``
    (images/a.jpg is a file, images/a.jpg/b.jpg needs it to be a folder)."""
    parts = image_id.split("/")
    for i in range(1, len(parts)):
        head = "/".join(parts[:i])
        for ext in extensions:
            if head.endswith("." + ext):
                yield head[: -len(ext) - 1]


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def manifest_files(uri: str, options) -> tuple[str, list[str]]:
    """(root, sorted Parquet files) for a file or a prefix (a directory named ``*.parquet`` is a prefix)."""
    fs, path = storage.filesystem(uri, options)
    if uri.endswith(".parquet") and fs.isfile(path):
        root = uri.rsplit("/", 1)[0] if "/" in uri else "."
        return root, [uri]
    files = storage.list_files(uri, options, suffix=".parquet")
    if not files:
        raise ManifestError(f"{uri}: no Parquet manifest file found")
    # The root spelled as list_files spells the files (absolute local path, s3://bucket/key), so names
    # relative to it, and the shard ids made from them, do not depend on how the prefix was typed.
    return (storage.S3_SCHEME + path if storage.is_s3(uri) else path).rstrip("/"), files


def _string_type(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _check_schema(path: str, schema: pa.Schema) -> None:
    problems = []
    for name in REQUIRED:
        if name not in schema.names:
            problems.append(f"missing required column '{name}'")
        elif not _string_type(schema.field(name).type):
            problems.append(f"column '{name}' must be string, got {schema.field(name).type}")
    if "reference_uri" in schema.names and not _string_type(schema.field("reference_uri").type):
        problems.append(f"column 'reference_uri' must be string, got {schema.field('reference_uri').type}")
    if "hints" in schema.names:
        t = schema.field("hints").type
        ok = (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_struct(t.value_type) and \
            {"x", "y", "a", "b"} <= {t.value_type.field(i).name for i in range(t.value_type.num_fields)}
        if not ok:
            problems.append(f"column 'hints' must be list<struct<x, y, a, b>>, got {t}")
    if problems:
        raise ManifestError(f"{path}: " + "; ".join(problems))


def _schema_and_rows(path: str, options) -> tuple[pa.Schema, int]:
    fs, p = storage.filesystem(path, options)
    with fs.open(p, "rb") as f:
        pf = pq.ParquetFile(f)
        return pf.schema_arrow, pf.metadata.num_rows


def _id_digest(image_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(image_id.encode(), digest_size=8).digest(), "little")


def _iter_ids(path: str, options, with_hints: bool = False):
    """(row, image_id, uri, hints) of one manifest file, read in record batches; hints is None unless
    ``with_hints`` (the file has the column)."""
    fs, p = storage.filesystem(path, options)
    columns = ["image_id", "uri", "hints"] if with_hints else ["image_id", "uri"]
    with fs.open(p, "rb") as f:
        row = 0
        for batch in pq.ParquetFile(f).iter_batches(columns=columns, batch_size=65536):
            hints = batch.column(2).to_pylist() if with_hints else [None] * batch.num_rows
            for image_id, u, h in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), hints):
                yield row, image_id, u, h
                row += 1


def validate(uri: str, options, *, output: str | None = None, output_format: str | None = None) -> ManifestInfo:
    """Check schema, id safety and uniqueness across all files. Raises ManifestError naming rows.

    Also refused up front, whatever the order of the rows: ids whose output key the store cannot hold
    (over 1024 bytes under an ``s3://`` ``output``; a path component over 255 bytes with its extension) and
    ids that would need a file and a folder at the same path (``x`` writes images/x.jpg, ``x.jpg/y`` needs
    images/x.jpg/ as a folder); with no ``output_format`` every output extension is checked.

    Uniqueness costs 8 bytes per row (a 64-bit digest of each id, sorted once), not a set of strings:
    ten million ids need 80 MB. Only when digests repeat is a second pass made, over the rows holding
    them, to name the duplicates (and to ignore a digest collision between different ids). Collisions
    are found the same way: the digests of the ids that ids with folders would clash with."""
    try:
        return _validate(uri, options, output, output_format)
    except errors.TransientError:
        raise
    except Exception as exc:
        if errors.is_transient(exc):  # an outage while streaming the ids: one line, and a rerun retries
            raise errors.TransientError(f"reading manifest {storage.redact_uri(uri)}: {type(exc).__name__}: "
                                        f"{str(exc)[:200]}") from exc
        raise


def _validate(uri: str, options, output: str | None, output_format: str | None) -> ManifestInfo:
    extensions = _OUTPUT_EXTENSIONS if output_format is None else (
        {"jpeg": "jpg", "tiff": "tif"}.get(output_format, output_format),)
    key_budget = None
    if output is not None and storage.is_s3(output):
        prefix = storage.join(output, "images")[len(storage.S3_SCHEME):].split("/", 1)[-1]
        key_budget = storage.MAX_S3_KEY_BYTES - len(prefix.encode()) - 1 - 1 - max(map(len, extensions))
    markers = tuple(f".{ext}/" for ext in extensions)  # only ids holding one of these can claim a folder
    root, files = manifest_files(uri, options)
    problems: list[str] = []
    rows_per_file = []
    columns: set[str] = set()
    digests: list[np.ndarray] = []
    content: list[str] = []
    claims: list[int] = []  # digests of ids that an id with folders would collide with (rare: kept as ints)
    for path in files:
        schema, num_rows = storage.retrying("read", path, options, lambda: _schema_and_rows(path, options))
        _check_schema(path, schema)
        columns.update(c for c in (*REQUIRED, *OPTIONAL) if c in schema.names)
        rows_per_file.append(num_rows)
        file_digests = []
        whole = hashlib.blake2b(digest_size=16)
        # Hints are part of a row's content: hints saved again for the same images are new work (a re-render).
        with_hints = "hints" in schema.names
        for row, image_id, u, hints in _iter_ids(path, options, with_hints):
            whole.update(repr((image_id, u, hints) if with_hints else (image_id, u)).encode())
            reason = id_problem(image_id)
            if reason is None and not u:
                reason = "uri is null or empty"
            if reason is None and key_budget is not None and len(image_id.encode()) > key_budget:
                reason = "its output key would exceed S3's 1024 bytes: shorten the id or the output prefix"
            if reason is not None:
                problems.append(f"{path} row {row}: {_clip(reason)} ({_clip(repr(image_id))})")
            else:
                file_digests.append(_id_digest(image_id))
                if any(m in image_id for m in markers):
                    claims.extend(_id_digest(c) for c in _dir_claims(image_id, extensions))
        digests.append(np.array(file_digests, dtype=np.uint64))
        content.append(whole.hexdigest())
    all_digests = np.concatenate(digests) if digests else np.zeros(0, np.uint64)
    values, counts = np.unique(all_digests, return_counts=True)
    repeated = set(values[counts > 1].tolist())
    clashing = set(np.intersect1d(np.array(claims, dtype=np.uint64), values).tolist()) if claims else set()
    if repeated or clashing:
        first: dict[str, tuple[str, int]] = {}
        files_at: dict[str, tuple[str, int]] = {}  # ids whose output file some folder would need
        folders: list[tuple[str, int, str, str]] = []  # (path, row, id, the id it clashes with)
        for path in files:
            for row, image_id, _, _ in _iter_ids(path, options):
                if id_problem(image_id) is not None:
                    continue
                digest = _id_digest(image_id)
                if digest in clashing:
                    files_at.setdefault(image_id, (path, row))
                if clashing and any(m in image_id for m in markers):
                    folders.extend((path, row, image_id, c) for c in _dir_claims(image_id, extensions)
                                   if _id_digest(c) in clashing)
                if digest not in repeated:
                    continue
                if image_id in first:
                    other = first[image_id]
                    problems.append(f"{path} row {row}: duplicate image_id {_clip(repr(image_id))} "
                                    f"(first at {other[0]} row {other[1]})")
                else:
                    first[image_id] = (path, row)
        for path, row, image_id, other_id in folders:
            if other_id in files_at:
                where = files_at[other_id]
                problems.append(f"{path} row {row}: image_id {_clip(repr(image_id))} needs a folder where image_id "
                                f"{_clip(repr(other_id))} ({where[0]} row {where[1]}) writes its file; rename one")
    if problems:
        shown = "\n  ".join(problems[:MAX_REPORTED])
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise ManifestError(f"manifest {uri} rejected, {len(problems)} bad row(s):\n  {shown}{more}")
    return ManifestInfo(root, tuple(files), tuple(rows_per_file), tuple(sorted(columns)), tuple(content))


def _relative_name(root: str, path: str) -> str:
    rel = path[len(root):].lstrip("/") if path.startswith(root) else path.rsplit("/", 1)[-1]
    return rel or path.rsplit("/", 1)[-1]


def _full_uri(path: str) -> str:
    return path if storage.is_s3(path) or "://" in path else "file://" + os.path.abspath(path)


def plan_shards(info: ManifestInfo, shard_rows: int, limit: int | None = None) -> list[Shard]:
    shards = []
    budget = limit if limit is not None else float("inf")
    digests = info.digests or ("",) * len(info.files)
    sources = info.sources or info.files
    for path, source, n, digest in zip(info.files, sources, info.rows_per_file, digests):
        rel = _relative_name(info.root, source)
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", rel.removesuffix(".parquet"))[:80]
        # The full URI and the content, not the relative name: manifests/a/m.parquet and manifests/b/m.parquet
        # run into one output are different work.
        tag = _file_tag(source, digest)
        for start in range(0, n, shard_rows):
            if budget <= 0:
                return shards
            stop = int(min(n, start + shard_rows, start + budget))
            shards.append(Shard(f"{stem}-{tag}-{start // shard_rows:07d}", path, start, stop))
            budget -= stop - start
    return shards


def _groups(pf: pq.ParquetFile, shard: Shard) -> tuple[list[int], int, int]:
    """(row groups overlapping the shard, first row of the first one, rows they hold)."""
    groups, offset, first, rows = [], 0, 0, 0
    for i in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(i).num_rows
        if offset < shard.stop and offset + n > shard.start:
            first = offset if not groups else first
            groups.append(i)
            rows += n
        offset += n
    return groups, first, rows


def rows_read(shard: Shard, options) -> int:
    """Rows :func:`read_shard` decodes for ``shard``: its own, when row groups are aligned to shards."""
    fs, p = storage.filesystem(shard.file, options)
    with fs.open(p, "rb") as f:
        return _groups(pq.ParquetFile(f), shard)[2]


def read_shard(shard: Shard, options, columns: tuple[str, ...]) -> pa.Table:
    """The shard's rows, reading only the row groups that overlap it (see :func:`restage`), retried like every
    storage read."""
    return storage.retrying("read", shard.file, options, lambda: _read_shard(shard, options, columns))


def _read_shard(shard: Shard, options, columns: tuple[str, ...]) -> pa.Table:
    fs, p = storage.filesystem(shard.file, options)
    with fs.open(p, "rb") as f:
        pf = pq.ParquetFile(f)
        groups, first, _ = _groups(pf, shard)
        present = [c for c in columns if c in pf.schema_arrow.names]
        table = pf.read_row_groups(groups, columns=present)
    table = table.slice(shard.start - first, shard.num_rows)
    # Files of one manifest may differ in optional columns: a missing one is all nulls.
    for c in columns:
        if c not in present:
            table = table.append_column(c, pa.nulls(table.num_rows, OPTIONAL_TYPES.get(c, pa.string())))
    return table.select(list(columns))


def _file_tag(path: str, digest: str) -> str:
    """A manifest file's identity: its full URI and its content, never its relative name."""
    return hashlib.sha1(f"{_full_uri(path)}\n{digest}".encode()).hexdigest()[:12]


def restage(info: ManifestInfo, shard_rows: int, dest: str, options) -> ManifestInfo:
    """Rewrite, once, every manifest file whose row groups are not aligned to ``shard_rows`` into ``dest``
    with row groups of exactly ``shard_rows`` rows; aligned files are read where they are.

    A manifest written as one row group (pyarrow's and pandas' default for up to 1M rows) would otherwise
    make every shard decode the whole file: quadratic in the manifest. The copy is streamed (bounded
    memory), named after the source file's identity (full URI + content digest) so two manifests never
    share a copy, and reused by later runs while its row count matches. Shard ids keep coming from the
    source file (``ManifestInfo.sources``), so restaging never changes what counts as done."""
    files = []
    digests = info.digests or ("",) * len(info.files)
    for path, n, digest in zip(info.files, info.rows_per_file, digests):
        fs, p = storage.filesystem(path, options)
        with fs.open(p, "rb") as f:
            meta = pq.ParquetFile(f).metadata
            sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        if all(s == shard_rows for s in sizes[:-1]) and (not sizes or sizes[-1] <= shard_rows):
            files.append(path)
            continue
        target = storage.join(dest, f"{_file_tag(path, digest)}-{shard_rows}.parquet")
        tfs, tp = storage.filesystem(target, options)
        if tfs.exists(tp):
            with tfs.open(tp, "rb") as f:
                staged = pq.ParquetFile(f).metadata
                if staged.num_rows == n and all(staged.row_group(i).num_rows == shard_rows
                                                for i in range(staged.num_row_groups - 1)):
                    files.append(target)
                    continue
        tfs.makedirs(tp.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(p, "rb") as src, tfs.open(tp + ".tmp", "wb") as out:
            source = pq.ParquetFile(src)
            with pq.ParquetWriter(out, source.schema_arrow) as writer:
                pending: list[pa.RecordBatch] = []
                held = 0
                for batch in source.iter_batches(batch_size=min(shard_rows, 65536)):
                    pending.append(batch)
                    held += batch.num_rows
                    if held >= shard_rows:
                        table = pa.Table.from_batches(pending)
                        whole = held - held % shard_rows
                        writer.write_table(table.slice(0, whole), row_group_size=shard_rows)
                        pending, held = table.slice(whole).to_batches(), held - whole
                if held:
                    writer.write_table(pa.Table.from_batches(pending, schema=source.schema_arrow))
        tfs.mv(tp + ".tmp", tp)
        files.append(target)
    return dataclasses.replace(info, files=tuple(files), sources=info.sources or info.files)
