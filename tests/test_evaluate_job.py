"""The evaluation job: stages on plain dicts, then end to end on local paths and on the real S3 server,
with the report rendered in headless Chromium (scripts/install_test_deps.sh installs it)."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from colorize_core import color, fixity, metrics, provenance, render, storage
from colorize_core import evaluate as ev
from colorize_core.config import ProvenanceConfig, load_yaml
from colorize_core.metadata import DIGITAL_SOURCE_TYPE
from colorize_core.errors import UserError
from colorize_core.launch import EXIT_FAILED, EXIT_OK
from colorize_core.models import load_model
from colorize_core.models.checkpoint import save_checkpoint
from colorize_core.models.preprocess import Preprocessing
from colorize_core.models.registry import get_entry
from colorize_core.ray_adapter import plan_resources
from colorize_core.stages import DecodeStage, EvalComposeStage, InferenceStage, ScoredModel, apply_protocol
from tests import c2pacerts, jobkit
from tests.cdp import FLAGS

REPO = Path(__file__).resolve().parents[1]


def _checkpoint(uri: str, seed: int, size: tuple[int, int], options=None, **preprocessing) -> str:
    """A tiny unet checkpoint with its own input size and preprocessing (jobkit.tiny_checkpoint's are all
    64x64, bicubic, bilinear)."""
    if size == (64, 64) and not preprocessing:
        return jobkit.tiny_checkpoint(uri, options, seed=seed)
    torch.manual_seed(seed)
    arguments = {"base_channels": 4, "depth": 2}
    module = get_entry("unet").builder(**arguments).eval()
    return save_checkpoint(uri, module, architecture="unet", arguments=arguments,
                           preprocessing=Preprocessing(size, **preprocessing), storage_options=options)


def _inputs(prefix: str, options, n: int = 5) -> tuple[list[dict], dict[str, bytes]]:
    """n colour images, one gray image (an error row: nothing to score against) and a missing object."""
    images = {f"c{i}.{'png' if i % 2 else 'jpg'}": b for i, b in enumerate(jobkit.colour_images(n, size=(64, 48)))}
    images["gray.png"] = jobkit.gray_image(size=(64, 48))
    uris = jobkit.put_images(storage.join(prefix, "in"), images, options)
    rows = [{"image_id": name.split(".")[0], "uri": uri} for name, uri in uris.items()]
    rows.append({"image_id": "absent", "uri": storage.join(prefix, "in", "nope.jpg")})
    return rows, {name.split(".")[0]: payload for name, payload in images.items()}


def _recomputed_summary_matches(summary: dict, table, labels: list[str], resamples: int, seed: int) -> None:
    """summary.json's numbers, recomputed from metrics/ with plain numpy."""
    rows = table.to_pylist()
    assert list(summary["metrics"]) == labels
    finite = {(r["model"], r["image_id"], k): r[k] for r in rows if r["status"] == "ok" for k in ev.SUMMARY_METRICS
              if r[k] is not None and math.isfinite(r[k])}
    for m in labels:
        assert summary["metrics"][m]["n_ok"] == sum(r["model"] == m and r["status"] == "ok" for r in rows)
        for k in ev.SUMMARY_METRICS:
            v = np.array([x for (mm, _, kk), x in finite.items() if mm == m and kk == k])
            got = summary["metrics"][m][k]
            assert got["n"] == len(v)
            assert got["mean"] == pytest.approx(v.mean(), rel=1e-12)
            assert got["median"] == pytest.approx(np.median(v), rel=1e-12)
            assert got["p5"] == pytest.approx(np.percentile(v, 5), rel=1e-12)
            assert got["std"] == pytest.approx(np.std(v, ddof=1), rel=1e-12)
            if m == ev.GRAY_BASELINE:
                continue
            ids = sorted(i for (mm, i, kk) in finite if mm == m and kk == k and (ev.GRAY_BASELINE, i, k) in finite)
            d = np.array([finite[(m, i, k)] - finite[(ev.GRAY_BASELINE, i, k)] for i in ids])
            diff = summary["vs_gray"][m][k]
            assert diff["n"] == len(d) and diff["mean"] == pytest.approx(d.mean(), rel=1e-12, abs=1e-12)
            rng = np.random.default_rng(seed)
            means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
            lo, hi = np.percentile(means, [2.5, 97.5])
            assert (diff["ci95_low"], diff["ci95_high"]) == pytest.approx((lo, hi), rel=1e-12, abs=1e-12)
            assert lo <= d.mean() <= hi


