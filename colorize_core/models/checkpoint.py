"""Self-describing checkpoints: ``weights.pt`` (a plain state dict) beside ``model.json``.

``model.json`` names the registry architecture and the arguments it was built with, the preprocessing
(:class:`~colorize_core.models.preprocess.Preprocessing`: the input size the weights were trained at and
how images are brought to it; ``input_size`` repeats its size for readers of older checkpoints) and
whatever the training job records (data manifest, step, metrics), so the colorize and evaluate jobs
rebuild the model from the URI alone, local or ``s3://`` (:func:`colorize_core.models.loading.load_checkpoint`:
building it needs the registry, which this format module does not import).
"""

from __future__ import annotations

import io
import json
from typing import Any

import torch
from torch import nn

from .preprocess import Preprocessing
from .weights import WeightsError

FORMAT = "colorize-checkpoint/1"
META_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"


def is_checkpoint_uri(spec: str) -> bool:
    """Registry names are bare words; anything path-like names a checkpoint directory."""
    return "/" in spec or spec.startswith(("s3://", ".", "~"))


def save_checkpoint(uri: str, module: nn.Module, *, architecture: str, arguments: dict[str, Any],
                    input_size: tuple[int, int] | None = None, preprocessing: Preprocessing | None = None,
                    storage_options=None, **meta: Any) -> str:
    """Write ``weights.pt`` then ``model.json``. Give ``preprocessing`` (or just ``input_size``, for the
    default resize): the size the weights were trained at, which is what inference must use."""
    from colorize_core import storage

    if preprocessing is None:
        if input_size is None:
            raise ValueError("save_checkpoint needs preprocessing= (or input_size=)")
        preprocessing = Preprocessing(tuple(input_size))
    elif input_size is not None and tuple(input_size) != preprocessing.input_size:
        raise ValueError(f"input_size {tuple(input_size)} contradicts preprocessing {preprocessing}")
    options = storage_options or storage.StorageOptions.from_env()
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, buf)
    record = {
        "format": FORMAT,
        "architecture": architecture,
        "arguments": arguments,
        "input_size": list(preprocessing.input_size),
        "preprocessing": preprocessing.to_dict(),
        **meta,
    }
    # Weights first, description last: a model.json only exists beside complete weights.
    storage.write_bytes(storage.join(uri, WEIGHTS_FILE), buf.getvalue(), options)
    storage.write_bytes(storage.join(uri, META_FILE), json.dumps(record, indent=2, default=str).encode(), options)
    return uri


def read_checkpoint_meta(uri: str, storage_options=None) -> dict[str, Any]:
    from colorize_core import storage

    options = storage_options or storage.StorageOptions.from_env()
    try:
        meta = json.loads(storage.read_bytes(storage.join(uri, META_FILE), options))
    except FileNotFoundError:
        raise WeightsError(f"{uri}: not a checkpoint directory (no {META_FILE})") from None
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{uri}/{META_FILE}: unknown checkpoint format {meta.get('format')!r}")
    return meta


def checkpoint_preprocessing(meta: dict[str, Any]) -> Preprocessing:
    """The preprocessing a checkpoint's ``model.json`` records; checkpoints written before it was a
    structured value (a descriptive string) get the default resize at their ``input_size``."""
    pre = meta.get("preprocessing")
    if isinstance(pre, dict) and "input_size" in pre:
        return Preprocessing.from_dict(pre)
    return Preprocessing(tuple(meta["input_size"]))


TRAIN_STATE_FILE = "train_state.pt"


def save_train_state(uri: str, state: dict[str, Any], storage_options=None) -> None:
    """Optimizer (and GAN discriminator) state beside a checkpoint's weights, for resuming training.

    Written before ``model.json`` by the training job, so a checkpoint that describes itself is also
    resumable. Inference never reads it."""
    from colorize_core import storage

    options = storage_options or storage.StorageOptions.from_env()
    buf = io.BytesIO()
    torch.save(state, buf)
    storage.write_bytes(storage.join(uri, TRAIN_STATE_FILE), buf.getvalue(), options)


def load_train_state(uri: str, storage_options=None) -> dict[str, Any] | None:
    """The training state saved beside a checkpoint, or None if it has none (an inference-only copy)."""
    from colorize_core import storage

    options = storage_options or storage.StorageOptions.from_env()
    try:
        data = storage.read_bytes(storage.join(uri, TRAIN_STATE_FILE), options)
    except FileNotFoundError:
        return None
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
