"""jobs.backfill against the real S3 server and local folders: only new and changed objects are colorized,
exactly once, with one writer per output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from colorize_core import runstate, storage
from colorize_core.backfill import BackfillConfig, backfill, image_ids, iter_source, main
from tests import jobkit

REPO = Path(__file__).resolve().parents[1]


def _cfg(source: str, output: str, model: str, s3=None, **kw) -> BackfillConfig:
    storage_cfg = {} if s3 is None else {"endpoint_url": s3.endpoint_url, "region": s3.region,
                                         "access_key_id": s3.key, "secret_access_key": s3.secret}
    return BackfillConfig(source=source, output=output, model=model, shard_rows=2, storage=storage_cfg,
                          cpu={"batch_size": 4}, inference={"batch_size": 4}, **kw)


def _etags(prefix: str, options) -> dict[str, str]:
    fs, path = storage.filesystem(prefix, options)
    return {p: str(i.get("ETag") or i.get("mtime")) for p, i in fs.find(path, detail=True).items()
            if "/_state/" not in p and "/backfills/" not in p}


def _metrics_ids(output: str, options) -> list[str]:
    return sorted(r["image_id"] for r in jobkit.read_metrics(output, options).to_pylist())


def test_image_ids_keep_the_extension_only_where_they_would_collide():
    ids, kept = image_ids(["d/a.jpg", "d/a.png", "d/b.jpg", "d/c.jpg.png", "d/c.jpg"])
    assert ids == ["d/a.jpg", "d/a.png", "d/b", "d/c.jpg.png", "d/c"] and kept == 3
    assert len(set(ids)) == len(ids)


def test_s3_listing_is_paged_and_keeps_collision_groups_whole(s3_server, s3_prefix):
    options = s3_server.options
    names = ["a.b.jpg", "a.jpg", "a.png", "b.jpg", "c.jpg", "c.jpg.png", "d/e.jpg", "d/f.txt", "out/x.jpg"]
    jobkit.put_images(storage.join(s3_prefix, "src"), {n: b"x" for n in names}, options)
    batches = list(iter_source(storage.join(s3_prefix, "src"), options, ("jpg", "png"),
                               skip=storage.join(s3_prefix, "src", "out"), batch=2, page_size=2))
    keys = [k for b in batches for k, _, _ in b]
    assert keys == ["a.b.jpg", "a.jpg", "a.png", "b.jpg", "c.jpg", "c.jpg.png", "d/e.jpg"]
    assert [k for k, _, _ in batches[0]] == ["a.b.jpg", "a.jpg", "a.png"], "a.jpg and a.png in one batch"
    ids = [i for b in batches for i in image_ids([k for k, _, _ in b])[0]]
    assert ids == ["a.b", "a.jpg", "a.png", "b", "c", "c.jpg.png", "d/e"]
    assert all(len(v) == 32 for b in batches for _, _, v in b), "the ETag is the version"


def test_s3_backfill_new_nothing_changed_deleted_and_dry_run(ray_cluster, s3_server, s3_prefix, capsys,
                                                             monkeypatch):
    options = s3_server.options
    model = jobkit.tiny_checkpoint(storage.join(s3_prefix, "ckpt"), options)
    src, out = storage.join(s3_prefix, "scans"), storage.join(s3_prefix, "out")
    imgs = jobkit.colour_images(6, size=(48, 40))
    jobkit.put_images(src, {"a.jpg": imgs[0], "box1/b.jpg": imgs[1], "box1/c.png": imgs[2],
                            "notes.txt": b"not an image"}, options)
    cfg = _cfg(src, out, model, s3_server)

    first = backfill(cfg, progress=False)
    assert first["counts"]["new"] == 3 and first["counts"]["ok"] == 3 and first["counts"]["processed"] == 3
    # SeaweedFS honours If-None-Match on PUT (the fallback, read-back-verify, runs where a server does not).
    assert first["lease"]["conditional_write"] == ("If-None-Match" if s3_server.kind == "seaweedfs" else
                                                   first["lease"]["conditional_write"])
    assert _metrics_ids(out, options) == ["a", "box1/b", "box1/c"]
    assert storage.exists(storage.join(out, "images", "box1", "c.jpg"), options)

    # Two more objects: only they run.
    jobkit.put_images(src, {"box2/d.jpg": imgs[3], "e.png": imgs[4]}, options)
    before = _etags(storage.join(out, "images"), options)
    second = backfill(cfg, progress=False)
    assert (second["counts"]["new"], second["counts"]["unchanged"], second["counts"]["ok"]) == (2, 3, 2)
    after = _etags(storage.join(out, "images"), options)
    assert all(after[k] == v for k, v in before.items()), "a finished image was rewritten"
    assert _metrics_ids(out, options) == ["a", "box1/b", "box1/c", "box2/d", "e"]

    # Nothing new: nothing is written at all (images, metrics, ledger).
    everything = _etags(out, options)
    ledger = storage.read_bytes(runstate.ledger_uri(out), options)
    third = backfill(cfg, progress=False)
    assert third["counts"]["processed"] == 0 and third["counts"]["unchanged"] == 5
    assert _etags(out, options) == everything
    assert storage.read_bytes(runstate.ledger_uri(out), options) == ledger

    # A dry run after a change and a deletion: counts and keys printed, nothing written.
    jobkit.put_images(src, {"box1/b.jpg": imgs[5]}, options)  # new content, new ETag
    storage.remove(storage.join(src, "e.png"), options)
    capsys.readouterr()
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    code = main(["--source", src, "--output", out, "--model", model, "--dry-run", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0 and "1 changed" in printed and "1 deleted" in printed and "box1/b.jpg" in printed
    assert "e.png" in printed
    assert _etags(out, options) == everything
    assert storage.read_bytes(runstate.ledger_uri(out), options) == ledger

    # The changed object is colorized again and its output replaced; the deleted one is reported, kept.
    old_b = storage.read_bytes(storage.join(out, "images", "box1", "b.jpg"), options)
    fourth = backfill(cfg, progress=False)
    c = fourth["counts"]
    assert (c["changed"], c["deleted"], c["new"], c["ok"]) == (1, 1, 0, 1)
    assert fourth["first"]["deleted"] == ["e.png"]
    assert storage.read_bytes(storage.join(out, "images", "box1", "b.jpg"), options) != old_b
    assert storage.exists(storage.join(out, "images", "e.jpg"), options), "outputs are never deleted"
    ids = _metrics_ids(out, options)
    assert ids == ["a", "box1/b", "box1/c", "box2/d", "e"], "one current metrics row per image"
    summaries = storage.list_files(storage.join(out, "backfills"), options, suffix="summary.json")
    assert len(summaries) == 3  # the run with nothing to do writes none
    last = json.loads(storage.read_bytes(summaries[-1], options))
    assert {"new", "changed", "unchanged", "deleted", "processed", "ok", "error"} <= set(last["counts"])
    assert last["wall_seconds"] > 0


def test_second_backfill_is_refused_while_the_lease_is_held(s3_server, s3_prefix, capsys, monkeypatch):
    options = s3_server.options
    out = storage.join(s3_prefix, "out")
    held = runstate.Lease(out, options, ttl_s=300).acquire()
    try:
        for k, v in s3_server.env().items():
            monkeypatch.setenv(k, v)
        code = main(["--source", storage.join(s3_prefix, "scans"), "--output", out, "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 1 and held.holder in err and "until" in err and "--wait" in err and "\n" not in err
        other = runstate.Lease(out, options, ttl_s=300)
        assert other.try_acquire()[0] is False
        # Losing a race: a conditional create over the held lease is refused by the server, not overwritten.
        assert other._put_s3({"IfNoneMatch": "*"}) is False
        assert other._put_s3({"IfMatch": '"not-the-etag"'}) is False
        assert other.read()[0]["holder"] == held.holder
    finally:
        held.release()
    # The lease, once expired, can be taken over.
    expired = runstate.Lease(out, options, ttl_s=-1, holder="elsewhere:1:dead")
    assert expired.try_acquire()[0]
    taker = runstate.Lease(out, options, ttl_s=60)
    assert taker.try_acquire()[0] and taker.read()[0]["holder"] == taker.holder
    taker.release()
    assert taker.read() == (None, None)


def test_local_lease_is_exclusive_and_a_dead_holder_expires(tmp_path):
    a = runstate.Lease(str(tmp_path), None, ttl_s=300)
    assert a.try_acquire()[0]
    assert runstate.Lease(str(tmp_path), None, ttl_s=300).try_acquire()[0] is False
    a.release()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = runstate.Lease(str(tmp_path), None, ttl_s=300, holder=f"{os.uname().nodename}:{dead.stdout.strip()}:x")
    assert gone.try_acquire()[0]
    assert runstate.Lease(str(tmp_path), None, ttl_s=300).try_acquire()[0], "a dead local holder's lease expires"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.slow
def test_backfill_killed_mid_run_then_rerun_ends_exactly_once(ray_cluster, tmp_path):
    import ray

    n = 40
    src = tmp_path / "scans"
    jobkit.put_images(str(src), {f"roll{i % 3}/img{i:03d}.jpg": b
                                 for i, b in enumerate(jobkit.colour_images(n, size=(480, 360)))})
    model = jobkit.tiny_checkpoint(str(tmp_path / "ckpt"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "jobs.backfill", "--source", str(src), "--output", str(out), "--model", model,
           "--shard-rows", "2", "--batch-size", "2", "--quiet", "--ray-address", ray.get_runtime_context().gcs_address]
    done_before = jobkit.kill_after_markers(cmd, _env(), out)
    assert done_before < n // 2
    assert not (out / "_state" / "ledger.parquet").exists(), "the ledger is committed only after the run"
    first = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.jpg")}

    rerun = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    result = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert result["new"] == n and result["skipped"] == 2 * done_before
    table = jobkit.read_metrics(str(out)).to_pylist()
    ids = [r["image_id"] for r in table]
    assert len(ids) == len(set(ids)) == n and all(r["status"] == "ok" for r in table)
    final = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.jpg")}
    assert len(final) == n and all(final[p] == t for p, t in first.items()), "an image was written twice"
    assert len(storage.read_parquet_table(str(out / "_state" / "ledger.parquet"))) == n
    again = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and json.loads(again.stdout.strip().splitlines()[-1])["processed"] == 0
