"""Memory of the colorize job as the manifest grows: it should stay flat (streaming end to end).

Rows point at a few small source images (object reads are what matter, not their content), with a tiny
random `unet` checkpoint so the run measures the pipeline, not the model. For each manifest size it runs
the job on a fresh local Ray cluster and samples, every 0.25 s, the driver's RSS and the summed RSS of all
processes the driver started (the local Ray cluster), read from /proc.

    python bench/memory.py --rows 1000,10000,100000

Prints a table; not a test.
"""

from __future__ import annotations

import argparse
import os
import resource
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


def descendants_rss_mib(root: int) -> float:
    """Summed private (anonymous) RSS of every process below ``root``: the local Ray cluster that
    ray.init started (GCS, raylet, workers) and nothing else on the machine. Shared memory (the
    object store, bounded by --object-store-mib) is left out: every worker maps it, and its touched
    pages grow towards that bound whatever the manifest size."""
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
    total, todo = 0, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        total += _rss_kib(str(pid), "RssAnon")
        todo += children.get(pid, [])
    return total / 1024


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1000,10000,100000")
    ap.add_argument("--shard-rows", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--object-store-mib", type=int, default=1024)
    args = ap.parse_args()

    import ray
    from ray.data import DataContext

    from colorize_core.config import ColorizeConfig
    from jobs.colorize import run
    from tests.jobkit import colour_images, tiny_checkpoint

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "src").mkdir()
        sources = []
        for i, payload in enumerate(colour_images(8, size=(64, 48))):
            p = tmp / "src" / f"s{i}.jpg"
            p.write_bytes(payload)
            sources.append(str(p))
        model = tiny_checkpoint(str(tmp / "ckpt"))
        for n in (int(v) for v in args.rows.split(",")):
            manifest = tmp / f"m{n}.parquet"
            pq.write_table(pa.table({"image_id": [f"img{i:07d}" for i in range(n)],
                                     "uri": [sources[i % len(sources)] for i in range(n)]}), manifest)
            ray.init(address="local", include_dashboard=False, logging_level="WARNING",
                     object_store_memory=args.object_store_mib * 1024**2)
            DataContext.get_current().enable_progress_bars = False
            sampler = Sampler()
            sampler.start()
            cfg = ColorizeConfig(manifest=str(manifest), output=str(tmp / f"out{n}"), model=model,
                                 shard_rows=args.shard_rows, cpu={"batch_size": args.batch_size},
                                 inference={"batch_size": args.batch_size})
            t0 = time.perf_counter()
            summary = run(cfg, progress=False)
            wall = time.perf_counter() - t0
            sampler.stop.set()
            sampler.join()
            ray.shutdown()
            results.append((n, wall, summary["counts"]["ok"], sampler.peak_driver, sampler.peak_ray))
            print(f"rows {n}: done in {wall:.1f} s", flush=True)

    print()
    print(f"{'rows':>8s} {'ok':>8s} {'wall s':>8s} {'img/s':>8s} {'driver peak MiB':>16s} {'ray private peak MiB':>21s}")
    for n, wall, ok, drv, rss in results:
        print(f"{n:8d} {ok:8d} {wall:8.1f} {n / wall:8.1f} {drv:16.0f} {rss:21.0f}")
    print(f"(object store capped at {args.object_store_mib} MiB; driver ru_maxrss over the whole run: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
