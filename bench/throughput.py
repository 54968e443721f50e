"""Throughput of the colorize job against the per-image loop and the model's own forward, one run.

Inputs are archive-like grayscale JPEGs of 0.25 to 3.75 megapixels (5 size classes, equally many of
each, 1.7 MP mean; photos with film grain, quality 85), the same images and weights for every column.
For each model (``compact`` with its bundled weights; ``eccv16`` and ``siggraph17`` on random weights
of the released shapes: speed does not depend on the values) it prints:

* loop img/s: what single-image scripts do: PIL decode, float64 scikit-image Lab at full resolution,
  batch-1 fp32 forward, ``lab2rgb``, JPEG save (torch with all cores);
* forward img/s: the model alone, batch 8, all cores, at the precision the job picks;
* job img/s, steady state: ``jobs.colorize.run`` on N rows and on 4N rows in one Ray session, after an
  untimed warm-up run (the first dataset of a session also starts the worker processes);
  (4N - N) / (t(4N) - t(N)), so the per-run start-up cancels;
* job/loop, job/forward, fidelity (the job's written files against the loop's uint8 output: min PSNR);
* CPU ms per megapixel of each CPU stage, one core, in this process (``time.process_time``);
* peak memory of the driver plus every Ray process (private RSS, sampled every 0.25 s).

    python bench/throughput.py                  # full: 20 images, N = 20 rows
    python bench/throughput.py --quick          # < 10 min on 2 cores: 10 images, N = 10, two models
    python bench/throughput.py --models compact --images 40

Prints the CPU model and which of AVX2 / AVX-512 / AVX512-BF16 / AMX it has (read from /proc/cpuinfo,
never assumed) and whether torch reports native bf16. Prints a table; not a test.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
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

from bench.memory import Sampler  # noqa: E402
from colorize_core import archival, imageio, metrics, render, storage  # noqa: E402
from colorize_core.models import create_model, load_model  # noqa: E402
from colorize_core.stages import InferenceStage, cpu_supports_bf16  # noqa: E402

SIZE_CLASSES_MP = (0.25, 0.75, 1.5, 2.25, 3.75)  # mean 1.7 MP


# --------------------------------------------------------------------------- inputs and machine


def cpu_description() -> str:
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model in ("unknown CPU", "x86_64", ""):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    have = [name for name, flag in (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AVX512-BF16", "avx512_bf16"),
                                    ("AMX-BF16", "amx_bf16")) if flag in flags]
    return (f"{model}, {os.cpu_count()} CPUs; ISA: {', '.join(have) or 'none of AVX2/AVX-512/AMX'}; "
            f"torch native bf16: {'yes' if cpu_supports_bf16() else 'no'}; torch {torch.__version__}")


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """Gray JPEGs cycling through the size classes, portrait and landscape, with film grain."""
    rng = np.random.default_rng(seed)
    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.camera()]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        mp = SIZE_CLASSES_MP[i % len(SIZE_CLASSES_MP)]
        w, h = round((mp * 1e6 * 4 / 3) ** 0.5), round((mp * 1e6 * 3 / 4) ** 0.5)
        if i % 2:
            w, h = h, w
        src = sources[i % len(sources)]
        gray = np.asarray(Image.fromarray(src).convert("L").resize((w, h), Image.BICUBIC), np.float32)
        gray = np.clip(gray + rng.normal(0, 4, gray.shape), 0, 255).astype(np.uint8)
        p = folder / f"img{i:04d}.jpg"
        Image.fromarray(gray).save(p, quality=85)
        paths.append(p)
    return paths


# --------------------------------------------------------------------------- the three columns


def loop_one(path: Path, module: torch.nn.Module, input_size: tuple[int, int], out: Path) -> np.ndarray:
    rgb = np.asarray(Image.open(path).convert("RGB"))
    lab = skcolor.rgb2lab(rgb)  # float64, full resolution
    small = np.asarray(Image.fromarray(rgb).resize(input_size[::-1], Image.BICUBIC))
    l_small = skcolor.rgb2lab(small)[..., 0]
    with torch.no_grad():
        ab = module(torch.from_numpy(l_small).float()[None, None])
        ab = torch.nn.functional.interpolate(ab, size=rgb.shape[:2], mode="bilinear", align_corners=False)[0]
    lab_out = np.concatenate([lab[..., :1], ab.permute(1, 2, 0).numpy().astype(np.float64)], axis=-1)
    rgb_out = np.rint(np.clip(skcolor.lab2rgb(lab_out), 0, 1) * 255).astype(np.uint8)
    Image.fromarray(rgb_out).save(out / path.name, quality=95)
    return rgb_out


def per_image_loop(paths, module, input_size, out: Path) -> tuple[float, dict[str, np.ndarray]]:
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count())
    loop_one(paths[0], module, input_size, out)  # warm-up
    t0 = time.perf_counter()
    outputs = {p.stem: loop_one(p, module, input_size, out) for p in paths}
    return len(paths) / (time.perf_counter() - t0), outputs


def forward_only(model: str, weights: str, input_size: tuple[int, int], batches: int) -> tuple[float, str]:
    """Batch 8, all cores, at the precision the job's inference stage picks on this machine."""
    stage = InferenceStage(model, weights, threads=os.cpu_count(), batch_size=8)
    stage.setup()
    x = torch.rand(8, 1, *input_size) * 100
    stage._forward(x, None, None, stage.active_precision)  # warm-up
    t0 = time.perf_counter()
    for _ in range(batches):
        stage._forward(x, None, None, stage.active_precision)
    return 8 * batches / (time.perf_counter() - t0), stage.active_precision


