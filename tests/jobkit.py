"""Builders shared by the job tests: images, manifests and a tiny trained-format checkpoint."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from skimage import data

from colorize_core import storage
from colorize_core.models.checkpoint import save_checkpoint
from colorize_core.models.registry import get_entry


def tiny_checkpoint(uri: str, options=None, seed: int = 0) -> str:
    """A small `unet` checkpoint in the training job's format: fast on CPU, deterministic output."""
    torch.manual_seed(seed)
    arguments = {"base_channels": 4, "depth": 2}
    module = get_entry("unet").builder(**arguments).eval()
    save_checkpoint(uri, module, architecture="unet", arguments=arguments, input_size=(64, 64),
                    storage_options=options, step=0, note="random init, for pipeline tests")
    return uri


def colour_images(n: int, size: tuple[int, int] = (96, 72)) -> list[bytes]:
    """n distinct colour JPEGs/PNGs cut from scikit-image's sample photos."""
    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    out = []
    for i in range(n):
        src = sources[i % len(sources)]
        y, x = (i * 17) % (src.shape[0] - 200), (i * 29) % (src.shape[1] - 200)
        crop = Image.fromarray(src[y: y + 200, x: x + 200]).resize(size)
        buf = io.BytesIO()
        crop.save(buf, format="PNG" if i % 2 else "JPEG", quality=92)
        out.append(buf.getvalue())
    return out


def gray_image(size=(80, 60)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(data.camera()).resize(size).save(buf, format="PNG")
    return buf.getvalue()


def write_manifest(uri: str, rows: list[dict], options=None) -> str:
    options = options or storage.StorageOptions.from_env()
    cols = {k: [r.get(k) for r in rows] for k in dict.fromkeys(k for r in rows for k in r)}
    table = pa.table(cols)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(uri, buf.getvalue(), options)
    return uri


def put_images(prefix: str, images: dict[str, bytes], options=None) -> dict[str, str]:
    """Write name -> bytes under prefix; returns name -> uri."""
    options = options or storage.StorageOptions.from_env()
    uris = {}
    for name, payload in images.items():
        uris[name] = storage.join(prefix, name)
        storage.write_bytes(uris[name], payload, options)
    return uris


def read_metrics(output: str, options=None) -> pa.Table:
    options = options or storage.StorageOptions.from_env()
    files = storage.list_files(storage.join(output, "metrics"), options, suffix=".parquet")
    return pa.concat_tables([storage.read_parquet_table(f, options) for f in files])


def decode(uri: str, options=None) -> np.ndarray:
    from colorize_core import imageio

    options = options or storage.StorageOptions.from_env()
    return imageio.decode_image(storage.read_bytes(uri, options)).rgb


def decode_bytes(payload: bytes) -> np.ndarray:
    from colorize_core import imageio

    return imageio.decode_image(payload).rgb


def start_job(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    """A job in its own process group (so a test can SIGKILL it whole), run from the repository root."""
    return subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_markers(proc: subprocess.Popen, markers: Path, at_least: int, timeout: float = 240) -> None:
    """Return once ``at_least`` shards are marked done; the job must still be running (a fault lands mid-run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if markers.exists() and len(list(markers.glob("*.done"))) >= at_least:
            return
        time.sleep(0.05)
    assert proc.poll() is None, "the job ended before the fault:\n" + proc.stdout.read().decode()[-3000:]


def kill_after_markers(cmd: list[str], env: dict[str, str], output: Path, markers: int = 2,
                       timeout: float = 240) -> int:
    """Start a job, SIGKILL its whole process group once ``markers`` shards are marked done, and return how
    many markers there were after the kill (the kill must land mid-run to test resume)."""
    proc = start_job(cmd, env)
    done = Path(output) / "_state" / "completions"
    wait_for_markers(proc, done, markers, timeout)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(3)  # let Ray reap the dead job's workers
    return len(list(done.glob("*.done")))
