"""A small HTTP proxy on 127.0.0.1 in front of the test S3 server that injects faults on demand.

Clients are pointed at the proxy's ``endpoint_url`` instead of the server's. Requests are forwarded with their
``Host`` header unchanged, so SigV4 signatures (which cover the host the client signed for) still verify.
Faults, each for the next ``n`` matching requests or for a time window:

* ``"503"``: ``503 SlowDown`` (S3's throttling answer), ``"500"``: ``500 InternalError``;
* ``"403"``: ``403 AccessDenied`` (a store, or a bucket policy, that refuses the request: permanent);
* ``"reset"``: the connection is closed with a TCP reset before any answer;
* ``"refuse"``: like an S3 server that is down (reset at once, the request never forwarded).

``match`` narrows faults to requests whose "METHOD path" contains the string (e.g. ``"GET /bucket/run/in/"``).
Nothing is forwarded anywhere but the one upstream given, on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_ERRORS = {
    "503": (503, "SlowDown", "Please reduce your request rate."),
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "403": (403, "AccessDenied", "Access Denied"),
}


@dataclass
class _Rule:
    kind: str
    remaining: int | None  # None: until `until`
    until: float | None
    match: str


@dataclass
class FaultProxy:
    upstream_port: int
    host: str = "127.0.0.1"
    rules: list[_Rule] = field(default_factory=list)
    injected: dict[str, int] = field(default_factory=dict)
    forwarded: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                fault = proxy._take(f"{self.command} {self.path}")
                if fault in ("reset", "refuse"):
                    # SO_LINGER 0: close() sends RST, as a crashed or restarting server would.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault in _ERRORS:
                    status, code, message = _ERRORS[fault]
                    payload = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                               f"<Message>{message}</Message><RequestId>fault</RequestId></Error>").encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.host, proxy.upstream_port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                with proxy._lock:
                    proxy.forwarded += 1
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)) if self.command != "HEAD"
                                 else resp.getheader("Content-Length", "0"))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="faultproxy", daemon=True)
        self._thread.start()

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def fail(self, kind: str, n: int | None = None, *, seconds: float | None = None, match: str = "") -> None:
        """Inject ``kind`` into the next ``n`` matching requests, or into all of them for ``seconds``."""
        if kind not in ("503", "500", "403", "reset", "refuse"):
            raise ValueError(f"unknown fault {kind!r}")
        if (n is None) == (seconds is None):
            raise ValueError("give n or seconds")
        until = time.monotonic() + seconds if seconds is not None else None
        with self._lock:
            self.rules.append(_Rule(kind, n, until, match))

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def _take(self, request: str) -> str | None:
        now = time.monotonic()
        with self._lock:
            self.rules = [r for r in self.rules
                          if (r.remaining is None or r.remaining > 0) and (r.until is None or r.until > now)]
            for rule in self.rules:
                if rule.match in request:
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    self.injected[rule.kind] = self.injected.get(rule.kind, 0) + 1
                    return rule.kind
        return None

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
