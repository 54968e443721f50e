"""Global colour cast of each model in a jobs.evaluate output: mean a and b over the held-out images
(each image's mean over its pixels, then averaged over images) of every model's outputs, next to the
colour originals'. No cast means the model's means are close to the originals'.

    python scripts/colour_cast.py --manifest out/training-data/heldout.parquet --eval out/eval-effnet_unet
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from colorize_core import color, imageio, storage, training

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--eval", required=True, help="jobs.evaluate output folder (local)")
    args = ap.parse_args(argv)
    rows = training.read_manifest(args.manifest)
    models = sorted(p.name for p in (Path(args.eval) / "images").iterdir() if p.is_dir())
    means: dict[str, list[np.ndarray]] = {"original": [], **{m: [] for m in models}}
    for row in rows:
        original = imageio.decode_image(storage.read_bytes(row["uri"])).rgb
        means["original"].append(color.srgb_to_lab(original)[..., 1:].reshape(-1, 2).mean(0))
        for m in models:
            found = sorted((Path(args.eval) / "images" / m).glob(row["image_id"] + ".*"))
            rgb = imageio.decode_image(found[0].read_bytes()).rgb
            means[m].append(color.srgb_to_lab(rgb)[..., 1:].reshape(-1, 2).mean(0))
    ref = np.mean(means["original"], axis=0)
    print(f"{'':12s} {'mean a':>7s} {'mean b':>7s} {'da':>6s} {'db':>6s}   ({len(rows)} images)")
    for name, vals in means.items():
        a, b = np.mean(vals, axis=0)
        print(f"{name:12s} {a:7.2f} {b:7.2f} {a - ref[0]:6.2f} {b - ref[1]:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
