"""Backbones (VGGT, π³, Depth-Anything-3) on one shared layer set, with official key names and conversions."""

from spark3r_stream.models.checkpoint import load_weights
from spark3r_stream.models.outputs import Prediction, predict
from spark3r_stream.models.registry import (
    PRESETS,
    build_model,
    list_models,
    model_from_official_config,
    reduction_targets_of,
)

__all__ = [
    "PRESETS",
    "Prediction",
    "predict",
    "build_model",
    "list_models",
    "load_weights",
    "model_from_official_config",
    "reduction_targets_of",
]
