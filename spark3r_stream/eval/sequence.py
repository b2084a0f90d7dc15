"""One call per evaluated sequence (trajectory, depth and point metrics as a flat dict) and the markdown table."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from spark3r_stream.errors import InputError
from spark3r_stream.eval.depth import DepthAlignment, depth_metrics
from spark3r_stream.eval.points import point_map_normals, point_metrics
from spark3r_stream.eval.trajectory import Alignment, align_trajectory, trajectory_metrics
from spark3r_stream.geometry import apply_transform, unproject_depth

DEFAULT_MAX_POINTS = 20000  # per cloud; nearest-neighbour metrics on more points change little and cost a lot


def _stride_subsample(count: int, max_count: int) -> np.ndarray:
    return np.linspace(0, count - 1, min(count, max_count)).astype(np.int64)


def _world_points(
    depth: np.ndarray, intrinsics: np.ndarray, world_from_cam: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Masked world points [N, 3] and their normals [N, 3] from depth [S, H, W] and per-frame cameras."""
    points_cam = unproject_depth(depth, intrinsics)  # [S, H, W, 3]
    normals_cam = point_map_normals(points_cam)
    points = np.einsum("sij,shwj->shwi", world_from_cam[:, :3, :3], points_cam) + world_from_cam[:, None, None, :3, 3]
    normals = np.einsum("sij,shwj->shwi", world_from_cam[:, :3, :3], normals_cam)
    return points[mask], normals[mask]


def evaluate_sequence(
    name: str,
    *,
    gt_world_from_cam: np.ndarray,
    est_world_from_cam: np.ndarray,
    gt_depth: np.ndarray | None = None,
    est_depth: np.ndarray | None = None,
    gt_intrinsics: np.ndarray | None = None,
    est_intrinsics: np.ndarray | None = None,
    depth_valid: np.ndarray | None = None,
    alignment: Alignment = "sim3",
    depth_alignments: Iterable[DepthAlignment] = ("median", "scale_shift"),
    max_points: int = DEFAULT_MAX_POINTS,
) -> dict[str, float | str]:
    """Evaluate one sequence's estimate against ground truth; returns one flat row for `format_markdown_table`.

    Args:
        gt_world_from_cam, est_world_from_cam: [S, 4, 4] camera-to-world, frames already matched.
        gt_depth, est_depth: optional [S, H, W] z-depth (metres / the estimate's units).
        gt_intrinsics, est_intrinsics: [3, 3] or [S, 3, 3]; with both depths they add point-cloud metrics,
            the estimate moved into the ground-truth frame by the trajectory alignment (Sim(3) by default).
        depth_valid: optional [S, H, W] mask of ground-truth pixels to evaluate.
        depth_alignments: depth protocols to report, each as `depth_<metric>_<protocol>` keys.

    Returns:
        {"sequence": name, "num_frames", trajectory keys (see `trajectory_metrics`), depth keys, point keys}.
    """
    gt_world_from_cam = np.asarray(gt_world_from_cam, dtype=np.float64)
    est_world_from_cam = np.asarray(est_world_from_cam, dtype=np.float64)
    row: dict[str, float | str] = {"sequence": name, "num_frames": float(len(gt_world_from_cam))}
    row.update(trajectory_metrics(est_world_from_cam, gt_world_from_cam, alignment=alignment))
    if (gt_depth is None) != (est_depth is None):
        raise InputError(f"evaluate_sequence {name}: give both gt_depth and est_depth, or neither")
    if gt_depth is None:
        return row
    gt_depth = np.asarray(gt_depth, dtype=np.float64)
    est_depth = np.asarray(est_depth, dtype=np.float64)
    if gt_depth.shape != est_depth.shape or gt_depth.shape[:1] != gt_world_from_cam.shape[:1]:
        raise InputError(
            f"evaluate_sequence {name}: depth shapes {gt_depth.shape} and {est_depth.shape} do not match "
            f"{len(gt_world_from_cam)} poses"
        )
    for protocol in depth_alignments:
        metrics = depth_metrics(est_depth, gt_depth, depth_valid, alignment=protocol)
        row[f"depth_abs_rel_{protocol}"] = metrics["abs_rel"]
        row[f"depth_delta_1_25_{protocol}"] = metrics["delta_1_25"]
    if gt_intrinsics is None or est_intrinsics is None:
        return row

    mask = np.isfinite(gt_depth) & (gt_depth > 0) & np.isfinite(est_depth) & (est_depth > 0)
    if depth_valid is not None:
        mask &= np.asarray(depth_valid, dtype=bool)
    gt_points, gt_normals = _world_points(gt_depth, gt_intrinsics, gt_world_from_cam, mask)
    est_points, est_normals = _world_points(est_depth, est_intrinsics, est_world_from_cam, mask)
    gt_from_est = align_trajectory(est_world_from_cam, gt_world_from_cam, alignment)
    est_points = apply_transform(gt_from_est, est_points)
    est_normals = est_normals @ (gt_from_est[:3, :3] / np.cbrt(np.linalg.det(gt_from_est[:3, :3]))).T
    keep = _stride_subsample(len(gt_points), max_points)
    row.update(
        point_metrics(est_points[keep], gt_points[keep], pred_normals=est_normals[keep], gt_normals=gt_normals[keep])
    )
    return row


def format_markdown_table(
    rows: Sequence[dict[str, float | str]],
    columns: Sequence[str] | None = None,
    *,
    float_format: str = "{:.4g}",
) -> str:
    """Rows of metric dicts as a GitHub markdown table; columns default to every key in first-seen order.

    Missing values print as "–"; floats use `float_format`, integral counts print without decimals.
    """
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))

    def cell(value: object) -> str:
        if value is None:
            return "–"
        if isinstance(value, float | np.floating):
            if np.isfinite(value) and float(value).is_integer() and abs(value) < 1e15:
                return str(int(value))
            return float_format.format(float(value))
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
