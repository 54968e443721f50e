"""Held-out table: a model vs the gray baseline (ab = 0), full resolution, with colorize_core.metrics.

Each image: L resized to the model's input size -> model -> ab upsampled bilinear -> joined with the
original L -> uint8 sRGB, scored against the original (PSNR, SSIM) and for colourfulness.

    PYTHONPATH=. python scripts/eval_heldout.py --model compact --manifest out/training-data/heldout.parquet
"""

from __future__ import annotations

import argparse
import json
import sys

from colorize_core import training
from colorize_core.models import load_model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="compact", help="registry name or checkpoint directory URI")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--manifest", default="out/training-data/heldout.parquet")
    ap.add_argument("--per-image", action="store_true")
    ap.add_argument("--json", default=None, help="also write the summary here")
    args = ap.parse_args(argv)
    model, info = load_model(args.model, args.weights)
    images = training.load_images(args.manifest)
    rows = {"gray (ab = 0)": training.evaluate(None, images, info.input_size),
            f"{info.name} ({info.weights})": training.evaluate(model, images, info.input_size)}
    if args.per_image:
        print(f"{'image':40s} {'method':28s} {'PSNR':>7s} {'SSIM':>7s} {'colourf.':>8s}")
        for name, rs in rows.items():
            for r in rs:
                print(f"{r['image_id']:40s} {name[:28]:28s} {r['psnr']:7.2f} {r['ssim']:7.4f} {r['colorfulness']:8.2f}")
    print(f"\nheld-out: {args.manifest} (n = {len(images)}), model input {info.input_size}, full-resolution scoring")
    print("| method | PSNR (dB) | SSIM | colourfulness | n |\n|---|---|---|---|---|")
    summary = {}
    for name, rs in rows.items():
        s = training.summarize(rs)
        summary[name] = s
        print(f"| {name} | {s['psnr']:.2f} | {s['ssim']:.4f} | {s['colorfulness']:.1f} | {s['n']} |")
    print(f"| originals | inf | 1 | {summary[next(iter(summary))]['colorfulness_ref']:.1f} | {len(images)} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
