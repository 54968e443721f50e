"""One way to read and write local paths and ``s3://`` URIs, so no stage or job branches on where data lives.

Every helper takes a URI plus a :class:`StorageOptions`; the options are a small frozen value that pickles,
because Ray ships it to workers, which then build their own filesystem from it. Local writes go to a temporary
file beside the target and are renamed into place, so a reader (or a resumed run checking what is done) never
sees half a file; an S3 PUT is already all-or-nothing.

S3-compatible servers (SeaweedFS, MinIO) are reached by ``endpoint_url``; addressing is then path-style, since
such servers rarely have wildcard DNS for virtual-hosted buckets.

Failures come in two kinds (see :mod:`colorize_core.errors`). Three layers retry the transient ones:

* botocore (``retries={"mode": "standard", "max_attempts": 5}``) retries each request on connection errors,
  read/connect timeouts, HTTP 500/502/503/504, 429 and throttling codes, with jittered backoff capped at 20 s;
* s3fs retries a call again (5 tries, ``min(1.7**i * 0.1, 15)`` s apart) on socket timeouts, botocore
  ``HTTPClientError`` (connection closed, read timeout), incomplete reads and any error that mentions
  ``SlowDown``; it then translates the botocore error into ``OSError``/``PermissionError``/``FileNotFoundError``
  with the original as ``__cause__``;
* and every helper here (read, write, exists, list, remove, Parquet) retries the whole operation once those
  gave up (an outage outlasts them: connection refused fails in milliseconds), with exponential backoff and
  full jitter, for at most ``StorageOptions.retry_seconds``. Then it raises :class:`~.errors.TransientError`.

Permanent failures are never retried: a missing object stays ``FileNotFoundError``, a 403 on one object
``PermissionError``. Local reads are guarded like remote ones: regular files only (a FIFO, directory or device
is refused from ``fstat`` of a non-blocking descriptor, so nothing can hang on it) and at most ``max_bytes``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import stat
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .errors import OutputError, TransientError, UserError, is_transient

log = logging.getLogger(__name__)

S3_SCHEME = "s3://"
_FILE_SCHEME = "file://"
# Temporary files of in-flight local writes start with this, and listings leave them out.
_TMP_PREFIX = ".colorize-tmp-"
_RETRIES = {"max_attempts": 5, "mode": "standard"}
DEFAULT_MAX_BYTES = 512 * 1024**2
"""Largest object :func:`read_bytes` returns by default: a 100 MP 16-bit TIFF is ~600 MB uncompressed, but
archives store them compressed; anything bigger is refused as that row's error, not read into memory."""
_BACKOFF_BASE_S, _BACKOFF_CAP_S = 0.5, 8.0
# S3 keys are at most 1024 bytes of UTF-8; a local path component at most 255 bytes (NAME_MAX on Linux,
# macOS and Windows' NTFS alike).
MAX_S3_KEY_BYTES, MAX_NAME_BYTES = 1024, 255
_GLOB_CHARS = ("*", "?", "[")
# Query parameters that carry credentials in presigned or token-bearing URLs.
_SECRET_QUERY = ("signature", "credential", "token", "security", "key", "sig", "secret", "password", "auth")


class NotRegularFileError(OSError):
    """A local source that is not a regular file (FIFO, directory, device, socket): refused before reading."""


class TooLargeError(OSError):
    """An object larger than the read limit (``max_bytes``)."""


class UnsupportedSchemeError(UserError, ValueError):
    """A URI whose scheme we do not read or write (``http://``, ``gs://``): a mistake in a flag, or a bad
    manifest row (that row's error)."""


class SymlinkRefusedError(OSError):
    """A symbolic link planted below an output's root: writes there never follow it."""


