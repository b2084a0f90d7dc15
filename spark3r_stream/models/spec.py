"""ModelSpec: what a built model is, attached by `build_model` as `model.spec` (read by predict, Spark3R, the pipeline)."""

from __future__ import annotations

from dataclasses import dataclass

from spark3r_stream.models.targets import ReductionTargets


@dataclass(frozen=True)
class ModelSpec:
    name: str  # preset name ("vggt-tiny") or "<family>-custom" for a model built from an official config
    family: str  # "vggt", "pi3" or "da3": which output conversion and preprocessing apply
    input_size: int  # long side of the network input that preprocessing and the pipeline resize to
    weights: str | None  # the checkpoint file or hub id loaded; None when the parameters are the initial ones
    reduction_targets: ReductionTargets  # the layers and tokens a token reduction may touch (with the probe schedule)
