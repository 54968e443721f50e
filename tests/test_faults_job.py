"""The colorize job under faults, against the real S3 server and local Ray clusters: throttling, 5xx and resets
injected by a fault proxy, a lasting outage, the S3 server killed and restarted, an inference actor SIGKILLed,
a worker node removed. Each: no row lost, none twice, and after at most one plain rerun every good image ok.
Also: an interrupted write is never visible as a finished output, and weights carrying a pickle payload are
refused on every path without running it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from colorize_core import storage
from colorize_core.config import ColorizeConfig
from jobs import colorize as job
from tests import jobkit
from tests.faultproxy import FaultProxy

REPO = Path(__file__).resolve().parents[1]


def _storage_cfg(s3_server, endpoint: str, **kw) -> dict:
    return {"endpoint_url": endpoint, "region": s3_server.region, "access_key_id": s3_server.key,
            "secret_access_key": s3_server.secret, **kw}


def _inputs(s3_server, prefix: str, n: int, size=(96, 72)) -> tuple[str, list[dict]]:
    images = {f"img{i:02d}.jpg": b for i, b in enumerate(jobkit.colour_images(n, size=size))}
    uris = jobkit.put_images(prefix + "in", images, s3_server.options)
    rows = [{"image_id": name.split(".")[0], "uri": uri} for name, uri in sorted(uris.items())]
    return jobkit.write_manifest(prefix + "m.parquet", rows, s3_server.options), rows


def _assert_every_row_once_and_ok(output: str, rows: list[dict], options=None) -> None:
    table = jobkit.read_metrics(output, options).to_pylist()
    ids = [r["image_id"] for r in table]
    assert len(ids) == len(set(ids)), "a row was recorded twice"
    assert sorted(ids) == sorted(r["image_id"] for r in rows), "a row was lost"
    bad = [(r["image_id"], r["status"], r["error"]) for r in table if r["status"] != "ok"]
    assert not bad, bad
    for r in rows:
        assert storage.exists(storage.join(output, "images", r["image_id"] + ".jpg"), options)


def _s3_path(uri: str) -> str:
    return "/" + uri[len("s3://"):]


def test_job_rides_out_throttling_5xx_and_resets(ray_cluster, s3_server, s3_prefix, tmp_path):
    proxy = FaultProxy(s3_server.port)
    try:
        manifest, rows = _inputs(s3_server, s3_prefix, 12)
        model = jobkit.tiny_checkpoint(str(tmp_path / "ckpt"))
        proxy.fail("503", 6, match="GET " + _s3_path(s3_prefix + "in/"))
        proxy.fail("reset", 4, match="GET " + _s3_path(s3_prefix + "in/"))
        proxy.fail("500", 3, match="PUT " + _s3_path(s3_prefix + "out/"))
        cfg = ColorizeConfig(manifest=manifest, output=s3_prefix + "out", model=model, shard_rows=3,
                             cpu={"batch_size": 2}, inference={"batch_size": 2},
                             storage=_storage_cfg(s3_server, proxy.endpoint_url, request_attempts=2))
        summary = job.run(cfg, progress=False)
    finally:
        proxy.close()
    assert summary["counts"] == {"total": 12, "ok": 12, "error": 0, "transient": 0, "skipped": 0}
    assert proxy.injected == {"503": 6, "reset": 4, "500": 3}
    _assert_every_row_once_and_ok(s3_prefix + "out", rows, s3_server.options)
    assert len(storage.list_files(s3_prefix + "out/_state/completions", s3_server.options)) == 4


def test_lasting_outage_leaves_rows_transient_and_one_rerun_finishes(ray_cluster, s3_server, s3_prefix, tmp_path,
                                                                      capsys):
    proxy = FaultProxy(s3_server.port)
    try:
        manifest, rows = _inputs(s3_server, s3_prefix, 12)
        model = jobkit.tiny_checkpoint(str(tmp_path / "ckpt"))
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump({"storage": _storage_cfg(s3_server, proxy.endpoint_url, retry_seconds=2,
                                                                  request_attempts=1)}))
        out = tmp_path / "out"
        argv = ["--config", str(config), "--manifest", manifest, "--output", str(out), "--model", model,
                "--shard-rows", "3", "--batch-size", "2", "--quiet"]
        for image in ("img04", "img07"):  # rows of shards 1 and 2 of 4
            proxy.fail("refuse", seconds=3600, match="GET " + _s3_path(s3_prefix + f"in/{image}.jpg"))
        capsys.readouterr()
        assert job.main(argv) == job.EXIT_UNFINISHED
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: 2 row(s) hit storage or network failures") and err[-1].endswith(
            "rerun the same command to finish them"), err
        markers = sorted(p.name for p in (out / "_state" / "completions").glob("*.done"))
        assert len(markers) == 2  # the shards of the failing rows are not marked done
        first = {p.name: p.stat().st_mtime_ns for p in (out / "images").glob("*.jpg")}
        assert len(first) == 10
        summary = json.loads((out / "summary.json").read_text())
        assert summary["counts"]["transient"] == 2 and summary["counts"]["error"] == 0

        proxy.clear()  # the outage ends; the user reruns the same command
        assert job.main(argv) == job.EXIT_OK
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["skipped"] == 6 and result["ok"] == 6 and result["transient"] == 0
    finally:
        proxy.close()
    _assert_every_row_once_and_ok(str(out), rows)
    final = {p.name: p.stat().st_mtime_ns for p in (out / "images").glob("*.jpg")}
    assert all(final[name] == t for name, t in first.items()), "an image was written twice"


def _job_env(s3_server=None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if s3_server is not None:
        env.update(s3_server.env())
    return env


def _finish_with_at_most_one_rerun(proc: subprocess.Popen, cmd, env) -> list[int]:
    out, _ = proc.communicate(timeout=600)
    codes = [proc.returncode]
    if proc.returncode != 0:
        assert b"rerun the same command" in out or b"Error" in out, out.decode()[-3000:]
        rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, timeout=600)
        codes.append(rerun.returncode)
        assert rerun.returncode == 0, (rerun.stdout + rerun.stderr).decode()[-3000:]
    return codes


@pytest.mark.slow
def test_s3_server_killed_and_restarted_mid_run(ray_cluster, s3_server, s3_prefix, tmp_path):
    import ray

    if s3_server.control is None:
        pytest.skip("needs SeaweedFS (moto runs in this process)")
    manifest, rows = _inputs(s3_server, s3_prefix, 16, size=(200, 150))
    model = jobkit.tiny_checkpoint(str(tmp_path / "ckpt"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "jobs.colorize", "--manifest", manifest, "--output", str(out), "--model", model,
           "--shard-rows", "2", "--batch-size", "2", "--quiet", "--ray-address",
           ray.get_runtime_context().gcs_address]
    env = _job_env(s3_server)
    proc = jobkit.start_job(cmd, env)
    try:
        jobkit.wait_for_markers(proc, out / "_state" / "completions", 1)
        s3_server.control.kill()
        time.sleep(5)  # reads fail (connection refused) and are retried meanwhile
    finally:
        s3_server.control.start()  # same data directory, same ports
    codes = _finish_with_at_most_one_rerun(proc, cmd, env)
    _assert_every_row_once_and_ok(str(out), rows)
    print(f"S3 server killed and restarted mid-run: exit codes {codes}")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # exited meanwhile
        return ""


def _descendants(root: int) -> list[int]:
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        children = [c for c, p in parent.items() if p == pid]
        out += children
        todo += children
    return out


@pytest.mark.slow
def test_inference_actor_sigkilled_mid_run(ray_cluster, tmp_path):
    import ray

    # 40 images in 20 shards: enough work left after the first shard that the kill lands mid-run.
    images = {f"img{i:02d}.jpg": b for i, b in enumerate(jobkit.colour_images(40, size=(320, 240)))}
    uris = jobkit.put_images(str(tmp_path / "in"), images)
    rows = [{"image_id": k.split(".")[0], "uri": v} for k, v in sorted(uris.items())]
    manifest = jobkit.write_manifest(str(tmp_path / "m.parquet"), rows)
    model = jobkit.tiny_checkpoint(str(tmp_path / "ckpt"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "jobs.colorize", "--manifest", manifest, "--output", str(out), "--model", model,
           "--shard-rows", "2", "--batch-size", "2", "--quiet", "--ray-address",
           ray.get_runtime_context().gcs_address]
    env = _job_env()
    proc = jobkit.start_job(cmd, env)
    # The inference actor is a child of THIS cluster's raylet (other Ray clusters may run on the machine); the
    # pipeline's only actor pool is the inference stage, whose workers are titled ray::MapWorker(...).
    # Killed once it exists and a first shard is done, so the kill lands mid-run.
    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    markers = out / "_state" / "completions"
    deadline = time.monotonic() + 240
    killed = None
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        actors = [pid for pid in _descendants(raylet) if "MapWorker" in _cmdline(pid)]
        if actors and markers.exists() and any(markers.glob("*.done")):
            os.kill(actors[0], signal.SIGKILL)
            killed = actors[0]
        time.sleep(0.05)
    assert killed, "no inference actor to kill while the job ran:\n" + (proc.stdout.read().decode()[-3000:]
                                                                      if proc.poll() is not None else "")
    codes = _finish_with_at_most_one_rerun(proc, cmd, env)
    _assert_every_row_once_and_ok(str(out), rows)
    print(f"inference actor SIGKILLed: exit codes {codes}")


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(600)  # starts its own 2-node cluster: ~30 s on a quiet 2-core machine, minutes when loaded
def test_worker_node_removed_mid_run(tmp_path):
    """A 2-node ray.cluster_utils.Cluster (in a subprocess: the session cluster is initialised in this one);
    the worker node is removed while the job runs."""
    images = {f"img{i:02d}.jpg": b for i, b in enumerate(jobkit.colour_images(16, size=(200, 150)))}
    uris = jobkit.put_images(str(tmp_path / "in"), images)
    rows = [{"image_id": k.split(".")[0], "uri": v} for k, v in sorted(uris.items())]
    manifest = jobkit.write_manifest(str(tmp_path / "m.parquet"), rows)
    model = jobkit.tiny_checkpoint(str(tmp_path / "ckpt"))
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import json, pathlib, threading, time, ray
        from ray.cluster_utils import Cluster
        from colorize_core.config import ColorizeConfig
        from jobs import colorize as job
        cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 2, "include_dashboard": False,
                          "object_store_memory": 256 * 1024**2}})
        worker = cluster.add_node(num_cpus=2, object_store_memory=256 * 1024**2)
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        cfg = ColorizeConfig(manifest={manifest!r}, output={str(out)!r}, model={model!r}, shard_rows=2,
                             cpu={{"batch_size": 2}}, inference={{"batch_size": 2}})
        result = {{}}
        def first():
            try:
                result["counts"] = job.run(cfg, progress=False)["counts"]
            except Exception as exc:
                result["failed"] = f"{{type(exc).__name__}}: {{exc}}"[:300]
        t = threading.Thread(target=first)
        t.start()
        markers = pathlib.Path({str(out)!r}) / "_state" / "completions"
        while t.is_alive() and not (markers.exists() and any(markers.glob("*.done"))):
            time.sleep(0.05)
        removed = t.is_alive()
        cluster.remove_node(worker)
        t.join()
        runs = [result]
        if "failed" in result or result["counts"]["transient"]:
            runs.append({{"counts": job.run(cfg, progress=False)["counts"]}})  # the plain rerun
        print(json.dumps({{"removed_mid_run": removed, "runs": runs}}))
        ray.shutdown()
        cluster.shutdown()
    """)
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=_job_env(), capture_output=True, text=True,
                         timeout=540)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    lines = [line for line in res.stdout.splitlines() if line.startswith('{"removed_mid_run"')]
    assert lines, res.stdout[-3000:] + res.stderr[-3000:]
    result = json.loads(lines[-1])
    assert result["removed_mid_run"], result
    assert len(result["runs"]) <= 2
    _assert_every_row_once_and_ok(str(out), rows)
    print(f"worker node removed mid-run: {result}")
