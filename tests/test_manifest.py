"""Manifest validation and sharding on local Parquet files (no Ray, no S3 server).

Shard ids name completion markers, so their stability and uniqueness is what makes resume correct;
read_shard must return exactly its rows whatever the file's row-group layout.
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from colorize_core import manifest
from colorize_core.manifest import MAX_COMPONENT_BYTES, MAX_REPORTED, ManifestError, id_problem
from colorize_core.storage import StorageOptions

OPTIONS = StorageOptions()


def write(path, table: pa.Table, **kwargs) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, **kwargs)
    return str(path)


def rows(ids, uris=None) -> pa.Table:
    uris = uris if uris is not None else [f"/data/{i}.tif" for i in ids]
    return pa.table({"image_id": pa.array(ids, pa.string()), "uri": pa.array(uris, pa.string())})


# ---------------------------------------------------------------------------------------------- id_problem


@pytest.mark.parametrize("image_id", ["a", "dir/sub/x.tif", "café/日本語 scan.tif", "a.b-c_d", "..a/b..",
                                      "/".join(["x" * 200] * 4), "x" * 250, "é" * 125])
def test_id_problem_accepts_safe_ids(image_id):
    assert id_problem(image_id) is None


@pytest.mark.parametrize("image_id, fragment", [
    ("", "empty"),
    (None, "null"),
    (42, "null"),
    ("..", "'..'"),
    ("a/../b", "'..'"),
    ("a/..", "'..'"),
    ("/abs", "absolute"),
    ("C:\\x", "absolute"),
    ("C:x", "absolute"),
    ("a\\b", "absolute"),
    ("a\x00b", "control"),
    ("a\x7fb", "control"),
    ("a\nb", "control"),
    ("a\tb", "control"),
    ("a\x1fb", "control"),
    ("a//b", "empty"),
    ("a/", "empty"),
    ("./a", "'.'"),
    ("a/./b", "'.'"),
    ("/".join(["x" * 200] * 5), "longer than 900 bytes"),
    ("x" * 251, "path component longer"),
    ("a/" + "é" * 126, "path component longer"),
])
def test_id_problem_rejects_unsafe_ids(image_id, fragment):
    reason = id_problem(image_id)
    assert reason is not None
    assert fragment in reason


# ---------------------------------------------------------------------------------------------- validate


def test_validate_single_file(tmp_path):
    path = write(tmp_path / "m.parquet", rows(["a", "dir/b", "c"]))
    info = manifest.validate(path, OPTIONS)
    assert info.files == (path,)
    assert info.rows_per_file == (3,)
    assert info.num_rows == 3
    assert info.columns == ("image_id", "uri")


def test_validate_prefix_with_several_files_and_optional_columns(tmp_path):
    hints_type = pa.list_(pa.struct([("x", pa.float32()), ("y", pa.float32()), ("a", pa.float32()),
                                     ("b", pa.float32())]))
    first = pa.table({"image_id": ["a", "b"], "uri": ["u1", "u2"], "reference_uri": ["r1", None],
                      "hints": pa.array([[{"x": 0.5, "y": 0.5, "a": 10.0, "b": -3.0}], []], hints_type)})
    write(tmp_path / "m" / "part-0.parquet", first)
    write(tmp_path / "m" / "sub" / "part-1.parquet", rows(["c", "d", "e"]))
    (tmp_path / "m" / "notes.txt").write_text("not a manifest")
    info = manifest.validate(str(tmp_path / "m"), OPTIONS)
    assert [f.rsplit("/", 1)[-1] for f in info.files] == ["part-0.parquet", "part-1.parquet"]
    assert info.rows_per_file == (2, 3)
    assert info.columns == ("hints", "image_id", "reference_uri", "uri")


def test_duplicate_across_files_names_both_locations(tmp_path):
    f0 = write(tmp_path / "m" / "a.parquet", rows(["x", "dup", "y"]))
    f1 = write(tmp_path / "m" / "b.parquet", rows(["z", "w", "dup"]))
    with pytest.raises(ManifestError) as err:
        manifest.validate(str(tmp_path / "m"), OPTIONS)
    msg = str(err.value)
    assert "1 bad row" in msg
    assert "duplicate image_id 'dup'" in msg
    assert f"{f1} row 2" in msg  # the second occurrence ...
    assert f"{f0} row 1" in msg  # ... and where it was first seen


def test_duplicate_within_one_file(tmp_path):
    path = write(tmp_path / "m.parquet", rows(["a", "b", "a"]))
    with pytest.raises(ManifestError, match=r"row 2: duplicate image_id 'a' \(first at .* row 0\)"):
        manifest.validate(path, OPTIONS)


@pytest.mark.parametrize("table, fragment", [
    (pa.table({"image_id": ["a"]}), "missing required column 'uri'"),
    (pa.table({"uri": ["u"]}), "missing required column 'image_id'"),
    (pa.table({"image_id": pa.array([1, 2], pa.int64()), "uri": ["u", "v"]}), "column 'image_id' must be string"),
    (pa.table({"image_id": ["a"], "uri": pa.array([b"u"], pa.binary())}), "column 'uri' must be string"),
    (pa.table({"image_id": ["a"], "uri": ["u"], "reference_uri": [3]}), "column 'reference_uri' must be string"),
    (pa.table({"image_id": ["a"], "uri": ["u"], "hints": ["red at the top"]}), "column 'hints' must be list"),
    (pa.table({"image_id": ["a"], "uri": ["u"], "hints": pa.array([[1.0, 2.0]], pa.list_(pa.float64()))}),
     "column 'hints' must be list"),
    (pa.table({"image_id": ["a"], "uri": ["u"],
               "hints": pa.array([[{"x": 0.1, "y": 0.2, "a": 1.0}]])}), "column 'hints' must be list"),
])
def test_schema_errors(tmp_path, table, fragment):
    path = write(tmp_path / "m.parquet", table)
    with pytest.raises(ManifestError) as err:
        manifest.validate(path, OPTIONS)
    assert fragment in str(err.value)
    assert path in str(err.value)


def test_large_string_columns_are_accepted(tmp_path):
    table = pa.table({"image_id": pa.array(["a"], pa.large_string()), "uri": pa.array(["u"], pa.large_string())})
    assert manifest.validate(write(tmp_path / "m.parquet", table), OPTIONS).num_rows == 1


@pytest.mark.parametrize("uri", [None, ""])
def test_null_or_empty_uri_is_a_bad_row(tmp_path, uri):
    path = write(tmp_path / "m.parquet", rows(["a", "b"], ["u", uri]))
    with pytest.raises(ManifestError, match=r"row 1: uri is null or empty \('b'\)"):
        manifest.validate(path, OPTIONS)


def test_null_and_unsafe_ids_are_bad_rows(tmp_path):
    path = write(tmp_path / "m.parquet", rows(["ok", None, "../etc/passwd"]))
    with pytest.raises(ManifestError) as err:
        manifest.validate(path, OPTIONS)
    msg = str(err.value)
    assert "2 bad row(s)" in msg
    assert "row 1: image_id is null" in msg
    assert "row 2: image_id has an empty, '.' or '..' path component" in msg
    assert "row 0" not in msg


def test_report_is_capped_with_a_count_of_the_rest(tmp_path):
    n_bad = MAX_REPORTED + 7
    ids = ["good"] + [f"/abs{i}" for i in range(n_bad)]
    path = write(tmp_path / "m.parquet", rows(ids))
    with pytest.raises(ManifestError) as err:
        manifest.validate(path, OPTIONS)
    msg = str(err.value)
    assert f"{n_bad} bad row(s)" in msg
    assert len(re.findall(r"row \d+: image_id is an absolute path", msg)) == MAX_REPORTED
    assert "and 7 more" in msg
    assert f"'/abs{MAX_REPORTED - 1}'" in msg and f"'/abs{MAX_REPORTED}'" not in msg


def test_report_says_no_more_when_within_cap(tmp_path):
    path = write(tmp_path / "m.parquet", rows([f"/abs{i}" for i in range(MAX_REPORTED)]))
    with pytest.raises(ManifestError) as err:
        manifest.validate(path, OPTIONS)
    msg = str(err.value)
    assert len(re.findall(r"row \d+: image_id is an absolute path", msg)) == MAX_REPORTED
    assert "... and" not in msg


def test_prefix_without_parquet_files_is_an_error(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "rows.csv").write_text("image_id,uri\na,b\n")
    with pytest.raises(ManifestError, match="no Parquet manifest file"):
        manifest.validate(str(tmp_path / "m"), OPTIONS)
    with pytest.raises(ManifestError, match="no Parquet manifest file"):
        manifest.validate(str(tmp_path / "missing"), OPTIONS)
    with pytest.raises(ManifestError, match="no Parquet manifest file"):
        manifest.validate(str(tmp_path / "missing.parquet"), OPTIONS)


def test_directory_named_like_a_parquet_file_is_read_as_a_prefix(tmp_path):
    # Spark and Ray Data write datasets as directories called `name.parquet`.
    write(tmp_path / "m.parquet" / "part-0.parquet", rows(["a", "b"]))
    write(tmp_path / "m.parquet" / "part-1.parquet", rows(["c"]))
    info = manifest.validate(str(tmp_path / "m.parquet"), OPTIONS)
    assert info.rows_per_file == (2, 1)


# ---------------------------------------------------------------------------------------------- plan_shards


@pytest.fixture
def two_folder_manifest(tmp_path):
    """Same basename in two sub-folders, sizes that do not divide by the shard size."""
    write(tmp_path / "m" / "2023" / "part.parquet", rows([f"a{i}" for i in range(25)]))
    write(tmp_path / "m" / "2024" / "part.parquet", rows([f"b{i}" for i in range(7)]))
    return str(tmp_path / "m")


def test_plan_shards_boundaries_and_totals(two_folder_manifest):
    info = manifest.validate(two_folder_manifest, OPTIONS)
    shards = manifest.plan_shards(info, shard_rows=10)
    assert [(s.file.split("/")[-2], s.start, s.stop) for s in shards] == [
        ("2023", 0, 10), ("2023", 10, 20), ("2023", 20, 25), ("2024", 0, 7)]
    assert all(s.start % 10 == 0 for s in shards)
    assert sum(s.num_rows for s in shards) == info.num_rows == 32


def test_plan_shards_ids_are_unique_and_stable(two_folder_manifest):
    first = manifest.plan_shards(manifest.validate(two_folder_manifest, OPTIONS), 10)
    again = manifest.plan_shards(manifest.validate(two_folder_manifest, OPTIONS), 10)
    assert [s.shard_id for s in first] == [s.shard_id for s in again]
    ids = [s.shard_id for s in first]
    assert len(set(ids)) == len(ids)
    # The two `part.parquet` files differ only by folder; their first shards must not share a marker.
    assert first[0].shard_id != first[3].shard_id
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", i) for i in ids)


def test_plan_shards_ids_do_not_depend_on_how_the_prefix_is_spelled(two_folder_manifest, monkeypatch):
    absolute = [s.shard_id for s in manifest.plan_shards(manifest.validate(two_folder_manifest, OPTIONS), 10)]
    parent, name = two_folder_manifest.rsplit("/", 1)
    monkeypatch.chdir(parent)
    for spelling in (name, name + "/", "./" + name, two_folder_manifest + "/"):
        ids = [s.shard_id for s in manifest.plan_shards(manifest.validate(spelling, OPTIONS), 10)]
        assert ids == absolute, spelling


def test_plan_shards_ids_do_not_depend_on_other_files(two_folder_manifest, tmp_path):
    before = manifest.plan_shards(manifest.validate(two_folder_manifest, OPTIONS), 10)
    write(tmp_path / "m" / "2022" / "part.parquet", rows(["c0", "c1"]))  # a backfill adds a file
    after = manifest.plan_shards(manifest.validate(two_folder_manifest, OPTIONS), 10)
    assert {s.shard_id: (s.start, s.stop) for s in before}.items() <= \
        {s.shard_id: (s.start, s.stop) for s in after}.items()
    assert len(after) == len(before) + 1


def test_plan_shards_limit_truncates_across_files(two_folder_manifest):
    info = manifest.validate(two_folder_manifest, OPTIONS)
    full = manifest.plan_shards(info, 10)
    limited = manifest.plan_shards(info, 10, limit=13)
    assert [(s.start, s.stop) for s in limited] == [(0, 10), (10, 13)]
    assert [s.shard_id for s in limited] == [s.shard_id for s in full[:2]]
    across = manifest.plan_shards(info, 10, limit=28)
    assert sum(s.num_rows for s in across) == 28
    assert across[-1].file == full[-1].file and (across[-1].start, across[-1].stop) == (0, 3)
    assert sum(s.num_rows for s in manifest.plan_shards(info, 10, limit=1000)) == 32


def test_plan_shards_single_file_and_shard_larger_than_file(tmp_path):
    path = write(tmp_path / "m.parquet", rows(["a", "b", "c"]))
    shards = manifest.plan_shards(manifest.validate(path, OPTIONS), 1000)
    assert [(s.file, s.start, s.stop) for s in shards] == [(path, 0, 3)]
    assert shards[0].to_dict() == {"shard_id": shards[0].shard_id, "file": path, "start": 0, "stop": 3}


# ---------------------------------------------------------------------------------------------- read_shard


@pytest.mark.parametrize("row_group_size, shard_rows", [(7, 10), (10, 10), (3, 4), (100, 9), (1, 5)])
def test_read_shard_returns_exactly_its_rows(tmp_path, row_group_size, shard_rows):
    ids = [f"img{i:03d}" for i in range(53)]
    table = rows(ids, [f"s3://bucket/{i}.tif" for i in ids])
    path = write(tmp_path / "m.parquet", table, row_group_size=row_group_size)
    assert pq.ParquetFile(path).metadata.num_row_groups == -(-53 // row_group_size)
    info = manifest.validate(path, OPTIONS)
    got = []
    for shard in manifest.plan_shards(info, shard_rows):
        part = manifest.read_shard(shard, OPTIONS, ("image_id", "uri"))
        assert part.num_rows == shard.num_rows
        assert part.column("image_id").to_pylist() == ids[shard.start: shard.stop]
        assert part.column("uri").to_pylist() == [f"s3://bucket/{i}.tif" for i in ids[shard.start: shard.stop]]
        got += part.column("image_id").to_pylist()
    assert got == ids


def test_read_shard_of_a_limited_plan_and_column_subset(tmp_path):
    ids = [f"i{i}" for i in range(30)]
    path = write(tmp_path / "m.parquet", rows(ids), row_group_size=8)
    shards = manifest.plan_shards(manifest.validate(path, OPTIONS), 10, limit=15)
    part = manifest.read_shard(shards[-1], OPTIONS, ("image_id",))
    assert part.column_names == ["image_id"]
    assert part.column("image_id").to_pylist() == ids[10:15]


# ---------------------------------------------------------------------------------------------- output keys


@pytest.mark.parametrize("ids", [["x", "x.jpg/y"], ["x.jpg/y", "x"], ["a/b", "a/b.png/c/d"], ["a/b.webp/c", "a/b"]])
def test_ids_that_need_a_file_and_a_folder_at_one_path_are_refused_in_any_order(tmp_path, ids):
    path = tmp_path / "m.parquet"
    pq.write_table(rows(["keep", *ids], ["u"] * (len(ids) + 1)), path)
    with pytest.raises(ManifestError, match="needs a folder where image_id") as info:
        manifest.validate(str(path), OPTIONS)
    text = str(info.value)
    assert "1 bad row" in text and all(repr(i) in text for i in ids)


def test_collision_check_follows_the_output_format(tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(rows(["x", "x.png/y"], ["u", "u"]), path)
    manifest.validate(str(path), OPTIONS, output_format="jpeg")  # images/x.jpg and images/x.png/y.jpg: no clash
    with pytest.raises(ManifestError, match="needs a folder"):
        manifest.validate(str(path), OPTIONS, output_format="png")


def test_ids_whose_s3_key_would_pass_1024_bytes_are_refused_up_front(tmp_path):
    path = tmp_path / "m.parquet"
    long_id = "/".join(["d" * 200] * 4) + "/" + "f" * 50  # 854 bytes: fine alone
    pq.write_table(rows(["short", long_id], ["u", "u"]), path)
    manifest.validate(str(path), OPTIONS, output="s3://bucket/out")
    with pytest.raises(ManifestError, match="exceed S3's 1024 bytes") as info:
        manifest.validate(str(path), OPTIONS, output="s3://bucket/" + "p" * 200)
    assert "row 1" in str(info.value) and "row 0" not in str(info.value)


def test_longest_accepted_id_is_written_locally(tmp_path):
    """The longest id validation accepts fits the local file system, temp file included."""
    from colorize_core import storage

    longest = "/".join(["d" * MAX_COMPONENT_BYTES] * 3)
    assert id_problem(longest) is None
    key = storage.join(str(tmp_path), "images", longest + ".webp")
    storage.write_bytes(key, b"ok")
    assert storage.read_bytes(key) == b"ok"
