"""colorize_core.storage against a local tmp dir and the session's real S3 server, with the same assertions."""

from __future__ import annotations

import ipaddress
import multiprocessing
import os
import pickle
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from colorize_core import storage
from colorize_core.storage import StorageOptions


@dataclass(frozen=True)
class Root:
    base: str  # ends with "/"
    options: StorageOptions

    def __call__(self, *parts: str) -> str:
        return storage.join(self.base, *parts)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def root(request: pytest.FixtureRequest, tmp_path) -> Root:
    if request.param == "local":
        return Root(str(tmp_path) + "/", StorageOptions())
    server = request.getfixturevalue("s3_server")
    return Root(request.getfixturevalue("s3_prefix"), server.options)


def test_write_read_overwrite_exists(root: Root):
    uri = root("a", "b", "c.bin")
    assert not storage.exists(uri, root.options)
    storage.write_bytes(uri, b"\x00first", root.options)
    assert storage.exists(uri, root.options)
    assert storage.read_bytes(uri, root.options) == b"\x00first"
    storage.write_bytes(uri, b"second", root.options)
    assert storage.read_bytes(uri, root.options) == b"second"
    empty = root("empty.bin")
    storage.write_bytes(empty, b"", root.options)
    assert storage.read_bytes(empty, root.options) == b""


def test_missing_objects_raise_file_not_found(root: Root):
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(root("nope.bin"), root.options)
    with pytest.raises(FileNotFoundError):
        storage.read_parquet_table(root("nope.parquet"), root.options)
    assert not storage.exists(root("nope.bin"), root.options)


def test_list_files_is_recursive_sorted_and_scoped(root: Root):
    names = ["run/z.png", "run/a/2.png", "run/a/10.png", "run/b/c/d.json", "run2/x.png"]
    for name in reversed(names):
        storage.write_bytes(root(name), name.encode(), root.options)

    listed = storage.list_files(root("run"), root.options)
    assert listed == sorted(root(n) for n in names if n.startswith("run/"))
    assert storage.list_files(root("run/"), root.options) == listed
    assert storage.list_files(root("run"), root.options, suffix=".png") == [
        root("run/a/10.png"), root("run/a/2.png"), root("run/z.png")]
    assert all(storage.read_bytes(u, root.options) for u in listed)
    assert storage.list_files(root("absent"), root.options) == []


def test_remove_is_recursive_and_ignores_missing(root: Root):
    for name in ["d/1.bin", "d/e/2.bin", "keep.bin"]:
        storage.write_bytes(root(name), b"x", root.options)
    storage.remove(root("d/1.bin"), root.options)
    assert not storage.exists(root("d/1.bin"), root.options)
    storage.remove(root("d"), root.options)
    # Object-level checks only: SeaweedFS keeps an emptied "directory" visible as a prefix, S3 does not.
    assert storage.list_files(root("d"), root.options) == []
    assert not storage.exists(root("d/e/2.bin"), root.options)
    storage.remove(root("d"), root.options)
    storage.remove(root("never/was.bin"), root.options)
    assert storage.list_files(root.base, root.options) == [root("keep.bin")]


def test_parquet_round_trip(root: Root):
    table = pa.table({"key": ["a/1.png", "b/2.png"], "width": pa.array([640, 1024], pa.int32()),
                      "score": [0.5, None]})
    uri = root("manifests", "part-00000.parquet")
    storage.write_parquet_table(table, uri, root.options)
    assert storage.read_parquet_table(uri, root.options).equals(table)
    assert storage.read_parquet_table(uri, root.options, columns=["width"]).equals(table.select(["width"]))

    fs, path = storage.pyarrow_filesystem(uri, root.options)
    assert pq.ParquetFile(path, filesystem=fs).metadata.num_rows == 2
    fs2 = pickle.loads(pickle.dumps(fs))  # what Ray Data's filesystem= argument needs
    assert pq.read_table(path, filesystem=fs2).equals(table)


def test_local_writes_are_atomic(tmp_path):
    target = tmp_path / "out" / "x.bin"
    storage.write_bytes(str(target), b"old")
    with pytest.raises(TypeError):
        storage.write_bytes(str(target), object())  # fails mid-write
    assert target.read_bytes() == b"old"
    assert os.listdir(target.parent) == ["x.bin"]  # no temporary left behind

    storage.write_parquet_table(pa.table({"a": [1]}), str(tmp_path / "t.parquet"))
    umask = os.umask(0)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == 0o666 & ~umask  # not mkstemp's 0600


