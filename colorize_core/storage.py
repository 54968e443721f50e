"""One way to read and write local paths and ``s3://`` URIs, so no stage or job branches on where data lives.

Every helper takes a URI plus a :class:`StorageOptions`; the options are a small frozen value that pickles,
because Ray ships it to workers, which then build their own filesystem from it. Local writes go to a temporary
file beside the target and are renamed into place, so a reader (or a resumed run checking what is done) never
sees half a file; an S3 PUT is already all-or-nothing.

S3-compatible servers (SeaweedFS, MinIO) are reached by ``endpoint_url``; addressing is then path-style, since
such servers rarely have wildcard DNS for virtual-hosted buckets.
"""

from __future__ import annotations

import os
import threading
import uuid
from dataclasses import dataclass, fields
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

S3_SCHEME = "s3://"
_FILE_SCHEME = "file://"
# Temporary files of in-flight local writes start with this, and listings leave them out.
_TMP_PREFIX = ".colorize-tmp-"
_RETRIES = {"max_attempts": 5, "mode": "standard"}


@dataclass(frozen=True, repr=False)
class StorageOptions:
    """Where and as whom to reach object storage; ``None`` fields fall back to botocore's own chain."""

    endpoint_url: str | None = None
    region: str | None = None
    key: str | None = None
    secret: str | None = None
    token: str | None = None  # AWS_SESSION_TOKEN: temporary (assumed-role, SSO) credentials
    anon: bool = False

    @classmethod
    def from_env(cls, **overrides: Any) -> StorageOptions:
        """Read the standard AWS variables; an override that is not ``None`` wins over the environment.

        ``AWS_ENDPOINT_URL_S3`` beats ``AWS_ENDPOINT_URL`` and ``AWS_REGION`` beats ``AWS_DEFAULT_REGION``,
        as in the AWS SDKs. Empty variables count as unset.
        """
        env = os.environ
        names = {f.name for f in fields(cls)}
        unknown = set(overrides) - names
        if unknown:
            raise TypeError(f"unknown StorageOptions field(s) {sorted(unknown)}; expected some of {sorted(names)}")

        def first(*variables: str) -> str | None:
            return next((env[v] for v in variables if env.get(v)), None)

        values: dict[str, Any] = {
            "endpoint_url": first("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
            "region": first("AWS_REGION", "AWS_DEFAULT_REGION"),
            "key": first("AWS_ACCESS_KEY_ID"),
            "secret": first("AWS_SECRET_ACCESS_KEY"),
            "token": first("AWS_SESSION_TOKEN"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def redacted(self) -> dict[str, Any]:
        """The fields as a dict that is safe to log: credentials become ``"***"`` when set."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("key", "secret", "token"):
            if out[name] is not None:
                out[name] = "***"
        return out

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self.redacted().items())
        return f"StorageOptions({body})"


def is_s3(uri: str) -> bool:
    return str(uri).lower().startswith(S3_SCHEME)


def join(base_uri: str, *parts: str) -> str:
    """Append path segments to a local path or ``s3://`` URI with exactly one ``/`` between segments.

    A trailing ``/`` on the last part is kept, so ``join(root, "shard/")`` still names a prefix.
    """
    base = str(base_uri)
    segments = [s for p in parts for s in str(p).split("/") if s]
    if not segments:
        return base
    trailing = "/" if str(parts[-1]).endswith("/") else ""
    if base.endswith("://") or base == "":
        head = base
    else:
        head = base.rstrip("/") + "/"  # "/" alone (the root) stays "/"
    return head + "/".join(segments) + trailing


_cache_lock = threading.Lock()
_cache: dict[StorageOptions, fsspec.AbstractFileSystem] = {}
_cache_pid = os.getpid()


def _s3fs(options: StorageOptions) -> fsspec.AbstractFileSystem:
    # Keyed by pid as well: an s3fs instance holds an event loop thread and an HTTP session that do not
    # survive fork, so a forked child (multiprocessing, some Ray worker set-ups) builds its own.
    global _cache_lock, _cache_pid
    if os.getpid() != _cache_pid:
        _cache_lock = threading.Lock()  # the parent's lock may have been held at fork time
        _cache.clear()
        _cache_pid = os.getpid()
    with _cache_lock:
        fs = _cache.get(options)
        if fs is None:
            fs = _cache[options] = _new_s3fs(options)
        return fs


def _session_without_expect_continue():
    """An aiobotocore session whose S3 PUTs carry no ``Expect: 100-continue``.

    botocore adds that header to every PUT with a file-like body. aiohttp then waits for the interim
    "100 Continue" before sending the body, a wait no timeout covers; against Go servers (SeaweedFS,
    MinIO) a zero-length PUT gets no interim response and leaves the pooled connection out of step
    (botocore issue 3755). We saw the driver hang for good on such a connection, with the server's
    "100 Continue" unread in the socket. Our objects are whole images and small files sent in one
    PUT, so the handshake saves nothing."""
    from aiobotocore.session import AioSession
    from botocore.handlers import add_expect_header

    class Session(AioSession):
        def __reduce__(self):  # s3fs pickles its init arguments (Ray ships filesystems): rebuild anew
            return _session_without_expect_continue, ()

    session = Session()
    session.unregister("before-call.s3", add_expect_header)
    return session


def _new_s3fs(options: StorageOptions) -> fsspec.AbstractFileSystem:
    import s3fs

    client_kwargs: dict[str, Any] = {}
    # Explicit timeouts: a connection the server dropped must fail and be retried, never wait forever.
    config_kwargs: dict[str, Any] = {"retries": dict(_RETRIES), "connect_timeout": 10, "read_timeout": 60}
    if options.endpoint_url:
        client_kwargs["endpoint_url"] = options.endpoint_url
        config_kwargs["s3"] = {"addressing_style": "path"}
    if options.region:
        client_kwargs["region_name"] = options.region
    credentials = {} if options.anon else {"key": options.key, "secret": options.secret, "token": options.token}
    return s3fs.S3FileSystem(
        session=_session_without_expect_continue(),
        anon=options.anon,
        client_kwargs=client_kwargs,
        config_kwargs=config_kwargs,
        # Our cache replaces fsspec's, which would otherwise hand back the same instance for equal arguments.
        skip_instance_cache=True,
        # Other processes write under the same prefixes; a cached listing would hide their outputs.
        use_listings_cache=False,
        **credentials,
    )


def filesystem(uri: str, options: StorageOptions | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem for ``uri`` and the path to hand it: ``bucket/key`` for S3, an absolute local path."""
    uri = str(uri)
    if is_s3(uri):
        fs = _s3fs(options or StorageOptions())
        return fs, fs._strip_protocol(uri)
    if uri.startswith(_FILE_SCHEME):
        uri = uri[len(_FILE_SCHEME) :]
    if "://" in uri:
        raise ValueError(f"unsupported URI scheme in {uri!r}: use a local path or s3://bucket/key")
    return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(uri))


def _to_uri(path: str, s3: bool) -> str:
    return S3_SCHEME + path if s3 else path


def read_bytes(uri: str, options: StorageOptions | None = None) -> bytes:
    fs, path = filesystem(uri, options)
    return fs.cat_file(path)


def _local_atomic_target(path: str) -> str:
    """Create the parent directory and return an unused temporary path beside ``path``."""
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    # Not mkstemp: its 0600 mode would survive the rename; open(..., "xb") gets the usual umask.
    return os.path.join(parent, f"{_TMP_PREFIX}{os.path.basename(path)}.{uuid.uuid4().hex}")


def _replace_or_discard(tmp: str, path: str, write) -> None:
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_bytes(uri: str, data: bytes, options: StorageOptions | None = None) -> None:
    """Write a whole object; readers see the old content or the new, never a part."""
    fs, path = filesystem(uri, options)
    if is_s3(uri):
        fs.pipe_file(path, bytes(data))
        return

    def write(tmp: str) -> None:
        with open(tmp, "xb") as f:
            f.write(data)

    _replace_or_discard(_local_atomic_target(path), path, write)


def exists(uri: str, options: StorageOptions | None = None) -> bool:
    """Whether a file or object exists (also true for a non-empty S3 prefix or a local directory)."""
    fs, path = filesystem(uri, options)
    return fs.exists(path)


def list_files(prefix_uri: str, options: StorageOptions | None = None, suffix: str | None = None) -> list[str]:
    """Sorted URIs of every file under a directory or prefix, recursively; ``[]`` if there is none.

    The prefix is a directory: ``s3://b/run`` lists ``s3://b/run/...`` and not ``s3://b/run2/...``.
    """
    fs, path = filesystem(prefix_uri, options)
    s3 = is_s3(prefix_uri)
    try:
        found = fs.find(path, detail=True)
    except FileNotFoundError:
        return []
    out = []
    for p, info in found.items():
        # find() on an emptied S3 "directory" (SeaweedFS keeps them) answers with the directory itself.
        if info.get("type") != "file":
            continue
        name = p.rsplit("/", 1)[-1]
        if name.startswith(_TMP_PREFIX) or (suffix is not None and not name.endswith(suffix)):
            continue
        out.append(_to_uri(p, s3))
    return sorted(out)


def remove(uri: str, options: StorageOptions | None = None) -> None:
    """Delete a file, object, directory or prefix, recursively; a missing one is not an error."""
    fs, path = filesystem(uri, options)
    try:
        fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass


def pyarrow_filesystem(uri: str, options: StorageOptions | None = None) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for ``pyarrow.parquet`` and Ray Data ``filesystem=`` arguments.

    S3 goes through the same s3fs instance as everything else (wrapped by ``FSSpecHandler``) rather than
    pyarrow's own S3 client, so credentials, endpoint and retries are configured in one place. It pickles.
    """
    fs, path = filesystem(uri, options)
    if is_s3(uri):
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path
    return pafs.LocalFileSystem(), path


def read_parquet_table(uri: str, options: StorageOptions | None = None, columns: list[str] | None = None) -> pa.Table:
    fs, path = pyarrow_filesystem(uri, options)
    return pq.read_table(path, filesystem=fs, columns=columns)


def write_parquet_table(table: pa.Table, uri: str, options: StorageOptions | None = None) -> None:
    """Write one Parquet file; like :func:`write_bytes`, it appears whole or not at all."""
    fs, path = pyarrow_filesystem(uri, options)
    if is_s3(uri):
        pq.write_table(table, path, filesystem=fs)
        return
    _replace_or_discard(_local_atomic_target(path), path, lambda tmp: pq.write_table(table, tmp))


__all__ = [
    "StorageOptions",
    "exists",
    "filesystem",
    "is_s3",
    "join",
    "list_files",
    "pyarrow_filesystem",
    "read_bytes",
    "read_parquet_table",
    "remove",
    "write_bytes",
    "write_parquet_table",
]
