"""Storage under injected faults: throttling, 5xx and connection resets from a fault proxy (tests/faultproxy.py)
in front of the real S3 server. Transient faults are retried and, when they outlast the bounded retries,
raised as TransientError; permanent answers (404, 403) are never retried."""

from __future__ import annotations

import dataclasses

import pytest

from colorize_core import errors, storage
from tests.faultproxy import FaultProxy


@pytest.fixture
def proxy(s3_server):
    p = FaultProxy(s3_server.port)
    yield p
    p.close()


def _through(proxy: FaultProxy, s3_server, **kw) -> storage.StorageOptions:
    kw = {"request_attempts": 2, "retry_seconds": 6.0, **kw}
    return dataclasses.replace(s3_server.options, endpoint_url=proxy.endpoint_url, **kw)


@pytest.mark.parametrize("kind", ["503", "500", "reset"])
def test_every_operation_rides_out_a_burst_of_faults(proxy, s3_server, s3_prefix, kind):
    opts = _through(proxy, s3_server)
    uri = s3_prefix + "a/x.bin"
    for op in (lambda: storage.write_bytes(uri, b"payload", opts),
               lambda: storage.read_bytes(uri, opts),
               lambda: storage.exists(uri, opts),
               lambda: storage.list_files(s3_prefix, opts)):
        proxy.fail(kind, 3)
        op()
    assert storage.read_bytes(uri, opts) == b"payload"
    assert storage.exists(uri, opts) and storage.list_files(s3_prefix, opts) == [uri]
    proxy.fail(kind, 3)
    storage.remove(s3_prefix + "a", opts)
    assert not storage.exists(uri, opts)
    assert proxy.injected[kind] == 5 * 3


def test_a_lasting_outage_ends_as_transient_error_within_the_budget(proxy, s3_server, s3_prefix):
    import time

    opts = _through(proxy, s3_server, retry_seconds=3.0)
    storage.write_bytes(s3_prefix + "x.bin", b"x", s3_server.options)
    proxy.fail("refuse", seconds=120)
    t0 = time.monotonic()
    with pytest.raises(errors.TransientError, match="still failing") as info:
        storage.read_bytes(s3_prefix + "x.bin", opts)
    assert time.monotonic() - t0 < 60
    assert errors.is_transient(info.value)
    with pytest.raises(errors.TransientError):
        storage.exists(s3_prefix + "x.bin", opts)  # an outage is never "does not exist"
    proxy.clear()
    assert storage.read_bytes(s3_prefix + "x.bin", opts) == b"x"


def test_missing_and_forbidden_are_not_retried(proxy, s3_server, s3_prefix):
    opts = _through(proxy, s3_server)
    before = proxy.forwarded
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(s3_prefix + "absent.bin", opts)
    assert proxy.forwarded - before <= 2  # s3fs may HEAD then GET; nothing is retried
    if s3_server.kind == "moto":
        pytest.skip("moto accepts any credentials")
    bad = dataclasses.replace(opts, secret="wrong")
    before = proxy.forwarded
    with pytest.raises(PermissionError):
        storage.read_bytes(s3_prefix + "absent.bin", bad)
    assert proxy.forwarded - before <= 2
    with pytest.raises(errors.UserError, match=r"access denied to s3://.*AWS_ACCESS_KEY_ID"):
        with storage.access_checked(s3_prefix + "absent.bin"):
            storage.read_bytes(s3_prefix + "absent.bin", bad)


def test_objects_over_the_read_limit_are_refused(s3_server, s3_prefix):
    storage.write_bytes(s3_prefix + "big.bin", b"y" * 100, s3_server.options)
    assert storage.read_bytes(s3_prefix + "big.bin", s3_server.options, max_bytes=100) == b"y" * 100
    with pytest.raises(storage.TooLargeError):
        storage.read_bytes(s3_prefix + "big.bin", s3_server.options, max_bytes=99)


def test_remove_never_expands_glob_characters(s3_server, s3_prefix, tmp_path):
    opts = s3_server.options
    for name in ("run[1]/a.jpg", "run1/keep.jpg", "runx/keep.jpg"):
        storage.write_bytes(s3_prefix + name, b"x", opts)
        storage.write_bytes(str(tmp_path / name), b"x")
    storage.remove(s3_prefix + "run[1]", opts)
    storage.remove(str(tmp_path / "run[1]"))
    assert storage.list_files(s3_prefix, opts) == [s3_prefix + "run1/keep.jpg", s3_prefix + "runx/keep.jpg"]
    assert sorted(p.name for p in tmp_path.rglob("*.jpg")) == ["keep.jpg", "keep.jpg"]
    storage.remove(s3_prefix + "*", opts)  # no object is literally named "*": nothing happens
    assert len(storage.list_files(s3_prefix, opts)) == 2


def test_redact_uri_drops_signatures_and_keeps_the_location():
    url = ("https://bucket.s3.amazonaws.com/models/w.pt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA123%2F"
           "20260101%2Fus-east-1&X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600&X-Amz-Security-Token=tok123"
           "&X-Amz-Signature=deadbeef&versionId=7")
    red = storage.redact_uri(url)
    assert red.startswith("https://bucket.s3.amazonaws.com/models/w.pt?")
    for secret in ("AKIA123", "tok123", "deadbeef"):
        assert secret not in red
    assert "versionId=7" in red
    assert storage.redact_uri("https://user:pw@h/x?sig=abc&token=t") == "https://h/x?sig=REDACTED&token=REDACTED"
    assert storage.redact_uri("s3://b/k") == "s3://b/k" and storage.redact_uri("/local/p") == "/local/p"
