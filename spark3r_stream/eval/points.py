"""Point-cloud metrics: accuracy, completeness and normal consistency by nearest neighbours (scipy cKDTree).

Accuracy: distance from each predicted point to the nearest ground-truth point; completeness: the reverse.
Normal consistency: |n_pred · n_gt| of those nearest pairs, averaged over both directions. Clouds must already
be in the same frame and scale (align with `geometry.umeyama_sim3` first).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from spark3r_stream.errors import InputError


def point_map_normals(points: np.ndarray) -> np.ndarray:
    """Unit normals of point maps [..., H, W, 3] from central differences (zero where undefined).

    The sign follows the image orientation (d/du x d/dv); normal consistency uses |cos|, so it does not matter.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim < 3 or points.shape[-1] != 3:
        raise InputError(f"point_map_normals points: expected [..., H, W, 3], got shape {points.shape}")
    d_u = np.zeros_like(points)
    d_v = np.zeros_like(points)
    d_u[..., :, 1:-1, :] = points[..., :, 2:, :] - points[..., :, :-2, :]
    d_u[..., :, 0, :] = points[..., :, 1, :] - points[..., :, 0, :]
    d_u[..., :, -1, :] = points[..., :, -1, :] - points[..., :, -2, :]
    d_v[..., 1:-1, :, :] = points[..., 2:, :, :] - points[..., :-2, :, :]
    d_v[..., 0, :, :] = points[..., 1, :, :] - points[..., 0, :, :]
    d_v[..., -1, :, :] = points[..., -1, :, :] - points[..., -2, :, :]
    normals = np.cross(d_u, d_v)
    norms = np.linalg.norm(normals, axis=-1, keepdims=True)
    return np.divide(normals, norms, out=np.zeros_like(normals), where=norms > 0)


def _as_points(name: str, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise InputError(f"point metrics {name}: expected a non-empty [N, 3] array, got shape {points.shape}")
    if not np.isfinite(points).all():
        raise InputError(f"point metrics {name}: contains NaN or infinite values; mask them out first")
    return points


def point_metrics(
    pred_points: np.ndarray,
    gt_points: np.ndarray,
    *,
    pred_normals: np.ndarray | None = None,
    gt_normals: np.ndarray | None = None,
) -> dict[str, float]:
    """Accuracy, completeness (metres) and, when both normal sets are given, normal consistency.

    Args:
        pred_points: [N, 3]; gt_points: [M, 3], same frame and units.
        pred_normals: [N, 3] unit normals; gt_normals: [M, 3] unit normals.

    Returns:
        {"accuracy_mean_m", "accuracy_median_m", "completeness_mean_m", "completeness_median_m", "chamfer_m",
        and "normal_consistency" in [0, 1] when normals were given}.
    """
    pred_points = _as_points("pred_points", pred_points)
    gt_points = _as_points("gt_points", gt_points)
    to_gt, gt_index = cKDTree(gt_points).query(pred_points)
    to_pred, pred_index = cKDTree(pred_points).query(gt_points)
    metrics = {
        "accuracy_mean_m": float(to_gt.mean()),
        "accuracy_median_m": float(np.median(to_gt)),
        "completeness_mean_m": float(to_pred.mean()),
        "completeness_median_m": float(np.median(to_pred)),
        "chamfer_m": float((to_gt.mean() + to_pred.mean()) / 2),
    }
    if (pred_normals is None) != (gt_normals is None):
        raise InputError("point metrics normals: give both pred_normals and gt_normals, or neither")
    if pred_normals is not None:
        pred_normals = np.asarray(pred_normals, dtype=np.float64)
        gt_normals = np.asarray(gt_normals, dtype=np.float64)
        if pred_normals.shape != pred_points.shape or gt_normals.shape != gt_points.shape:
            raise InputError(
                f"point metrics normals: expected shapes {pred_points.shape} and {gt_points.shape}, got "
                f"{pred_normals.shape} and {gt_normals.shape}"
            )
        accuracy_side = np.abs(np.einsum("ni,ni->n", pred_normals, gt_normals[gt_index]))
        completeness_side = np.abs(np.einsum("ni,ni->n", gt_normals, pred_normals[pred_index]))
        metrics["normal_consistency"] = float((accuracy_side.mean() + completeness_side.mean()) / 2)
    return metrics