def test_list_files_skips_in_flight_local_writes(tmp_path):
    (tmp_path / ".colorize-tmp-a.bin.123").write_bytes(b"partial")
    (tmp_path / "a.bin").write_bytes(b"done")
    assert storage.list_files(str(tmp_path)) == [str(tmp_path / "a.bin")]


@pytest.mark.parametrize(
    ("base", "parts", "expected"),
    [
        ("s3://bucket", ("a", "b.png"), "s3://bucket/a/b.png"),
        ("s3://bucket/", ("/a/", "/b.png"), "s3://bucket/a/b.png"),
        ("s3://bucket/run/", ("x//y", "z/"), "s3://bucket/run/x/y/z/"),
        ("s3://", ("bucket", "k"), "s3://bucket/k"),
        ("s3://bucket/p", (), "s3://bucket/p"),
        ("/data/out/", ("a", "b"), "/data/out/a/b"),
        ("/", ("a",), "/a"),
        ("rel/dir", ("f.txt",), "rel/dir/f.txt"),
        ("", ("a", "b"), "a/b"),
    ],
)
def test_join(base, parts, expected):
    assert storage.join(base, *parts) == expected


def test_is_s3_and_filesystem_paths(tmp_path):
    assert storage.is_s3("s3://b/k") and storage.is_s3("S3://b/k")
    assert not storage.is_s3("/s3://b") and not storage.is_s3("relative/path")
    _, path = storage.filesystem("s3://bucket/a/b/", StorageOptions(endpoint_url="http://127.0.0.1:1"))
    assert path == "bucket/a/b"
    _, local = storage.filesystem("rel/x", None)
    assert local == os.path.abspath("rel/x")
    _, local = storage.filesystem(f"file://{tmp_path}/y", None)
    assert local == f"{tmp_path}/y"
    with pytest.raises(ValueError, match="scheme"):
        storage.filesystem("gs://bucket/x")


def test_s3_filesystem_is_configured_from_options():
    options = StorageOptions(endpoint_url="http://127.0.0.1:1", region="eu-west-1", key="k", secret="s")
    fs, _ = storage.filesystem("s3://b/x", options)
    assert fs.client_kwargs == {"endpoint_url": "http://127.0.0.1:1", "region_name": "eu-west-1"}
    assert fs.config_kwargs["retries"] == {"max_attempts": 5, "mode": "standard"}
    assert fs.key == "k" and fs.secret == "s" and not fs.anon
    assert storage.filesystem("s3://other/y", options)[0] is fs  # one instance per options in a process
    assert storage.filesystem("s3://b/x", StorageOptions(anon=True))[0] is not fs


AWS_VARS = ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION",
            "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN"]


def test_options_from_env_and_overrides(monkeypatch):
    for var in AWS_VARS:
        monkeypatch.delenv(var, raising=False)
    assert StorageOptions.from_env() == StorageOptions()

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    assert StorageOptions.from_env() == StorageOptions("http://generic:1", "eu-west-1", "AKIDENV", "envsecret")

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-specific:2")
    monkeypatch.setenv("AWS_REGION", "us-west-2")
    opts = StorageOptions.from_env(key="AKIDOVERRIDE", secret=None, anon=True)
    assert opts == StorageOptions("http://s3-specific:2", "us-west-2", "AKIDOVERRIDE", "envsecret", anon=True)

    monkeypatch.setenv("AWS_REGION", "")  # empty counts as unset
    assert StorageOptions.from_env().region == "eu-west-1"
    with pytest.raises(TypeError, match="unknown"):
        StorageOptions.from_env(bucket="x")


def test_repr_and_redacted_hide_credentials():
    opts = StorageOptions(endpoint_url="http://h:1", region="r", key="AKIDSECRETKEY", secret="verysecret",
                          token="sessiontokenvalue")
    for text in (repr(opts), str(opts), f"{opts}", str(opts.redacted())):
        assert "AKIDSECRETKEY" not in text and "verysecret" not in text and "sessiontokenvalue" not in text
    assert opts.redacted() == {"endpoint_url": "http://h:1", "region": "r", "key": "***", "secret": "***",
                               "token": "***", "request_attempts": 5, "retry_seconds": 60.0,
                               "anon": False}
    assert StorageOptions().redacted()["secret"] is None
    assert "http://h:1" in repr(opts)


