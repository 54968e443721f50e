"""Memory of the colorize job as the manifest grows: it should stay flat (streaming end to end).

Rows point at a few small source images (object reads are what matter, not their content), with a tiny
random `unet` checkpoint so the run measures the pipeline, not the model. Each manifest size runs in a fresh
driver process with a fresh local Ray cluster, sampling every 0.25 s the driver's RSS and the summed private
RSS of the processes it started (the Ray cluster), read from /proc.

    python bench/memory.py --rows 1000,10000,100000

Prints a table; not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_kib(pid: str, field: str = "VmRSS") -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (children, their children, ...), read from /proc."""
    children: dict[int, list[int]] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(pid))
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def descendants_rss_mib(root: int) -> float:
    """Summed private (anonymous) RSS of every process below ``root``: the local Ray cluster that
    ray.init started (GCS, raylet, workers) and nothing else on the machine. Shared memory (the
    object store, bounded by --object-store-mib) is left out: every worker maps it, and its touched
    pages grow towards that bound whatever the manifest size."""
    return sum(_rss_kib(str(pid), "RssAnon") for pid in descendants(root)) / 1024


class Sampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak_ray = 0.0
        self.peak_driver = 0.0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak_ray = max(self.peak_ray, descendants_rss_mib(os.getpid()))
            self.peak_driver = max(self.peak_driver, _rss_kib(str(os.getpid())) / 1024)
            time.sleep(0.25)


def measure(n: int, workdir: Path, args) -> dict:
    """One manifest size, in this (fresh) process: the driver's peak RSS is its own."""
    import ray
    from ray.data import DataContext

    from colorize_core.config import ColorizeConfig
    from jobs.colorize import run

    sources = sorted(str(p) for p in (workdir / "src").iterdir())
    manifest = workdir / f"m{n}.parquet"
    pq.write_table(pa.table({"image_id": [f"img{i:07d}" for i in range(n)],
                             "uri": [sources[i % len(sources)] for i in range(n)]}), manifest)
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # the table, not Ray's C++ start-up chatter
    ray.init(address="local", include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             object_store_memory=args.object_store_mib * 1024**2)
    DataContext.get_current().enable_progress_bars = False
    sampler = Sampler()
    sampler.start()
    cfg = ColorizeConfig(manifest=str(manifest), output=str(workdir / f"out{n}"), model=str(workdir / "ckpt"),
                         shard_rows=args.shard_rows, shards_per_dataset=args.shards_per_dataset,
                         cpu={"batch_size": args.batch_size},
                         inference={"batch_size": args.batch_size})
    t0 = time.perf_counter()
    summary = run(cfg, progress=False)
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    ray.shutdown()
    return {"rows": n, "wall": wall, "ok": summary["counts"]["ok"], "driver": sampler.peak_driver,
            "ray": sampler.peak_ray}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1000,10000,100000")
    ap.add_argument("--shard-rows", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--object-store-mib", type=int, default=1024)
    ap.add_argument("--shards-per-dataset", type=int, default=200)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(measure(args.one, Path(args.workdir), args)), flush=True)
        return

    from tests.jobkit import colour_images, tiny_checkpoint

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "src").mkdir()
        for i, payload in enumerate(colour_images(8, size=(64, 48))):
            (tmp / "src" / f"s{i}.jpg").write_bytes(payload)
        tiny_checkpoint(str(tmp / "ckpt"))
        for n in (int(v) for v in args.rows.split(",")):
            cmd = [sys.executable, __file__, "--one", str(n), "--workdir", str(tmp), "--shard-rows",
                   str(args.shard_rows), "--batch-size", str(args.batch_size), "--object-store-mib",
                   str(args.object_store_mib), "--shards-per-dataset", str(args.shards_per_dataset)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
            results.append(result)
            print(f"rows {n}: done in {result['wall']:.1f} s", flush=True)

    print()
    print(f"{'rows':>8s} {'ok':>8s} {'wall s':>8s} {'img/s':>8s} {'driver peak MiB':>16s} {'ray private peak MiB':>21s}")
    for r in results:
        print(f"{r['rows']:8d} {r['ok']:8d} {r['wall']:8.1f} {r['rows'] / r['wall']:8.1f} {r['driver']:16.0f} "
              f"{r['ray']:21.0f}")
    print(f"(each size in a fresh driver process; object store capped at {args.object_store_mib} MiB; "
          f"shard_rows {args.shard_rows}, {args.shards_per_dataset} shards per dataset)")


if __name__ == "__main__":
    main()
