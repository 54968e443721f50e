"""Cost per megapixel of the colorize job against its floor, per model, in one run.

Inputs are archive-like grayscale JPEGs of 0.25 to 3.75 megapixels (5 size classes, equally many of
each, 1.7 MP mean; photos with film grain, quality 85), the same images for every model (``compact`` and
``effnet_unet`` with their bundled weights; ``eccv16`` and ``siggraph17`` on random weights of the released
shapes: speed does not depend on the values). For each model it prints:

* **floor**: what no colorizer can skip, in img/s on all cores: the model's batched forward (batch 8, all
  cores, at the precision the job picks) plus, per image on one core, one full-resolution decode of the
  source (Pillow, one channel) and one encode of the colour result as JPEG q95 4:4:4;
* **job** img/s, steady state: ``jobs.colorize.run`` on N rows and on 5N rows in one Ray session, after an
  untimed warm-up run (the first dataset of a session starts the worker processes):
  (5N - N) / (t(5N) - t(N)), so the per-run start-up cancels; one column per ``--layouts`` entry
  (``inference.layout``: fused, split, auto);
* **job / floor** and **core-ms per MP** (cores x wall / megapixels) of the floor and the job;
* fidelity: the job's written files against the float64 per-image loop (scikit-image Lab at full
  resolution, ``lab2rgb``), min PSNR over ``--loop-images`` images (the bound is 40 dB);
* CPU ms per megapixel of each step of the job's path on one core, in this process (``time.process_time``);
* peak memory of the driver plus every Ray process (private RSS, sampled every 0.25 s).

    python bench/throughput.py                       # compact, eccv16, effnet_unet, siggraph17; N = 40
    python bench/throughput.py --quick               # smoke run: 6 images, N = 4, compact and eccv16
    python bench/throughput.py --models compact --layouts fused,split

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
from colorize_core import imageio, metrics, render, storage  # noqa: E402
from colorize_core.models import create_model, load_model  # noqa: E402
from colorize_core.stages import COLORFULNESS_STEP, InferenceStage, cpu_supports_bf16  # noqa: E402

SIZE_CLASSES_MP = (0.25, 0.75, 1.5, 2.25, 3.75)  # mean 1.7 MP
BUNDLED = ("compact", "effnet_unet")  # the others run on random weights of the released shapes


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
    return (f"{model}, {cores()} CPUs; ISA: {', '.join(have) or 'none of AVX2/AVX-512/AMX'}; "
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


def per_image_loop(paths, module, input_size, out: Path) -> dict[str, np.ndarray]:
    """The float64 reference outputs (fidelity only: not timed)."""
    out.mkdir(parents=True, exist_ok=True)
    return {p.stem: loop_one(p, module, input_size, out) for p in paths}


def forward_only(model: str, weights: str | None, input_size: tuple[int, int], batches: int) -> tuple[float, str]:
    """Seconds of wall time per image of the batched forward (batch 8, all cores), at the precision the job's
    inference stage picks on this machine."""
    stage = InferenceStage(model, weights, threads=cores(), batch_size=8)
    stage.setup()
    x = torch.rand(8, 1, *input_size) * 100
    stage._forward(x, None, None, stage.active_precision)  # warm-up
    t0 = time.perf_counter()
    for _ in range(batches):
        stage._forward(x, None, None, stage.active_precision)
    return (time.perf_counter() - t0) / (8 * batches), stage.active_precision


def job_run(manifest: Path, output: Path, model: str, weights: str | None, args,
            layout: str = "auto") -> tuple[float, dict]:
    from colorize_core.config import ColorizeConfig
    from jobs.colorize import run

    cfg = ColorizeConfig(manifest=str(manifest), output=str(output), model=model, weights=weights,
                         shard_rows=args.shard_rows, inference={"batch_size": args.batch_size, "layout": layout},
                         cpu={"batch_size": args.cpu_batch_size})
    t0 = time.perf_counter()
    summary = run(cfg, progress=False)
    return time.perf_counter() - t0, summary


def write_manifest(path: Path, paths: list[Path], rows: int) -> Path:
    ids = [f"r{i:06d}_{paths[i % len(paths)].stem}" for i in range(rows)]
    uris = [str(paths[i % len(paths)]) for i in range(rows)]
    pq.write_table(pa.table({"image_id": ids, "uri": uris}), path)
    return path


# --------------------------------------------------------------------------- the floor and the job's steps


STEPS = ("decode/L (reduced)", "full decode", "compose", "encode+write", "score")


def step_costs(paths, module, pre, out: Path) -> tuple[dict[str, float], float]:
    """(CPU ms per megapixel of each step of the job's path on one core, torch single-threaded as in a fused
    actor; the floor's decode + encode in ms per megapixel): the full decode is also the floor's, the encode
    alone is timed separately from the write."""
    torch.set_num_threads(1)
    options = storage.StorageOptions()
    totals = dict.fromkeys(STEPS, 0.0)
    encode_ms = mp = 0.0
    for p in paths:
        clock = time.process_time()
        data_bytes = storage.read_bytes(str(p), options)
        small, geometry = render.decode_reduced(data_bytes, pre.input_size, imageio.DEFAULT_MAX_PIXELS)
        l_model = pre.model_l(small)
        t1 = time.process_time()
        source = imageio.decode_image(data_bytes)
        t2 = time.process_time()
        with torch.no_grad():
            ab = module(torch.from_numpy(l_model)[None, None])[0].numpy()
        t3 = time.process_time()
        rgb = render.compose(source.pixels, ab, pre, is_gray=source.is_gray)
        t4 = time.process_time()
        storage.write_output(str(out / p.name), imageio.encode_image(rgb, "jpeg", quality=95), options, root=str(out))
        t5 = time.process_time()
        metrics.compute_metrics(rgb, None, COLORFULNESS_STEP)
        t6 = time.process_time()
        contiguous = np.ascontiguousarray(rgb)
        t7 = time.process_time()
        imageio.encode_image(contiguous, "jpeg", quality=95)  # the floor's encode: from plain [H, W, 3]
        encode_ms += 1000 * (time.process_time() - t7)
        for key, secs in zip(totals, (t1 - clock, t2 - t1, t4 - t3, t5 - t4, t6 - t5)):
            totals[key] += 1000 * secs
        mp += geometry[0] * geometry[1] / 1e6
    costs = {k: v / mp for k, v in totals.items()}
    costs["all steps"] = sum(costs.values())
    return costs, (totals["full decode"] + encode_ms) / mp


# --------------------------------------------------------------------------- main


def bench_model(name: str, paths: list[Path], tmp: Path, args) -> dict:
    import ray

    weights = None
    if name not in BUNDLED:
        weights = str(tmp / f"{name}-random.pth")
        torch.manual_seed(0)
        torch.save(create_model(name).state_dict(), weights)
    module, info = load_model(name, weights)
    module.eval()
    size = info.input_size
    n_cores = cores()
    mean_mp = float(np.mean([np.prod(Image.open(p).size) for p in paths])) / 1e6
    loop_out = per_image_loop(paths[: args.loop_images], module, size, tmp / f"loop-{name}")
    forward_s, precision = forward_only(name, weights, size, args.forward_batches)
    costs, decode_encode_ms_per_mp = step_costs(paths, module, info.preprocessing, tmp / f"steps-{name}")
    # The floor in core-seconds per image: the forward on all cores, decode + encode on one.
    floor_core_s = n_cores * forward_s + decode_encode_ms_per_mp * mean_mp / 1000
    floor_ips = n_cores / floor_core_s

    sampler = Sampler()
    sampler.start()
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # the table, not Ray's C++ start-up chatter
    ray.init(address="local", num_cpus=n_cores, include_dashboard=False, logging_level="WARNING",
             log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    jobs = {}
    try:
        n = args.rows
        short = write_manifest(tmp / f"{name}-short.parquet", paths, n)
        long = write_manifest(tmp / f"{name}-long.parquet", paths, args.factor * n)
        for layout in args.layouts.split(","):
            tag = f"{name}-{layout}"
            job_run(short, tmp / f"job-{tag}-warm", name, weights, args, layout)  # workers and imports, once
            t_short, _ = job_run(short, tmp / f"job-{tag}-short", name, weights, args, layout)
            t_long, summary = job_run(long, tmp / f"job-{tag}-long", name, weights, args, layout)
            psnrs = [metrics.psnr(imageio.decode_image((tmp / f"job-{tag}-short" / "images" /
                                                        f"r{i:06d}_{p.stem}.jpg").read_bytes()).rgb, loop_out[p.stem])
                     for i, p in enumerate(paths[: args.loop_images])]  # row i of the short run is image i
            ips = (args.factor - 1) * n / max(t_long - t_short, 1e-9)
            jobs[layout] = {"ips": ips, "core_ms_per_mp": 1000 * n_cores / (ips * mean_mp), "fidelity": min(psnrs),
                            "errors": summary["counts"]["error"], "t_short": t_short, "t_long": t_long}
    finally:
        ray.shutdown()
        sampler.stop.set()
    return {"model": name, "precision": precision, "forward_ips": 1 / forward_s, "floor_ips": floor_ips,
            "floor_core_ms_per_mp": 1000 * floor_core_s / mean_mp, "decode_encode": decode_encode_ms_per_mp,
            "jobs": jobs, "costs": costs, "peak_mib": sampler.peak_ray + sampler.peak_driver}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="compact,eccv16,effnet_unet,siggraph17")
    ap.add_argument("--layouts", default="auto", help="inference.layout values to run the job with, e.g. fused,split")
    ap.add_argument("--images", type=int, default=20, help="distinct images (cycled through the size classes)")
    ap.add_argument("--rows", type=int, default=40, help="N: rows of the short job run (the long one has 5N)")
    ap.add_argument("--factor", type=int, default=5)
    ap.add_argument("--loop-images", dest="loop_images", type=int, default=3)
    ap.add_argument("--forward-batches", dest="forward_batches", type=int, default=4)
    ap.add_argument("--batch-size", dest="batch_size", type=int, default=8, help="inference batch size")
    ap.add_argument("--cpu-batch-size", dest="cpu_batch_size", type=int, default=4)
    ap.add_argument("--shard-rows", dest="shard_rows", type=int, default=1000, help="the job's default")
    ap.add_argument("--quick", action="store_true", help="smoke run: 6 images, N=4, compact and eccv16")
    args = ap.parse_args()
    if args.quick:
        args.images, args.rows, args.loop_images, args.forward_batches = 6, 4, 1, 2
        args.models = "compact,eccv16" if args.models == ap.get_default("models") else args.models
    print(cpu_description(), flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_images(tmp / "in", args.images)
        mean_mp = np.mean([np.prod(Image.open(p).size) for p in paths]) / 1e6
        print(f"{len(paths)} gray JPEGs, {min(SIZE_CLASSES_MP)}-{max(SIZE_CLASSES_MP)} MP, mean {mean_mp:.2f} MP; "
              f"job: N={args.rows} and {args.factor}N rows, inference batch {args.batch_size}, CPU batch "
              f"{args.cpu_batch_size}; {cores()} cores", flush=True)
        for name in args.models.split(","):
            results.append(bench_model(name, paths, tmp, args))
            r = results[-1]
            print(f"  {name}: forward {r['forward_ips']:.1f} img/s ({r['precision']}), decode+encode "
                  f"{r['decode_encode']:.1f} ms/MP, floor {r['floor_ips']:.2f} img/s; "
                  + "; ".join(f"job[{k}] {j['ips']:.2f} img/s (runs {j['t_short']:.1f} s / {j['t_long']:.1f} s, "
                              f"errors {j['errors']})" for k, j in r["jobs"].items())
                  + "; CPU ms/MP: " + ", ".join(f"{k} {v:.1f}" for k, v in r["costs"].items()), flush=True)
    print()
    print("| model | layout | forward img/s (batch 8, all cores) | floor img/s | job img/s | job / floor "
          "| floor core-ms/MP | job core-ms/MP | fidelity (min PSNR vs float64 loop) | peak memory |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for layout, j in r["jobs"].items():
            print(f"| `{r['model']}` | {layout} | {r['forward_ips']:.1f} ({r['precision']}) | {r['floor_ips']:.2f} | "
                  f"{j['ips']:.2f} | {j['ips'] / r['floor_ips']:.2f} | {r['floor_core_ms_per_mp']:.1f} | "
                  f"{j['core_ms_per_mp']:.1f} | {j['fidelity']:.1f} dB | {r['peak_mib']:.0f} MiB |")
    print()
    print("| CPU ms per MP, one core | " + " | ".join(results[0]["costs"]) + " | floor: decode + encode |")
    print("|---|" + "---|" * (len(results[0]["costs"]) + 1))
    for r in results[:1]:  # the steps but the model's own do not depend on the model
        print(f"| measured with `{r['model']}` | " + " | ".join(f"{v:.1f}" for v in r["costs"].values())
              + f" | {r['decode_encode']:.1f} |")


if __name__ == "__main__":
    main()
