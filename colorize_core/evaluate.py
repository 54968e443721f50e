"""Model quality on a held-out set of colour images: every model scored against the originals, one report.

    python -m jobs.evaluate --manifest URI --output URI --models eccv16,siggraph17,s3://.../ckpt \
        --weights eccv16=official,siggraph17=official [--protocol full|resize256|center_crop256] [--config YAML]
    python -m jobs.evaluate --manifest URI --output URI --models effnet_guided,effnet_unet --hints 10 [--hint-seed 0]

Each colour original is reduced to its L (grayscale), colorized by every model and scored against the
original with the colorize job's own stages and metric code, in one Ray run: decode once (one L per
distinct model input size), one inference actor pool per model side by side, then one compose/score
stage that writes each model's output and emits one metrics row per (image, model). A ``gray``
baseline (ab = 0: the input itself) is always scored, so every model is also reported as a paired
per-image difference against doing nothing. A ``--models`` entry is a registry name, a checkpoint
directory URI (labelled by its last path component) or ``label=URI``. With ``--hints N`` every model
that takes hints is scored a second time, as ``<label>_hints<N>``, with N hints sampled from each
original (:func:`colorize_core.hints.sample_hints`, seeded by ``--hint-seed`` and the image id), and the
summary adds the paired per-image difference the hints make (``vs_no_hints``).

Output layout under --output:
    images/<model>/<image_id>.<ext>  every model's output (and gray's), at the protocol's geometry
    metrics/<shard>.parquet          one row per (image, model)
    summary.json, summary.parquet    per-model statistics and differences against gray
    report.html, report/             the report, with its images beside it (relative links, offline)
    config.json                      the resolved config
"""

from __future__ import annotations

import argparse
import html
import io
import json
import logging
import math
import os
import re
import time
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from . import archival, imageio, launch, runstate, storage
from . import manifest as manifest_mod
from .config import JobConfig
from .errors import UserError
from .imageio import DEFAULT_MAX_PIXELS
from .launch import Progress, package_versions
from .pipeline import check_counts, check_model_name, drain
from .stages import GRAY_BASELINE, PROTOCOLS, apply_protocol, eval_output_key

log = logging.getLogger("colorize.evaluate")

SUMMARY_METRICS = ("psnr", "ssim", "colorfulness", "deltae2000")
METRIC_LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "colorfulness": "Colourfulness", "deltae2000": "CIEDE2000"}
_LABEL = re.compile(r"[A-Za-z0-9._-]+")


class EvaluateConfig(JobConfig):
    manifest: str = Field(..., description="Parquet manifest of colour originals (image_id, uri), local or s3://.")
    output: str = Field(..., description="Output prefix, local or s3://.")
    models: list[str] = Field(..., min_length=1, description="Registry names, checkpoint directory URIs, or "
                              "label=URI. The gray baseline is always added; do not list it.")
    weights: dict[str, str] = Field(default_factory=dict, description="Model label -> 'official', a path or "
                                    "URI, for registry models without default weights (eccv16, siggraph17).")
    protocol: Literal["full", "resize256", "center_crop256"] = Field(
        "full", description="Geometry the originals are scored at: full resolution, or resized / "
        "centre-cropped to 256x256 as in published results (models still see their own input size).")
    output_format: Literal["png", "jpeg", "webp"] = Field(
        "png", description="Format of the written outputs, which are what gets scored: lossless PNG keeps "
        "codec artefacts out of the comparison; jpeg scores what the colorize job would deliver.")
    quality: int = Field(95, ge=1, le=100, description="JPEG/WebP quality.")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="Larger images are refused as error rows.")
    shard_rows: int = Field(1000, ge=1, description="Manifest rows per shard (one metrics file each).")
    limit: int | None = Field(None, ge=1, description="Score at most this many manifest rows.")
    sample_size: int = Field(12, ge=0, description="Images in the report's side-by-side grid: each model's "
                             "best and worst by PSNR first, then a seeded random sample.")
    bootstrap_resamples: int = Field(2000, ge=100, description="Resamples of the paired differences "
                                     "against gray for their 95% percentile interval.")
    seed: int = Field(0, description="Seed of the bootstrap and of the report's random sample.")
    hints: int = Field(0, ge=0, description="Also score every model that takes hints with this many hints "
                       "sampled from each original (colorize_core.hints.sample_hints: positions around the centre "
                       "as in training, colours the original's mean ab under each painted square), labelled "
                       "<label>_hints<N> beside its no-hint score; 0 = not.")
    hint_seed: int = Field(0, description="Seed of the sampled hints (with each image id): the same points for "
                           "every model, run and machine.")
    hint_radius: int = Field(2, ge=0, description="Sampled hints paint a (2r+1)^2 square at model size (the "
                             "colorize job's default).")


