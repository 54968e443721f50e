"""Colorization models: one registry (:mod:`.registry`), the paper models and trained checkpoints.

Layers, bottom up (each imports only those below it): :mod:`.common`, :mod:`.preprocess` and
:mod:`.weights` (values and helpers); :mod:`.registry` (names); the architectures; :mod:`.checkpoint`
(the format); :mod:`.zoo` (the built-in entries); :mod:`.loading` (build and load, from a name or a URI).
"""

from .loading import ModelInfo, create_model, load_checkpoint, load_model, state_dict_sha256, weights_preprocessing
from .registry import ModelEntry, get_entry, list_models, register_model
from .weights import WeightsError, WeightsSpec

__all__ = [
    "ModelEntry",
    "ModelInfo",
    "WeightsError",
    "WeightsSpec",
    "create_model",
    "get_entry",
    "list_models",
    "load_checkpoint",
    "load_model",
    "register_model",
    "state_dict_sha256",
    "weights_preprocessing",
]
