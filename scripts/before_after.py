"""Before/after figure: gray input, each model, original, for a few held-out images (scored in the titles).

    python scripts/before_after.py --manifest out/training-data/heldout.parquet --models compact,effnet_unet \
        --images skimage/chelsea,kphotoalbum/sunset.jpg --output docs/effnet_unet_before_after.png
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from colorize_core import imageio, metrics, storage, training
    from colorize_core.cli import Colorizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--models", default="compact,effnet_unet", help="comma-separated registry names, checkpoint "
                    "directories or label=checkpoint")
    ap.add_argument("--images", required=True, help="comma-separated image_ids of the manifest")
    ap.add_argument("--output", required=True)
    args = ap.parse_args(argv)
    rows = {r["image_id"]: r["uri"] for r in training.read_manifest(args.manifest)}
    ids = args.images.split(",")
    models = {}
    for spec in args.models.split(","):  # a registry name, a checkpoint directory, or label=checkpoint
        label, _, uri = spec.rpartition("=") if "=" in spec else (spec, "", spec)
        models[label] = Colorizer(uri)
    cols = ["gray input", *models, "original"]
    fig, axes = plt.subplots(len(ids), len(cols), figsize=(2.6 * len(cols), 2.3 * len(ids)), squeeze=False)
    for i, image_id in enumerate(ids):
        img = imageio.decode_image(storage.read_bytes(rows[image_id]))
        original = img.rgb
        panels = {"gray input": training.gray_rgb(original), "original": original}
        for name, model in models.items():
            panels[name] = model([img])[0]
        for j, col in enumerate(cols):
            ax = axes[i, j]
            ax.imshow(panels[col])
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