def job_run(manifest: Path, output: Path, model: str, weights: str, args) -> tuple[float, dict]:
    from colorize_core.config import ColorizeConfig
    from jobs.colorize import run

    cfg = ColorizeConfig(manifest=str(manifest), output=str(output), model=model, weights=weights,
                         shard_rows=args.shard_rows, inference={"batch_size": args.batch_size},
                         cpu={"batch_size": args.cpu_batch_size})
    t0 = time.perf_counter()
    summary = run(cfg, progress=False)
    return time.perf_counter() - t0, summary


def write_manifest(path: Path, paths: list[Path], rows: int) -> Path:
    ids = [f"r{i:06d}_{paths[i % len(paths)].stem}" for i in range(rows)]
    uris = [str(paths[i % len(paths)]) for i in range(rows)]
    pq.write_table(pa.table({"image_id": ids, "uri": uris}), path)
    return path


# --------------------------------------------------------------------------- per-stage CPU cost


def stage_costs(paths, module, pre, out: Path) -> dict[str, float]:
    """CPU ms per megapixel of each CPU stage on one core (torch single-threaded, like a Ray CPU task), on the
    job's own path (colorize_core.render) with the weights' preprocessing ``pre``."""
    torch.set_num_threads(1)
    options = storage.StorageOptions()
    totals = dict.fromkeys(("decode/L (reduced)", "full decode", "compose", "encode+write+read-back", "score"),
                           0.0)
    mp = 0.0
    for p in paths:
        clock = time.process_time()
        data_bytes = storage.read_bytes(str(p), options)
        small, geometry = render.decode_reduced(data_bytes, pre.input_size, imageio.DEFAULT_MAX_PIXELS)
        l_model = pre.model_l(small)
        t1 = time.process_time()
        source = imageio.decode_image(storage.read_bytes(str(p), options))
        t2 = time.process_time()
        with torch.no_grad():
            ab = module(torch.from_numpy(l_model)[None, None])[0].numpy()
        t3 = time.process_time()
        rgb = render.compose(source.rgb, ab, pre, is_gray=source.is_gray)
        t4 = time.process_time()
        record = archival.derivation(p.name, data_bytes, type(module).__name__, None, source.source_format)
        finished = archival.write_output(rgb, str(out / p.name), archival.OutputSettings("jpeg"), record,
                                         source=data_bytes, options=options, root=str(out))
        result = imageio.decode_image(finished.data).rgb if not source.is_gray else rgb
        t5 = time.process_time()
        metrics.compute_metrics(result, None)
        t6 = time.process_time()
        for key, secs in zip(totals, (t1 - clock, t2 - t1, t4 - t3, t5 - t4, t6 - t5)):
            totals[key] += 1000 * secs
        mp += geometry[0] * geometry[1] / 1e6
    costs = {k: v / mp for k, v in totals.items()}
    costs["all CPU stages"] = sum(costs.values())
    return costs


# --------------------------------------------------------------------------- main


