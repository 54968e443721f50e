"""The main job: Parquet manifest -> colorized images + per-image metrics, local or s3://.

    python -m jobs.colorize --manifest URI --output URI --model NAME [--weights URI] [--config YAML]

With no --manifest it colorizes the bundled sample images into ./out/colorize. Resume: rerun the
same command; completed manifest shards are skipped, and images already written are scored from the
written file rather than written again (see README, "Resume").

Output layout under --output:
    images/<image_id>.<ext>          colorized, full input resolution
    metrics/<shard>.parquet          one row per manifest row (a Parquet dataset)
    _state/run.json                  settings a resumed run must share
    _state/completions/<shard>__<rows>.done
    config.json, summary.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections import defaultdict
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from colorize_core import manifest as manifest_mod
from colorize_core import storage
from colorize_core.config import ColorizeConfig, load_yaml, merge
from colorize_core.schema import METRICS_SCHEMA

log = logging.getLogger("jobs.colorize")

EXIT_OK, EXIT_FAILED, EXIT_TOO_MANY_ERRORS = 0, 1, 3
PACKAGES = ("ray", "torch", "numpy", "pyarrow", "pillow", "scikit-image", "s3fs", "fsspec", "pydantic")



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.colorize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (flags given here override it)")
    p.add_argument("--manifest", help="Parquet manifest file or prefix, local or s3:// (default: bundled samples)")
    p.add_argument("--output", help="output prefix, local or s3:// (default: ./out/colorize)")
    p.add_argument("--model", help="registry name or checkpoint directory URI (default: effnet_unet)")
    p.add_argument("--weights", help="'official', local path, https:// or s3:// URI")
    p.add_argument("--temperature", type=float, help="ECCV16 annealed-mean temperature")
    p.add_argument("--output-format", dest="output_format", choices=["jpeg", "jpg", "png", "webp"])
    p.add_argument("--quality", type=int)
    p.add_argument("--saturation", type=float)
    p.add_argument("--max-pixels", dest="max_pixels", type=int)
    p.add_argument("--shard-rows", dest="shard_rows", type=int)
    p.add_argument("--limit", type=int)
    p.add_argument("--max-error-fraction", dest="max_error_fraction", type=float)
    p.add_argument("--overwrite", action="store_true", default=None)
    p.add_argument("--batch-size", dest="batch_size", type=int, help="inference batch size")
    p.add_argument("--num-actors", dest="num_actors", type=int, help="inference replicas")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--ray-address", dest="ray_address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def config_from_args(args: argparse.Namespace) -> ColorizeConfig:
    base = load_yaml(args.config) if args.config else {}
    flags = {k: getattr(args, k) for k in ("manifest", "output", "model", "weights", "temperature",
                                          "output_format", "quality", "saturation", "max_pixels",
                                          "shard_rows", "limit", "max_error_fraction", "overwrite")}
    flags["inference"] = {"batch_size": args.batch_size, "num_actors": args.num_actors,
                          "precision": args.precision, "device": args.device}
    data = merge(base, flags)
    data.setdefault("output", "out/colorize")
    if not data.get("manifest"):
        data["manifest"] = "samples"
    return ColorizeConfig(**data)


def samples_manifest(output: str) -> str:
    """Write a manifest of the bundled sample images (the README's zero-argument run)."""
    from importlib import resources

    import pyarrow.parquet as pq

    folder = resources.files("colorize_core.assets").joinpath("samples")
    files = sorted(p for p in folder.iterdir() if p.name.lower().endswith((".jpg", ".jpeg", ".png")))
    path = Path(output) / "_samples" / "manifest.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"image_id": [f.name.rsplit(".", 1)[0] for f in files], "uri": [str(f) for f in files]})
    pq.write_table(table, path)
    return str(path)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


class Progress:
    """One running line of ok/error counts beside Ray Data's own progress bars."""

    def __init__(self, total: int, skipped: int, enabled: bool = True, label: str = "colorize"):
        self.total, self.skipped, self.enabled, self.label = total, skipped, enabled, label
        self.ok = self.error = 0
        self.t0 = self.last = time.monotonic()
        self.tty = sys.stderr.isatty()

    def update(self, ok: int, error: int) -> None:
        self.ok += ok
        self.error += error
        now = time.monotonic()
        if self.enabled and (now - self.last > (0.5 if self.tty else 10)):
            self.last = now
            self._print(end="\r" if self.tty else "\n")

    def _print(self, end: str) -> None:
        done = self.ok + self.error
        rate = done / max(time.monotonic() - self.t0, 1e-9)
        print(f"[{self.label}] {done + self.skipped}/{self.total} rows  ok {self.ok}  error {self.error}  "
              f"skipped {self.skipped}  {rate:.2f} img/s", end=end, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            self._print(end="\n")


def _completed(output: str, options) -> dict[str, int]:
    done = {}
    for uri in storage.list_files(storage.join(output, "_state", "completions"), options, suffix=".done"):
        name = uri.rsplit("/", 1)[-1].removesuffix(".done")
        shard_id, _, rows = name.rpartition("__")
        if rows.isdigit():
            done[shard_id] = int(rows)
    return done


def _check_run_state(cfg: ColorizeConfig, options) -> bool:
    """Returns True when earlier progress exists (so rows must be checked against written images).
    Refuses to mix a run with different layout-relevant settings into the same output."""
    state_uri = storage.join(cfg.output, "_state", "run.json")
    current = {"shard_rows": cfg.shard_rows, "output_format": cfg.output_format, "model": cfg.model,
               "weights": cfg.weights}
    if cfg.overwrite:
        storage.remove(storage.join(cfg.output, "_state"), options)
        storage.remove(storage.join(cfg.output, "metrics"), options)
        previous = None
    else:
        try:
            previous = json.loads(storage.read_bytes(state_uri, options))
        except FileNotFoundError:
            previous = None
    if previous is not None and previous != current:
        diff = {k: (previous.get(k), v) for k, v in current.items() if previous.get(k) != v}
        raise SystemExit(f"error: {cfg.output} holds a run with other settings {diff}; "
                         f"use --overwrite to redo it, or another --output")
    storage.write_bytes(state_uri, json.dumps(current).encode(), options)
    return previous is not None


def _metrics_table(rows: list[dict[str, Any]]) -> pa.Table:
    cols = {}
    for name in METRICS_SCHEMA.names:
        vals = [r[name] for r in rows]
        if name in ("width", "height"):
            vals = [None if v is None or v < 0 else int(v) for v in vals]
        elif METRICS_SCHEMA.field(name).type == pa.float64():
            vals = [None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v) for v in vals]
        else:  # Ray turns an all-None object column into NaNs on the way back
            vals = [v if isinstance(v, str) else None for v in vals]
        cols[name] = pa.array(vals, type=METRICS_SCHEMA.field(name).type)
    return pa.table(cols, schema=METRICS_SCHEMA)


def run(cfg: ColorizeConfig, *, ray_address: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the whole job; returns the summary (also written to summary.json)."""
    import ray

    from colorize_core.models import get_entry, load_model
    from colorize_core.models.checkpoint import is_checkpoint_uri
    from colorize_core.ray_adapter import build_dataset, plan_resources
    from colorize_core.stages import ComposeStage, DecodeStage, ExpandShards, InferenceStage

    t0 = time.monotonic()
    options = cfg.storage.options()
    if cfg.manifest == "samples":
        cfg = cfg.model_copy(update={"manifest": samples_manifest(cfg.output)})
    info = manifest_mod.validate(cfg.manifest, options)
    model_kwargs = {"temperature": cfg.temperature} if cfg.temperature is not None else {}
    # Resolve the model once on the driver: fail fast on bad weights, record what ran.
    _, model_info = load_model(cfg.model, cfg.weights, storage_options=options, **model_kwargs)
    resumed = _check_run_state(cfg, options)
    storage.write_bytes(storage.join(cfg.output, "config.json"),
                        json.dumps(cfg.resolved(), indent=2).encode(), options)

    shards = manifest_mod.plan_shards(info, cfg.shard_rows, cfg.limit)
    done = {} if cfg.overwrite else _completed(cfg.output, options)
    pending = [s for s in shards if done.get(s.shard_id) != s.num_rows]
    total = sum(s.num_rows for s in shards)
    skipped = total - sum(s.num_rows for s in pending)
    counts = {"ok": 0, "error": 0}

    if pending:
        if not ray.is_initialized():
            ray.init(address=ray_address or os.environ.get("RAY_ADDRESS"), log_to_driver=True)
        res = plan_resources(cfg)
        columns = tuple(c for c in info.columns if c in manifest_mod.REQUIRED + manifest_mod.OPTIONAL)
        stages = (
            ExpandShards(options, columns),
            DecodeStage(options, cfg.output, cfg.output_format, model_info.input_size,
                        model_info.accepts_hints, cfg.hint_radius, cfg.max_pixels, check_existing=resumed),
            InferenceStage(cfg.model, cfg.weights, model_kwargs, options, res.device, cfg.inference.precision,
                           cfg.inference.max_precision_error, cfg.inference.channels_last, res.threads,
                           cfg.inference.batch_size),
            ComposeStage(options, cfg.output, cfg.output_format, cfg.quality, cfg.saturation,
                         model_info.name, cfg.max_pixels),
        )
        bar = Progress(total, skipped, enabled=progress)
        # One Ray Dataset per wave of shards: the driver's Ray Data bookkeeping (per-block metadata and
        # stats) grows with the blocks of a dataset, so a huge manifest is cut into bounded waves.
        for start in range(0, len(pending), cfg.shards_per_dataset):
            wave = pending[start: start + cfg.shards_per_dataset]
            ds = build_dataset([s.to_dict() for s in wave], *stages, cfg, res)
            got = drain(ds, {s.shard_id: s.num_rows for s in wave}, cfg.output, options, bar, close=False)
            counts = {k: counts[k] + got[k] for k in counts}
        bar.close()

    wall = time.monotonic() - t0
    processed = counts["ok"] + counts["error"]
    summary = {
        "manifest": cfg.manifest,
        "output": cfg.output,
        "counts": {"total": total, "ok": counts["ok"], "error": counts["error"], "skipped": skipped},
        "images_per_second": processed / wall if wall > 0 else None,
        "wall_seconds": wall,
        "model": model_info.name,
        "model_description": cfg.model if is_checkpoint_uri(cfg.model) else get_entry(model_info.name).description,
        "weights": model_info.weights,
        "weights_sha256": model_info.weights_sha256,
        "num_params": model_info.num_params,
        "input_size": list(model_info.input_size),
        "shards": {"total": len(shards), "processed": len(pending), "skipped": len(shards) - len(pending)},
        "packages": package_versions(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    storage.write_bytes(storage.join(cfg.output, "summary.json"), json.dumps(summary, indent=2).encode(), options)
    return summary


def drain(ds, expected: dict[str, int], output: str, options, bar: Progress, close: bool = True) -> dict[str, int]:
    """Consume the pipeline's metrics rows; write each shard's metrics (and marker) as soon as all of
    its ``expected[shard_id]`` rows are in. Returns ok/error row counts."""
    counts = {"ok": 0, "error": 0}
    buffers: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        n = len(batch["image_id"])
        for i in range(n):
            row = {c: batch[c][i] for c in batch}
            buffers[row["shard_id"]].append(row)
            if len(buffers[row["shard_id"]]) == expected[row["shard_id"]]:
                _finish_shard(output, row["shard_id"], buffers.pop(row["shard_id"]), options)
        ok = int(np.sum(batch["status"] == "ok"))
        counts["ok"] += ok
        counts["error"] += n - ok
        bar.update(ok, n - ok)
    if close:
        bar.close()
    if buffers:
        raise RuntimeError(f"pipeline ended with incomplete shards: {sorted(buffers)[:5]}")
    return counts


def _finish_shard(output: str, shard_id: str, rows: list[dict[str, Any]], options) -> None:
    """Metrics first, then the marker: a marker only ever stands beside a complete metrics file."""
    table = _metrics_table(rows)
    storage.write_parquet_table(table, storage.join(output, "metrics", f"{shard_id}.parquet"), options)
    ok = sum(r["status"] == "ok" for r in rows)
    marker = {"rows": len(rows), "ok": ok, "error": len(rows) - ok,
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    storage.write_bytes(storage.join(output, "_state", "completions", f"{shard_id}__{len(rows)}.done"),
                        json.dumps(marker).encode(), options)


def main(argv: list[str] | None = None) -> int:
    from colorize_core.models import WeightsError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        summary = run(cfg, ray_address=args.ray_address, progress=not args.quiet)
    except (manifest_mod.ManifestError, ValueError, FileNotFoundError, WeightsError) as exc:
        # Input and configuration problems: one line, no traceback. Anything else is a bug and raises.
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    c = summary["counts"]
    print(json.dumps({"output": summary["output"], **c, "images_per_second": summary["images_per_second"]}))
    processed = c["ok"] + c["error"]
    if processed and c["error"] / processed > cfg.max_error_fraction:
        print(f"error: {c['error']}/{processed} rows failed, above --max-error-fraction {cfg.max_error_fraction}",
              file=sys.stderr)
        return EXIT_TOO_MANY_ERRORS
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
