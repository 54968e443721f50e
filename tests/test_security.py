"""Security properties that hold on every path: a pickle payload in weights never runs; an interrupted write is
never visible as a finished output; no signed query string or secret reaches the files beside the outputs;
user mistakes end as one line. (Ghostscript and hostile images: tests/test_hostile_input.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from colorize_core import storage
from colorize_core.config import ColorizeConfig
from colorize_core.models import WeightsError, load_model
from colorize_core.models.checkpoint import WEIGHTS_FILE
from tests import jobkit

REPO = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this runs ``touch <marker>``: what a malicious weights file would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _poisoned(marker: Path) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save({"conv.weight": torch.zeros(1), "x": _Payload(marker)}, buf)
    return buf.getvalue()


def test_control_plain_torch_load_would_run_the_payload(tmp_path):
    import io

    marker = tmp_path / "ran"
    torch.load(io.BytesIO(_poisoned(marker)), weights_only=False)
    assert marker.exists()  # so the tests below, where it must not exist, mean something


@pytest.mark.integration
def test_pickle_payload_in_weights_is_refused_on_every_path_without_running(tmp_path, s3_server, s3_prefix):
    marker = tmp_path / "ran"
    payload = _poisoned(marker)
    local = tmp_path / "w.pt"
    local.write_bytes(payload)
    storage.write_bytes(s3_prefix + "w.pt", payload, s3_server.options)
    ckpt = jobkit.tiny_checkpoint(str(tmp_path / "ckpt"))
    (Path(ckpt) / WEIGHTS_FILE).write_bytes(payload)
    s3_ckpt = jobkit.tiny_checkpoint(s3_prefix + "ckpt", s3_server.options)
    storage.write_bytes(storage.join(s3_ckpt, WEIGHTS_FILE), payload, s3_server.options)
    for model, weights in (("compact", str(local)), ("compact", s3_prefix + "w.pt"), (ckpt, None), (s3_ckpt, None)):
        with pytest.raises(WeightsError):
            load_model(model, weights, storage_options=s3_server.options)
    assert not marker.exists()


def test_interrupted_local_writes_are_never_visible(tmp_path):
    target = tmp_path / "images" / "a.jpg"

    class Boom(Exception):
        pass

    class Half(bytes):
        pass

    # An exception in the middle of the write: nothing at the key, nothing listed.
    with pytest.raises(Boom):
        storage._replace_or_discard(storage._local_atomic_target(str(target)), str(target),
                                    lambda tmp: (Path(tmp).write_bytes(b"half"), (_ for _ in ()).throw(Boom()))[1])
    assert not target.exists() and storage.list_files(str(tmp_path)) == []
    # A process SIGKILLed while writing large objects over and over: the key holds a whole object or nothing,
    # and whatever temporary file it left is never listed.
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from colorize_core import storage\n"
              "i = 0\nwhile True:\n    i += 1\n    storage.write_bytes(sys.argv[2], bytes([i % 256]) * 20_000_000)\n"
              "    print(i, flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(REPO), str(target)], stdout=subprocess.PIPE)
    proc.stdout.readline()  # one write done
    time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    data = target.read_bytes()
    assert len(data) == 20_000_000 and data == data[:1] * len(data)
    assert storage.list_files(str(tmp_path)) == [str(target)]


def _no_secret_anywhere(out: Path, secrets: list[str]) -> None:
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".parquet", ".done"):
            text = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in text, (path, secret)


@pytest.mark.integration
def test_signed_weights_url_never_reaches_outputs_or_logs(ray_cluster, tmp_path, capfd):
    """A presigned https:// weights URL (served from a local file: the test never goes online) is recorded
    without its signature in run.json, config.json and summary.json, and never printed."""
    from jobs import colorize as job

    signed = ("https://weights.example.invalid/w.pt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIASECRET42"
              "&X-Amz-Signature=0123456789abcdef&X-Amz-Security-Token=SESSIONTOKEN42")
    cfg_dict = {"manifest": "samples", "output": str(tmp_path / "out"), "model": "compact", "weights": signed}
    cfg = ColorizeConfig(**cfg_dict)
    red = cfg.resolved()["weights"]
    assert "AKIASECRET42" not in red and "0123456789abcdef" not in red and "SESSIONTOKEN42" not in red
    assert red.startswith("https://weights.example.invalid/w.pt?")
    # The job, end to end, with the presigned URL: loading fails (no network), the line printed has no secret.
    code = job.main(["--output", str(tmp_path / "out"), "--model", "compact", "--weights", signed, "--quiet"])
    err = capfd.readouterr()
    assert code == job.EXIT_FAILED
    for secret in ("AKIASECRET42", "0123456789abcdef", "SESSIONTOKEN42"):
        assert secret not in err.out + err.err
    _no_secret_anywhere(tmp_path / "out", ["AKIASECRET42", "0123456789abcdef", "SESSIONTOKEN42"])