def _summary_parquet_matches(summary: dict, table) -> None:
    for r in table.to_pylist():
        stats = summary["metrics"][r["model"]][r["metric"]]
        assert {c: r[c] for c in ("n", "mean", "median", "p5", "std")} == stats
        diff = summary["vs_gray"].get(r["model"], {}).get(r["metric"])
        assert r["diff_vs_gray_mean"] == (diff["mean"] if diff else None)
        assert r["protocol"] == summary["protocol"] and r["n_images"] == summary["n_images"]
    assert len(table) == len(summary["metrics"]) * len(ev.SUMMARY_METRICS)


def _images_loaded(chromium: str, report: Path, profile: Path) -> tuple[int, int]:
    """(loaded, total) <img> elements, as the page's own load handler counted them in headless Chromium."""
    cmd = [chromium, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", report.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<body[^>]*data-images-loaded="(\d+)/(\d+)"', dom)
    assert found, f"no data-images-loaded on <body>: the page's load handler did not run\n{dom[:2000]}"
    return int(found[1]), int(found[2])


def _check_report(chromium: str, report: Path, tmp_path: Path, n_sample: int, n_models: int) -> None:
    """``n_models`` counts the gray baseline."""
    page = report.read_text()
    assert "http://" not in page and "https://" not in page, "the report must not reach the network"
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert all(s.startswith("report/") for s in srcs)
    assert len(srcs) == 1 + n_sample * (1 + n_models)  # histogram + (original, gray, models...) per grid row
    loaded, total = _images_loaded(chromium, report, tmp_path / "chromium-profile")
    assert loaded == total == len(srcs)


# --------------------------------------------------------------------------- no cluster


def test_example_config_loads():
    cfg = ev.EvaluateConfig(**load_yaml(REPO / "configs" / "evaluate-example.yaml"))
    specs = ev.model_specs(cfg)
    assert [s[0] for s in specs] == ["eccv16", "siggraph17", "ours"]
    assert specs[0][2] == "official" and specs[2][1].startswith("s3://")
    assert cfg.protocol in ev.PROTOCOLS


def test_model_labels_and_their_errors():
    def specs(models, weights=None):
        return ev.model_specs(ev.EvaluateConfig(manifest="m", output="o", models=models, weights=weights or {}))

    assert specs(["s3://b/run/ckpt-a/", "b=/tmp/x/ckpt-a"]) == [("ckpt-a", "s3://b/run/ckpt-a/", None),
                                                                ("b", "/tmp/x/ckpt-a", None)]
    with pytest.raises(UserError, match="labelled"):
        specs(["s3://b/one/ckpt", "/tmp/two/ckpt"])
    with pytest.raises(UserError, match="baseline"):
        specs(["gray"])
    with pytest.raises(UserError, match="not in --models"):
        specs(["eccv16"], {"siggraph17": "official"})
    with pytest.raises(UserError, match="holds its own weights"):
        specs(["/tmp/ckpt"], {"ckpt": "official"})


def test_protocols_geometry():
    rgb = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    assert apply_protocol(rgb, "full") is rgb
    assert apply_protocol(rgb, "resize256").shape == (256, 256, 3)
    crop = apply_protocol(rgb, "center_crop256")
    assert crop.shape == (256, 256, 3) and crop.dtype == np.uint8
    with pytest.raises(ValueError, match="unknown protocol"):
        apply_protocol(rgb, "half")


def test_resources_are_shared_between_model_pools():
    cfg = ev.EvaluateConfig(manifest="m", output="o", models=["x"])
    one = plan_resources(cfg, {"CPU": 4})
    three = plan_resources(cfg, {"CPU": 4}, pools=3)
    assert one.cpus_per_actor == 2 and three.cpus_per_actor * 3 < 4
    gpu = plan_resources(cfg, {"CPU": 16, "GPU": 2}, pools=3)
    assert gpu.num_actors == 1 and gpu.gpus_per_actor * 3 <= 2


def test_stages_chain_two_input_sizes_on_plain_dicts(tmp_path):
    """Decode once with two models' L (each as its weights' preprocessing says: size and resize filter), two
    models side by side, each composed with its own ab upsampling, one metrics row per (image, model)."""
    options = storage.StorageOptions.from_env()
    uris = jobkit.put_images(str(tmp_path / "in"), {"a.jpg": jobkit.colour_images(1)[0]})
    batch = {"image_id": np.array(["a", "b"], object), "uri": np.array([uris["a.jpg"], "/nope.jpg"], object),
             "shard_id": np.array(["s", "s"], object)}
    small = _checkpoint(str(tmp_path / "small"), 1, (48, 48))
    big_pre = Preprocessing((64, 64), resize="lanczos", ab_upsample="bicubic")
    big = _checkpoint(str(tmp_path / "big"), 2, (64, 64), resize="lanczos", ab_upsample="bicubic")
    small_pre = load_model(small)[1].preprocessing
    decode = DecodeStage(options, str(tmp_path / "out"), "png", small_pre, more=(big_pre,))
    batch = decode(batch)
    assert batch["l"].shape == (2, 1, 48, 48) and batch["l_64x64_lanczos"].shape == (2, 1, 64, 64)
    source = jobkit.decode(uris["a.jpg"])
    np.testing.assert_array_equal(batch["l_64x64_lanczos"][0, 0], big_pre.model_l(source))  # its resize filter
    assert list(batch["status"]) == ["ok", "error"]
    for label, uri, column, keep in (("small", small, "l", True), ("big", big, "l_64x64_lanczos", False)):
        stage = InferenceStage(uri, input_column=column, output_column=f"ab_{label}",
                               seconds_column=f"seconds_{label}", keep_input=keep, precision="fp32")
        stage.setup()
        batch = stage(batch)
    assert "l" in batch and "l_64x64_lanczos" not in batch
    assert batch["ab_small"].shape == (2, 2, 48, 48) and batch["ab_big"].shape == (2, 2, 64, 64)
    models = (ScoredModel("gray"), ScoredModel("small", "ab_small", "seconds_small", small_pre),
              ScoredModel("big", "ab_big", "seconds_big", big_pre, "unet", "f" * 64))
    ca = c2pacerts.root_ca()
    leaf = c2pacerts.leaf(ca)
    (tmp_path / "chain.pem").write_bytes(leaf.cert_pem + ca.cert_pem)
    (tmp_path / "key.pem").write_bytes(leaf.key_pem)
    signing = ProvenanceConfig(cert=str(tmp_path / "chain.pem"), key=str(tmp_path / "key.pem"))
    out = EvalComposeStage(options, str(tmp_path / "out"), models, provenance=signing)(batch)
    assert list(out["model"]) == ["gray", "small", "big"] * 2
    assert list(out["status"]) == ["ok"] * 3 + ["error"] * 3
    assert np.isfinite(out["psnr"][:3]).all()
    data = (tmp_path / "out" / "images" / "big" / "a.png").read_bytes()
    written = jobkit.decode_bytes(data)
    np.testing.assert_array_equal(written, render.compose(source, batch["ab_big"][0], big_pre))  # the one compose
    # The evaluation's images are archival outputs too: provenance XMP, C2PA, hashes in the metrics.
    assert DIGITAL_SOURCE_TYPE.encode() in data and b"sha256:" + b"f" * 64 in data
    assert provenance.read_manifest(data, "png", ca.cert_pem)[0] == "Trusted"
    assert out["output_path"][2] == "images/big/a.png" and out["output_sha256"][2] == fixity.sha256_hex(data)
    assert out["output_path"][3] is None and out["output_bytes"][3] == -1  # the error rows: none


def _guided_checkpoint(uri: str, seed: int = 0) -> str:
    """A tiny effnet_guided at 64x64 whose hint layers are not zero, so hints change its output."""
    torch.manual_seed(seed)
    arguments = {"decoder_channels": [8]}
    module = get_entry("effnet_guided").builder(**arguments).eval()
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("hint_"):
                p.normal_(0, 0.5)
    return save_checkpoint(uri, module, architecture="effnet_guided", arguments=arguments, input_size=(64, 64))


def test_sampled_hints_reach_only_the_hinted_run_on_plain_dicts(tmp_path):
    """--hints: the decode stage paints hints sampled from each original (the same for the same image id),
    the model's no-hint run ignores them and its hinted run uses them."""
    options = storage.StorageOptions.from_env()
    uris = jobkit.put_images(str(tmp_path / "in"), {"a.png": jobkit.colour_images(1, size=(80, 60))[0]})
    batch = {"image_id": np.array(["a"], object), "uri": np.array([uris["a.png"]], object),
             "shard_id": np.array(["s"], object)}
    decode = DecodeStage(options, str(tmp_path / "out"), "png", Preprocessing((64, 64)), accepts_hints=True, hint_radius=1,
                         sample_hints=5, hint_seed=0)
    first, again = decode(dict(batch)), decode(dict(batch))
    assert 9 <= first["hint_mask"].sum() <= 45 and np.array_equal(first["hint_ab"], again["hint_ab"])
    assert np.abs(first["hint_ab"]).max() > 0
    guided = _guided_checkpoint(str(tmp_path / "guided"))
    out = {}
    for hinted in (False, True):
        stage = InferenceStage(guided, output_column="ab", keep_input=True, use_hints=hinted, precision="fp32")
        stage.setup()
        out[hinted] = stage(dict(first))["ab"]
    plain = InferenceStage(guided, output_column="ab", precision="fp32")
    plain.setup()
    no_maps = {k: v for k, v in first.items() if k not in ("hint_ab", "hint_mask")}
    assert np.array_equal(out[False], plain(no_maps)["ab"])  # use_hints=False is exactly no hints
    assert np.abs(out[True] - out[False]).max() > 1.0


def test_hinted_runs_are_labelled_and_refused_where_nothing_takes_hints(tmp_path):
    from colorize_core.errors import UserError
    from colorize_core.models import load_model

    guided = _guided_checkpoint(str(tmp_path / "guided"))
    plain = jobkit.tiny_checkpoint(str(tmp_path / "plain"), seed=1)
    runs = [(label, uri, None, load_model(uri)[1], False) for label, uri in (("g", guided), ("p", plain))]
    assert [(m[0], m[4]) for m in ev.with_hinted_runs(runs, 10)] == [("g", False), ("g_hints10", True), ("p", False)]
    assert ev.with_hinted_runs(runs, 0) == runs
    with pytest.raises(UserError, match="none of --models"):
        ev.with_hinted_runs(runs[1:], 10)
    with pytest.raises(UserError, match="taken by another"):
        ev.with_hinted_runs([*runs, ("g_hints10", plain, None, runs[1][3], False)], 10)


def test_models_without_weights_fail_clearly(tmp_path, capsys):
    uris = jobkit.put_images(str(tmp_path / "in"), {"a.jpg": jobkit.colour_images(1)[0]})
    manifest = jobkit.write_manifest(str(tmp_path / "m.parquet"), [{"image_id": "a", "uri": uris["a.jpg"]}])
    code = ev.main(["--manifest", manifest, "--output", str(tmp_path / "out"), "--models", "eccv16", "--quiet"])
    assert code == EXIT_FAILED
    err = capsys.readouterr().err
    assert "model 'eccv16' has no weights" in err and "--weights official" in err
    assert not (tmp_path / "out").exists(), "nothing may run on random weights"


# --------------------------------------------------------------------------- end to end


def test_local_evaluation_summary_baseline_and_report(ray_cluster, chromium, tmp_path):
    options = storage.StorageOptions.from_env()
    rows, payloads = _inputs(str(tmp_path), options)
    manifest = jobkit.write_manifest(str(tmp_path / "manifest.parquet"), rows)
    models = [jobkit.tiny_checkpoint(str(tmp_path / f"seed{s}"), seed=s) for s in (1, 2)]
    # A second input size, with its own resize filter and ab upsampling.
    small = _checkpoint(str(tmp_path / "small48"), 3, (48, 48), resize="lanczos", ab_upsample="bicubic")
    models.append("small=" + small)
    out = tmp_path / "out"
    code = ev.main(["--manifest", manifest, "--output", str(out), "--models", ",".join(models), "--sample-size", "3",
                    "--batch-size", "4", "--precision", "fp32", "--quiet"])
    assert code == EXIT_OK
    labels = ["gray", "seed1", "seed2", "small"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"] == "full" and summary["n_images"] == len(rows)
    assert [m["label"] for m in summary["models"]] == labels
    assert summary["models"][3]["input_size"] == [48, 48]

    table = jobkit.read_metrics(str(out))
    got = {(r["model"], r["image_id"]): r for r in table.to_pylist()}
    assert len(table) == len(got) == len(rows) * len(labels), "one row per (image, model)"
    assert set(table.column_names) >= {"image_id", "model", "status", "error", "psnr", "ssim", "rmse",
                                       "colorfulness", "deltae2000", "width", "height", "seconds"}
    for m in labels:
        assert got[(m, "absent")]["status"] == "error" and "missing object" in got[(m, "absent")]["error"]
        assert got[(m, "gray")]["status"] == "error" and "not a colour image" in got[(m, "gray")]["error"]
    _recomputed_summary_matches(summary, table, labels, 2000, 0)
    _summary_parquet_matches(summary, storage.read_parquet_table(str(out / "summary.parquet")))

    # The gray baseline scores exactly the grayscale image itself: L alone -> sRGB, against the original, through
    # the one compose (within a code of the exact conversion). And a model's scored output is what training
    # validation and the CLI produce from the same weights: the same path, its resize filter included.
    module, info = load_model(small)
    for image_id, payload in payloads.items():
        if image_id == "gray":
            continue
        original = np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))
        lab = np.zeros(original.shape, np.float32)
        lab[..., 0] = color.srgb_to_l(original)
        l_only = render.gray(original)
        assert np.abs(l_only.astype(int) - color.lab_to_srgb_uint8(lab)).max() <= 1
        row = got[("gray", image_id)]
        assert row["psnr"] == pytest.approx(peak_signal_noise_ratio(original, l_only, data_range=255), abs=1e-9)
        assert (row["width"], row["height"]) == (64, 48)
        for m in labels:
            data = (out / "images" / m / f"{image_id}.png").read_bytes()
            assert DIGITAL_SOURCE_TYPE.encode() in data  # the evaluation's images declare themselves too
            assert got[(m, image_id)]["output_sha256"] == fixity.sha256_hex(data)
        scored = jobkit.decode(str(out / "images" / "small" / f"{image_id}.png"))
        assert np.abs(scored.astype(int) - render.colorize(module, [original], info.preprocessing)[0]).max() <= 1
        assert got[("small", image_id)]["psnr"] == pytest.approx(metrics.psnr(scored, original), abs=1e-9)

    _check_report(chromium, out / "report.html", tmp_path, n_sample=3, n_models=len(labels))
    from colorize_core import cli

    assert cli.main(["verify", "--output", str(out)]) == 0  # an evaluation's outputs are checkable as a run's


