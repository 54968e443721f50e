"""Run identity in the colorize job: what makes two pieces of work the same, on the real S3 server."""

from __future__ import annotations

import pytest

from colorize_core import runstate, storage
from colorize_core.config import ColorizeConfig
from colorize_core.errors import UserError
from colorize_core.pipeline import run
from tests import jobkit


def _s3_cfg(s3, **kw) -> ColorizeConfig:
    return ColorizeConfig(storage={"endpoint_url": s3.endpoint_url, "region": s3.region,
                                   "access_key_id": s3.key, "secret_access_key": s3.secret},
                          cpu={"batch_size": 4}, inference={"batch_size": 4}, **kw)


def _ids(output: str, options) -> list[str]:
    return sorted(r["image_id"] for r in jobkit.read_metrics(output, options).to_pylist())


def test_two_manifests_with_the_same_relative_name_are_both_processed(ray_cluster, s3_server, s3_prefix):
    options = s3_server.options
    uris = jobkit.put_images(storage.join(s3_prefix, "in"),
                             {f"i{i}.jpg": b for i, b in enumerate(jobkit.colour_images(4, size=(40, 32)))}, options)
    rows = [{"image_id": f"i{i}", "uri": uris[f"i{i}.jpg"]} for i in range(4)]
    a = jobkit.write_manifest(storage.join(s3_prefix, "manifests/a/manifest.parquet"), rows[:2], options)
    b = jobkit.write_manifest(storage.join(s3_prefix, "manifests/b/manifest.parquet"), rows[2:], options)
    model = jobkit.tiny_checkpoint(storage.join(s3_prefix, "ckpt"), options)
    out = storage.join(s3_prefix, "out")
    first = run(_s3_cfg(s3_server, manifest=a, output=out, model=model), progress=False)
    second = run(_s3_cfg(s3_server, manifest=b, output=out, model=model), progress=False)
    assert first["counts"]["ok"] == 2 and second["counts"]["ok"] == 2 and second["counts"]["skipped"] == 0
    assert _ids(out, options) == ["i0", "i1", "i2", "i3"]
    # The same manifest rewritten with other rows at the same URI is other work too.
    jobkit.write_manifest(a, [rows[3] | {"image_id": "i3-again"}], options)
    third = run(_s3_cfg(s3_server, manifest=a, output=out, model=model), progress=False)
    assert third["counts"]["ok"] == 1 and "i3-again" in _ids(out, options)


def test_limit_then_full_run_leaves_one_current_marker_per_shard(ray_cluster, s3_server, s3_prefix):
    options = s3_server.options
    uris = jobkit.put_images(storage.join(s3_prefix, "in"),
                             {f"i{i}.jpg": b for i, b in enumerate(jobkit.colour_images(5, size=(40, 32)))}, options)
    manifest = jobkit.write_manifest(storage.join(s3_prefix, "m.parquet"),
                                     [{"image_id": f"i{i}", "uri": uris[f"i{i}.jpg"]} for i in range(5)], options)
    model = jobkit.tiny_checkpoint(storage.join(s3_prefix, "ckpt"), options)
    out = storage.join(s3_prefix, "out")
    cfg = _s3_cfg(s3_server, manifest=manifest, output=out, model=model, shard_rows=3)
    assert run(cfg.model_copy(update={"limit": 2}), progress=False)["counts"]["ok"] == 2
    full = run(cfg, progress=False)
    assert full["counts"]["skipped"] == 0 and full["counts"]["ok"] == 5
    markers = storage.list_files(runstate.state_uri(out, "completions"), options, suffix=".done")
    assert len(markers) == 2, markers  # one per shard: the --limit run's partial marker is gone
    again = run(cfg, progress=False)
    assert again["counts"]["skipped"] == 5 and again["counts"]["ok"] == 0
    # A later --limit run finds its rows covered by the fuller marker.
    assert run(cfg.model_copy(update={"limit": 2}), progress=False)["counts"]["skipped"] == 2
    assert _ids(out, options) == [f"i{i}" for i in range(5)]


def test_changed_weights_content_at_the_same_path_is_refused(ray_cluster, tmp_path):
    uris = jobkit.put_images(str(tmp_path / "in"), {"a.jpg": jobkit.colour_images(1, size=(40, 32))[0]})
    manifest = jobkit.write_manifest(str(tmp_path / "m.parquet"), [{"image_id": "a", "uri": uris["a.jpg"]}])
    ckpt = str(tmp_path / "ckpt")
    jobkit.tiny_checkpoint(ckpt, seed=0)
    cfg = ColorizeConfig(manifest=manifest, output=str(tmp_path / "out"), model=ckpt)
    assert run(cfg, progress=False)["counts"]["ok"] == 1
    jobkit.tiny_checkpoint(ckpt, seed=1)  # other weights, same path
    with pytest.raises(UserError, match="weights_sha256.*--overwrite"):
        run(cfg, progress=False)
    jobkit.tiny_checkpoint(ckpt, seed=0)
    with pytest.raises(UserError, match="saturation"):
        run(cfg.model_copy(update={"saturation": 0.5}), progress=False)
    assert run(cfg, progress=False)["counts"]["skipped"] == 1  # the original weights are the same run again


