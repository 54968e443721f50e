"""The main job end to end on the session's Ray cluster, on local paths and on the real S3 server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from colorize_core import imageio, metrics, storage
from colorize_core.config import ColorizeConfig
from colorize_core.stages import COLORFULNESS_STEP
from jobs import colorize as job
from tests import jobkit
from tests.corpus import awkward_corpus

REPO = Path(__file__).resolve().parents[1]


def _mixed_inputs(prefix: str, options) -> tuple[list[dict], dict[str, bool]]:
    """Good colour and gray images, a reference_uri pair, and the awkward corpus (good and broken)."""
    images = {f"colour{i}.{'png' if i % 2 else 'jpg'}": b for i, b in enumerate(jobkit.colour_images(4))}
    images["gray.png"] = jobkit.gray_image()
    corpus = awkward_corpus()
    images.update({f"awk_{name}": payload for name, (payload, _) in corpus.items()})
    uris = jobkit.put_images(storage.join(prefix, "in"), images, options)
    expected_ok = {name.replace(".", "_"): True for name in images if not name.startswith("awk_")}
    expected_ok.update({f"awk_{n}".replace(".", "_"): ok for n, (_, ok) in corpus.items()})
    rows = [{"image_id": name.replace(".", "_"), "uri": uri, "reference_uri": None} for name, uri in uris.items()]
    # A gray input scored against a colour ground truth of the same geometry.
    colour = jobkit.colour_images(1, size=(80, 60))[0]
    gray_of_colour = imageio.encode_image(
        np.repeat(np.asarray(imageio.decode_image(colour).rgb).mean(-1, keepdims=True).astype(np.uint8), 3, -1),
        "png")
    ref_uris = jobkit.put_images(storage.join(prefix, "ref"), {"truth.jpg": colour, "input.png": gray_of_colour},
                                 options)
    rows.append({"image_id": "with/reference", "uri": ref_uris["input.png"], "reference_uri": ref_uris["truth.jpg"]})
    expected_ok["with/reference"] = True
    rows.append({"image_id": "absent", "uri": storage.join(prefix, "in", "does-not-exist.jpg"), "reference_uri": None})
    expected_ok["absent"] = False
    return rows, expected_ok


def _check_outputs(cfg: ColorizeConfig, rows: list[dict], expected_ok: dict[str, bool], options) -> None:
    table = jobkit.read_metrics(cfg.output, options).to_pylist()
    by_id = {r["image_id"]: r for r in table}
    assert len(table) == len(rows) == len(by_id), "exactly one metrics row per manifest row"
    assert set(by_id) == {r["image_id"] for r in rows}
    for row in rows:
        got = by_id[row["image_id"]]
        assert (got["status"] == "ok") == expected_ok[row["image_id"]], got
        out_uri = storage.join(cfg.output, "images", f"{row['image_id']}.jpg")
        if got["status"] != "ok":
            assert got["error"] and "\n" not in got["error"] and len(got["error"]) <= 300
            assert not storage.exists(out_uri, options)
            continue
        assert got["error"] is None and got["model"]
        src = jobkit.decode(row["uri"], options)
        out = jobkit.decode(out_uri, options)
        assert out.shape[:2] == src.shape[:2] == (got["height"], got["width"])
        if row.get("reference_uri"):
            reference = jobkit.decode(row["reference_uri"], options)
            assert got["metrics_against"] == "reference_uri"
        elif not imageio.decode_image(storage.read_bytes(row["uri"], options)).is_gray:
            reference = src if src.dtype == np.uint8 else np.rint(src / 257).astype(np.uint8)
            assert got["metrics_against"] == "input"
        else:
            reference = None
            assert got["psnr"] is None and got["metrics_against"] is None
        recomputed = metrics.compute_metrics(out, reference, COLORFULNESS_STEP)  # the job's lattice
        for name, value in recomputed.items():
            if value is None:
                assert got[name] is None
            elif reference is None:  # scored on the pixels encoded, not the file: the JPEG moves it a little
                # (0.02-0.17% on real scans, docs/cost.md; a few % on these images of a few thousand pixels)
                assert got[name] == pytest.approx(value, rel=0.05, abs=1.0), name
            else:  # with a reference, the delivered file is scored
                assert got[name] == pytest.approx(value, abs=1e-6), name


def test_local_run_layout_metrics_and_bad_input(ray_cluster, tmp_path):
    options = storage.StorageOptions.from_env()
    rows, expected_ok = _mixed_inputs(str(tmp_path), options)
    model = jobkit.tiny_checkpoint(str(tmp_path / "ckpt"))
    jobkit.write_manifest(str(tmp_path / "manifest" / "part-0.parquet"), rows)
    cfg = ColorizeConfig(manifest=str(tmp_path / "manifest"), output=str(tmp_path / "out"), model=model,
                         shard_rows=7, cpu={"batch_size": 4}, inference={"batch_size": 4})
    summary = job.run(cfg, progress=False)
    n_ok = sum(expected_ok.values())
    assert summary["counts"] == {"total": len(rows), "ok": n_ok, "error": len(rows) - n_ok, "transient": 0,
                                 "skipped": 0}
    _check_outputs(cfg, rows, expected_ok, options)
    out = tmp_path / "out"
    assert (out / "config.json").exists() and (out / "summary.json").exists()
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["counts"] == summary["counts"] and len(on_disk["weights_sha256"]) == 64
    assert {"ray", "torch", "numpy"} <= set(on_disk["packages"])
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["model"] == model and resolved["shard_rows"] == 7
    n_shards = -(-len(rows) // 7)
    assert len(list((out / "metrics").glob("*.parquet"))) == n_shards
    assert len(list((out / "_state" / "completions").glob("*.done"))) == n_shards

    # Same command again: everything is complete, nothing is redone or rewritten.
    before = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.jpg")}
    again = job.run(cfg, progress=False)
    assert again["counts"]["skipped"] == len(rows) and again["counts"]["ok"] == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.jpg")} == before

    # --overwrite redoes all of it.
    redo = job.run(cfg.model_copy(update={"overwrite": True}), progress=False)
    assert redo["counts"]["skipped"] == 0 and redo["counts"]["ok"] == n_ok
    _check_outputs(cfg, rows, expected_ok, options)


def test_s3_run_and_no_secret_leaks(ray_cluster, s3_server, s3_prefix, capfd, monkeypatch):
    options = s3_server.options
    rows, expected_ok = _mixed_inputs(s3_prefix, options)
    rows = [r for r in rows if not r["image_id"].startswith("awk_")][:6] + [rows[-1]]
    model = jobkit.tiny_checkpoint(storage.join(s3_prefix, "ckpt"), options)
    manifest = jobkit.write_manifest(storage.join(s3_prefix, "manifest.parquet"), rows, options)
    output = storage.join(s3_prefix, "out")
    cfg = ColorizeConfig(manifest=manifest, output=output, model=model, output_format="jpeg",
                         storage={"endpoint_url": s3_server.endpoint_url, "region": s3_server.region,
                                  "access_key_id": s3_server.key, "secret_access_key": s3_server.secret})
    summary = job.run(cfg, progress=True)
    assert summary["counts"]["total"] == len(rows)
    _check_outputs(cfg, rows, expected_ok, options)
    config_json = storage.read_bytes(storage.join(output, "config.json"), options).decode()
    written = config_json + storage.read_bytes(storage.join(output, "summary.json"), options).decode()
    captured = capfd.readouterr()
    for secret in (s3_server.secret, s3_server.key):
        assert secret not in written
        assert secret not in captured.out + captured.err
    assert json.loads(config_json)["storage"]["secret_access_key"] == "***"

    # Fixity on S3: `colorize verify` re-hashes the objects; a deleted one is reported, the bag lands beside.
    from colorize_core import cli

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    assert cli.main(["verify", "--output", output]) == 0
    ok = sorted(r["output_path"] for r in jobkit.read_metrics(output, options).to_pylist() if r["status"] == "ok")
    storage.remove(storage.join(output, ok[0]), options)
    assert cli.main(["verify", "--output", output, "--bagit"]) == 1
    said = capfd.readouterr().out
    assert f"missing: {ok[0]}" in said and f"{len(ok)} outputs checked: 1 missing, 0 changed" in said
    bag = storage.read_bytes(storage.join(output, "manifest-sha256.txt"), options).decode().splitlines()
    assert sorted(line.split("  ", 1)[1] for line in bag) == ok


def test_manifest_errors_fail_fast(tmp_path):
    bad = jobkit.write_manifest(str(tmp_path / "m.parquet"), [
        {"image_id": "a", "uri": "x.jpg"}, {"image_id": "a", "uri": "y.jpg"},
        {"image_id": "../escape", "uri": "z.jpg"}, {"image_id": "/abs", "uri": "z.jpg"},
        {"image_id": "ctl\x07", "uri": "z.jpg"}])
    code = job.main(["--manifest", bad, "--output", str(tmp_path / "out"), "--quiet"])
    assert code == job.EXIT_FAILED
    assert not (tmp_path / "out" / "images").exists()


def test_manifest_error_message_names_rows(tmp_path, capsys):
    bad = jobkit.write_manifest(str(tmp_path / "m.parquet"), [
        {"image_id": "a", "uri": "x.jpg"}, {"image_id": "a", "uri": "y.jpg"}, {"image_id": "../up", "uri": "z"}])
    job.main(["--manifest", bad, "--output", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert "row 1" in err and "duplicate image_id 'a'" in err and "row 2" in err and "'../up'" in err


def test_error_fraction_exit_code(ray_cluster, tmp_path):
    uris = jobkit.put_images(str(tmp_path / "in"), {"good.jpg": jobkit.colour_images(1)[0], "bad.jpg": b"nope"})
    manifest = jobkit.write_manifest(str(tmp_path / "m.parquet"),
                                     [{"image_id": k.split(".")[0], "uri": v} for k, v in uris.items()])
    model = jobkit.tiny_checkpoint(str(tmp_path / "ckpt"))
    args = ["--manifest", manifest, "--model", model, "--quiet"]
    assert job.main([*args, "--output", str(tmp_path / "o1"), "--max-error-fraction", "0.6"]) == job.EXIT_OK
    # The default (0.1) lets a few percent of bad scans through, not half of them.
    assert job.main([*args, "--output", str(tmp_path / "o2")]) == job.EXIT_TOO_MANY_ERRORS
    # A run in which every processed row failed never exits 0, whatever the setting.
    bad = jobkit.write_manifest(str(tmp_path / "bad.parquet"), [{"image_id": "bad", "uri": uris["bad.jpg"]}])
    assert job.main(["--manifest", bad, "--model", model, "--quiet", "--output", str(tmp_path / "o3"),
                     "--max-error-fraction", "1.0"]) == job.EXIT_TOO_MANY_ERRORS


def test_rerun_with_other_settings_is_refused(ray_cluster, tmp_path, capsys):
    uris = jobkit.put_images(str(tmp_path / "in"), {"a.jpg": jobkit.colour_images(1)[0]})
    manifest = jobkit.write_manifest(str(tmp_path / "m.parquet"), [{"image_id": "a", "uri": uris["a.jpg"]}])
    model = jobkit.tiny_checkpoint(str(tmp_path / "ckpt"))
    base = ["--manifest", manifest, "--model", model, "--output", str(tmp_path / "o"), "--quiet"]
    assert job.main(base) == job.EXIT_OK
    capsys.readouterr()
    assert job.main([*base, "--output-format", "png"]) == job.EXIT_FAILED
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "other settings" in err and "--overwrite" in err
    assert job.main([*base, "--output-format", "png", "--overwrite"]) == job.EXIT_OK
    assert (tmp_path / "o" / "images" / "a.png").exists()


def _job_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


@pytest.mark.slow
def test_resume_after_driver_killed(ray_cluster, tmp_path):
    """SIGKILL the driver mid-run, run the same command again: every image exactly once, nothing
    rewritten, one metrics row per image_id."""
    import ray

    n = 48
    images = {f"img{i:03d}.jpg": b for i, b in enumerate(jobkit.colour_images(n, size=(640, 480)))}
    uris = jobkit.put_images(str(tmp_path / "in"), images)
    rows = [{"image_id": k.split(".")[0], "uri": v} for k, v in uris.items()]
    manifest = jobkit.write_manifest(str(tmp_path / "m.parquet"), rows)
    model = jobkit.tiny_checkpoint(str(tmp_path / "ckpt"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "jobs.colorize", "--manifest", manifest, "--output", str(out), "--model", model,
           "--shard-rows", "2", "--batch-size", "2", "--quiet",
           "--ray-address", ray.get_runtime_context().gcs_address]
    done_before = jobkit.kill_after_markers(cmd, _job_env(), out)
    assert done_before < n // 2, "the kill came too late to test resume"
    first = {p.name: p.stat().st_mtime_ns for p in (out / "images").glob("*.jpg")}

    rerun = subprocess.run(cmd, cwd=REPO, env=_job_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    result = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert result["skipped"] == 2 * done_before and result["ok"] == n - 2 * done_before
    table = jobkit.read_metrics(str(out)).to_pylist()
    ids = [r["image_id"] for r in table]
    assert sorted(ids) == sorted(r["image_id"] for r in rows) and len(ids) == len(set(ids))
    assert all(r["status"] == "ok" and r["psnr"] is not None for r in table)
    final = {p.name: p.stat().st_mtime_ns for p in (out / "images").glob("*.jpg")}
    assert len(final) == n
    assert all(final[name] == mtime for name, mtime in first.items()), "an image was written twice"


@pytest.mark.slow
@pytest.mark.integration
def test_two_node_cluster(tmp_path):
    """The same job on a 2-node ray.cluster_utils.Cluster (in a subprocess: the session cluster is
    already initialised in this process)."""
    images = {f"img{i}.jpg": b for i, b in enumerate(jobkit.colour_images(12))}
    uris = jobkit.put_images(str(tmp_path / "in"), images)
    manifest = jobkit.write_manifest(str(tmp_path / "m.parquet"),
                                     [{"image_id": k.split(".")[0], "uri": v} for k, v in uris.items()])
    model = jobkit.tiny_checkpoint(str(tmp_path / "ckpt"))
    script = textwrap.dedent(f"""
        import json, ray
        from ray.cluster_utils import Cluster
        from colorize_core.config import ColorizeConfig
        from jobs import colorize as job
        cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 2, "include_dashboard": False,
                          "object_store_memory": 256 * 1024**2}})
        cluster.add_node(num_cpus=2, object_store_memory=256 * 1024**2)
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        nodes = [n for n in ray.nodes() if n["Alive"]]
        cfg = ColorizeConfig(manifest={manifest!r}, output={str(tmp_path / 'out')!r}, model={model!r},
                             shard_rows=3, cpu={{"batch_size": 2}}, inference={{"batch_size": 2}})
        summary = job.run(cfg, progress=False)
        print(json.dumps({{"nodes": len(nodes), "cpus": ray.cluster_resources()["CPU"], **summary["counts"]}}))
        ray.shutdown()
        cluster.shutdown()
    """)
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=_job_env(), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["nodes"] == 2 and result["cpus"] == 4
    assert result["ok"] == 12 and result["error"] == 0
    assert len(jobkit.read_metrics(str(tmp_path / "out"))) == 12


def test_siggraph17_hints_reach_the_model(ray_cluster, tmp_path):
    """A manifest `hints` column (list<struct<x, y, a, b>>) travels through Ray Data to SIGGRAPH17 and
    changes its output; rows without hints run automatic colorization."""
    import torch

    from tests.test_models import SIGGRAPH17_LAYOUT, official_state_dict

    # Scaled random weights in the official layout: PyTorch's default init saturates the tanh head,
    # which makes any input, hints included, hardly matter.
    weights = tmp_path / "siggraph17-random.pth"
    torch.save(official_state_dict(SIGGRAPH17_LAYOUT), weights)
    gray = jobkit.gray_image((64, 64))
    uris = jobkit.put_images(str(tmp_path / "in"), {"g.png": gray})
    hints = [{"x": 0.5, "y": 0.5, "a": 60.0, "b": 60.0}, {"x": 0.1, "y": 0.9, "a": -40.0, "b": 30.0}]
    manifest = jobkit.write_manifest(str(tmp_path / "m.parquet"), [
        {"image_id": "auto", "uri": uris["g.png"], "hints": None},
        {"image_id": "hinted", "uri": uris["g.png"], "hints": hints},
    ])
    cfg = ColorizeConfig(manifest=manifest, output=str(tmp_path / "out"), model="siggraph17", weights=str(weights),
                         output_format="png", inference={"precision": "fp32"})
    summary = job.run(cfg, progress=False)
    assert summary["counts"]["ok"] == 2
    auto = jobkit.decode(str(tmp_path / "out" / "images" / "auto.png")).astype(int)
    hinted = jobkit.decode(str(tmp_path / "out" / "images" / "hinted.png")).astype(int)
    assert auto.shape == hinted.shape == (64, 64, 3)
    diff = np.abs(auto - hinted).max(-1)
    assert diff.max() > 10, "the hints did not change the output"
    assert diff[28:36, 28:36].mean() > diff[:8, 40:].mean(), "the change is largest where the hint is"


def test_waves_of_shards_cover_every_row_once(ray_cluster, tmp_path):
    """A manifest larger than shards_per_dataset runs as several Ray Datasets, one progress count."""
    images = {f"w{i}.jpg": b for i, b in enumerate(jobkit.colour_images(9, size=(48, 40)))}
    uris = jobkit.put_images(str(tmp_path / "in"), images)
    manifest = jobkit.write_manifest(str(tmp_path / "m.parquet"),
                                     [{"image_id": k.split(".")[0], "uri": v} for k, v in uris.items()])
    cfg = ColorizeConfig(manifest=manifest, output=str(tmp_path / "out"), model=jobkit.tiny_checkpoint(
        str(tmp_path / "ckpt")), shard_rows=2, shards_per_dataset=2)
    summary = job.run(cfg, progress=False)
    assert summary["counts"] == {"total": 9, "ok": 9, "error": 0, "transient": 0, "skipped": 0}
    ids = [r["image_id"] for r in jobkit.read_metrics(cfg.output).to_pylist()]
    assert sorted(ids) == sorted(k.split(".")[0] for k in images)
    assert len(list((tmp_path / "out" / "_state" / "completions").glob("*.done"))) == 5


@pytest.mark.slow
def test_default_run_is_quiet(tmp_path):
    """A plain run on a fresh local Ray prints no token-auth notice, no C++ log lines and no Ray Data
    progress blocks: on a non-terminal, at most our own progress line(s) and the JSON result."""
    env = _job_env()
    env.pop("RAY_ADDRESS", None)
    res = subprocess.run([sys.executable, "-m", "jobs.colorize", "--output", str(tmp_path / "out"), "--limit", "1"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    noise = [line for line in res.stderr.splitlines() if not line.startswith("[colorize] ")]
    assert noise == [], noise
    assert json.loads(res.stdout.strip().splitlines()[-1])["ok"] == 1
