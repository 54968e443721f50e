"""Forward latency of registry models on one CPU core, fp32, at each model's input size (its bundled
weights' preprocessing); models that take hints are timed without and with 10 hints (painted at the model's
size, radius 2, as the colorize job does). Prints a table; run it on a quiet machine for figures worth
quoting. Besides wall
time it prints the process CPU time per image, which on a loaded machine leaves out the time spent waiting
for a core (with one torch thread, CPU time ~ the wall time the same work takes on an idle core).

    python bench/model_latency.py --models effnet_guided,effnet_unet,compact --batch 8 --repeats 10
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch

    from colorize_core.hints import paint_hints, sample_hints
    from colorize_core.models import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="effnet_guided,effnet_unet,compact")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from throughput import cpu_description

    print(cpu_description())
    print(f"{args.threads} thread(s), fp32, batch {args.batch}, load average {os.getloadavg()[0]:.1f}; "
          "weights: as loaded (contiguous) and converted to channels-last (what inference.channels_last does)")
    print(f"{'model':14s} {'hints':>6s} {'weights':>13s} {'input':>9s} {'wall min':>9s} {'wall median':>12s} "
          f"{'cpu min':>8s} {'cpu median':>11s}   (ms per image)")
    rng = torch.Generator().manual_seed(0)
    for name in args.models.split(","):
        model, info = load_model(name, allow_random=True)
        h, w = info.preprocessing.input_size
        x = torch.rand(args.batch, 1, h, w, generator=rng) * 100
        variants = [(0, ())]
        if info.accepts_hints:
            rgb = (torch.rand(h, w, 3, generator=rng) * 255).to(torch.uint8).numpy()
            maps = [paint_hints(sample_hints(rgb, 10, f"bench{i}", size=(h, w), radius=2), (h, w), 2)
                    for i in range(args.batch)]
            variants.append((10, tuple(torch.from_numpy(np.stack(m)) for m in zip(*maps))))
        for layout in ("contiguous", "channels-last"):
            if layout == "channels-last":
                model = model.to(memory_format=torch.channels_last)
            for n_hints, extra in variants:
                with torch.inference_mode():
                    model(x, *extra)
                    wall, cpu = [], []
                    for _ in range(args.repeats):
                        t0, c0 = time.perf_counter(), time.process_time()
                        model(x, *extra)
                        wall.append((time.perf_counter() - t0) / args.batch * 1000)
                        cpu.append((time.process_time() - c0) / args.batch * 1000)
                wall.sort(), cpu.sort()
                mid = len(wall) // 2
                print(f"{name:14s} {n_hints:>6d} {layout:>13s} {h:>4d}x{w:<4d} {wall[0]:>9.1f} {wall[mid]:>12.1f} "
                      f"{cpu[0]:>8.1f} {cpu[mid]:>11.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
