"""The pipeline's data contract: fixed batch schemas, verified resume, shard reads proportional to the shard."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from colorize_core import storage
from colorize_core.config import ColorizeConfig
from colorize_core.ray_adapter import keep_freed_memory, pieces, to_block
from colorize_core.schema import BATCH_TYPES, METRIC_BATCH_SCHEMA
from jobs import colorize as job
from tests import jobkit


def _obj(values):
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def test_blocks_have_the_declared_schema_whatever_the_values():
    """Every optional value null in one block, set in another: the blocks still merge, with the declared
    types (Ray hands null object cells back as NaN, which must not turn a string column into float)."""
    n = 3
    nulls = {"image_id": _obj(["a", "b", "c"]), "uri": _obj(["u"] * n), "reference_uri": _obj([None, np.nan, None]),
             "hints": _obj([None] * n), "shard_id": _obj(["s"] * n), "status": _obj(["ok"] * n),
             "error": _obj([None] * n), "reuse": np.zeros(n, bool), "seconds": np.zeros(n),
             "l": np.zeros((n, 1, 4, 4), np.float32)}
    values = {**nulls, "reference_uri": _obj(["r", None, "q"]), "error": _obj([None, "boom", None]),
              "status": _obj(["ok", "error", "ok"]),
              "hints": _obj([[{"x": 0.5, "y": 0.5, "a": 1.0, "b": 2.0}], None, []])}
    a, b = to_block(nulls), to_block(values)
    assert a.schema == b.schema
    for name in ("reference_uri", "error", "hints", "status"):
        assert a.schema.field(name).type == BATCH_TYPES[name]
    merged = pa.concat_tables([a, b])
    assert merged.column("reference_uri").to_pylist() == [None, None, None, "r", None, "q"]
    assert merged.column("hints").to_pylist()[3] == [{"x": 0.5, "y": 0.5, "a": 1.0, "b": 2.0}]

    metric_nulls = {f.name: _obj([None] * n) for f in METRIC_BATCH_SCHEMA if pa.types.is_string(f.type)}
    metric_nulls.update({f.name: np.full(n, np.nan) for f in METRIC_BATCH_SCHEMA if pa.types.is_float64(f.type)})
    metric_nulls.update({f.name: np.full(n, -1) for f in METRIC_BATCH_SCHEMA if pa.types.is_int64(f.type)})
    assert dict(zip(to_block(metric_nulls).schema.names, to_block(metric_nulls).schema.types)) == {
        f.name: f.type for f in METRIC_BATCH_SCHEMA}

    with pytest.raises(TypeError, match="schema.py"):
        to_block({"undeclared": _obj(["x"])})


def test_shards_are_cut_into_pieces_that_keep_their_shard_id():
    """Ray Data gives a whole block to one actor: a manifest of one shard must still reach every actor, so the
    work goes out in pieces of a shard (each still counted against its shard's rows for resume)."""
    shards = [{"shard_id": "a", "file": "m.parquet", "start": 0, "stop": 70},
              {"shard_id": "b", "file": "m.parquet", "start": 70, "stop": 80}]
    got = pieces(shards, 32)
    assert [(p["shard_id"], p["start"], p["stop"]) for p in got] == [
        ("a", 0, 32), ("a", 32, 64), ("a", 64, 70), ("b", 70, 80)]
    assert all(p["file"] == "m.parquet" for p in got)
    assert pieces(shards, 1000) == shards


def test_actors_keep_freed_memory_on_glibc():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's mallopt")
    assert keep_freed_memory()


def test_reference_uri_on_one_row_of_sixteen_at_five_row_shards(ray_cluster, tmp_path):
    """Issue #8 item 1: blocks whose reference_uri (and error) are all null met blocks holding strings."""
    images = jobkit.colour_images(16, size=(48, 40))
    uris = jobkit.put_images(str(tmp_path / "in"), {f"i{i:02d}.png": b for i, b in enumerate(images)})
    rows = [{"image_id": name.split(".")[0], "uri": uri, "reference_uri": None} for name, uri in uris.items()]
    rows[7]["reference_uri"] = rows[7]["uri"]
    rows[12]["uri"] = str(tmp_path / "in" / "missing.png")  # one error row: `error` set in one block only
    manifest = jobkit.write_manifest(str(tmp_path / "m.parquet"), rows)
    model = jobkit.tiny_checkpoint(str(tmp_path / "ckpt"))
    cfg = ColorizeConfig(manifest=manifest, output=str(tmp_path / "out"), model=model, shard_rows=5)
    summary = job.run(cfg, progress=False)
    assert summary["counts"] == {"total": 16, "ok": 15, "error": 1, "transient": 0, "skipped": 0}
    by_id = {r["image_id"]: r for r in jobkit.read_metrics(cfg.output).to_pylist()}
    assert by_id["i07"]["metrics_against"] == "reference_uri"
    assert by_id["i12"]["status"] == "error" and "missing" in by_id["i12"]["error"]
    assert sum(r["error"] is None for r in by_id.values()) == 15


def test_resume_rewrites_truncated_or_foreign_outputs(ray_cluster, tmp_path):
    """Issue #8 item 6: a file at an output key is reused only if it decodes at the source's geometry."""
    images = jobkit.colour_images(6, size=(64, 48))
    uris = jobkit.put_images(str(tmp_path / "in"), {f"i{i}.png": b for i, b in enumerate(images)})
    rows = [{"image_id": name.split(".")[0], "uri": uri} for name, uri in uris.items()]
    manifest = jobkit.write_manifest(str(tmp_path / "m.parquet"), rows)
    model = jobkit.tiny_checkpoint(str(tmp_path / "ckpt"))
    cfg = ColorizeConfig(manifest=manifest, output=str(tmp_path / "out"), model=model, shard_rows=3)
    assert job.run(cfg, progress=False)["counts"]["ok"] == 6
    out = tmp_path / "out"
    # A crash after the images were written, before the markers: the next run checks every output.
    for marker in (out / "_state" / "completions").glob("*.done"):
        marker.unlink()
    good, truncated, foreign = out / "images" / "i0.jpg", out / "images" / "i1.jpg", out / "images" / "i2.jpg"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    foreign.write_bytes(jobkit.colour_images(1, size=(30, 20))[0])
    before = good.stat().st_mtime_ns

    again = job.run(cfg, progress=False)
    assert again["counts"]["ok"] == 6 and again["counts"]["error"] == 0
    assert good.stat().st_mtime_ns == before, "a valid output was rewritten"
    for path in (truncated, foreign):
        assert jobkit.decode(str(path)).shape == (48, 64, 3), f"{path.name} was not redone"
    by_id = {r["image_id"]: r for r in jobkit.read_metrics(cfg.output).to_pylist()}
    assert {by_id[k]["width"] for k in ("i0", "i1", "i2")} == {64}


def test_one_row_group_manifest_is_restaged_so_each_shard_reads_only_its_rows(tmp_path):
    import pyarrow.parquet as pq

    from colorize_core import manifest

    n, shard_rows = 20_000, 1000
    table = pa.table({"image_id": [f"id{i}" for i in range(n)], "uri": [f"s3://b/{i}.jpg" for i in range(n)]})
    path = tmp_path / "m" / "part.parquet"
    path.parent.mkdir()
    pq.write_table(table, path, row_group_size=n)  # one row group, as pandas and pyarrow write it
    options = storage.StorageOptions()
    info = manifest.validate(str(path), options)
    before = manifest.plan_shards(info, shard_rows)
    assert {manifest.rows_read(s, options) for s in before} == {n}, "unaligned: every shard decodes all rows"

    staged = manifest.restage(info, shard_rows, str(tmp_path / "out" / "_state" / "manifest"), options)
    shards = manifest.plan_shards(staged, shard_rows)
    assert [s.shard_id for s in shards] == [s.shard_id for s in before], "shard ids survive restaging"
    assert all(manifest.rows_read(s, options) == s.num_rows == shard_rows for s in shards)
    ids = [v for s in shards for v in manifest.read_shard(s, options, ("image_id",)).column(0).to_pylist()]
    assert ids == table.column("image_id").to_pylist()
    again = manifest.restage(info, shard_rows, str(tmp_path / "out" / "_state" / "manifest"), options)
    assert again == staged  # reused, not rewritten
    aligned = manifest.restage(staged, shard_rows, str(tmp_path / "elsewhere"), options)
    assert aligned.files == staged.files  # nothing to do for an aligned manifest
