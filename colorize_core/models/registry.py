"""One registry of colorization models by stable names.

An entry carries the builder, its parameter count and released weights, so that a config says
``model: siggraph17`` and nothing else needs repeating; its input size is the builder's own
``input_size`` (declared once, on the model class). Every model shares one calling convention:
``model(l)`` with L in [0, 100] as [B,1,H,W] returns ab in Lab units as [B,2,H,W] at the same H, W;
models with ``accepts_hints`` also take ``(l, ab_hint, hint_mask)``.

The bottom of the models package: it imports nothing else from it, so any module may register or look
up entries. The built-in entries live in :mod:`.zoo`; building and loading models (weights, checkpoints)
in :mod:`.loading`, above both. Importing the package (``colorize_core.models``) registers the built-ins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from torch import nn

from ..errors import UnknownNameError

if TYPE_CHECKING:
    from .weights import WeightsSpec


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    num_params: int
    description: str
    paper: str = ""
    weights: dict[str, "WeightsSpec"] = field(default_factory=dict, hash=False)
    default_kwargs: dict[str, Any] = field(default_factory=dict, hash=False)
    # Weights used when none are given, e.g. "bundled"; None means random init is the default.
    default_weights: str | None = None

    @property
    def input_size(self) -> tuple[int, int]:
        """The architecture's declared input size (its class's ``input_size``)."""
        return tuple(self.builder.input_size)

    @property
    def accepts_hints(self) -> bool:
        return bool(getattr(self.builder, "accepts_hints", False))


_REGISTRY: dict[str, ModelEntry] = {}

# The model every job and command uses when none is named (bundled weights, runs offline).
DEFAULT_MODEL = "effnet_guided"


def register_model(entry: ModelEntry) -> ModelEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError(f"unknown model {name!r}: use one of {', '.join(sorted(_REGISTRY))} "
                               f"(see `colorize models`), or a checkpoint directory URI") from None
