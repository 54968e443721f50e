"""Throughput of the Ray Data job against a naive per-image loop, same images, same model, one run.

The naive loop is what single-image colorization scripts do: decode, float64 Lab with scikit-image,
batch-1 float32 forward, compose with float64 lab2rgb, save. The job is `jobs.colorize.run` on a local
Ray cluster (its start-up is timed separately).

    python bench/throughput.py --images 64 --size 1024x768 --model compact
    python bench/throughput.py --model eccv16 --random-weights     # speed only; weights do not matter

Prints a table; not a test.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from skimage import color as skcolor
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from colorize_core.models import create_model, load_model  # noqa: E402


def make_images(folder: Path, n: int, size: tuple[int, int]) -> list[Path]:
    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        src = sources[i % len(sources)]
        img = Image.fromarray(src).resize(size, Image.BICUBIC).convert("L")  # archive scans are gray
        p = folder / f"img{i:04d}.jpg"
        img.save(p, quality=90)
        paths.append(p)
    return paths


def naive_loop(paths: list[Path], module: torch.nn.Module, input_size: tuple[int, int], out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for p in paths:
        rgb = np.asarray(Image.open(p).convert("RGB"))
        lab = skcolor.rgb2lab(rgb)  # float64, full resolution
        small = np.asarray(Image.fromarray(rgb).resize(input_size[::-1], Image.BICUBIC))
        l_small = skcolor.rgb2lab(small)[..., 0]
        with torch.no_grad():
            ab = module(torch.from_numpy(l_small).float()[None, None])
            ab = torch.nn.functional.interpolate(ab, size=rgb.shape[:2], mode="bilinear")[0]
        lab_out = np.concatenate([lab[..., :1], ab.permute(1, 2, 0).numpy().astype(np.float64)], axis=-1)
        rgb_out = (np.clip(skcolor.lab2rgb(lab_out), 0, 1) * 255).astype(np.uint8)
        Image.fromarray(rgb_out).save(out / p.name, quality=95)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", default="1024x768", help="WxH of the generated test images")
    ap.add_argument("--model", default="compact")
    ap.add_argument("--weights")
    ap.add_argument("--random-weights", action="store_true", help="random init (throughput only)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count())
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))

    import ray

    from colorize_core.config import ColorizeConfig
    from jobs.colorize import run

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_images(tmp / "in", args.images, (w, h))
        weights = args.weights
        if args.random_weights:
            weights = str(tmp / "random.pth")
            torch.save(create_model(args.model).state_dict(), weights)
        module, info = load_model(args.model, weights)
        manifest = tmp / "manifest.parquet"
        pq.write_table(pa.table({"image_id": [p.stem for p in paths], "uri": [str(p) for p in paths]}), manifest)

        naive_s = naive_loop(paths, module, info.input_size, tmp / "naive")

        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, logging_level="WARNING")
        ray_start = time.perf_counter() - t0
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
        cfg = ColorizeConfig(manifest=str(manifest), output=str(tmp / "job"), model=args.model, weights=weights,
                             inference={"batch_size": args.batch_size, "precision": args.precision})
        t0 = time.perf_counter()
        summary = run(cfg, progress=False)
        job_s = time.perf_counter() - t0
        ray.shutdown()

    n = args.images
    print()
    print(f"model {info.name} ({info.num_params:,} params, input {info.input_size[0]}x{info.input_size[1]}), "
          f"{n} gray JPEGs {w}x{h}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'method':44s} {'images':>7s} {'wall s':>8s} {'img/s':>8s} {'speed-up':>9s}")
    rows = [("naive loop (float64 Lab, batch 1, fp32)", naive_s),
            (f"ray data job (batch {args.batch_size}, precision {args.precision})", job_s)]
    for name, secs in rows:
        print(f"{name:44s} {n:7d} {secs:8.2f} {n / secs:8.2f} {naive_s / secs:8.2f}x")
    print(f"(ray.init took {ray_start:.1f} s, not counted; job counts ok={summary['counts']['ok']} "
          f"error={summary['counts']['error']})")


if __name__ == "__main__":
    main()
