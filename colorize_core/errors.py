"""The three kinds of failure the project tells apart, so every layer treats each the same way.

* :class:`UserError`: a mistake the user can fix (unknown model, a flag that names a file where a folder is
  needed, wrong credentials, a config key that does not exist). Jobs and the CLI print ``error: <message>``
  (one line, no traceback) and exit 1. The message names the thing and says what to do.
* Transient failures (connection errors, timeouts, HTTP 5xx, throttling): retried with bounded backoff where
  they happen (:mod:`colorize_core.storage`); if they persist the row is marked ``status='transient'``, never
  ``'error'``: its shard is not marked complete, and a plain rerun finishes it.
* :class:`InputError`: a failure about one input (its source or reference missing or forbidden, undecodable,
  a refused format, too large, a bad hint, a reference of the wrong size): ``status='error'`` rows with a
  one-line reason; the job goes on. Decode's :class:`~colorize_core.imageio.ImageDecodeError` is one.

Anything else is not a row's result. :class:`OutputError` (an output or metrics file that cannot be written) and
every exception the code did not expect propagate out of the stage: the run stops, shards in flight get no marker
and no error rows, and the job prints one line naming the cause (:func:`colorize_core.launch.main_wrapper`). So a
full disk, a refusing store or a bug never leaves "done" behind, and a plain rerun after the fix finishes it all.
"""

from __future__ import annotations

import errno
import socket

# Row statuses. A shard is complete only when none of its rows is TRANSIENT.
OK, ERROR, TRANSIENT = "ok", "error", "transient"
STATUSES = (OK, ERROR, TRANSIENT)


class UserError(Exception):
    """A mistake the user can fix; ``str(exc)`` is the one line they see."""


class UnknownNameError(UserError, KeyError):
    """A name that is not in a registry (a model, a protocol). Still a KeyError for code that looks names up."""

    def __str__(self) -> str:  # KeyError's own __str__ would quote the message
        return str(self.args[0]) if self.args else ""


class _Message(Exception):
    """An exception whose text survives Ray: Ray Data appends retry advice to ``args[0]`` of an exception raised
    in a map function, so the text lives in an attribute that unpickling restores."""

    def __init__(self, message: str, *rest) -> None:
        super().__init__(message, *rest)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InputError(_Message):
    """A failure about one input, the reason of that row's ``status='error'``; ``str(exc)`` is that reason."""


class OutputError(_Message):
    """An output (image, metrics, marker, summary) that cannot be written: never a row's result, the run stops.
    ``str(exc)`` names the target, the cause and what to do."""


class StageError(_Message):
    """An exception a stage did not expect, as it reaches the driver: the stage's name, the exception's type and
    message, and the worker's traceback (printed with ``--verbose``). The original exception is not sent, as the
    driver may not be able to unpickle it."""

    def __init__(self, message: str, stage: str = "", kind: str = "", details: str = "") -> None:
        super().__init__(message, stage, kind, details)
        self.stage, self.kind, self.details = stage, kind, details

    @classmethod
    def wrap(cls, stage: str, exc: BaseException) -> "StageError":
        import traceback

        text = str(exc).strip().splitlines()
        return cls(text[0] if text else "", stage, type(exc).__name__, "".join(traceback.format_exception(exc)))


class TransientError(OSError):
    """A retryable failure that persisted after the bounded retries (storage outage, throttling, 5xx)."""


_TRANSIENT_NAMES = {
    # botocore / aiobotocore / aiohttp / urllib3 exception class names, matched by name so this module needs none
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
    "ProxyConnectionError", "ResponseStreamingError", "IncompleteReadError",
    "ClientConnectorError", "ClientOSError", "ServerDisconnectedError", "ClientPayloadError",
    "ServerTimeoutError", "ConnectionTimeoutError", "SocketTimeoutError", "ClientConnectionError",
    "NewConnectionError", "ProtocolError", "TimeoutError", "CancelledError",
}
_TRANSIENT_CODES = {
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException", "TooManyRequestsException",
    "ProvisionedThroughputExceededException", "TransactionInProgressException", "RequestLimitExceeded",
    "BandwidthLimitExceeded", "LimitExceededException", "RequestThrottled", "SlowDown", "PriorRequestNotComplete",
    "EC2ThrottledException", "InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeoutException",
}
_TRANSIENT_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE,
                     errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EAGAIN}


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(status, int):
            return status
    for attr in ("status", "status_code", "code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    return None


def _error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if isinstance(code, str):
            return code
    return None


def row_status(exc: BaseException) -> str | None:
    """The status a failure gives its row: ERROR for one about the input, TRANSIENT for a retryable one that
    persisted, None for everything else (an OutputError, a bug), which the caller re-raises."""
    if isinstance(exc, OutputError | StageError):
        return None
    if isinstance(exc, InputError):
        return ERROR
    if is_transient(exc):
        return TRANSIENT
    return None


def is_transient(exc: BaseException) -> bool:
    """True for failures that may succeed if tried again later; walks the ``__cause__``/``__context__`` chain
    (s3fs re-raises botocore errors as ``OSError``/``PermissionError`` with the original as the cause)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, TransientError | socket.timeout | TimeoutError | ConnectionError):
            return True
        if type(e).__name__ in _TRANSIENT_NAMES:
            return True
        status = _http_status(e)
        if status is not None and (status >= 500 or status in (408, 429)):
            return True
        if _error_code(e) in _TRANSIENT_CODES:
            return True
        if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
            return True
        todo.extend((e.__cause__, e.__context__))
    return False
