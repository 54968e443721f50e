"""Building and loading models: a registry name with its weights, or a checkpoint directory URI.

Above the registry (:mod:`.registry`, the names), the built-in entries (:mod:`.zoo`) and the checkpoint
format (:mod:`.checkpoint`): this is the one module that needs all three, so none of them needs another
one above it and the package has no import cycle.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any

from torch import nn

from . import zoo  # noqa: F401 - registers the built-in entries
from .checkpoint import WEIGHTS_FILE, checkpoint_preprocessing, is_checkpoint_uri, read_checkpoint_meta
from .preprocess import Preprocessing
from .registry import ModelEntry, get_entry
from .weights import WeightsError, _torch_load, load_into, load_state_dict


def weights_preprocessing(entry: ModelEntry, weights: str | None = None) -> Preprocessing:
    """How images are brought to ``entry`` with the named weights: the spec's own preprocessing where it
    records one, else the architecture's declared input size with the default resize (also for weights
    that are a file, or random init)."""
    spec = entry.weights.get(weights or entry.default_weights or "")
    if spec is not None and spec.preprocessing is not None:
        return spec.preprocessing
    return Preprocessing(entry.input_size)


def create_model(name: str, weights: str | None = None, *, storage_options=None, **kwargs) -> nn.Module:
    """Build a registered model in eval mode. ``weights``: None (random init), ``"official"``, the
    name of another spec of the entry (e.g. ``"bundled"``), a local path, https URL or s3:// URI."""
    entry = get_entry(name)
    spec = entry.weights.get(weights) if weights is not None else None
    model = entry.builder(**{**entry.default_kwargs, **(spec.arguments if spec else {}), **kwargs})
    if weights is not None:
        if spec is not None and weights != "official":
            source = spec.uri
        else:
            source = weights
        # The named spec (its sha256 is checked against the file) or, for a bare URI, the official one.
        state = load_state_dict(source, spec=spec or entry.weights.get("official"), storage_options=storage_options)
        load_into(model, state, source)
    return model.eval()


def load_checkpoint(uri: str, storage_options=None) -> tuple[nn.Module, dict[str, Any]]:
    """A checkpoint directory (``model.json`` + ``weights.pt``, local or s3://) -> (module in eval mode, meta)."""
    from colorize_core import storage

    options = storage_options or storage.StorageOptions.from_env()
    meta = read_checkpoint_meta(uri, options)
    entry = get_entry(meta["architecture"])
    module = entry.builder(**meta.get("arguments", {}))
    weights_uri = storage.join(uri, WEIGHTS_FILE)
    try:
        data = storage.read_bytes(weights_uri, options)
    except FileNotFoundError:
        raise WeightsError(f"{weights_uri}: weights file not found") from None
    load_into(module, _torch_load(io.BytesIO(data), weights_uri), weights_uri)
    return module.eval(), meta


@dataclass(frozen=True)
class ModelInfo:
    """What the pipeline and the summaries need to know about a loaded model. ``preprocessing`` is how
    images are brought to the model (the weights' own); ``input_size`` is its size."""

    name: str
    input_size: tuple[int, int]
    accepts_hints: bool
    weights: str | None
    weights_sha256: str | None
    num_params: int
    preprocessing: Preprocessing | None = None

    def __post_init__(self) -> None:
        if self.preprocessing is None:
            object.__setattr__(self, "preprocessing", Preprocessing(tuple(self.input_size)))
        elif tuple(self.input_size) != self.preprocessing.input_size:
            raise ValueError(f"input_size {self.input_size} contradicts {self.preprocessing}")


def state_dict_sha256(model: nn.Module) -> str:
    """Digest of the parameters actually loaded: identifies the weights whatever file they came from."""
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_model(model: str, weights: str | None = None, *, storage_options=None,
               allow_random: bool = False, **kwargs) -> tuple[nn.Module, ModelInfo]:
    """Resolve a model spec (registry name or checkpoint URI) to (module in eval mode, info).

    Jobs refuse random weights unless ``allow_random``: colorizing an archive with an untrained model
    would silently produce garbage."""
    if is_checkpoint_uri(model):
        module, meta = load_checkpoint(model, storage_options=storage_options)
        pre = checkpoint_preprocessing(meta)
        info = ModelInfo(
            name=meta.get("name") or meta["architecture"],
            input_size=pre.input_size,
            preprocessing=pre,
            accepts_hints=bool(getattr(module, "accepts_hints", False)),
            weights=model,
            weights_sha256=state_dict_sha256(module),
            num_params=sum(p.numel() for p in module.parameters()),
        )
        return module, info
    entry = get_entry(model)
    weights = weights if weights is not None else entry.default_weights
    if weights is None and not allow_random:
        if "official" in entry.weights:
            raise WeightsError(f"model {model!r} has no weights: pass --weights official (download the released "
                               f"file) or --weights PATH|s3://...|https://...")
        # Nothing was released for it: it must be trained first.
        raise WeightsError(f"model {model!r} has no released weights: train one (python -m jobs.train --model "
                           f"{model} ...) and pass its checkpoint directory as --model, or pass --weights PATH")
    module = create_model(model, weights, storage_options=storage_options, **kwargs)
    pre = weights_preprocessing(entry, weights)
    info = ModelInfo(
        name=model,
        input_size=pre.input_size,
        preprocessing=pre,
        accepts_hints=entry.accepts_hints,
        weights=weights,
        weights_sha256=state_dict_sha256(module),
        num_params=sum(p.numel() for p in module.parameters()),
    )
    return module, info
