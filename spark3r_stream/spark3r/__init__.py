"""Spark3R: training-free asymmetric token reduction (query merging, key/value pruning) in global attention."""

from spark3r_stream.models.targets import load_schedule
from spark3r_stream.spark3r.accelerate import accelerate, disable, is_accelerated
from spark3r_stream.spark3r.plan import (
    LayerPlan,
    ReductionPlan,
    Spark3RConfig,
    load_config_file,
    make_plan,
    paper_r_kv,
    paper_r_q,
)

__all__ = [
    "LayerPlan",
    "ReductionPlan",
    "Spark3RConfig",
    "accelerate",
    "disable",
    "is_accelerated",
    "load_config_file",
    "load_schedule",
    "make_plan",
    "paper_r_kv",
    "paper_r_q",
]
