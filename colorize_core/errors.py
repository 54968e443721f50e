"""The three kinds of failure the project tells apart, so every layer treats each the same way.

* :class:`UserError`: a mistake the user can fix (unknown model, a flag that names a file where a folder is
  needed, wrong credentials, a config key that does not exist). Jobs and the CLI print ``error: <message>``
  (one line, no traceback) and exit 1. The message names the thing and says what to do.
* Transient failures (connection errors, timeouts, HTTP 5xx, throttling): retried with bounded backoff where
  they happen (:mod:`colorize_core.storage`); if they persist the row is marked ``status='transient'``, never
  ``'error'``: its shard is not marked complete, and a plain rerun finishes it.
* Permanent per-image failures (404, 403 on one object, an undecodable image): ``status='error'`` rows with a
  one-line reason, as always.
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
