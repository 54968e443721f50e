"""``colorize``: the local command line (no cluster) plus ``colorize run`` for the Ray job.

    colorize image IN -o OUT [--model NAME] [--weights URI] [--output-depth auto|8|16] [--c2pa-cert PEM --c2pa-key PEM]
    colorize folder DIR -o OUTDIR [--model NAME[,NAME...]] [--format jpeg|png|webp|tiff] [--compare]
    colorize run ...            (same flags as python -m jobs.colorize)
    colorize models             (the registry)
    colorize review --output RUN [--host 127.0.0.1] [--port 8765]   (a page over a finished run)
    colorize verify --output RUN [--bagit]   (re-hash a run's outputs against its metrics)

It does what single-image colorization scripts do, on the job's own path (:mod:`colorize_core.render`): decode
any archive format, model-size L, batched forward, ab upsampled onto the original full-resolution L.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from . import archival, fixity, imageio, launch, metrics, render, storage
from .errors import UserError
from .models.checkpoint import is_checkpoint_uri
from .models.registry import DEFAULT_MODEL

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif")


class Colorizer:
    """One loaded model; colorizes decoded images in batches, in process."""

    def __init__(self, model: str, weights: str | None = None, *, saturation: float = 1.0,
                 batch_size: int = 8, **model_kwargs):
        from .models import load_model

        self.module, self.info = load_model(model, weights, **model_kwargs)
        self.saturation = saturation
        self.batch_size = batch_size

    def __call__(self, images: list[imageio.DecodedImage], depths: list[int] | None = None) -> list[np.ndarray]:
        """Colorized RGB of each image, at its depth (8 or 16 bits; default 8)."""
        depths = depths or [8] * len(images)
        out: list[np.ndarray | None] = [None] * len(images)
        for depth in sorted(set(depths)):
            idx = [i for i, d in enumerate(depths) if d == depth]
            for i, rgb in zip(idx, render.colorize(self.module, [images[i] for i in idx], self.info.preprocessing,
                                                   saturation=self.saturation, batch_size=self.batch_size,
                                                   depth=depth)):
                out[i] = rgb
        return out


class Source:
    """A source file's bytes (hashed and carried into the output's metadata) and its decoded pixels."""

    def __init__(self, path: Path, max_pixels: int):
        self.path = path
        # storage.read_bytes, not Path.read_bytes: a FIFO named *.jpg would block forever, a device never end.
        self.data = storage.read_bytes(str(path))
        self.decoded = imageio.decode_image(self.data, max_pixels=max_pixels)


def _format_for(path: Path, fmt: str | None) -> str:
    return fmt or {".png": "png", ".webp": "webp", ".tif": "tiff", ".tiff": "tiff"}.get(path.suffix.lower(), "jpeg")


def output_settings(args, fmt: str) -> archival.OutputSettings:
    """The output settings the flags give, checked at start-up: a visible label on a master, 16 bits in a
    format that cannot hold them, or a signing certificate C2PA would refuse are one line, before any work."""
    from .config import ProvenanceConfig, build

    fmt = imageio.canonical_format(fmt)
    try:
        if args.output_depth != "auto":
            imageio.output_depth(args.output_depth, 16, fmt)
    except ValueError as exc:
        raise UserError(f"--output-depth {args.output_depth}: {exc}") from None
    if args.visible_label and archival.is_master(fmt, 16 if args.output_depth == "16" else 8):
        raise UserError("--visible-label is for access copies: masters (tiff, or --output-depth 16) never get it")
    provenance = build(ProvenanceConfig, {"cert": args.c2pa_cert, "key": args.c2pa_key})
    signer = archival.load_signer(provenance, storage.StorageOptions.from_env(), check=True)
    return archival.OutputSettings(fmt, args.output_depth, args.quality, args.visible_label, signer)


def _write(path: Path, rgb: np.ndarray, source: Source, settings: archival.OutputSettings, colorizer) -> Path:
    """The one archival path (:func:`colorize_core.archival.write_output`): metadata, provenance, signature."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = archival.derivation(str(source.path), source.data, colorizer.info.name, colorizer.info.weights_sha256,
                                 source.decoded.source_format)
    archival.write_output(rgb, str(path), settings, record, source=source.data,
                          source_format=source.decoded.source_format, colour=source.decoded.colour,
                          root=str(path.parent))
    return path


