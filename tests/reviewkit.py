"""Builders shared by the review tests: a model that reads hints, a small real run, a served review app."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from colorize_core import imageio, storage
from colorize_core.config import ColorizeConfig
from colorize_core.models.checkpoint import save_checkpoint
from colorize_core.models.registry import get_entry
from colorize_core.schema import FIXITY_COLUMNS, METRICS_SCHEMA
from tests import jobkit

# The model every review test runs. Until the bundled model that takes hints lands, SIGGRAPH17's architecture
# with random weights at a small input size (its forward at 256 px takes seconds on a 2-core CPU); switching to
# the bundled one is this function returning its registry name.
GUIDED_INPUT_SIZE = (64, 64)


def guided_model(root: str, options=None) -> str:
    """A checkpoint directory of a model that reads hints (``accepts_hints``), deterministic."""
    from tests.test_models import SIGGRAPH17_LAYOUT, official_state_dict

    uri = storage.join(root, "guided-model")
    module = get_entry("siggraph17").builder().eval()
    # He-scaled random weights in the official layout: PyTorch's default init saturates the tanh head, and
    # hints would hardly change the output.
    module.load_state_dict(official_state_dict(SIGGRAPH17_LAYOUT, seed=17))
    save_checkpoint(uri, module, architecture="siggraph17", arguments={}, input_size=GUIDED_INPUT_SIZE,
                    storage_options=options, note="random init, for review tests")
    return uri


def run_inputs(prefix: str, options) -> list[dict]:
    """Manifest rows of a small run: colour and gray images, an id with '/' and a space, a gray scan with a
    colour reference, and a file that does not decode (an error row)."""
    colour = jobkit.colour_images(3, size=(96, 72))
    reference = jobkit.colour_images(1, size=(80, 60))[0]
    gray = np.repeat(np.asarray(imageio.decode_image(reference).rgb).mean(-1, keepdims=True).astype(np.uint8), 3, -1)
    images = {"c0.jpg": colour[0], "c1.png": colour[1], "c2.jpg": colour[2],
              "gray.png": imageio.encode_image(gray, "png"), "truth.jpg": reference,
              "broken.jpg": b"\xff\xd8\xff\xe0 this is not a JPEG"}
    uris = jobkit.put_images(storage.join(prefix, "in"), images, options)
    return [
        {"image_id": "box 1/p001", "uri": uris["c0.jpg"], "reference_uri": None},
        {"image_id": "box 1/p002", "uri": uris["c1.png"], "reference_uri": None},
        {"image_id": "caf\u00e9", "uri": uris["c2.jpg"], "reference_uri": None},
        {"image_id": "scan/with-reference", "uri": uris["gray.png"], "reference_uri": uris["truth.jpg"]},
        {"image_id": "broken", "uri": uris["broken.jpg"], "reference_uri": None},
    ]


def make_run(prefix: str, options, model: str, storage_config: dict | None = None) -> tuple[str, list[dict]]:
    """Run the colorize job (on the session's Ray cluster) over :func:`run_inputs`; returns (output, rows)."""
    from jobs import colorize as job

    rows = run_inputs(prefix, options)
    manifest = jobkit.write_manifest(storage.join(prefix, "manifest.parquet"), rows, options)
    output = storage.join(prefix, "run")
    cfg = ColorizeConfig(manifest=manifest, output=output, model=model, output_format="jpeg",
                         inference={"precision": "fp32"}, storage=storage_config or {})
    summary = job.run(cfg, progress=False)
    assert summary["counts"]["ok"] == len(rows) - 1 and summary["counts"]["error"] == 1, summary
    return output, rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Served:
    url: str
    app: object


@contextmanager
def serving(output: str, options, **kwargs) -> Iterator[Served]:
    """The review app over ``output`` on 127.0.0.1 in a thread of its own (its own event loop, as
    ``colorize review`` runs it)."""
    from aiohttp import web

    from colorize_core.review.server import build_app

    app = build_app(output, options, **kwargs)
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="review-server", daemon=True)
    thread.start()
    assert started.wait(30), "the review server did not start"
    try:
        yield Served(f"http://127.0.0.1:{port}", app)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def synthetic_run(root: Path, n: int, shards: int, model: str, weights_sha256: str | None = None,
                  uris: list[str] | None = None) -> str:
    """A run's records as the job writes them (config.json, run.json, metrics/<shard>.parquet, manifest),
    built directly: the table sizes the job would take minutes to make on this machine. Ids are
    ``box<k>/scan<i>``; ``uris`` (default: files that do not exist) are the manifest's sources."""
    rng = np.random.default_rng(0)
    output = root / "run"
    (output / "metrics").mkdir(parents=True)
    (output / "_state").mkdir()
    ids = [f"box{i // 1000:03d}/scan{i:06d}" for i in range(n)]
    status = np.where(rng.random(n) < 0.02, "error", "ok")
    psnr = np.where(status == "ok", rng.normal(23, 3, n), np.nan)
    columns = {"image_id": ids, "status": status.tolist(),
               "error": [None if s == "ok" else "corrupt image data" for s in status], "model": ["m"] * n,
               "width": rng.integers(500, 4000, n), "height": rng.integers(500, 4000, n),
               "psnr": [None if np.isnan(v) else float(v) for v in psnr], "ssim": rng.random(n),
               "rmse": rng.random(n) * 30, "colorfulness": rng.random(n) * 50, "deltae2000": rng.random(n) * 20,
               "seconds": rng.random(n), "metrics_against": ["input"] * n,
               **{c: [None] * n for c in FIXITY_COLUMNS}}
    table = pa.table(columns, schema=METRICS_SCHEMA)
    step = -(-n // shards)
    for s in range(shards):
        pq.write_table(table.slice(s * step, step), output / "metrics" / f"m-{s:07d}.parquet")
    uris = uris or [f"/nonexistent/{i}.jpg" for i in ids]
    pq.write_table(pa.table({"image_id": ids, "uri": uris}), root / "m.parquet")
    (output / "config.json").write_text(json.dumps({"manifest": str(root / "m.parquet"), "output": str(output),
                                                    "model": model, "output_format": "jpeg"}))
    (output / "_state" / "run.json").write_text(json.dumps({"model": model, "weights_sha256": weights_sha256}))
    return str(output)


def start_review(output: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """``colorize review`` in a process of its own; returns it and its URL once /api/run answers."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "colorize_core.cli", "review", "--output", output,
                             "--port", str(port)], cwd=Path(__file__).resolve().parents[1], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "/api/run", timeout=30) as res:
                if res.status == 200:
                    return proc, url
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"colorize review did not start: {proc.stdout.read().decode()[-2000:]}")
        time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
