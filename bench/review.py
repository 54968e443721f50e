"""Review page timings: the first page of the grid as a run grows, and preview latency per model.

    python bench/review.py [--rows 10,10000,100000] [--previews 10] [--models effnet_guided,siggraph17]
                           [--image-size 2400x1800]

Runs are built directly (config.json, run.json, metrics/ in 1000-row shards, a manifest), as the job writes
them. The first page is ``GET /api/images?sort=psnr&order=desc&limit=48`` through the HTTP server: cold (a
new server, the metrics read from disk) and the median of 10 warm calls. A preview is ``POST
/api/preview/<id>`` with 3 hints on one gray JPEG scan of ``--image-size``: the first call (fetch and
reduced decode of the scan, then the render) and the median of ``--previews`` calls after it; the model's
batch-1 forward alone at its input size is timed in the same process for comparison. ``siggraph17`` runs
random weights in the official layout (same shapes and cost as the released ones, which need a download).
Prints tables; not a test.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HINTS = {"hints": [{"x": 0.3, "y": 0.3, "a": 40.0, "b": 30.0}, {"x": 0.7, "y": 0.6, "a": -30.0, "b": 20.0},
                   {"x": 0.5, "y": 0.9, "a": 10.0, "b": -40.0}]}


def _get(url: str, body: dict | None = None) -> float:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as res:
        res.read()
        assert res.status == 200
    return time.perf_counter() - t0


def first_page(rows: int, root: Path, model: str) -> tuple[float, float]:
    from colorize_core import storage
    from tests.reviewkit import serving, synthetic_run

    output = synthetic_run(root / f"rows{rows}", rows, max(1, rows // 1000), model)
    with serving(output, storage.StorageOptions.from_env()) as srv:
        url = srv.url + "/api/images?sort=psnr&order=desc&limit=48"
        cold = _get(url)
        warm = statistics.median(_get(url) for _ in range(10))
    return cold, warm


def _model(name: str, root: Path) -> str:
    """A model spec the review can load offline: siggraph17 as a checkpoint of official-layout random
    weights at 256 px, registry models with bundled weights as they are."""
    if name != "siggraph17":
        return name
    from colorize_core.models.checkpoint import save_checkpoint
    from colorize_core.models.registry import get_entry
    from tests.test_models import SIGGRAPH17_LAYOUT, official_state_dict

    module = get_entry("siggraph17").builder().eval()
    module.load_state_dict(official_state_dict(SIGGRAPH17_LAYOUT))
    return save_checkpoint(str(root / "siggraph17-random"), module, architecture="siggraph17", arguments={},
                           input_size=(256, 256))


def preview_latency(name: str, root: Path, scan: str, n: int) -> dict:
    from colorize_core import storage
    from colorize_core.models import load_model
    from tests.reviewkit import serving, synthetic_run

    model = _model(name, root)
    output = synthetic_run(root / f"preview-{name}", 1, 1, model, uris=[scan])
    module, info = load_model(model)
    x = torch.full((1, 1, *info.input_size), 50.0)
    extra = (torch.zeros(1, 2, *info.input_size), torch.zeros(1, 1, *info.input_size)) if info.accepts_hints else ()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a loaded machine, 2 OpenMP threads on 2 busy cores take 10-20x longer
    with torch.inference_mode():
        module(x, *extra)
        forward = []
        for _ in range(n):
            t0 = time.perf_counter()
            module(x, *extra)
            forward.append(time.perf_counter() - t0)
    torch.set_num_threads(threads)
    del module
    with serving(output, storage.StorageOptions.from_env()) as srv:
        _get(srv.url + "/api/run")  # waits for the model
        url = srv.url + "/api/preview/" + urllib.request.quote("box000/scan000000", safe="")
        first = _get(url, HINTS)
        times = [_get(url, HINTS) for _ in range(n)]
    return {"model": name, "input": f"{info.input_size[0]}x{info.input_size[1]}", "hints": info.accepts_hints,
            "first": first, "median": statistics.median(times), "min": min(times),
            "forward": statistics.median(forward)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="10,10000,100000")
    p.add_argument("--previews", type=int, default=10)
    from colorize_core.models.registry import DEFAULT_MODEL

    p.add_argument("--models", default=f"{DEFAULT_MODEL},siggraph17", help="the default model (reads hints) first")
    p.add_argument("--image-size", default="2400x1800")
    args = p.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        from tests.jobkit import tiny_checkpoint

        tiny = tiny_checkpoint(str(root / "tiny"))
        print("\n| rows | first page, cold ms | warm, median of 10 ms |\n|---|---|---|")
        for rows in (int(r) for r in args.rows.split(",")):
            cold, warm = first_page(rows, root, tiny)
            print(f"| {rows:,} | {cold * 1000:.1f} | {warm * 1000:.1f} |", flush=True)

        w, h = (int(v) for v in args.image_size.split("x"))
        from skimage import data

        gray = Image.fromarray(data.camera()).resize((w, h), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        gray.save(buf, "JPEG", quality=90)
        scan = root / "scan.jpg"
        scan.write_bytes(buf.getvalue())
        print(f"\npreview of a {w}x{h} gray JPEG with 3 hints, composed at <= 1024 px, median of {args.previews}"
              "\n\n| model | input | reads hints | first preview ms | preview median ms | min ms | forward alone, one "
              "thread, ms |\n|---|---|---|---|---|---|---|")
        for name in args.models.split(","):
            r = preview_latency(name, root, str(scan), args.previews)
            print(f"| {r['model']} | {r['input']} | {'yes' if r['hints'] else 'no'} | {r['first'] * 1000:.0f} | "
                  f"{r['median'] * 1000:.0f} | {r['min'] * 1000:.0f} | {r['forward'] * 1000:.0f} |", flush=True)


if __name__ == "__main__":
    main()
