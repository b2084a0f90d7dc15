"""Backbones (VGGT, π³, Depth-Anything-3) on one shared layer set, with official key names and conversions."""

from spark3r_stream.models.checkpoint import load_weights
from spark3r_stream.models.loading import load_model, resolve_device
from spark3r_stream.models.outputs import Prediction, predict
from spark3r_stream.models.registry import (
    PRESETS,
    build_model,
    list_models,
    model_from_official_config,
    reduction_targets_of,
)
from spark3r_stream.models.spec import ModelSpec

__all__ = [
    "PRESETS",
    "ModelSpec",
    "load_model",
    "resolve_device",
    "Prediction",
    "predict",
    "build_model",
    "list_models",
    "load_weights",
    "model_from_official_config",
    "reduction_targets_of",
]