def model_specs(cfg: EvaluateConfig) -> list[tuple[str, str, str | None]]:
    """(label, registry name or checkpoint URI, weights) per --models entry; labels name output folders."""
    from .models.checkpoint import is_checkpoint_uri

    specs = []
    for entry in cfg.models:
        label, sep, spec = entry.partition("=")
        if not sep or not _LABEL.fullmatch(label):
            spec = entry
            label = spec.rstrip("/").rsplit("/", 1)[-1] if is_checkpoint_uri(spec) else spec
            label = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "model"
        weights = cfg.weights.get(label)
        if weights is not None and is_checkpoint_uri(spec):
            raise UserError(f"--weights {label}=...: {spec} is a checkpoint directory, which holds its own weights")
        specs.append((label, spec, weights))
    labels = [s[0] for s in specs]
    if GRAY_BASELINE in labels:
        raise UserError(f"model label {GRAY_BASELINE!r} is the built-in baseline; it is always scored")
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise UserError(f"two --models entries are labelled {dupes}; name them, e.g. a=s3://.../ckpt")
    unknown = sorted(set(cfg.weights) - set(labels))
    if unknown:
        raise UserError(f"--weights names {unknown}, which are not in --models {labels}")
    return specs


def hinted_label(label: str, n: int) -> str:
    return f"{label}_hints{n}"


def hinted_base(label: str, n: int) -> str:
    return label.removesuffix(f"_hints{n}")


def with_hinted_runs(models: list[tuple], n_hints: int) -> list[tuple]:
    """(label, spec, weights, info, hinted) per scored run: with ``n_hints``, each model that takes hints is
    scored twice, without hints under its label and with them as ``<label>_hints<N>``."""
    if not n_hints:
        return models
    takers = [m for m in models if m[3].accepts_hints]
    if not takers:
        raise UserError(f"--hints {n_hints}: none of --models ({', '.join(m[0] for m in models)}) takes hints; "
                        f"add one that does (e.g. effnet_guided) or leave --hints out")
    if len({tuple(m[3].input_size) for m in takers}) > 1:
        raise UserError(f"--hints {n_hints}: the models that take hints have different input sizes "
                        f"({', '.join(f'{m[0]}: {m[3].input_size}' for m in takers)}); evaluate them in separate runs")
    out = []
    for label, spec, weights, info, _ in models:
        out.append((label, spec, weights, info, False))
        if info.accepts_hints:
            out.append((hinted_label(label, n_hints), spec, weights, info, True))
    labels = [m[0] for m in out]
    clash = sorted({x for x in labels if labels.count(x) > 1})
    if clash:
        raise UserError(f"--hints {n_hints}: the label(s) {clash} are taken by another --models entry; rename it")
    return out


# --------------------------------------------------------------------------- the run


