"""Weights specs and loading: a released file's URI, hash, input size and normalisation travel together.

Sources accepted everywhere a weights argument is: ``"official"`` (the entry's released file), a local
path, an ``https://`` URL or an ``s3://`` URI. Downloads land in the standard torch hub cache
(``$TORCH_HOME/hub/checkpoints``) and are sha256-checked before use; every file is read with
``torch.load(weights_only=True)`` so a weights file cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .preprocess import Preprocessing


class WeightsError(RuntimeError):
    """A weights file that cannot be used: download failure, wrong hash, missing key, wrong shape."""


@dataclass(frozen=True)
class WeightsSpec:
    """One released weights file and everything needed to use it.

    ``sha256`` may be a prefix (the released colorization files publish an 8-hex prefix in their file
    names, the torch hub convention); the check compares the file's digest against it. ``preprocessing``
    is how these weights were fed in training (their input size and resize), where that differs from the
    architecture's own declared size with the default resize (None: it does not; the size then lives in
    one place, the model class). ``arguments`` are the builder's keyword arguments these weights need
    (e.g. a decoder's widths), so the architecture travels with the weights rather than with a builder
    default.
    """

    uri: str
    sha256: str
    num_bytes: int | None
    preprocessing: Preprocessing | None = None
    l_cent: float = 50.0
    l_norm: float = 100.0
    ab_norm: float = 110.0
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    arguments: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def filename(self) -> str:
        return self.uri.rsplit("/", 1)[-1]


_HUB_HASH = re.compile(r"-([a-f0-9]{6,64})\.")

# Keys PyTorch adds to BatchNorm since 0.4; older releases lack them and load_state_dict fills them in.
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)


def hub_cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, expected_sha256: str | None) -> Path:
    from colorize_core.storage import redact_uri

    # Named from the URL's path: a presigned URL's query string (its signature) never becomes a file name.
    dest = hub_cache_dir() / urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(dest), hash_prefix=None, progress=True)
        except Exception as exc:  # network errors come in many types
            raise WeightsError(
                f"could not download weights from {redact_uri(url)}: {exc}. On a machine without internet access, "
                f"download the file elsewhere and pass its local path or s3:// URI with --weights."
            ) from exc
    if expected_sha256:
        digest = sha256_file(dest)
        if not digest.startswith(expected_sha256):
            dest.unlink(missing_ok=True)
            raise WeightsError(
                f"{dest}: sha256 {digest[:16]}... does not match the expected {expected_sha256}; "
                f"the corrupt file was removed from the cache, run again to download it anew"
            )
    return dest


def load_state_dict(source: str, *, spec: WeightsSpec | None = None, storage_options=None) -> dict[str, torch.Tensor]:
    """Read a state dict from ``source`` (see module docstring). ``spec`` supplies the hash for
    ``"official"``; for other https URLs a torch-hub-style hash in the file name is checked."""
    if source == "official":
        if spec is None:
            raise WeightsError("this model has no official released weights; pass a file with --weights")
        path = _download(spec.uri, spec.sha256)
        return _torch_load(path, str(path))
    if source.startswith(("https://", "http://")):
        m = _HUB_HASH.search(urllib.parse.urlsplit(source).path.rsplit("/", 1)[-1])
        expected = spec.sha256 if spec is not None and spec.uri == source else (m.group(1) if m else None)
        path = _download(source, expected)
        return _torch_load(path, str(path))
    if source.startswith("s3://"):
        from colorize_core import storage

        options = storage_options or storage.StorageOptions.from_env()
        try:
            data = storage.read_bytes(source, options)
        except FileNotFoundError as exc:
            raise WeightsError(f"{source}: weights file not found") from exc
        return _torch_load(io.BytesIO(data), source)
    path = Path(source).expanduser()
    if not path.is_file():
        raise WeightsError(f"{source}: weights file not found")
    if spec is not None and spec.sha256 and spec.uri == source:
        digest = sha256_file(path)
        if not digest.startswith(spec.sha256):
            raise WeightsError(f"{path}: sha256 {digest[:16]}... does not match the expected {spec.sha256}; "
                               f"the file is corrupt or was replaced, reinstall the package or retrain it")
    return _torch_load(path, str(path))


def _torch_load(f, name: str) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{name}: not a readable PyTorch weights file ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{name}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    return obj


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise a WeightsError naming ``source`` and the first offending key, before load_state_dict
    produces its long combined message."""
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            if key.endswith(_OPTIONAL_SUFFIXES):
                continue
            raise WeightsError(f"{source}: missing key '{key}' (expected shape {tuple(tensor.shape)})")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise WeightsError(
                f"{source}: shape mismatch for '{key}': file has {tuple(state[key].shape)}, "
                f"model expects {tuple(tensor.shape)}"
            )
    for key in state:
        if key not in expected:
            raise WeightsError(f"{source}: unexpected key '{key}' (is this file for another model?)")


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    check_state_dict(model, state, source)
    model.load_state_dict(state, strict=False)  # strictness checked above, optional BN counters allowed
    return model
