"""Fixity: the run's recorded hashes against its files (verify), the BagIt-style manifest, the resume rule.
A run is laid out here as the colorize job lays it out (images/, metrics/*.parquet, config.json)."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pytest

from colorize_core import fixity, storage
from colorize_core.errors import UserError

FILES = {"a": b"first output", "dir/b": b"second output, in a folder", "c%\u00e9": b"third"}


def _run(root: str, options=None, *, with_path: bool = True, extra_rows=()) -> dict[str, str]:
    """Outputs plus a metrics file recording their hashes; returns relative path -> sha256."""
    rows, hashes = [], {}
    for image_id, data in FILES.items():
        path = f"images/{image_id}.jpg"
        storage.write_bytes(storage.join(root, path), data, options)
        hashes[path] = hashlib.sha256(data).hexdigest()
        rows.append({"image_id": image_id, "status": "ok", "output_path": path if with_path else None,
                     "output_sha256": hashes[path], "output_bytes": len(data)})
    rows += list(extra_rows)
    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("image_id", pa.string()), ("status", pa.string()), ("output_path", pa.string()),
        ("output_sha256", pa.string()), ("output_bytes", pa.int64())]))
    storage.write_parquet_table(table, storage.join(root, "metrics", "shard-0.parquet"), options)
    storage.write_bytes(storage.join(root, "config.json"), json.dumps({"output_format": "jpeg"}).encode(), options)
    return hashes


def test_a_complete_run_verifies(tmp_path):
    _run(str(tmp_path), extra_rows=[{"image_id": "bad", "status": "error", "output_path": None,
                                     "output_sha256": None, "output_bytes": None}])
    report = fixity.verify(str(tmp_path))
    assert report.ok and report.checked == 3 and report.unrecorded == 0
    assert report.lines()[-1] == "3 outputs checked: 0 missing, 0 changed"


def test_deleted_and_changed_outputs_are_named(tmp_path):
    _run(str(tmp_path))
    (tmp_path / "images" / "a.jpg").unlink()
    (tmp_path / "images" / "dir" / "b.jpg").write_bytes(b"second output, in a folder!")
    report = fixity.verify(str(tmp_path))
    assert not report.ok
    assert report.missing == ("images/a.jpg",) and report.changed == ("images/dir/b.jpg",)
    assert "missing: images/a.jpg" in report.lines() and "changed: images/dir/b.jpg" in report.lines()


def test_same_size_change_is_caught(tmp_path):
    _run(str(tmp_path))
    (tmp_path / "images" / "a.jpg").write_bytes(b"first outpuT")
    assert fixity.verify(str(tmp_path)).changed == ("images/a.jpg",)


def test_without_output_path_the_layout_comes_from_config(tmp_path):
    _run(str(tmp_path), with_path=False)
    assert fixity.verify(str(tmp_path)).checked == 3


def test_rows_without_hash_are_counted_not_checked(tmp_path):
    _run(str(tmp_path), extra_rows=[{"image_id": "old", "status": "ok", "output_path": "images/old.jpg",
                                     "output_sha256": None, "output_bytes": None}])
    report = fixity.verify(str(tmp_path))
    assert report.ok and report.unrecorded == 1 and "carry no hash" in report.lines()[-1]


def test_bagit_manifest_lists_every_output_hash(tmp_path):
    hashes = _run(str(tmp_path))
    uri = fixity.write_bagit(str(tmp_path))
    lines = (tmp_path / "manifest-sha256.txt").read_text("utf-8").splitlines()
    assert uri.endswith("manifest-sha256.txt")
    listed = dict(reversed(line.split("  ", 1)) for line in lines)
    assert listed["images/c%25\u00e9.jpg"] == hashes["images/c%\u00e9.jpg"]  # % escaped, as RFC 8493 says
    for path, sha in hashes.items():
        if "%" not in path:
            assert listed[path] == sha == hashlib.sha256((tmp_path / path).read_bytes()).hexdigest()
    assert not (tmp_path / "bagit.txt").exists()  # BagIt-style, not a bag: nothing under data/


def test_not_a_run_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a run's output prefix"):
        fixity.verify(str(tmp_path))


def test_resume_reuses_only_what_hashes_to_its_row():
    data = b"written before the crash"
    assert fixity.matches(data, hashlib.sha256(data).hexdigest())
    assert not fixity.matches(data[:-1], hashlib.sha256(data).hexdigest())
    assert fixity.matches(data, None)  # no row to compare with: the decode check decides


def test_verify_on_s3(s3_server, s3_prefix):
    root = s3_prefix + "run"
    _run(root, s3_server.options)
    storage.remove(root + "/images/a.jpg", s3_server.options)
    storage.write_bytes(root + "/images/dir/b.jpg", b"tampered", s3_server.options)
    report = fixity.verify(root, s3_server.options)
    assert report.missing == ("images/a.jpg",) and report.changed == ("images/dir/b.jpg",)
    fixity.write_bagit(root, s3_server.options)
    assert storage.read_bytes(root + "/manifest-sha256.txt", s3_server.options).count(b"\n") == 3