def run(cfg: EvaluateConfig, *, ray_address: str | None = None, progress: bool = True,
        verbose: bool = False) -> dict[str, Any]:
    """Score every model on the manifest; write metrics/, summary.json/.parquet and report.html."""
    from .models import load_model
    from .ray_adapter import build_dataset, plan_resources
    from .stages import DecodeStage, EvalComposeStage, ExpandShards, InferenceStage, ScoredModel

    t0 = time.monotonic()
    options = cfg.storage.options()
    archival.load_signer(cfg.provenance, options, check=True)  # one line at start-up, never per image
    info = manifest_mod.validate(cfg.manifest, options)
    specs = model_specs(cfg)
    # Resolve every model on the driver first: a model without weights fails here with load_model's
    # WeightsError, before anything runs (never score random weights).
    models = []
    for label, spec, weights in specs:
        check_model_name(spec)
        _, model_info = load_model(spec, weights, storage_options=options)
        models.append((label, spec, weights, model_info, False))
    models = with_hinted_runs(models, cfg.hints)
    runstate.reset_evaluation(cfg.output, options)
    storage.write_output(storage.join(cfg.output, "config.json"), json.dumps(cfg.resolved(), indent=2).encode(),
                         options, root=cfg.output)

    shards = manifest_mod.plan_shards(info, cfg.shard_rows, cfg.limit)
    n_images = sum(s.num_rows for s in shards)
    per_image = len(models) + 1
    launch.init_ray(ray_address, verbose)
    res = plan_resources(cfg, pools=len(models))
    # The models' L as their weights want it (input size and resize filter), one column per distinct one; the
    # hint maps are painted at the first one's size: that of the hint-taking models.
    pres = tuple(dict.fromkeys([*(m[3].preprocessing for m in models if m[4]), *(m[3].preprocessing for m in models)]))
    decode = DecodeStage(options, cfg.output, cfg.output_format, pres[0], max_pixels=cfg.max_pixels, more=pres[1:],
                         protocol=cfg.protocol, accepts_hints=any(m[4] for m in models), hint_radius=cfg.hint_radius,
                         sample_hints=cfg.hints, hint_seed=cfg.hint_seed)
    infer = []
    for j, (label, spec, weights, model_info, hinted) in enumerate(models):
        column = decode.column(model_info.preprocessing)
        later = any(decode.column(m[3].preprocessing) == column for m in models[j + 1:])
        infer.append(InferenceStage(spec, weights, {}, options, res.device, cfg.inference.precision,
                                    cfg.inference.max_precision_error, cfg.inference.channels_last, res.threads,
                                    cfg.inference.batch_size, input_column=column, output_column=f"ab_{label}",
                                    seconds_column=f"seconds_{label}", keep_input=later, use_hints=hinted))
    scored = (ScoredModel(GRAY_BASELINE),
              *(ScoredModel(label, f"ab_{label}", f"seconds_{label}", mi.preprocessing, mi.name, mi.weights_sha256)
                for label, _, _, mi, _ in models))
    compose = EvalComposeStage(options, cfg.output, scored, cfg.protocol, cfg.output_format, cfg.quality,
                               cfg.max_pixels, cfg.provenance)
    ds = build_dataset([s.to_dict() for s in shards], ExpandShards(options, manifest_mod.REQUIRED), decode,
                       infer, compose, cfg, res)
    counts = drain(ds, {s.shard_id: s.num_rows * per_image for s in shards}, cfg.output, options,
                   Progress(n_images * per_image, 0, enabled=progress, label="evaluate"))

    table = read_metrics(cfg.output, options)
    labels = [GRAY_BASELINE, *(m[0] for m in models)]
    summary = summarize(table, labels, cfg.bootstrap_resamples, cfg.seed,
                        without_hints={m[0]: hinted_base(m[0], cfg.hints) for m in models if m[4]})
    summary.update({
        "manifest": cfg.manifest,
        "output": cfg.output,
        "protocol": cfg.protocol,
        "protocol_description": PROTOCOLS[cfg.protocol],
        "output_format": cfg.output_format,
        "n_images": n_images,
        "counts": {"rows": counts["ok"] + counts["error"], **counts},
        "models": [{"label": GRAY_BASELINE, "source": "baseline: ab = 0 (the grayscale input itself)"}] + [
            {"label": label, "source": spec, "name": mi.name, "weights": mi.weights,
             "weights_sha256": mi.weights_sha256, "input_size": list(mi.input_size), "num_params": mi.num_params,
             "hints": cfg.hints if hinted else 0}
            for label, spec, _, mi, hinted in models],
        "hints": ({"n": cfg.hints, "seed": cfg.hint_seed, "radius": cfg.hint_radius,
                   "sampler": "colorize_core.hints.sample_hints (per image, seeded by seed and image_id)"}
                  if cfg.hints else None),
        "wall_seconds": time.monotonic() - t0,
        "packages": package_versions(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    storage.write_output(storage.join(cfg.output, "summary.json"), json.dumps(summary, indent=2).encode(), options,
                         root=cfg.output)
    storage.write_output_table(summary_table(summary), storage.join(cfg.output, "summary.parquet"), options,
                               root=cfg.output)
    write_report(cfg, table, summary, options)
    return summary


def read_metrics(output: str, options) -> pa.Table:
    files = storage.list_files(storage.join(output, "metrics"), options, suffix=".parquet")
    return pa.concat_tables([storage.read_parquet_table(f, options) for f in files])


# --------------------------------------------------------------------------- statistics


def _number(x: float) -> float | None:
    """JSON-safe: NaN (e.g. the std of one value) becomes null."""
    return None if x is None or not math.isfinite(x) else float(x)


def describe(values: np.ndarray) -> dict[str, float | None]:
    """Mean, median, 5th percentile and sample standard deviation (ddof=1) of finite values."""
    v = values[np.isfinite(values)]
    if not len(v):
        return {"n": 0, "mean": None, "median": None, "p5": None, "std": None}
    return {"n": int(len(v)), "mean": _number(v.mean()), "median": _number(float(np.median(v))),
            "p5": _number(float(np.percentile(v, 5))), "std": _number(v.std(ddof=1)) if len(v) > 1 else None}


def bootstrap_ci(diffs: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of the mean of ``diffs`` over ``resamples`` resamples with replacement."""
    rng = np.random.default_rng(seed)
    n = len(diffs)
    means = np.empty(resamples)
    step = max(1, (1 << 22) // n)  # bounds the index matrix to ~32 MB whatever the set's size
    for s in range(0, resamples, step):
        m = min(step, resamples - s)
        means[s: s + m] = diffs[rng.integers(0, n, size=(m, n))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def summarize(table: pa.Table, labels: list[str], resamples: int, seed: int,
              without_hints: dict[str, str] | None = None) -> dict[str, Any]:
    """Per-model statistics over ok rows, and each model's paired per-image difference against gray
    (over images both scored with a finite value; an exact reproduction has PSNR inf and is left out);
    ``without_hints`` (hinted label -> the same model's no-hint label) adds the paired difference that the
    hints make, as ``vs_no_hints``."""
    rows = table.to_pylist()
    values: dict[str, dict[str, dict[str, float]]] = {m: {k: {} for k in SUMMARY_METRICS} for m in labels}
    stats: dict[str, Any] = {}
    for m in labels:
        mine = [r for r in rows if r["model"] == m]
        ok = [r for r in mine if r["status"] == "ok"]
        stats[m] = {"n_ok": len(ok), "n_error": len(mine) - len(ok)}
        for k in SUMMARY_METRICS:
            values[m][k] = {r["image_id"]: r[k] for r in ok if r[k] is not None and math.isfinite(r[k])}
            stats[m][k] = describe(np.array(list(values[m][k].values()), np.float64))

    def paired(m: str, base: str) -> dict[str, Any]:
        out = {}
        for k in SUMMARY_METRICS:
            ids = sorted(set(values[m][k]) & set(values[base][k]))
            d = np.array([values[m][k][i] - values[base][k][i] for i in ids], np.float64)
            lo, hi = bootstrap_ci(d, resamples, seed) if len(d) else (math.nan, math.nan)
            out[k] = {"n": len(d), "mean": _number(d.mean()) if len(d) else None,
                      "ci95_low": _number(lo), "ci95_high": _number(hi)}
        return out

    vs_gray = {m: paired(m, GRAY_BASELINE) for m in labels if m != GRAY_BASELINE}
    summary = {"metrics": stats, "vs_gray": vs_gray,
               "statistics": {"std": "sample standard deviation (ddof=1)", "p5": "5th percentile (linear)",
                              "vs_gray": "mean of the per-image difference model - gray; 95% percentile "
                                         "bootstrap interval of that mean",
                              "bootstrap_resamples": resamples, "seed": seed}}
    if without_hints:
        summary["vs_no_hints"] = {m: {"without_hints": base, **paired(m, base)} for m, base in without_hints.items()}
        summary["statistics"]["vs_no_hints"] = ("mean of the per-image difference model with hints - the same "
                                                "model without; 95% percentile bootstrap interval of that mean")
    return summary


def summary_table(summary: dict[str, Any]) -> pa.Table:
    """summary.parquet: one row per (model, metric), the same numbers as summary.json."""
    out: dict[str, list] = {c: [] for c in ("model", "metric", "n", "mean", "median", "p5", "std", "diff_vs_gray_mean",
                                            "diff_vs_gray_ci95_low", "diff_vs_gray_ci95_high", "n_pairs",
                                            "protocol", "n_images")}
    for m, stats in summary["metrics"].items():
        for k in SUMMARY_METRICS:
            diff = summary["vs_gray"].get(m, {}).get(k, {})
            for c in ("n", "mean", "median", "p5", "std"):
                out[c].append(stats[k][c])
            out["model"].append(m)
            out["metric"].append(k)
            out["diff_vs_gray_mean"].append(diff.get("mean"))
            out["diff_vs_gray_ci95_low"].append(diff.get("ci95_low"))
            out["diff_vs_gray_ci95_high"].append(diff.get("ci95_high"))
            out["n_pairs"].append(diff.get("n"))
            out["protocol"].append(summary["protocol"])
            out["n_images"].append(summary["n_images"])
    types = {"model": pa.string(), "metric": pa.string(), "protocol": pa.string(), "n": pa.int64(),
             "n_pairs": pa.int64(), "n_images": pa.int64()}
    return pa.table({c: pa.array(v, type=types.get(c, pa.float64())) for c, v in out.items()})


# --------------------------------------------------------------------------- report


def choose_sample(table: pa.Table, labels: list[str], k: int, seed: int) -> list[tuple[str, str]]:
    """(image_id, why) for the grid: each model's best and worst PSNR first, then a seeded random fill.
    Only images every model scored, so every row of the grid is complete."""
    rows = [r for r in table.to_pylist() if r["status"] == "ok"]
    psnr: dict[str, dict[str, float]] = {m: {} for m in labels}
    for r in rows:
        psnr[r["model"]][r["image_id"]] = r["psnr"] if r["psnr"] is not None else math.nan
    complete = sorted(set.intersection(*(set(psnr[m]) for m in labels)))
    chosen: dict[str, str] = {}
    for m in (x for x in labels if x != GRAY_BASELINE):
        ranked = sorted((i for i in complete if math.isfinite(psnr[m][i])), key=lambda i: (psnr[m][i], i))
        for why, pick in (("best", ranked[-1:]), ("worst", ranked[:1])):
            for i in pick:
                chosen.setdefault(i, f"{why} PSNR for {m}")
    rest = [i for i in complete if i not in chosen]
    rng = np.random.default_rng(seed)
    for j in rng.permutation(len(rest)):
        chosen.setdefault(rest[j], "random")
    return list(chosen.items())[:k]


def _thumbnail(rgb: np.ndarray, max_side: int = 256) -> bytes:
    from PIL import Image

    im = Image.fromarray(rgb)
    im.thumbnail((max_side, max_side), Image.BICUBIC)
    return imageio.encode_image(np.asarray(im), "jpeg", quality=90)


def psnr_histogram(table: pa.Table, labels: list[str]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in table.to_pylist() if r["status"] == "ok" and r["psnr"] is not None and math.isfinite(r["psnr"])]
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    all_values = [r["psnr"] for r in rows]
    bins = np.histogram_bin_edges(all_values or [0.0, 1.0], bins=30)
    for m in labels:
        ax.hist([r["psnr"] for r in rows if r["model"] == m], bins=bins, histtype="step", linewidth=1.6,
                label=m, linestyle="--" if m == GRAY_BASELINE else "-")
    ax.set_xlabel("PSNR (dB)")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


_DIGITS = {"psnr": 2, "ssim": 4, "colorfulness": 1, "deltae2000": 2}

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Colorization model evaluation</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 12px 0 24px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; }}
th {{ background: #f3f3f3; }}
td.num {{ text-align: right; white-space: nowrap; }}
td:first-child {{ white-space: nowrap; }}
small {{ color: #666; }}
.grid td {{ text-align: center; }}
.grid img {{ width: 160px; height: auto; display: block; margin: 0 auto; }}
</style>
<script>
window.addEventListener("load", function () {{
  var imgs = document.images, loaded = 0;
  for (var i = 0; i < imgs.length; i++) {{ if (imgs[i].complete && imgs[i].naturalWidth > 0) loaded++; }}
  document.body.setAttribute("data-images-loaded", loaded + "/" + imgs.length);
}});
</script>
</head><body>
<h1>Colorization model evaluation</h1>
<p>{n_images} images from <code>{manifest}</code>. Protocol <b>{protocol}</b>: {protocol_description}.
Outputs written as {output_format} and scored from the written files against the colour originals.{hints_note}</p>
<h2>Summary</h2>
<p><small>Per model: mean ± sample std, then median and 5th percentile, over the images it scored.
Δ vs gray: mean per-image difference against the gray baseline (the input itself, ab = 0), with a
{resamples}-resample bootstrap 95% interval (seed {seed}). Higher PSNR, SSIM and colourfulness and lower
CIEDE2000 are better.</small></p>
{summary_table}
<h2>PSNR per image</h2>
<img src="report/psnr_hist.png" alt="histogram of PSNR per model">
<h2>Examples</h2>
<p><small>Each model's best and worst image by PSNR first, then a random sample; thumbnails of the scored
images, PSNR / CIEDE2000 under each.</small></p>
{grid}
</body></html>
"""


def _summary_html(summary: dict[str, Any]) -> str:
    head = "".join(f"<th>{METRIC_LABELS[k]}</th>" for k in SUMMARY_METRICS)
    head += "".join(f"<th>Δ {METRIC_LABELS[k]} vs gray</th>" for k in SUMMARY_METRICS)
    body = []
    for m, stats in summary["metrics"].items():
        cells = [f"<td>{html.escape(m)}</td>", f"<td class=num>{stats['n_ok']}</td>",
                 f"<td class=num>{stats['n_error']}</td>"]
        for k in SUMMARY_METRICS:
            s, d = stats[k], _DIGITS[k]
            cells.append(f"<td class=num>{_fmt(s['mean'], d)} ± {_fmt(s['std'], d)}<br><small>median "
                         f"{_fmt(s['median'], d)} · p5 {_fmt(s['p5'], d)}</small></td>")
        for k in SUMMARY_METRICS:
            diff, d = summary["vs_gray"].get(m, {}).get(k), _DIGITS[k]
            cells.append("<td class=num>–</td>" if diff is None else
                         f"<td class=num>{_fmt(diff['mean'], d)}<br><small>[{_fmt(diff['ci95_low'], d)}, "
                         f"{_fmt(diff['ci95_high'], d)}]</small></td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<table><tr><th>model</th><th>ok</th><th>errors</th>{head}</tr>\n" + "\n".join(body) + "</table>")


def write_report(cfg: EvaluateConfig, table: pa.Table, summary: dict[str, Any], options) -> None:
    """report.html plus report/ (histogram and thumbnails): relative links only, nothing from the network."""
    labels = list(summary["metrics"])
    report = storage.join(cfg.output, "report")
    storage.write_output(storage.join(report, "psnr_hist.png"), psnr_histogram(table, labels), options,
                         root=cfg.output)
    sample = choose_sample(table, labels, cfg.sample_size, cfg.seed)
    uris = {}
    if sample:
        wanted = {i for i, _ in sample}
        for path in manifest_mod.manifest_files(cfg.manifest, options)[1]:
            t = storage.read_parquet_table(path, options, columns=["image_id", "uri"]).to_pylist()
            uris.update({r["image_id"]: r["uri"] for r in t if r["image_id"] in wanted})
    scores = {(r["model"], r["image_id"]): r for r in table.to_pylist()}
    head = "<tr><th>image</th><th>original</th>" + "".join(
        f"<th>{'gray input (baseline)' if m == GRAY_BASELINE else html.escape(m)}</th>" for m in labels) + "</tr>"
    lines = [head]
    for n, (image_id, why) in enumerate(sample):
        source = imageio.decode_image(storage.read_bytes(uris[image_id], options), max_pixels=cfg.max_pixels)
        cells = [f"<td>{html.escape(image_id)}<br><small>{html.escape(why)}</small></td>",
                 _grid_cell(report, f"img/{n:03d}_original.jpg",
                            _thumbnail(apply_protocol(source.rgb, cfg.protocol)), "original", options, root=cfg.output)]
        for j, m in enumerate(labels):
            out = imageio.decode_image(storage.read_bytes(
                eval_output_key(cfg.output, m, image_id, cfg.output_format), options), max_pixels=cfg.max_pixels)
            r = scores[(m, image_id)]
            cells.append(_grid_cell(report, f"img/{n:03d}_{j:02d}.jpg", _thumbnail(out.rgb), m, options,
                                    f"{_fmt(r['psnr'])} dB / ΔE {_fmt(r['deltae2000'])}", root=cfg.output))
        lines.append("<tr>" + "".join(cells) + "</tr>")
    grid = f"<table class=grid>{''.join(lines)}</table>" if sample else "<p>No image was scored by every model.</p>"
    page = _PAGE.format(
        n_images=summary["n_images"], manifest=html.escape(cfg.manifest), protocol=html.escape(cfg.protocol),
        protocol_description=html.escape(PROTOCOLS[cfg.protocol]), output_format=cfg.output_format,
        resamples=cfg.bootstrap_resamples, seed=cfg.seed, summary_table=_summary_html(summary), grid=grid,
        hints_note=(f" Models labelled <code>_hints{cfg.hints}</code> were given {cfg.hints} colour hints sampled from "
                    f"each original (seed {cfg.hint_seed}, painted with radius {cfg.hint_radius}); the same model "
                    f"without a suffix had none." if cfg.hints else ""))
    storage.write_output(storage.join(cfg.output, "report.html"), page.encode(), options, root=cfg.output)


def _grid_cell(report: str, name: str, payload: bytes, alt: str, options, caption: str = "", *, root: str) -> str:
    storage.write_output(storage.join(report, name), payload, options, root=root)
    small = f"<small>{html.escape(caption)}</small>" if caption else ""
    return f'<td><img src="report/{name}" alt="{html.escape(alt)}">{small}</td>'


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = launch.job_parser("python -m jobs.evaluate", __doc__)
    p.add_argument("--manifest", help="Parquet manifest of colour originals, local or s3://")
    p.add_argument("--models", help="comma-separated: registry names, checkpoint URIs, or label=URI")
    p.add_argument("--weights", help="comma-separated label=official|PATH|URI")
    p.add_argument("--protocol", choices=list(PROTOCOLS))
    p.add_argument("--output-format", dest="output_format", choices=["png", "jpeg", "jpg", "webp"])
    p.add_argument("--sample-size", dest="sample_size", type=int, help="images in the report grid")
    p.add_argument("--hints", type=int, help="also score models that take hints with N hints sampled from each "
                   "original (labelled <label>_hints<N>)")
    p.add_argument("--hint-seed", dest="hint_seed", type=int, help="seed of the sampled hints (default 0)")
    launch.add_provenance_flags(p)
    launch.add_run_flags(p)
    return p


def _pairs(text: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise UserError(f"--weights entry {item!r} is not name=URI")
        out[name] = value
    return out


def config_from_args(args: argparse.Namespace) -> EvaluateConfig:
    flags = {k: getattr(args, k) for k in ("manifest", "output", "protocol", "output_format", "sample_size",
                                          "limit", "hints", "hint_seed")}
    flags["models"] = [s.strip() for s in args.models.split(",") if s.strip()] if args.models else None
    flags["weights"] = _pairs(args.weights) if args.weights else None
    flags["inference"] = launch.inference_flags(args)
    flags["provenance"] = launch.provenance_flags(args)
    return launch.load_config(EvaluateConfig, args, flags)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        cfg = config_from_args(args)
        summary = run(cfg, ray_address=args.ray_address, progress=not args.quiet, verbose=args.verbose)
        print(json.dumps({"output": summary["output"], "protocol": summary["protocol"],
                          "n_images": summary["n_images"],
                          "psnr_mean": {m: s["psnr"]["mean"] for m, s in summary["metrics"].items()}}))
        return check_counts(summary["counts"], 1.0)

    return launch.main_wrapper(body, verbose=args.verbose)