def compare_figure(path: Path, name: str, source: imageio.DecodedImage, outputs: dict[str, np.ndarray]) -> Path:
    """Original (when it has colour), grayscale input, then each model, scored in the titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    original = imageio.to_uint8(source.rgb)
    gray = render.gray(source.rgb, is_gray=source.is_gray)
    panels = ([("original", original)] if not source.is_gray else []) + [("grayscale input", gray)]
    for model, rgb in outputs.items():
        title = model
        if not source.is_gray:
            title += f"\nPSNR {metrics.psnr(rgb, original):.2f} dB  SSIM {metrics.ssim(rgb, original):.3f}"
        panels.append((title, rgb))
    h, w = original.shape[:2]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) * max(w / h, 0.5), 3.6), squeeze=False)
    for ax, (title, img) in zip(axes[0], panels):
        ax.imshow(img)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(name, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def cmd_image(args) -> int:
    if Path(args.input).is_dir():
        raise UserError(f"{args.input} is a folder: use `colorize folder {args.input} -o OUT_DIR`")
    if Path(args.output).is_dir():
        raise UserError(f"-o {args.output} is a folder: give the output image's file name (e.g. out.jpg)")
    settings = output_settings(args, _format_for(Path(args.output), args.format))
    colorizer = Colorizer(args.model, args.weights, saturation=args.saturation, **_model_kwargs(args))
    source = Source(Path(args.input), args.max_pixels)
    rgb = colorizer([source.decoded], [settings.depth(source.decoded.bit_depth)])[0]
    print(_write(Path(args.output), rgb, source, settings, colorizer))
    return 0


def cmd_folder(args) -> int:
    folder, outdir = Path(args.input), Path(args.output)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: give a folder of images, or use `colorize image` for one file")
    if outdir.exists() and not outdir.is_dir():
        raise UserError(f"-o {outdir} is a file: `colorize folder` writes one sub-folder per model there; "
                        f"give a folder (it is created if missing)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        print(f"error: no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}", file=sys.stderr)
        return 1
    models = [m for m in args.model.split(",") if m]
    settings = output_settings(args, args.format or "jpeg")
    sources: dict[str, Source] = {}
    failures = 0
    for f in files:
        try:
            sources[f.name] = Source(f, args.max_pixels)
        except (imageio.ImageDecodeError, OSError) as exc:  # OSError: a FIFO, a folder named *.jpg, no access
            failures += 1
            print(f"skipped {f.name}: {exc}", file=sys.stderr)
    names = list(sources)
    decoded = {n: sources[n].decoded for n in names}
    depths = [settings.depth(decoded[n].bit_depth) for n in names]
    # Output names drop the suffix unless that would make two inputs (a.png, a.jpg) write one file.
    stems = [Path(n).stem for n in names]
    out_stem = {n: n if stems.count(s) > 1 else s for n, s in zip(names, stems)}
    # Sub-folders are named like the evaluate job's labels: a checkpoint by its directory, since two
    # checkpoints of one architecture share `info.name` and would overwrite each other.
    labels = {m: m.rstrip("/").rsplit("/", 1)[-1] if is_checkpoint_uri(m) else m for m in models}
    dupes = sorted({x for x in labels.values() if list(labels.values()).count(x) > 1})
    if dupes:
        print(f"error: two --model entries would write to the same sub-folder {dupes}", file=sys.stderr)
        return 1
    results: dict[str, dict[str, np.ndarray]] = {n: {} for n in names}
    ext = imageio.FORMAT_EXTENSIONS[settings.fmt]
    for model in models:
        weights = _weights_for(model, args.weights, len(models))
        colorizer = Colorizer(model, weights, saturation=args.saturation, **_model_kwargs(args))
        label = labels[model]
        for name, rgb in zip(names, colorizer([decoded[n] for n in names], depths)):
            results[name][label] = imageio.to_uint8(rgb)
            _write(outdir / label / f"{out_stem[name]}.{ext}", rgb, sources[name], settings, colorizer)
        print(f"{label}: {len(names)} image(s) -> {outdir / label}")
    if args.compare:
        for name in names:
            compare_figure(outdir / "compare" / f"{out_stem[name]}.png", name, decoded[name], results[name])
        print(f"compare: {len(names)} figure(s) -> {outdir / 'compare'}")
    return 1 if failures and not names else 0


def _weights_for(model: str, spec: str | None, n_models: int) -> str | None:
    """``--weights`` for one of several models: ``name=URI,...`` pairs, or ``official``, which goes to every
    registry model that has released weights (the others keep their defaults). A single model takes
    ``--weights`` as it is."""
    if spec is None:
        return None
    if "=" in spec:
        items = [item.split("=", 1) for item in spec.split(",") if item]
        bad = [sep for sep in items if len(sep) != 2 or not all(sep)]
        if bad:
            raise UserError(f"--weights {spec!r}: give name=URI pairs separated by commas (e.g. "
                            f"eccv16=official,ours=s3://bucket/w.pth)")
        return dict(items).get(model)
    if n_models == 1:
        return spec
    if spec == "official":
        from .models import get_entry

        return "official" if not is_checkpoint_uri(model) and "official" in get_entry(model).weights else None
    raise SystemExit("error: with several --model entries, --weights takes 'official' or name=URI pairs")


def _model_kwargs(args) -> dict:
    return {"temperature": args.temperature} if getattr(args, "temperature", None) is not None else {}


def cmd_models(args) -> int:
    from .models import get_entry, list_models

    for name in list_models():
        e = get_entry(name)
        weights = ", ".join(e.weights) or "-"
        print(f"{name:18s} {e.num_params:>12,d} params  input {e.input_size[0]}x{e.input_size[1]}  "
              f"weights: {weights}  {e.description}")
    return 0


def cmd_review(args) -> int:
    from .review.server import serve

    serve(args.output, host=args.host, port=args.port)
    return 0


def cmd_verify(args) -> int:
    """Re-hash a run's outputs against its metrics: missing and changed files, exit 1 when any."""
    options = storage.StorageOptions.from_env()
    report = fixity.verify(args.output, options)
    for line in report.lines():
        print(line)
    if args.bagit:
        print(f"wrote {storage.redact_uri(fixity.write_bagit(args.output, options))}")
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="colorize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--model", default=DEFAULT_MODEL, help=f"registry name(s) or checkpoint URI (default: {DEFAULT_MODEL})")
        sp.add_argument("--weights", help="'official', path, https:// or s3:// URI; with several models "
                        "'official' (for those that have it) or name=URI,name=URI")
        sp.add_argument("--temperature", type=float, help="ECCV16 annealed-mean temperature")
        sp.add_argument("--saturation", type=float, default=1.0)
        sp.add_argument("--format", choices=["jpeg", "jpg", "png", "webp", "tiff", "tif"])
        sp.add_argument("--output-depth", dest="output_depth", choices=["auto", "8", "16"], default="auto",
                        help="bits per sample; auto: 16 where the source is 16-bit and the format holds it")
        sp.add_argument("--visible-label", dest="visible_label", action="store_true",
                        help="stamp a small 'colourised by machine' mark (access copies only, never masters)")
        launch.add_provenance_flags(sp)
        sp.add_argument("--quality", type=int, default=95)
        sp.add_argument("--max-pixels", dest="max_pixels", type=int, default=imageio.DEFAULT_MAX_PIXELS)

    sp = sub.add_parser("image", help="colorize one image")
    sp.add_argument("input")
    sp.add_argument("-o", "--output", required=True)
    common(sp)
    sp.set_defaults(func=cmd_image)
    sp = sub.add_parser("folder", help="colorize a folder: one sub-folder per model")
    sp.add_argument("input")
    sp.add_argument("-o", "--output", required=True)
    sp.add_argument("--compare", action="store_true", help="side-by-side figure per image")
    common(sp)
    sp.set_defaults(func=cmd_folder)
    sp = sub.add_parser("models", help="list the model registry")
    sp.set_defaults(func=cmd_models)
    sp = sub.add_parser("review", help="a local page over a finished run: inspect it, place colour hints")
    sp.add_argument("--output", required=True, help="the run's --output, local or s3:// (AWS_* variables apply)")
    sp.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sp.add_argument("--port", type=int, default=8765)
    sp.set_defaults(func=cmd_review)
    sp = sub.add_parser("verify", help="re-hash a run's outputs against its metrics (fixity)")
    sp.add_argument("--output", required=True, help="the run's --output, local or s3:// (AWS_* variables apply)")
    sp.add_argument("--bagit", action="store_true", help="also write a BagIt-style manifest-sha256.txt at its root")
    sp.set_defaults(func=cmd_verify)
    sub.add_parser("run", help="the Ray job (flags of python -m jobs.colorize)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:
        from .pipeline import main as run_main

        return run_main(argv[1:], prog="colorize run")
    args = build_parser().parse_args(argv)
    from .models import WeightsError

    try:
        return args.func(args)
    except FileNotFoundError as exc:
        print(f"error: {exc.filename or exc}: no such file or folder", file=sys.stderr)
        return 1
    except (WeightsError, imageio.ImageDecodeError, UserError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except storage.NotRegularFileError as exc:
        print(f"error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
