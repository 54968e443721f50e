"""``colorize review``: a local web page over a finished run, and the JSON API it uses (scripts can call it too).

    GET  /api/run                            the run: model, settings, counts, whether previews read hints
    GET  /api/images?sort=&order=&status=&reviewed=&offset=&limit=&psnr_min=...   {"total", "rows", ...}
    GET  /api/image/<id>/input|output[?max=N] the file as stored, or a JPEG of at most N px (cached thumbnails)
    GET  /api/image/<id>/sample?x=&y=        {"l", "a", "b"}: the input's L and the output's ab at a point
    POST /api/preview/<id>   {"hints": [...]} image/jpeg, rendered by the run's model with those hints
    GET  /api/hints/<id>                     {"hints": [...]} saved for the image ([] if none)
    POST /api/hints/<id>     {"hints": [...]} saves them into RUN/review/hints.parquet; answers the command
                             that renders them into the run
    GET  /api/gamut?l=L                      PNG of the ab plane at lightness L (out of gamut transparent)

Ids are percent-encoded path segments (they may contain ``/``); the router takes the tail. An id the run's
metrics do not hold is 404, whatever it looks like. Blocking work (storage, decoding, the model) runs in a
thread pool; the event loop only routes. Bound to 127.0.0.1 by default and checked against DNS rebinding
(the ``Host`` header must be a loopback name then); POSTs must be ``application/json``, which a page of
another origin cannot send without a CORS preflight this server never grants.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import mimetypes
import os
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any, Callable

from aiohttp import web

from .. import storage
from ..errors import TransientError
from .preview import (GAMUT_AB, GAMUT_SIZE, MAX_SIDE, MIN_SIDE, PREVIEW_MAX_SIDE, Previewer, PreviewUnavailable,
                      Thumbnails, gamut_png)
from .records import (MAX_PAGE, RANGE_COLUMNS, SORT_COLUMNS, BadRequest, ImageQuery, RunRecords, UnknownImage,
                      parse_hints)

log = logging.getLogger(__name__)

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8765
STATIC = resources.files("colorize_core.review").joinpath("static")
MAX_BODY = 256 * 1024
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'")

RECORDS = web.AppKey("records", RunRecords)
PREVIEWER = web.AppKey("previewer", Previewer)
THUMBS = web.AppKey("thumbs", Thumbnails)
POOL = web.AppKey("pool", ThreadPoolExecutor)
LOOPBACK = web.AppKey("loopback", bool)


def is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(host: str) -> str:
    """The name part of a ``Host`` header: ``[::1]:8765`` -> ``[::1]``, ``localhost:8765`` -> ``localhost``."""
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if ":" in host else host


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


async def _blocking(request: web.Request, fn: Callable, *args) -> Any:
    return await asyncio.get_running_loop().run_in_executor(request.app[POOL], functools.partial(fn, *args))


@web.middleware
async def guard(request: web.Request, handler):
    """Loopback Host check, JSON-only POSTs, security headers; known failures as JSON with a reason."""
    if request.app[LOOPBACK]:
        if not is_loopback(host_name(request.host or "")):
            return _error(421, f"this server answers only to a loopback host name, not {request.host!r}")
    if request.method == "POST" and request.content_type != "application/json":
        return _error(415, "send the body as application/json")
    try:
        response = await handler(request)
    except BadRequest as exc:
        response = _error(400, str(exc))
    except UnknownImage as exc:
        response = _error(404, str(exc))
    except PreviewUnavailable as exc:
        response = _error(503, str(exc))
    except TransientError as exc:
        response = _error(503, f"storage is not answering: {exc}")
    except FileNotFoundError as exc:
        response = _error(404, f"missing object: {storage.redact_uri(exc.filename) if exc.filename else exc}")
    except PermissionError as exc:
        response = _error(403, f"access denied: {exc}")
    except (storage.NotRegularFileError, storage.TooLargeError) as exc:
        response = _error(422, f"cannot be read as an image: {exc}")
    except Exception as exc:
        from ..imageio import ImageDecodeError

        if isinstance(exc, ImageDecodeError):
            response = _error(422, f"the image does not decode: {exc}")
        else:
            raise
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


def _image_id(request: web.Request) -> str:
    return request.match_info["image_id"]


async def _json_body(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise BadRequest(f"body larger than {MAX_BODY} bytes")
    try:
        return json.loads(await request.text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None


def _side(request: web.Request) -> int | None:
    raw = request.query.get("max")
    if raw is None:
        return None
    try:
        side = int(raw)
    except ValueError:
        raise BadRequest(f"max={raw!r}: give a whole number of pixels") from None
    if not MIN_SIDE <= side <= MAX_SIDE:
        raise BadRequest(f"max={side}: give {MIN_SIDE} to {MAX_SIDE}")
    return side


def _point(request: web.Request, name: str) -> float:
    try:
        value = float(request.query[name])
    except (KeyError, ValueError):
        raise BadRequest(f"give {name} as a number in [0, 1]") from None
    if not 0 <= value <= 1:
        raise BadRequest(f"{name}={value}: must be in [0, 1]")
    return value


# --------------------------------------------------------------------------------------------- handlers


async def index(request: web.Request) -> web.Response:
    html = STATIC.joinpath("index.html").read_text()
    return web.Response(text=html, content_type="text/html",
                        headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-cache"})


async def run_info(request: web.Request) -> web.Response:
    records, previewer = request.app[RECORDS], request.app[PREVIEWER]

    def info() -> dict[str, Any]:
        try:
            _, model = previewer.model()
            preview = {"available": True, "reason": None, "accepts_hints": bool(model.accepts_hints),
                       "model": model.name, "input_size": list(model.input_size)}
        except PreviewUnavailable as exc:
            preview = {"available": False, "reason": str(exc), "accepts_hints": False}
        page = records.page(ImageQuery(limit=1))
        return {**records.settings.public(), "counts": page["counts"], "preview": preview,
                "has_references": records.has_references, "reviewed": len(records.saved_hints()),
                "preview_max_side": previewer.max_side, "hints_manifest": storage.redact_uri(records.hints_uri),
                "rerender_command": records.rerender_command(),
                "gamut": {"ab": GAMUT_AB, "size": GAMUT_SIZE}, "sort_columns": list(SORT_COLUMNS),
                "range_columns": list(RANGE_COLUMNS), "max_page": MAX_PAGE}

    return web.json_response(await _blocking(request, info))


async def images(request: web.Request) -> web.Response:
    q = ImageQuery.parse(dict(request.query))
    return web.json_response(await _blocking(request, request.app[RECORDS].page, q))


async def image_file(request: web.Request) -> web.StreamResponse:
    records, kind, side = request.app[RECORDS], request.match_info["kind"], _side(request)
    image_id = _image_id(request)

    def locate() -> str:
        return records.output_uri(image_id) if kind == "output" else records.source(image_id)["uri"]

    uri = await _blocking(request, locate)
    if side is None:
        data = await _blocking(request, storage.read_bytes, uri, records.options)
        ctype = mimetypes.guess_type(uri.rsplit("/", 1)[-1])[0] or "application/octet-stream"
        if not ctype.startswith("image/") or ctype == "image/svg+xml":
            ctype = "application/octet-stream"
        return web.Response(body=data, content_type=ctype, headers={"Cache-Control": "no-cache"})
    data, etag = await _blocking(request, request.app[THUMBS].get, uri, side)
    headers = {"ETag": f'"{etag}"', "Cache-Control": "no-cache"}
    if request.headers.get("If-None-Match") == f'"{etag}"':
        return web.Response(status=304, headers=headers)
    return web.Response(body=data, content_type="image/jpeg", headers=headers)


async def sample(request: web.Request) -> web.Response:
    records, image_id = request.app[RECORDS], _image_id(request)
    x, y = _point(request, "x"), _point(request, "y")

    def work():
        return request.app[PREVIEWER].sample(records.source(image_id)["uri"], records.output_uri(image_id), x, y)

    return web.json_response(await _blocking(request, work))


async def preview(request: web.Request) -> web.Response:
    records, image_id = request.app[RECORDS], _image_id(request)
    hints = parse_hints(await _json_body(request))
    source = await _blocking(request, records.source, image_id)
    data = await _blocking(request, request.app[PREVIEWER].preview, source["uri"], hints)
    return web.Response(body=data, content_type="image/jpeg", headers={"Cache-Control": "no-store"})


async def get_hints(request: web.Request) -> web.Response:
    records, image_id = request.app[RECORDS], _image_id(request)

    def read():
        records.require(image_id)
        row = records.saved_hints().get(image_id)
        return {"image_id": image_id, "hints": [] if row is None else row["hints"], "saved": row is not None}

    return web.json_response(await _blocking(request, read))


async def save_hints(request: web.Request) -> web.Response:
    records, image_id = request.app[RECORDS], _image_id(request)
    hints = parse_hints(await _json_body(request))
    row = await _blocking(request, records.save_hints, image_id, hints)
    command = await _blocking(request, records.rerender_command)
    return web.json_response({"saved": True, "image_id": image_id, "hints": len(row["hints"]),
                              "manifest": storage.redact_uri(records.hints_uri), "rerender": command})


async def gamut(request: web.Request) -> web.Response:
    try:
        lightness = float(request.query.get("l", "50"))
    except ValueError:
        raise BadRequest("give l as a number in [0, 100]") from None
    if not 0 <= lightness <= 100:
        raise BadRequest(f"l={lightness}: must be in [0, 100]")
    data = await _blocking(request, _gamut_cached, round(lightness))
    return web.Response(body=data, content_type="image/png", headers={"Cache-Control": "max-age=86400"})


@functools.lru_cache(maxsize=101)
def _gamut_cached(lightness: int) -> bytes:
    return gamut_png(float(lightness))


# --------------------------------------------------------------------------------------------- the app


def build_app(output: str, options: storage.StorageOptions | None = None, *, loopback: bool = True,
              workers: int | None = None, preview_max_side: int = PREVIEW_MAX_SIDE) -> web.Application:
    """The review app over the run at ``output``. Reads the run's settings now (UserError if it is not a
    run); the model is loaded in the background once the app starts, so the grid is up at once."""
    options = options or storage.StorageOptions.from_env()
    records = RunRecords(output, options)
    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY)
    app[RECORDS] = records
    app[PREVIEWER] = Previewer(records.settings, options, preview_max_side)
    app[THUMBS] = Thumbnails(records.output, options, records.settings.max_pixels)
    app[LOOPBACK] = loopback
    app[POOL] = ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 2) * 2),
                                   thread_name_prefix="colorize-review")

    async def warm_up(app: web.Application) -> None:
        asyncio.get_running_loop().run_in_executor(app[POOL], _quiet_model_load, app[PREVIEWER])

    async def shut_down(app: web.Application) -> None:
        app[POOL].shutdown(wait=False, cancel_futures=True)

    app.on_startup.append(warm_up)
    app.on_cleanup.append(shut_down)
    r = app.router
    r.add_get("/", index)
    r.add_static("/static/", str(STATIC), show_index=False, follow_symlinks=False)
    r.add_get("/api/run", run_info)
    r.add_get("/api/images", images)
    r.add_get(r"/api/image/{image_id:.+}/{kind:input|output}", image_file)
    r.add_get(r"/api/image/{image_id:.+}/sample", sample)
    r.add_post(r"/api/preview/{image_id:.+}", preview)
    r.add_get(r"/api/hints/{image_id:.+}", get_hints)
    r.add_post(r"/api/hints/{image_id:.+}", save_hints)
    r.add_get("/api/gamut", gamut)
    return app


def _quiet_model_load(previewer: Previewer) -> None:
    try:
        previewer.model()
    except PreviewUnavailable as exc:
        log.warning("previews are off: %s", exc)


def serve(output: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          options: storage.StorageOptions | None = None) -> None:
    """Serve until interrupted (Ctrl-C)."""
    loopback = is_loopback(host)
    app = build_app(output, options, loopback=loopback)
    if not loopback:
        log.warning("serving on %s: anyone who can reach it can read the run and write its review hints", host)
    print(f"reviewing {storage.redact_uri(output)} at http://{host if ':' not in host else f'[{host}]'}:{port}/ "
          f"(Ctrl-C to stop)", flush=True)
    web.run_app(app, host=host, port=port, print=None, access_log=None)