def test_options_pickle_round_trip():
    opts = StorageOptions(endpoint_url="http://h:1", region="r", key="k", secret="s", anon=False)
    back = pickle.loads(pickle.dumps(opts))
    assert back == opts and hash(back) == hash(opts)


@pytest.mark.integration
def test_wrong_secret_is_rejected(s3_server, s3_prefix):
    if s3_server.kind == "moto":
        pytest.skip("moto accepts any credentials")
    storage.write_bytes(s3_prefix + "x.bin", b"x", s3_server.options)
    bad = StorageOptions(endpoint_url=s3_server.endpoint_url, region=s3_server.region, key=s3_server.key,
                         secret="wrong")
    with pytest.raises(PermissionError):
        storage.read_bytes(s3_prefix + "x.bin", bad)


def _read_in_child(uri, options, queue):
    queue.put(storage.read_bytes(uri, options))


@pytest.mark.integration
def test_forked_child_builds_its_own_s3_client(s3_server, s3_prefix):
    uri = s3_prefix + "fork.bin"
    storage.write_bytes(uri, b"from parent", s3_server.options)  # parent's client and event loop are live
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(uri, s3_server.options, queue))
    child.start()
    try:
        assert queue.get(timeout=60) == b"from parent"
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0


def _sockets(pid: int) -> list[tuple[str, ipaddress._BaseAddress, int, ipaddress._BaseAddress]]:
    """(state, local ip, local port, remote ip) of the process's TCP sockets, read from /proc."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])

    def decode(field: str):
        ip_hex, port_hex = field.split(":")
        raw = bytes.fromhex(ip_hex)
        if len(raw) == 4:
            return ipaddress.IPv4Address(raw[::-1]), int(port_hex, 16)
        ip = ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
        return (ip.ipv4_mapped or ip), int(port_hex, 16)

    out = []
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[9] in inodes:
                    (lip, lport), (rip, _) = decode(cols[1]), decode(cols[2])
                    out.append(("LISTEN" if cols[3] == "0A" else cols[3], lip, lport, rip))
    return out


@pytest.mark.integration
def test_s3_server_is_bound_to_loopback_only(s3_server):
    assert s3_server.endpoint_url.startswith("http://127.0.0.1:")
    # The current server process: fault tests may have killed and restarted it on the same ports.
    pid = s3_server.control.proc.pid if getattr(s3_server, "control", None) else s3_server.pid
    socks = _sockets(pid)
    listening = [(ip, port) for state, ip, port, _ in socks if state == "LISTEN"]
    assert (ipaddress.IPv4Address("127.0.0.1"), s3_server.port) in listening
    if s3_server.kind == "seaweedfs":  # moto shares this process with whatever else the test run opened
        assert all(ip.is_loopback for ip, _ in listening), listening
        assert all(rip.is_loopback for state, _, _, rip in socks if state != "LISTEN"), socks


@pytest.mark.integration
def test_ray_workers_read_with_shipped_options(ray_cluster, s3_server, s3_prefix):
    import ray

    uris = [storage.join(s3_prefix, f"{i}.bin") for i in range(4)]
    for i, uri in enumerate(uris):
        storage.write_bytes(uri, bytes([i]) * 3, s3_server.options)

    @ray.remote
    def read(uri: str, options: StorageOptions) -> tuple[bytes, str]:
        return storage.read_bytes(uri, options), os.environ.get("AWS_REQUEST_CHECKSUM_CALCULATION", "")

    results = ray.get([read.remote(u, s3_server.options) for u in uris])
    assert [data for data, _ in results] == [bytes([i]) * 3 for i in range(4)]
    assert {env for _, env in results} == {"when_required"}  # conftest's environment reached the workers


@pytest.mark.integration
def test_s3_puts_send_no_expect_100_continue(s3_server, s3_prefix):
    """botocore's Expect: 100-continue made a PUT hang for good on a pooled connection to SeaweedFS
    (the server's interim response sat unread); our client never sends it, empty bodies included."""
    fs, _ = storage.filesystem(s3_prefix + "warm", s3_server.options)
    storage.write_bytes(s3_prefix + "warm", b"1", s3_server.options)  # creates the client
    headers: list[dict] = []
    fs.s3.meta.events.register("before-send.s3", lambda request, **kw: headers.append(dict(request.headers)))
    for i, payload in enumerate((b"abc", b"", b"x" * 100_000)):
        storage.write_bytes(s3_prefix + f"put{i}", payload, s3_server.options)
        assert storage.read_bytes(s3_prefix + f"put{i}", s3_server.options) == payload
    puts = [h for h in headers if "Content-Length" in h or "content-length" in {k.lower() for k in h}]
    assert puts, "no request was observed"
    assert all("expect" not in {k.lower() for k in h} for h in headers), headers


def test_a_local_read_that_blocks_gives_up_as_transient():
    """A read stuck in the kernel (a hung network mount) must not hang the row: here a real blocking read
    on a pipe nobody writes to stands for it. It becomes a TransientError (the shard stays unfinished)."""
    from colorize_core.errors import TransientError, is_transient

    r, w = os.pipe()
    try:
        t0 = time.monotonic()
        with pytest.raises(TransientError, match="did not finish within") as info:
            storage.call_with_timeout(lambda: os.read(r, 1), 0.5, "local read of /mnt/nfs/scan.tif")
        assert 0.4 < time.monotonic() - t0 < 10
        assert is_transient(info.value)
    finally:
        os.write(w, b"x")  # lets the abandoned thread finish
        os.close(w)
    assert storage.call_with_timeout(lambda: 42, 5, "x") == 42
    with pytest.raises(FileNotFoundError):  # the function's own errors pass through unchanged
        storage.call_with_timeout(lambda: storage.read_bytes("/nonexistent/x.jpg"), 5, "x")


def test_writes_within_an_output_never_follow_a_link_planted_below_it(tmp_path):
    elsewhere, out = tmp_path / "elsewhere", tmp_path / "out"
    elsewhere.mkdir()
    storage.write_bytes(str(out / "images" / "a" / "x.jpg"), b"1", within=str(out))  # folders created
    assert (out / "images" / "a" / "x.jpg").read_bytes() == b"1"
    (out / "images" / "evil").symlink_to(elsewhere)
    with pytest.raises(storage.SymlinkRefusedError) as info:
        storage.write_bytes(str(out / "images" / "evil" / "y.jpg"), b"2", within=str(out))
    assert info.value.filename == str(out / "images" / "evil")
    assert list(elsewhere.iterdir()) == []
    # A link at the final name is replaced by the file, never written through.
    (out / "images" / "a" / "z.jpg").symlink_to(elsewhere / "target.jpg")
    storage.write_bytes(str(out / "images" / "a" / "z.jpg"), b"3", within=str(out))
    assert not (out / "images" / "a" / "z.jpg").is_symlink() and list(elsewhere.iterdir()) == []
    # Without within= (paths the user named: the CLI's -o), links are followed as usual.
    storage.write_bytes(str(out / "images" / "evil" / "y.jpg"), b"4")
    assert (elsewhere / "y.jpg").read_bytes() == b"4"
    # The root itself may be a link; nothing is left behind by a refused write.
    (tmp_path / "link").symlink_to(out)
    storage.write_bytes(str(tmp_path / "link" / "images" / "b.jpg"), b"5", within=str(tmp_path / "link"))
    assert (out / "images" / "b.jpg").read_bytes() == b"5"
    assert not [p for p in out.rglob("*") if p.name.startswith(".colorize-tmp-")]


def test_write_output_names_the_target_and_what_to_do(tmp_path):
    from colorize_core.errors import OutputError

    out = tmp_path / "out"
    out.mkdir()
    (out / "images").write_text("in the way")
    with pytest.raises(OutputError) as info:
        storage.write_output(str(out / "images" / "x.jpg"), b"1", None, root=str(out))
    assert str(info.value) == (f"cannot write {out}/images/x.jpg: '{out}/images' is a file where a folder is "
                               f"needed; move it away and rerun the same command")
    (out / "images").unlink()
    (out / "images" / "x.jpg").mkdir(parents=True)
    with pytest.raises(OutputError, match="is a folder where a file is needed"):
        storage.write_output(str(out / "images" / "x.jpg"), b"1", None, root=str(out))
    table = pa.table({"a": [1, 2]})
    storage.write_output_table(table, str(out / "metrics" / "s.parquet"), None, root=str(out))
    assert pq.read_table(out / "metrics" / "s.parquet").equals(table)
    with pytest.raises(ValueError, match="not below"):
        storage.write_bytes(str(tmp_path / "other" / "x"), b"", within=str(out))
