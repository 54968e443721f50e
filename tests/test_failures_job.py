"""Failures that are not about an input never become finished rows (issue 15): an output that cannot be written
(a file where ``images/`` should be, a store that refuses image writes, a symbolic link planted in the output)
and an exception nobody expected (injected with the test-only hook ``COLORIZE_TEST_FAULT``, see
colorize_core/ray_adapter.py: in a stage's batches, or in an inference actor's setup) each stop the run with one line on stderr, not exit 0, no marker and no metrics
for the shards they hit; a plain rerun after the fix produces every image. A corrupt input among good ones is
still a row, and the run exits 0.

The colorize job runs in-process on the session Ray cluster (and the real S3 server); one test runs it as a
command of its own, so that everything it prints is seen.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from colorize_core import storage
from colorize_core.ray_adapter import FAULT_ENV
from jobs import colorize as job
from tests import jobkit
from tests.faultproxy import FaultProxy

REPO = Path(__file__).resolve().parents[1]
N = 6  # images; shards of 2 rows


def _inputs(prefix: str, options=None, ids: list[str] | None = None) -> tuple[str, list[str]]:
    ids = ids or [f"img{i}" for i in range(N)]
    payloads = jobkit.colour_images(len(ids), size=(64, 48))
    uris = jobkit.put_images(storage.join(prefix, "in"), {f"{i}.jpg": b for i, b in zip(range(len(ids)), payloads)},
                             options)
    rows = [{"image_id": image_id, "uri": uris[f"{i}.jpg"]} for i, image_id in enumerate(ids)]
    return jobkit.write_manifest(storage.join(prefix, "m.parquet"), rows, options), ids


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return jobkit.tiny_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "ckpt"))


def _run(capsys, manifest: str, output: str, model: str, *extra: str) -> tuple[int, list[str]]:
    code = job.main(["--manifest", manifest, "--output", output, "--model", model, "--shard-rows", "2", "--quiet",
                     *extra])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, [line for line in err.splitlines() if line.strip()]


def _nothing_recorded(output: str, options=None) -> None:
    """No shard the failure hit is recorded as finished: no marker, no metrics (so no error rows)."""
    assert storage.list_files(storage.join(output, "_state", "completions"), options) == []
    assert storage.list_files(storage.join(output, "metrics"), options) == []


def _every_image_ok(output: str, ids: list[str], options=None) -> None:
    rows = jobkit.read_metrics(output, options).to_pylist()
    assert sorted(r["image_id"] for r in rows) == sorted(ids), "one metrics row per image"
    assert all(r["status"] == "ok" for r in rows), [(r["image_id"], r["error"]) for r in rows if r["status"] != "ok"]
    for image_id in ids:
        assert jobkit.decode(storage.join(output, "images", f"{image_id}.jpg"), options).shape == (48, 64, 3)
    assert len(storage.list_files(storage.join(output, "_state", "completions"), options)) == N // 2


def test_a_file_where_images_should_be_stops_the_run_and_a_plain_rerun_finishes(ray_cluster, tmp_path, model,
                                                                                 capsys):
    manifest, ids = _inputs(str(tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    (out / "images").write_text("someone's notes")
    code, err = _run(capsys, manifest, str(out), model)
    assert code == job.EXIT_FAILED
    assert len(err) == 1 and err[0].startswith(f"error: cannot write {out}/images/img"), err
    assert err[0].endswith(f": '{out}/images' is a file where a folder is needed; move it away and rerun the "
                           f"same command"), err
    _nothing_recorded(str(out))

    (out / "images").unlink()
    code, err = _run(capsys, manifest, str(out), model)
    assert (code, err) == (job.EXIT_OK, [])
    _every_image_ok(str(out), ids)


def test_a_symlink_planted_in_the_output_is_never_followed(ray_cluster, tmp_path, model, capsys):
    manifest, ids = _inputs(str(tmp_path), ids=[f"box/p{i}" for i in range(N)])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "images" / "box").symlink_to(elsewhere)
    code, err = _run(capsys, manifest, str(out), model)
    assert code == job.EXIT_FAILED
    assert len(err) == 1 and f": '{out}/images/box' is a symbolic link inside the output, which writes never " \
                               f"follow; remove it and rerun the same command" in err[0], err
    assert list(elsewhere.iterdir()) == [], "nothing was written through the link"
    _nothing_recorded(str(out))

    (out / "images" / "box").unlink()
    code, err = _run(capsys, manifest, str(out), model)
    assert (code, err) == (job.EXIT_OK, [])
    _every_image_ok(str(out), ids)
    assert list(elsewhere.iterdir()) == []


def test_a_store_that_refuses_image_writes_stops_the_run_and_a_plain_rerun_finishes(ray_cluster, s3_server,
                                                                                     s3_prefix, tmp_path, model,
                                                                                     capsys):
    options = s3_server.options
    manifest, ids = _inputs(s3_prefix, options)
    output = storage.join(s3_prefix, "out")
    proxy = FaultProxy(s3_server.port)
    try:
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump({"storage": {
            "endpoint_url": proxy.endpoint_url, "region": s3_server.region, "access_key_id": s3_server.key,
            "secret_access_key": s3_server.secret}}))
        # The bucket refuses every image PUT (a policy, a store that went read-only); the rest of the output is
        # writable, so only the image writes fail.
        proxy.fail("403", seconds=3600, match="PUT /" + output[len("s3://"):] + "/images/")
        code, err = _run(capsys, manifest, output, model, "--config", str(config))
        assert code == job.EXIT_FAILED and proxy.injected.get("403")
        assert len(err) == 1 and err[0].startswith(f"error: cannot write {output}/images/img"), err
        assert err[0].endswith(": permission denied; give the job write access there (or another --output) and "
                               "rerun the same command"), err
        _nothing_recorded(output, options)

        proxy.clear()
        code, err = _run(capsys, manifest, output, model, "--config", str(config))
    finally:
        proxy.close()
    assert (code, err) == (job.EXIT_OK, [])
    _every_image_ok(output, ids, options)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder: nothing to refuse")
def test_a_read_only_output_folder_stops_the_run(ray_cluster, tmp_path, model, capsys):
    manifest, ids = _inputs(str(tmp_path))
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "images").chmod(0o555)
    try:
        code, err = _run(capsys, manifest, str(out), model)
        assert code == job.EXIT_FAILED and len(err) == 1 and "permission denied" in err[0], err
        _nothing_recorded(str(out))
    finally:
        (out / "images").chmod(0o755)
    code, err = _run(capsys, manifest, str(out), model)
    assert (code, err) == (job.EXIT_OK, [])
    _every_image_ok(str(out), ids)


@pytest.mark.parametrize("stage", ["DecodeStage", "InferenceStage", "InferenceStage.setup", "ComposeStage"])
def test_an_exception_in_a_stage_stops_the_run_naming_the_stage(ray_cluster, tmp_path, model, capsys, monkeypatch,
                                                               stage):
    manifest, ids = _inputs(str(tmp_path))
    out = str(tmp_path / "out")
    monkeypatch.setenv(FAULT_ENV, stage)
    code, err = _run(capsys, manifest, out, model)
    assert code == job.EXIT_FAILED
    assert err == [f"error: internal error in {stage}: RuntimeError: fault injected by {FAULT_ENV}={stage} "
                   f"(rerun with --verbose for the traceback)"]
    _nothing_recorded(out)
    from ray.data import DataContext

    ctx = DataContext.get_current()  # what makes the first failing block stop the run, as itself
    assert ctx.max_errored_blocks == 0 and ctx.raise_original_map_exception and not ctx.actor_task_retry_on_errors
    if stage == "ComposeStage":  # --verbose adds the worker's traceback above the same line
        job.main(["--manifest", manifest, "--output", out, "--model", model, "--shard-rows", "2", "--quiet",
                  "--verbose"])
        verbose = capsys.readouterr().err
        assert "Traceback" in verbose and "ray_adapter.py" in verbose
        assert verbose.rstrip().splitlines()[-1] == f"error: internal error in {stage}: RuntimeError: fault " \
                                                    f"injected by {FAULT_ENV}={stage}"
        _nothing_recorded(out)

    monkeypatch.delenv(FAULT_ENV)
    code, err = _run(capsys, manifest, out, model)
    assert (code, err) == (job.EXIT_OK, [])
    _every_image_ok(out, ids)


def test_a_corrupt_input_among_good_ones_is_a_row_and_the_run_exits_0(ray_cluster, tmp_path, model, capsys):
    manifest, ids = _inputs(str(tmp_path), ids=[f"img{i:02d}" for i in range(11)])
    table = pq.read_table(manifest).to_pylist()  # and one corrupt scan added
    (tmp_path / "in" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    table.append({"image_id": "bad", "uri": str(tmp_path / "in" / "bad.jpg")})
    jobkit.write_manifest(manifest, table)
    out = str(tmp_path / "out")
    code, err = _run(capsys, manifest, out, model)
    assert (code, err) == (job.EXIT_OK, []), "1 corrupt scan in 12 is under the default max_error_fraction 0.1"
    got = {r["image_id"]: r for r in jobkit.read_metrics(out).to_pylist()}
    assert sorted(got) == sorted([*ids, "bad"])
    assert got["bad"]["status"] == "error" and got["bad"]["error"] == "truncated image data"
    assert all(got[i]["status"] == "ok" for i in ids)
    assert len(storage.list_files(storage.join(out, "_state", "completions"))) == 6


@pytest.mark.slow
def test_as_a_command_the_failure_is_one_line_on_stderr_and_nothing_else(tmp_path, model):
    """The job as users start it (its own Ray): stderr holds the one line, no Ray noise, no traceback. (The
    rerun after the fix is the in-process tests' part.)"""
    manifest, ids = _inputs(str(tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    (out / "images").write_text("in the way")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "jobs.colorize", "--manifest", manifest, "--output", str(out), "--model", model,
           "--shard-rows", "2"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot write {out}/images/"), proc.stderr
    assert not (out / "_state" / "completions").exists() or not list((out / "_state" / "completions").iterdir())
