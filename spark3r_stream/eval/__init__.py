"""Evaluation toolkit: trajectory (ATE/RPE, TUM files), depth (AbsRel, δ<1.25) and point-cloud metrics."""

from spark3r_stream.eval.depth import depth_metrics
from spark3r_stream.eval.points import point_map_normals, point_metrics
from spark3r_stream.eval.sequence import evaluate_sequence, format_markdown_table
from spark3r_stream.eval.trajectory import (
    associate,
    ate_rmse,
    read_tum,
    rpe_errors,
    trajectory_metrics,
    trajectory_metrics_from_files,
    write_tum,
)

__all__ = [
    "associate",
    "ate_rmse",
    "depth_metrics",
    "evaluate_sequence",
    "format_markdown_table",
    "point_map_normals",
    "point_metrics",
    "read_tum",
    "rpe_errors",
    "trajectory_metrics",
    "trajectory_metrics_from_files",
    "write_tum",
]
