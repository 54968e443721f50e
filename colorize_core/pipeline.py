"""The colorize job: Parquet manifest -> colorized images + per-image metrics, local or s3://.

    python -m jobs.colorize --manifest URI --output URI --model NAME [--weights URI] [--config YAML]
    colorize run ...                          (the same)

With no --manifest it colorizes the bundled sample images into ./out/colorize. Resume: rerun the
same command; completed manifest shards are skipped, and images already written are scored from the
written file rather than written again (see README, "Resume"). --retry-errors tries rows that earlier
runs recorded as errors again.

Output layout under --output:
    images/<image_id>.<ext>          colorized, full input resolution
    metrics/<shard>.parquet          one row per manifest row (a Parquet dataset)
    _state/run.json                  settings a resumed run must share (weights by content hash)
    _state/completions/<shard>__<rows>.done
    config.json, summary.json
    rerenders/<time>/config.json, summary.json   another manifest run into this output (see run())
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from . import archival, launch, runstate, storage
from . import manifest as manifest_mod
from .config import ColorizeConfig
from .errors import OK, TRANSIENT
from .launch import EXIT_OK, EXIT_TOO_MANY_ERRORS, Progress, Unfinished


def build_parser(prog: str = "python -m jobs.colorize") -> argparse.ArgumentParser:
    p = launch.job_parser(prog, __doc__)
    p.add_argument("--manifest", help="Parquet manifest file or prefix, local or s3:// (default: bundled samples)")
    launch.add_colorize_flags(p)
    return p


def colorize_flags(args: argparse.Namespace) -> dict[str, Any]:
    flags = {k: getattr(args, k, None) for k in launch.COLORIZE_FLAGS}
    flags["inference"] = launch.inference_flags(args)
    flags["provenance"] = launch.provenance_flags(args)
    return flags


def config_from_args(args: argparse.Namespace) -> ColorizeConfig:
    flags = {"manifest": args.manifest, "output": args.output, **colorize_flags(args)}
    return launch.load_config(ColorizeConfig, args, flags, {"output": "out/colorize", "manifest": "samples"})


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


def check_model_name(model: str) -> None:
    """Fail before any work on a model that is neither registered nor a checkpoint URI (one line)."""
    from .models import get_entry
    from .models.checkpoint import is_checkpoint_uri

    if not is_checkpoint_uri(model):
        get_entry(model)  # UnknownNameError names the registered models


def run_identity(cfg: ColorizeConfig, model_info, signer=None) -> dict[str, Any]:
    """Every setting that changes an output byte; the weights by the hash of their content, the C2PA signer by
    the hash of its certificate chain. Archival settings appear only when not their defaults, so runs made
    before they existed resume."""
    identity = {"model": storage.redact_uri(cfg.model), "weights_sha256": model_info.weights_sha256,
                "output_format": cfg.output_format, "quality": cfg.quality, "saturation": cfg.saturation,
                "temperature": cfg.temperature, "hint_radius": cfg.hint_radius, "shard_rows": cfg.shard_rows}
    if cfg.output_depth != "auto":
        identity["output_depth"] = cfg.output_depth
    if cfg.visible_label:
        identity["visible_label"] = True
    if signer is not None:
        from .fixity import sha256_hex

        identity["c2pa_certificate_sha256"] = sha256_hex(signer.certificate_chain)
    return identity


def _recorded_manifest(output: str, options) -> str | None:
    try:
        manifest = json.loads(storage.read_bytes(storage.join(output, "config.json"), options)).get("manifest")
    except (FileNotFoundError, ValueError):
        return None
    return manifest if isinstance(manifest, str) else None


def _shard_ids(shards: list, options) -> pa.Array:
    """The image ids of some shards of the manifest (one column read per shard)."""
    parts = [manifest_mod.read_shard(s, options, ("image_id",))["image_id"].cast(pa.string()) for s in shards]
    return pa.chunked_array(parts, pa.string()).combine_chunks() if parts else pa.array([], pa.string())


def run(cfg: ColorizeConfig, *, ray_address: str | None = None, progress: bool = True,
        verbose: bool = False, supersede: bool = True) -> dict[str, Any]:
    """Run the whole job; returns the summary (also written to summary.json). Counts include ``transient``
    rows (left unfinished; their shards have no marker): the caller reports them.

    Another manifest into an output that holds a run (``--manifest RUN/review/hints.parquet --output RUN``,
    with the run's settings) is a re-render: images that other shards' metrics hold a row of are rendered
    again from this manifest's rows (never reused), and their older rows are then dropped, so each keeps one
    current row; the output's ``config.json`` and ``summary.json`` stay the run's, the re-render's own go to
    ``rerenders/<UTC time>/``. ``supersede=False`` (backfills: their ledger does this) leaves both out."""
    from .models import get_entry, load_model
    from .models.checkpoint import is_checkpoint_uri

    t0 = time.monotonic()
    options = cfg.storage.options()
    check_model_name(cfg.model)
    # A certificate C2PA would refuse is one line here (a test signature), never an error row per image.
    signer = archival.load_signer(cfg.provenance, options, check=True)
    if cfg.manifest == "samples":
        cfg = cfg.model_copy(update={"manifest": samples_manifest(cfg.output)})
    with storage.access_checked(cfg.manifest):
        info = manifest_mod.validate(cfg.manifest, options, output=cfg.output, output_format=cfg.output_format)
    model_kwargs = {"temperature": cfg.temperature} if cfg.temperature is not None else {}
    # Resolve the model once on the driver: fail fast on bad weights, record what ran.
    module, model_info = load_model(cfg.model, cfg.weights, storage_options=options, **model_kwargs)
    with storage.access_checked(cfg.output):
        recorded = None if cfg.overwrite else _recorded_manifest(cfg.output, options)
        resumed = runstate.check_identity(cfg.output, run_identity(cfg, model_info, signer), options,
                                          overwrite=cfg.overwrite)
    # A run of another manifest into this output: its records go beside the run's, never over them.
    rerender = supersede and resumed and recorded is not None and recorded != cfg.manifest
    now = time.time()
    stamp = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}.{int(now % 1 * 1e6):06d}Z"
    records = storage.join(cfg.output, "rerenders", stamp) if rerender else cfg.output
    storage.write_output(storage.join(records, "config.json"), json.dumps(cfg.resolved(), indent=2).encode(),
                         options, root=cfg.output)

    # Row groups of shard_rows rows (restaged once if the manifest has others): a shard reads only its rows.
    info = manifest_mod.restage(info, cfg.shard_rows, storage.join(cfg.output, "_state", "manifest"), options)
    shards = manifest_mod.plan_shards(info, cfg.shard_rows, cfg.limit)
    done = {} if cfg.overwrite else runstate.completed(cfg.output, options)
    pending = [s for s in shards if not runstate.is_done(done, s.shard_id, s.num_rows)]
    retried = set()
    if cfg.retry_errors and resumed:
        retried = runstate.shards_with_errors(cfg.output, [s.shard_id for s in shards if s not in pending], options)
        pending = [s for s in shards if s in pending or s.shard_id in retried]
    total = sum(s.num_rows for s in shards)
    skipped = total - sum(s.num_rows for s in pending)
    counts = {"ok": 0, "error": 0, "transient": 0}
    own = {s.shard_id for s in shards}
    others = runstate.other_metrics(cfg.output, options, own) if supersede and resumed else []
    rendered_again: set[str] = set()
    if others:
        # Images another manifest rendered: their outputs go, so this manifest's rows render them again (a
        # retried shard keeps its good images, as any --retry-errors does).
        fresh = [s for s in pending if s.shard_id not in retried]
        rendered_again = runstate.held_in(others, _shard_ids(fresh, options), options)
        from .stages import output_key

        for image_id in sorted(rendered_again):
            storage.remove(output_key(cfg.output, image_id, cfg.output_format), options)

    if pending:
        from .ray_adapter import build_dataset, plan_resources
        from .stages import ComposeStage, DecodeStage, ExpandShards, InferenceStage, inference_share

        launch.init_ray(ray_address, verbose)
        # On CPU-only clusters the inference/CPU-stage split follows this model's measured cost.
        res = plan_resources(cfg, inference_share=inference_share(module, model_info.input_size), fusable=True)
        del module
        columns = tuple(c for c in info.columns if c in manifest_mod.REQUIRED + manifest_mod.OPTIONAL)
        stages = (
            ExpandShards(options, columns),
            DecodeStage(options, cfg.output, cfg.output_format, model_info.preprocessing,
                        model_info.accepts_hints, cfg.hint_radius, cfg.max_pixels, check_existing=resumed),
            InferenceStage(cfg.model, cfg.weights, model_kwargs, options, res.device, cfg.inference.precision,
                           cfg.inference.max_precision_error, cfg.inference.channels_last, res.threads,
                           cfg.inference.batch_size),
            ComposeStage(options, cfg.output, model_info.preprocessing, cfg.output_format, cfg.quality,
                         cfg.saturation, model_info.name, cfg.max_pixels, cfg.output_depth, cfg.visible_label,
                         cfg.provenance, model_info.weights_sha256,
                         device=res.device if res.fused and res.device == "cuda" else None),
        )
        bar = Progress(total, skipped, enabled=progress)
        # One Ray Dataset per wave of shards: the driver's Ray Data bookkeeping (per-block metadata and
        # stats) grows with the blocks of a dataset, so a huge manifest is cut into bounded waves.
        for start in range(0, len(pending), cfg.shards_per_dataset):
            wave = pending[start: start + cfg.shards_per_dataset]
            ds = build_dataset([s.to_dict() for s in wave], *stages, cfg, res)
            got = drain(ds, {s.shard_id: s.num_rows for s in wave}, cfg.output, options, bar, close=False,
                        known=done)
            counts = {k: counts[k] + got[k] for k in counts}
        bar.close()

    superseded = runstate.drop_superseded(cfg.output, options, own, {s.shard_id for s in pending}) if others else 0
    wall = time.monotonic() - t0
    processed = sum(counts.values())
    summary = {
        "manifest": cfg.manifest,
        "output": cfg.output,
        "counts": {"total": total, **counts, "skipped": skipped},
        # Images other manifests had rendered, rendered again from this one; their older rows dropped.
        "superseded": {"rendered_again": len(rendered_again), "rows_dropped": superseded},
        "images_per_second": processed / wall if wall > 0 else None,
        "wall_seconds": wall,
        "model": model_info.name,
        "model_description": storage.redact_uri(cfg.model) if is_checkpoint_uri(cfg.model) else get_entry(model_info.name).description,
        "weights": storage.redact_uri(model_info.weights),
        "weights_sha256": model_info.weights_sha256,
        "num_params": model_info.num_params,
        "input_size": list(model_info.input_size),
        "shards": {"total": len(shards), "processed": len(pending), "skipped": len(shards) - len(pending),
                   "retried": len(retried)},
        "packages": launch.package_versions(),
        "finished_at": runstate.utc_now(),
    }
    storage.write_output(storage.join(records, "summary.json"), json.dumps(summary, indent=2).encode(), options,
                         root=cfg.output)
    return summary


def drain(ds, expected: dict[str, int], output: str, options, bar: Progress, close: bool = True,
          known: dict[str, int] | None = None) -> dict[str, int]:
    """Consume the pipeline's metrics rows; write each shard's metrics (and marker, unless a row is
    transient) as soon as all of its ``expected[shard_id]`` rows are in. Returns ok/error/transient counts."""
    counts = {"ok": 0, "error": 0, "transient": 0}
    buffers: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        n = len(batch["image_id"])
        for i in range(n):
            row = {c: batch[c][i] for c in batch}
            buffers[row["shard_id"]].append(row)
            if len(buffers[row["shard_id"]]) == expected[row["shard_id"]]:
                runstate.finish_shard(output, row["shard_id"], buffers.pop(row["shard_id"]), options, known)
        ok = int(np.sum(batch["status"] == OK))
        transient = int(np.sum(batch["status"] == TRANSIENT))
        counts["ok"] += ok
        counts["transient"] += transient
        counts["error"] += n - ok - transient
        bar.update(ok, n - ok - transient, transient)
    if close:
        bar.close()
    if buffers:
        raise RuntimeError(f"pipeline ended with incomplete shards: {sorted(buffers)[:5]}")
    return counts


def check_counts(counts: dict[str, int], max_error_fraction: float) -> int:
    """Exit status from a run's counts: transient rows raise Unfinished (a plain rerun finishes them); more
    errors than ``max_error_fraction`` of the processed rows, or no row ok at all (whatever the setting: a run
    that produced nothing is never a success), return EXIT_TOO_MANY_ERRORS."""
    if counts.get("transient"):
        raise Unfinished(f"{counts['transient']} row(s) hit storage or network failures that outlasted the "
                         f"retries and are not finished; rerun the same command to finish them")
    processed = counts["ok"] + counts["error"]
    if processed and counts["ok"] == 0:
        print(f"error: every processed row failed ({counts['error']}/{processed}): look at the metrics' error "
              f"column (a wrong prefix, format or access?), fix it and rerun with --retry-errors", file=sys.stderr)
        return EXIT_TOO_MANY_ERRORS
    if processed and counts["error"] / processed > max_error_fraction:
        print(f"error: {counts['error']}/{processed} rows failed, above --max-error-fraction {max_error_fraction}: "
              f"look at the metrics' error column; fix the cause and rerun with --retry-errors", file=sys.stderr)
        return EXIT_TOO_MANY_ERRORS
    return EXIT_OK


def main(argv: list[str] | None = None, prog: str = "python -m jobs.colorize") -> int:
    args = build_parser(prog).parse_args(argv)

    def body() -> int:
        cfg = config_from_args(args)
        summary = run(cfg, ray_address=args.ray_address, progress=not args.quiet, verbose=args.verbose)
        c = summary["counts"]
        print(json.dumps({"output": summary["output"], **c, "images_per_second": summary["images_per_second"]}))
        return check_counts(c, cfg.max_error_fraction)

    return launch.main_wrapper(body, verbose=args.verbose)