def test_evaluation_with_sampled_hints_scores_each_hint_model_twice(ray_cluster, tmp_path):
    """--hints 4: the guided model is scored without hints and as <label>_hints4, the plain one once; the
    summary records the sampler and the paired difference the hints make; a rerun gives the same scores."""
    options = storage.StorageOptions.from_env()
    rows, _ = _inputs(str(tmp_path), options, n=3)
    manifest = jobkit.write_manifest(str(tmp_path / "manifest.parquet"), rows)
    models = f"g={_guided_checkpoint(str(tmp_path / 'guided'))},p={jobkit.tiny_checkpoint(str(tmp_path / 'p'), seed=1)}"
    scores = []
    for _ in range(2):
        out = tmp_path / "out"
        assert ev.main(["--manifest", manifest, "--output", str(out), "--models", models, "--hints", "4",
                        "--sample-size", "0", "--quiet"]) == EXIT_OK
        summary = json.loads((out / "summary.json").read_text())
        scores.append({(r["model"], r["image_id"]): r["psnr"] for r in jobkit.read_metrics(str(out)).to_pylist()
                       if r["status"] == "ok"})
    assert [(m["label"], m.get("hints")) for m in summary["models"]] == [("gray", None), ("g", 0), ("g_hints4", 4),
                                                                          ("p", 0)]
    assert summary["hints"]["n"] == 4 and summary["hints"]["seed"] == 0
    assert set(summary["vs_no_hints"]) == {"g_hints4"} and summary["vs_no_hints"]["g_hints4"]["without_hints"] == "g"
    diffs = [scores[0][("g_hints4", i)] - scores[0][("g", i)] for i in ("c0", "c1", "c2")]
    assert summary["vs_no_hints"]["g_hints4"]["psnr"]["mean"] == pytest.approx(np.mean(diffs), rel=1e-9)
    assert any(abs(d) > 1e-3 for d in diffs)  # the hints reached the model
    assert scores[0] == scores[1]  # the same sampled hints every run
    assert "_hints4" in (out / "report.html").read_text()


