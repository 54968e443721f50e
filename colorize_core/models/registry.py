"""One registry of colorization models by stable names.

An entry carries the builder, its declared input size, parameter count and released weights, so that a
config says ``model: siggraph17`` and nothing else needs repeating. Every model shares one calling
convention: ``model(l)`` with L in [0, 100] as [B,1,H,W] returns ab in Lab units as [B,2,H,W] at the
same H, W; models with ``accepts_hints`` also take ``(l, ab_hint, hint_mask)``.

A trained checkpoint outside the registry is named by its URI (a directory holding ``model.json`` and
``weights.pt``, see :mod:`colorize_core.models.checkpoint`); :func:`load_model` takes either.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from ..errors import UnknownNameError
from .preprocess import Preprocessing
from .weights import WeightsError, WeightsSpec, load_into, load_state_dict


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    input_size: tuple[int, int]
    num_params: int
    description: str
    paper: str = ""
    accepts_hints: bool = False
    weights: dict[str, WeightsSpec] = field(default_factory=dict, hash=False)
    default_kwargs: dict[str, Any] = field(default_factory=dict, hash=False)
    # Weights used when none are given, e.g. "bundled"; None means random init is the default.
    default_weights: str | None = None

    def preprocessing(self, weights: str | None = None) -> Preprocessing:
        """The named weights spec's preprocessing; for other weights (a file, random init) the
        architecture's declared input size with the default resize."""
        spec = self.weights.get(weights or self.default_weights or "")
        return spec.preprocessing if spec is not None else Preprocessing(self.input_size)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(entry: ModelEntry) -> ModelEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def list_models() -> list[str]:
    _ensure_builtin()
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    _ensure_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError(f"unknown model {name!r}: use one of {', '.join(sorted(_REGISTRY))} "
                               f"(see `colorize models`), or a checkpoint directory URI") from None


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
    from . import checkpoint

    if checkpoint.is_checkpoint_uri(model):
        module, meta = checkpoint.load_checkpoint(model, storage_options=storage_options)
        pre = checkpoint.checkpoint_preprocessing(meta)
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
    pre = entry.preprocessing(weights)
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


_BUILTIN_LOADED = False


def _ensure_builtin() -> None:
    """Import the modules that register the built-in entries (deferred to avoid import cycles)."""
    global _BUILTIN_LOADED
    if not _BUILTIN_LOADED:
        _BUILTIN_LOADED = True
        from . import zoo  # noqa: F401
