"""Before/after figure: gray input, each model, original, for a few held-out images (scored in the titles).

    python scripts/before_after.py --manifest out/training-data/heldout.parquet --models compact,effnet_unet \
        --images skimage/chelsea,kphotoalbum/sunset.jpg --output docs/effnet_unet_before_after.png
    python scripts/before_after.py --manifest /work/data/training-data/heldout.parquet --models effnet_guided \
        --hints 5 --images skimage/coffee --output docs/effnet_guided_before_after.jpg

``--hints N`` adds, for each model that takes hints, a panel with N hints sampled from the original as the
evaluate job's ``--hints`` samples them (seed 0), the points drawn as circles of the hinted colour.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import numpy as np

    from colorize_core import color, imageio, metrics, storage, training
    from colorize_core.cli import Colorizer
    from colorize_core.hints import sample_hints

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--models", default="compact,effnet_unet", help="comma-separated registry names, checkpoint "
                    "directories or label=checkpoint")
    ap.add_argument("--images", required=True, help="comma-separated image_ids of the manifest")
    ap.add_argument("--output", required=True)
    ap.add_argument("--hints", type=int, default=0, help="also show hint-taking models with N sampled hints")
    ap.add_argument("--hint-radius", type=int, default=2)
    args = ap.parse_args(argv)
    rows = {r["image_id"]: r["uri"] for r in training.read_manifest(args.manifest)}
    ids = args.images.split(",")
    models = {}
    for spec in args.models.split(","):  # a registry name, a checkpoint directory, or label=checkpoint
        label, _, uri = spec.rpartition("=") if "=" in spec else (spec, "", spec)
        models[label] = Colorizer(uri)
    hinted = {f"{name} + {args.hints} hints": name for name, m in models.items() if args.hints and m.info.accepts_hints}
    cols = ["gray input", *(c for name in models for c in (name, *(h for h, n in hinted.items() if n == name))),
            "original"]
    fig, axes = plt.subplots(len(ids), len(cols), figsize=(2.6 * len(cols), 2.3 * len(ids)), squeeze=False)
    for i, image_id in enumerate(ids):
        img = imageio.decode_image(storage.read_bytes(rows[image_id]))
        original = img.rgb
        panels = {"gray input": training.gray_rgb(original), "original": original}
        for name, model in models.items():
            panels[name] = model([img])[0]
        points = {}
        for col, name in hinted.items():
            info = models[name].info
            hints = sample_hints(original, args.hints, image_id, size=info.input_size, radius=args.hint_radius)
            panels[col] = training.colorize_rgb(models[name].module, original, info.preprocessing, hints,
                                                args.hint_radius)
            points[col] = hints
        for j, col in enumerate(cols):
            ax = axes[i, j]
            ax.imshow(panels[col])
            h, w = original.shape[:2]
            for hint in points.get(col, ()):  # each hint: a circle of its colour at its place
                py, px = min(int(hint["y"] * h), h - 1), min(int(hint["x"] * w), w - 1)
                lum = float(color.srgb_to_l(original[py:py + 1, px:px + 1])[0, 0])  # the hinted ab at its L
                rgb = color.lab_to_srgb_uint8(np.array([[[lum, hint["a"], hint["b"]]]], np.float32))[0, 0] / 255
                ax.add_patch(plt.Circle((hint["x"] * w, hint["y"] * h), radius=max(h, w) / 60, facecolor=rgb,
                                        edgecolor="white", linewidth=1.2))
            ax.set_xticks([]), ax.set_yticks([])
            title = col if i == 0 else ""
            if col != "original":
                title += f"\n{metrics.psnr(panels[col], original):.1f} dB, C {metrics.colorfulness(panels[col]):.0f}"
            else:
                title += f"\nC {metrics.colorfulness(original):.0f}"
            ax.set_title(title.strip(), fontsize=8)
            if j == 0:
                ax.set_ylabel(image_id.split("/")[-1].rsplit(".", 1)[0][:18], fontsize=8)
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
