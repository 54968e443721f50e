"""Colorization models: one registry (:mod:`.registry`), the paper models and trained checkpoints."""

from .registry import ModelEntry, ModelInfo, create_model, get_entry, list_models, load_model, register_model
from .weights import WeightsError, WeightsSpec

__all__ = [
    "ModelEntry",
    "ModelInfo",
    "WeightsError",
    "WeightsSpec",
    "create_model",
    "get_entry",
    "list_models",
    "load_model",
    "register_model",
]