@dataclass(frozen=True, repr=False)
class StorageOptions:
    """Where and as whom to reach object storage; ``None`` fields fall back to botocore's own chain."""

    endpoint_url: str | None = None
    region: str | None = None
    key: str | None = None
    secret: str | None = None
    token: str | None = None  # AWS_SESSION_TOKEN: temporary (assumed-role, SSO) credentials
    anon: bool = False
    request_attempts: int = 5
    """Tries per HTTP request in botocore (standard retry mode: jittered backoff, at most 20 s apart)."""
    retry_seconds: float = 60.0
    """How long each storage helper keeps retrying a transient failure (after botocore's and s3fs's own
    retries gave up) before raising TransientError: long enough to ride out a server restart."""

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
    retries = {**_RETRIES, "max_attempts": options.request_attempts}
    config_kwargs: dict[str, Any] = {"retries": retries, "connect_timeout": 10, "read_timeout": 60}
    if options.endpoint_url:
        client_kwargs["endpoint_url"] = options.endpoint_url
        config_kwargs["s3"] = {"addressing_style": "path"}
    if options.region:
        client_kwargs["region_name"] = options.region
    credentials = {} if options.anon else {"key": options.key, "secret": options.secret, "token": options.token}
    fs = s3fs.S3FileSystem(
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
    # s3fs retries a call 5 times on top of botocore's 5 tries per request: 25 tries, minutes of waiting
    # per object in an outage. Keep one s3fs retry (it re-reads a body cut mid-stream, which botocore does
    # not); outages are ridden out by `retrying`, whose total time is bounded.
    fs.retries = 2
    return fs


def filesystem(uri: str, options: StorageOptions | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem for ``uri`` and the path to hand it: ``bucket/key`` for S3, an absolute local path."""
    uri = str(uri)
    if is_s3(uri):
        fs = _s3fs(options or StorageOptions())
        return fs, fs._strip_protocol(uri)
    if uri.startswith(_FILE_SCHEME):
        uri = uri[len(_FILE_SCHEME) :]
    if "://" in uri:
        raise UnsupportedSchemeError(f"unsupported URI scheme in {uri!r}: use a local path or s3://bucket/key")
    return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(uri))


def _to_uri(path: str, s3: bool) -> str:
    return S3_SCHEME + path if s3 else path


def redact_uri(uri: str | None) -> str | None:
    """``uri`` safe to write into run.json, config.json, summary.json or a log line.

    A presigned ``https://`` URL carries its credentials in the query string (``X-Amz-Signature``,
    ``X-Amz-Credential``, ``X-Amz-Security-Token``, Azure ``sig``, GCS ``Signature``, ``token=``...): those
    values become ``REDACTED``; user:password in the authority is dropped. Scheme, host, path and
    harmless parameters are kept, so the record still says which file it was."""
    if uri is None or "://" not in str(uri):
        return uri
    parts = urllib.parse.urlsplit(str(uri))
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if not parts.query:
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    query = [(k, "REDACTED" if any(w in k.lower() for w in _SECRET_QUERY) else v)
             for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, urllib.parse.urlencode(query), ""))


def retrying(what: str, uri: str, options: StorageOptions | None, fn: Callable[[], Any]) -> Any:
    """Call ``fn()``; on a transient failure wait (exponential backoff, full jitter, capped) and call it
    again, for at most ``options.retry_seconds``; then raise :class:`TransientError` naming ``what`` and the
    URI. Permanent failures propagate at once, unchanged."""
    budget = (options or StorageOptions()).retry_seconds
    start = time.monotonic()
    attempt = 0
    while True:
        try:
            return fn()
        except TransientError:
            raise  # an inner helper already spent its budget
        except Exception as exc:
            if not is_transient(exc):
                raise
            attempt += 1
            elapsed = time.monotonic() - start
            delay = random.uniform(0, min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2**attempt))
            if elapsed + delay > budget:
                raise TransientError(
                    f"{what} {redact_uri(uri)}: still failing after {attempt} tries over {elapsed:.0f}s "
                    f"({type(exc).__name__}: {_first_line(exc)})") from exc
            log.debug("%s %s: transient %s, retry %d in %.1fs", what, redact_uri(uri), type(exc).__name__,
                      attempt, delay)
            time.sleep(delay)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


_DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                 "InvalidSecurity", "AllAccessDisabled"}


def _is_denied(exc: BaseException) -> bool:
    e: BaseException | None = exc
    while e is not None:
        if isinstance(e, PermissionError):
            return True
        response = getattr(e, "response", None)
        if isinstance(response, dict) and response.get("Error", {}).get("Code") in _DENIED_CODES:
            return True
        if type(e).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
            return True
        e = e.__cause__ or e.__context__
    return False


@contextlib.contextmanager
def access_checked(uri: str) -> Iterator[None]:
    """Turn "access denied" on the job's own inputs and outputs (manifest, output prefix) into a UserError:
    there it means wrong credentials or permissions, which the user fixes. (A 403 on one source image
    stays a PermissionError: that row's error.)"""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        if not _is_denied(exc):
            raise
        where = redact_uri(uri)
        if is_s3(uri):
            raise UserError(f"access denied to {where}: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the "
                            f"storage section of the config) and that they may read and write there") from None
        raise UserError(f"permission denied on {where}: check the path and its permissions") from None


def check_output_uri(uri: str) -> None:
    """Refuse an output location that a recursive delete (``--overwrite``) could misread: glob characters."""
    if any(c in str(uri) for c in _GLOB_CHARS):
        raise UserError(f"output {uri!r} contains a glob character (* ? [): pick an output path without them")


def read_bytes(uri: str, options: StorageOptions | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The whole object, at most ``max_bytes`` long (:class:`TooLargeError` otherwise).

    Local sources must be regular files: a FIFO, directory, device or socket raises
    :class:`NotRegularFileError` without a byte being read (a FIFO with no writer would block forever)."""
    fs, path = filesystem(uri, options)
    if not is_s3(uri):
        return call_with_timeout(lambda: _read_local(path, max_bytes), LOCAL_READ_TIMEOUT_S, f"local read of {path}")

    def read() -> bytes:
        data = fs.cat_file(path)
        if len(data) > max_bytes:
            raise TooLargeError(errno.EFBIG, f"object larger than the {max_bytes}-byte read limit", uri)
        return data

    return retrying("read", uri, options, read)


# A local path may sit on a network mount (NFS, SMB, FUSE) whose server stops answering; a read then blocks in
# the kernel, uninterruptibly. The read runs in a daemon thread and the row gives up after this long.
LOCAL_READ_TIMEOUT_S = 120.0


def call_with_timeout(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """``fn()`` in a daemon thread; :class:`TransientError` if it has not returned after ``timeout`` seconds
    (the thread is abandoned: a read blocked in the kernel cannot be cancelled). Its exceptions propagate."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            result["error"] = exc

    thread = threading.Thread(target=target, name="colorize-local-read", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TransientError(f"{what} did not finish within {timeout:.0f}s (a hung network mount?); "
                             f"a rerun tries it again")
    if "error" in result:
        raise result["error"]
    return result["value"]


def _read_local(path: str, max_bytes: int) -> bytes:
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. The checks then use fstat of
    # what was opened, so a file swapped in between cannot dodge them.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                    else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                    else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
            raise NotRegularFileError(errno.EINVAL, f"not a regular file ({kind})", path)
        if st.st_size > max_bytes:
            raise TooLargeError(errno.EFBIG, f"file of {st.st_size} bytes is over the {max_bytes}-byte read limit",
                                path)
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:  # grew while we read
            raise TooLargeError(errno.EFBIG, f"file is over the {max_bytes}-byte read limit", path)
        return data
    finally:
        if fd >= 0:
            os.close(fd)


def _local_atomic_target(path: str) -> str:
    """Create the parent directory and return an unused temporary path beside ``path``.

    The name does not include the target's: a 255-byte file name plus a prefix would not fit in NAME_MAX."""
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    # Not mkstemp: its 0600 mode would survive the rename; open(..., "xb") gets the usual umask.
    return os.path.join(parent, f"{_TMP_PREFIX}{uuid.uuid4().hex}")


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


def write_bytes(uri: str, data: bytes, options: StorageOptions | None = None, *, within: str | None = None) -> None:
    """Write a whole object; readers see the old content or the new, never a part.

    ``within`` (a local directory above ``uri``, e.g. a job's ``--output``): every folder below it is opened
    without following symbolic links, so a link planted inside the output (``images/evil -> /elsewhere``)
    raises :class:`SymlinkRefusedError` instead of sending the file outside. ``within`` itself may be a link
    (the user's choice). S3 has no links: there it changes nothing."""
    fs, path = filesystem(uri, options)
    if is_s3(uri):
        retrying("write", uri, options, lambda: fs.pipe_file(path, bytes(data)))
        return
    if within is not None:
        _write_below(os.path.abspath(os.path.expanduser(within)), path, data)
        return

    def write(tmp: str) -> None:
        with open(tmp, "xb") as f:
            f.write(data)

    _replace_or_discard(_local_atomic_target(path), path, write)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)


def _open_dir_below(root: str, parts: list[str]) -> int:
    """A descriptor of ``root/parts...``, each missing folder created, no symbolic link below ``root`` followed
    (``mkdir`` and ``open`` relative to the parent's descriptor, ``O_NOFOLLOW``)."""
    os.makedirs(root, exist_ok=True)
    fd = os.open(root, _DIR_FLAGS)
    try:
        here = root
        for name in parts:
            here = os.path.join(here, name)
            try:
                os.mkdir(name, 0o777, dir_fd=fd)
            except FileExistsError:
                pass
            try:
                child = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except NotADirectoryError:
                if stat.S_ISLNK(os.lstat(name, dir_fd=fd).st_mode):
                    raise SymlinkRefusedError(errno.ELOOP, "a symbolic link inside the output", here) from None
                raise NotADirectoryError(errno.ENOTDIR, "a file where a folder is needed", here) from None
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _write_below(root: str, path: str, data: bytes) -> None:
    rel = os.path.relpath(path, root)
    parts = rel.split(os.sep)
    if rel.startswith(os.pardir) or os.path.isabs(rel) or not parts[-1]:
        raise ValueError(f"{path} is not below {root}")
    fd = _open_dir_below(root, parts[:-1])
    try:
        tmp = f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        # 0o666 and the umask, as open(..., "xb") would; O_NOFOLLOW|O_EXCL: never through a planted link.
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                      0o666, dir_fd=fd)
        try:
            with os.fdopen(out, "wb", closefd=True) as f:
                f.write(data)
            # rename replaces a link at the final name itself; it never writes through it.
            os.rename(tmp, parts[-1], src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=fd)
            raise
    finally:
        os.close(fd)


def _why_not_written(exc: BaseException) -> str:
    """What is wrong with an output location, and what to do, for :class:`OutputError`'s one line."""
    where = f"'{exc.filename}' " if isinstance(exc, OSError) and exc.filename else ""
    if isinstance(exc, SymlinkRefusedError):
        return f"{where}is a symbolic link inside the output, which writes never follow; remove it and rerun " \
               f"the same command"
    if isinstance(exc, NotADirectoryError):
        return f"{where}is a file where a folder is needed; move it away and rerun the same command"
    if isinstance(exc, IsADirectoryError):
        return f"{where}is a folder where a file is needed; move it away and rerun the same command"
    if isinstance(exc, PermissionError):
        on = f" on {where.strip()}" if where else ""
        return f"permission denied{on}; give the job write access there (or another --output) and rerun the " \
               f"same command"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device; free space and rerun the same command"
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return "read-only file system; give another --output and rerun the same command"
    return f"{type(exc).__name__}: {_first_line(exc)}; fix the output location and rerun the same command"


def write_output(uri: str, data: bytes, options: StorageOptions | None, *, root: str) -> None:
    """:func:`write_bytes` into a job's output ``root``: no link below ``root`` is followed, and a failure that
    is not transient is an :class:`~colorize_core.errors.OutputError` naming the target and what to do (a
    transient one that outlasted the retries propagates as it is: the row is left for a rerun)."""
    try:
        write_bytes(uri, data, options, within=None if is_s3(uri) else root)
    except Exception as exc:
        if is_transient(exc):
            raise
        raise OutputError(f"cannot write {redact_uri(uri)}: {_why_not_written(exc)}") from exc


def write_output_table(table: pa.Table, uri: str, options: StorageOptions | None, *, root: str) -> None:
    """One Parquet file into a job's output, as :func:`write_output` writes bytes."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_output(uri, sink.getvalue().to_pybytes(), options, root=root)


def exists(uri: str, options: StorageOptions | None = None) -> bool:
    """Whether a file or object exists (also true for a non-empty S3 prefix or a local directory).

    Not ``fs.exists``: s3fs answers False for any error there, so an outage would read as "not written yet"."""
    fs, path = filesystem(uri, options)
    if not is_s3(uri):
        return os.path.exists(path)

    def probe() -> bool:
        try:
            fs.info(path)
            return True
        except FileNotFoundError:
            return False

    return retrying("exists", uri, options, probe)


def _find_files(prefix_uri: str, options: StorageOptions | None, suffix: str | None) -> dict[str, dict]:
    """URI -> fsspec info of every file under a directory or prefix (temporary files left out)."""
    fs, path = filesystem(prefix_uri, options)
    s3 = is_s3(prefix_uri)

    def find() -> dict:
        try:
            return fs.find(path, detail=True)
        except FileNotFoundError:
            return {}

    found = retrying("list", prefix_uri, options, find)
    out = {}
    for p, info in found.items():
        # find() on an emptied S3 "directory" (SeaweedFS keeps them) answers with the directory itself.
        if info.get("type") != "file":
            continue
        name = p.rsplit("/", 1)[-1]
        if name.startswith(_TMP_PREFIX) or (suffix is not None and not name.endswith(suffix)):
            continue
        out[_to_uri(p, s3)] = info
    return out


def list_files(prefix_uri: str, options: StorageOptions | None = None, suffix: str | None = None) -> list[str]:
    """Sorted URIs of every file under a directory or prefix, recursively; ``[]`` if there is none.

    The prefix is a directory: ``s3://b/run`` lists ``s3://b/run/...`` and not ``s3://b/run2/...``.
    """
    return sorted(_find_files(prefix_uri, options, suffix))


def version_from_info(info: dict[str, Any]) -> str:
    """An object's version from a listing or ``info()`` entry: its ETag, else ``size:mtime``."""
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return str(etag).strip('"')
    mtime = info.get("mtime") or info.get("LastModified") or info.get("created")
    return f"{info.get('size')}:{mtime}"


def version(uri: str, options: StorageOptions | None = None) -> str:
    """What changes whenever the object's content is replaced (ETag on S3, ``size:mtime_ns`` on a local
    disk): one HEAD or ``stat``, so caches of derived data (thumbnails) are keyed by it, not by reading it.
    ``FileNotFoundError`` for a missing object."""
    fs, path = filesystem(uri, options)
    if not is_s3(uri):
        st = os.stat(path)
        return f"{st.st_size}:{st.st_mtime_ns}"
    return retrying("stat", uri, options, lambda: version_from_info(fs.info(path)))


def list_file_versions(prefix_uri: str, options: StorageOptions | None = None,
                       suffix: str | None = None, *, oldest_first: bool = False) -> dict[str, str]:
    """URI -> :func:`version` of every file under a prefix, sorted by URI (or, ``oldest_first``, by when each
    was last written, ties by URI), from one listing on S3."""
    found = _find_files(prefix_uri, options, suffix)
    if is_s3(prefix_uri):
        when = {u: _modified(found[u]) for u in found}
        order = sorted(found, key=lambda u: (when[u], u)) if oldest_first else sorted(found)
        return {u: version_from_info(found[u]) for u in order}
    out, when = {}, {}
    for u in sorted(found):
        try:
            st = os.stat(filesystem(u, options)[1])
        except FileNotFoundError:  # removed since the listing
            continue
        out[u], when[u] = f"{st.st_size}:{st.st_mtime_ns}", st.st_mtime_ns / 1e9
    return {u: out[u] for u in sorted(out, key=lambda u: (when[u], u))} if oldest_first else out


def _modified(info: dict[str, Any]) -> float:
    """Seconds since the epoch an S3 listing entry was last written (0 where it does not say)."""
    value = info.get("LastModified") or info.get("mtime")
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def remove(uri: str, options: StorageOptions | None = None) -> None:
    """Delete a file, object, directory or prefix, recursively; a missing one is not an error.

    Never globs: fsspec's ``rm`` expands ``*?[`` in the path, so a key holding them could widen the delete.
    Local trees go through ``shutil.rmtree``; S3 objects are listed and deleted by exact key."""
    import shutil

    fs, path = filesystem(uri, options)
    if not is_s3(uri):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=False)
        elif os.path.lexists(path):
            os.unlink(path)
        return

    def delete() -> None:
        keys = list(fs.find(path.rstrip("/")))  # s3fs's find lists by prefix; it does not glob
        bucket = path.split("/", 1)[0]
        names = sorted({k.split("/", 1)[1] for k in keys if "/" in k})
        for i in range(0, len(names), 1000):
            fs.call_s3("delete_objects", Bucket=bucket,
                       Delete={"Objects": [{"Key": k} for k in names[i: i + 1000]], "Quiet": True})
        fs.invalidate_cache(path)

    retrying("remove", uri, options, delete)


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
    return retrying("read", uri, options, lambda: pq.read_table(path, filesystem=fs, columns=columns))


def write_parquet_table(table: pa.Table, uri: str, options: StorageOptions | None = None) -> None:
    """Write one Parquet file; like :func:`write_bytes`, it appears whole or not at all."""
    fs, path = pyarrow_filesystem(uri, options)
    if is_s3(uri):
        # Into memory first, then one PUT: the object appears whole or not at all, and a retry resends it all.
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        write_bytes(uri, sink.getvalue().to_pybytes(), options)
        return
    _replace_or_discard(_local_atomic_target(path), path, lambda tmp: pq.write_table(table, tmp))


__all__ = [
    "DEFAULT_MAX_BYTES",
    "NotRegularFileError",
    "StorageOptions",
    "SymlinkRefusedError",
    "TooLargeError",
    "UnsupportedSchemeError",
    "access_checked",
    "check_output_uri",
    "redact_uri",
    "retrying",
    "exists",
    "version",
    "version_from_info",
    "filesystem",
    "is_s3",
    "join",
    "list_file_versions",
    "list_files",
    "pyarrow_filesystem",
    "read_bytes",
    "read_parquet_table",
    "remove",
    "write_bytes",
    "write_output",
    "write_output_table",
    "write_parquet_table",
]