def bench_model(name: str, paths: list[Path], tmp: Path, args) -> dict:
    import ray

    weights = None
    if name != "compact":
        weights = str(tmp / f"{name}-random.pth")
        torch.manual_seed(0)
        torch.save(create_model(name).state_dict(), weights)
    module, info = load_model(name, weights)
    module.eval()
    size = info.input_size
    loop_ips, loop_out = per_image_loop(paths[: args.loop_images], module, size, tmp / f"loop-{name}")
    forward_ips, precision = forward_only(name, weights, size, args.forward_batches)
    costs = stage_costs(paths, module, info.preprocessing, tmp / f"stages-{name}")

    sampler = Sampler()
    sampler.start()
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # the table, not Ray's C++ start-up chatter
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING",
             log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    try:
        n = args.rows
        small = write_manifest(tmp / f"{name}-small.parquet", paths, n)
        large = write_manifest(tmp / f"{name}-large.parquet", paths, args.factor * n)
        job_run(small, tmp / f"job-{name}-warm", name, weights, args)  # worker processes and imports, once
        t_small, _ = job_run(small, tmp / f"job-{name}-small", name, weights, args)
        t_large, summary = job_run(large, tmp / f"job-{name}-large", name, weights, args)
    finally:
        ray.shutdown()
        sampler.stop.set()
    job_ips = (args.factor - 1) * n / max(t_large - t_small, 1e-9)
    psnrs = []
    for i, p in enumerate(paths[: args.loop_images]):  # row i of the short run is image i
        written = tmp / f"job-{name}-small" / "images" / f"r{i:06d}_{p.stem}.jpg"
        psnrs.append(metrics.psnr(imageio.decode_image(written.read_bytes()).rgb, loop_out[p.stem]))
    return {"model": name, "loop": loop_ips, "forward": forward_ips, "precision": precision, "job": job_ips,
            "fidelity": min(psnrs), "costs": costs, "peak_mib": sampler.peak_ray + sampler.peak_driver,
            "errors": summary["counts"]["error"], "t_small": t_small, "t_large": t_large}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="compact,eccv16,siggraph17")
    ap.add_argument("--images", type=int, default=20, help="distinct images (cycled through the size classes)")
    ap.add_argument("--rows", type=int, default=20, help="N: rows of the short job run (the long one has 4N)")
    ap.add_argument("--factor", type=int, default=4)
    ap.add_argument("--loop-images", dest="loop_images", type=int, default=10)
    ap.add_argument("--forward-batches", dest="forward_batches", type=int, default=4)
    ap.add_argument("--batch-size", dest="batch_size", type=int, default=8, help="inference batch size")
    ap.add_argument("--cpu-batch-size", dest="cpu_batch_size", type=int, default=4)
    ap.add_argument("--shard-rows", dest="shard_rows", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="10 images, N=10, compact and eccv16 (< 10 min, 2 cores)")
    args = ap.parse_args()
    if args.quick:
        args.images, args.rows, args.loop_images, args.forward_batches = 10, 10, 5, 2
        args.models = "compact,eccv16" if args.models == ap.get_default("models") else args.models
    print(cpu_description(), flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_images(tmp / "in", args.images)
        mean_mp = np.mean([np.prod(Image.open(p).size) for p in paths]) / 1e6
        print(f"{len(paths)} gray JPEGs, {min(SIZE_CLASSES_MP)}-{max(SIZE_CLASSES_MP)} MP, mean {mean_mp:.2f} MP; "
              f"job: N={args.rows} and {args.factor}N rows, inference batch {args.batch_size}, CPU batch "
              f"{args.cpu_batch_size}", flush=True)
        for name in args.models.split(","):
            results.append(bench_model(name, paths, tmp, args))
            r = results[-1]
            print(f"  {name}: loop {r['loop']:.2f} img/s, forward {r['forward']:.2f} img/s ({r['precision']}), job "
                  f"{r['job']:.2f} img/s (runs {r['t_small']:.1f} s / {r['t_large']:.1f} s, errors {r['errors']}), "
                  f"fidelity {r['fidelity']:.1f} dB; CPU ms/MP: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in r["costs"].items()), flush=True)
    print()
    print("| model | loop img/s | forward img/s (batch 8, all cores) | job img/s | job / loop | job / forward "
          "| fidelity (min PSNR vs loop) | peak memory |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| `{r['model']}` | {r['loop']:.2f} | {r['forward']:.2f} ({r['precision']}) | {r['job']:.2f} | "
              f"{r['job'] / r['loop']:.2f}x | {r['job'] / r['forward']:.2f} | {r['fidelity']:.1f} dB | "
              f"{r['peak_mib']:.0f} MiB |")
    print()
    stages = list(results[0]["costs"])
    print("| CPU ms per MP, one core | " + " | ".join(stages) + " |")
    print("|---|" + "---|" * len(stages))
    for r in results[:1]:  # the CPU stages do not depend on the model
        print(f"| measured with `{r['model']}` | " + " | ".join(f"{r['costs'][s]:.1f}" for s in stages) + " |")


if __name__ == "__main__":
    main()