def test_s3_evaluation_center_crop_and_report(ray_cluster, chromium, s3_server, s3_prefix, tmp_path):
    options = s3_server.options
    rows, _ = _inputs(s3_prefix, options, n=4)
    manifest = jobkit.write_manifest(storage.join(s3_prefix, "manifest.parquet"), rows, options)
    models = [jobkit.tiny_checkpoint(storage.join(s3_prefix, f"ckpt{seed}"), options, seed=seed) for seed in (1, 2)]
    output = storage.join(s3_prefix, "eval")
    cfg = ev.EvaluateConfig(manifest=manifest, output=output, models=models, protocol="center_crop256",
                            sample_size=12, bootstrap_resamples=500,
                            storage={"endpoint_url": s3_server.endpoint_url, "region": s3_server.region,
                                     "access_key_id": s3_server.key, "secret_access_key": s3_server.secret})
    summary = ev.run(cfg, progress=False)
    labels = ["gray", "ckpt1", "ckpt2"]
    table = jobkit.read_metrics(output, options)
    assert len(table) == len(rows) * len(labels)
    ok = [r for r in table.to_pylist() if r["status"] == "ok"]
    assert len(ok) == 4 * len(labels) and all((r["width"], r["height"]) == (256, 256) for r in ok)
    on_s3 = json.loads(storage.read_bytes(storage.join(output, "summary.json"), options))
    assert on_s3["protocol"] == "center_crop256" and on_s3["metrics"] == summary["metrics"]
    _recomputed_summary_matches(on_s3, table, labels, 500, 0)
    _summary_parquet_matches(on_s3, storage.read_parquet_table(storage.join(output, "summary.parquet"), options))
    assert s3_server.secret not in storage.read_bytes(storage.join(output, "config.json"), options).decode()

    # Download report.html and report/ only: the page must be complete with nothing else beside it.
    local = tmp_path / "downloaded"
    for uri in [storage.join(output, "report.html"), *storage.list_files(storage.join(output, "report"), options)]:
        target = local / uri[len(output.rstrip("/")) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(storage.read_bytes(uri, options))
    _check_report(chromium, local / "report.html", tmp_path, n_sample=4, n_models=len(labels))
    shutil.rmtree(local)