def test_manifest_files_with_and_without_optional_columns(ray_cluster, tmp_path):
    imgs = jobkit.colour_images(3, size=(40, 32))
    uris = jobkit.put_images(str(tmp_path / "in"), {f"i{i}.jpg": b for i, b in enumerate(imgs)})
    jobkit.write_manifest(str(tmp_path / "m" / "part-0.parquet"),
                          [{"image_id": "i0", "uri": uris["i0.jpg"], "reference_uri": uris["i0.jpg"]}])
    jobkit.write_manifest(str(tmp_path / "m" / "part-1.parquet"),
                          [{"image_id": f"i{i}", "uri": uris[f"i{i}.jpg"]} for i in (1, 2)])
    cfg = ColorizeConfig(manifest=str(tmp_path / "m"), output=str(tmp_path / "out"),
                         model=jobkit.tiny_checkpoint(str(tmp_path / "ckpt")), shard_rows=2)
    summary = run(cfg, progress=False)
    assert summary["counts"]["ok"] == 3 and summary["counts"]["error"] == 0
    against = {r["image_id"]: r["metrics_against"] for r in jobkit.read_metrics(cfg.output).to_pylist()}
    assert against == {"i0": "reference_uri", "i1": "input", "i2": "input"}


def test_retry_errors_tries_error_rows_again_leaving_one_row_per_image(ray_cluster, tmp_path):
    imgs = jobkit.colour_images(3, size=(40, 32))
    uris = jobkit.put_images(str(tmp_path / "in"), {"i0.jpg": imgs[0], "i1.jpg": imgs[1]})
    late = str(tmp_path / "in" / "late.jpg")
    manifest = jobkit.write_manifest(str(tmp_path / "m.parquet"), [
        {"image_id": "i0", "uri": uris["i0.jpg"]}, {"image_id": "i1", "uri": uris["i1.jpg"]},
        {"image_id": "late", "uri": late}])
    cfg = ColorizeConfig(manifest=manifest, output=str(tmp_path / "out"),
                         model=jobkit.tiny_checkpoint(str(tmp_path / "ckpt")), shard_rows=2)
    assert run(cfg, progress=False)["counts"]["error"] == 1
    jobkit.put_images(str(tmp_path / "in"), {"late.jpg": imgs[2]})  # the user fixes the cause
    plain = run(cfg, progress=False)
    assert plain["counts"]["skipped"] == 3, "without --retry-errors finished shards stay finished"
    i0 = (tmp_path / "out" / "images" / "i0.jpg").stat().st_mtime_ns
    retried = run(cfg.model_copy(update={"retry_errors": True}), progress=False)
    assert retried["shards"]["retried"] == 1 and retried["counts"]["ok"] == 1 and retried["counts"]["skipped"] == 2
    rows = jobkit.read_metrics(cfg.output).to_pylist()
    assert sorted(r["image_id"] for r in rows) == ["i0", "i1", "late"]
    assert all(r["status"] == "ok" for r in rows)
    assert (tmp_path / "out" / "images" / "i0.jpg").stat().st_mtime_ns == i0
    again = run(cfg.model_copy(update={"retry_errors": True}), progress=False)
    assert again["shards"]["retried"] == 0 and again["counts"]["skipped"] == 3


def test_session_token_reaches_the_s3_client(monkeypatch, s3_server):
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-value")
    options = ColorizeConfig(manifest="m", output="o", storage={
        "endpoint_url": s3_server.endpoint_url, "access_key_id": "k", "secret_access_key": "s"}).storage.options()
    assert options.token == "session-token-value"
    assert "session-token-value" not in repr(options) and options.redacted()["token"] == "***"
    fs = storage._new_s3fs(options)
    fs.connect()
    creds = fs.s3._request_signer._credentials
    assert (creds.access_key, creds.token) == ("k", "session-token-value")


def test_wrong_credentials_end_in_one_line(s3_server, s3_prefix, monkeypatch, capsys):
    from colorize_core.pipeline import main

    manifest = jobkit.write_manifest(storage.join(s3_prefix, "m.parquet"), [{"image_id": "a", "uri": "x"}],
                                     s3_server.options)
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    assert main(["--manifest", manifest, "--output", storage.join(s3_prefix, "out"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "credentials" in err, err
    assert "wrong-secret" not in err
