"""Depth metrics: AbsRel and δ<1.25 after per-frame median scaling or per-sequence scale+shift alignment.

Protocols: "median" scales each frame by median(gt) / median(pred) and averages the per-frame metrics (the
monocular-depth protocol); "scale_shift" fits one least-squares scale and shift for the whole sequence and
pools all pixels (the video-depth protocol of the Spark3R paper); "scale" fits one median scale for the
sequence; "none" evaluates metric depth as is.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from spark3r_stream.errors import InputError

DepthAlignment = Literal["median", "scale_shift", "scale", "none"]
DEPTH_ALIGNMENTS: tuple[DepthAlignment, ...] = ("median", "scale_shift", "scale", "none")
DELTA_THRESHOLD = 1.25


def valid_depth_mask(
    gt_depth: np.ndarray,
    pred_depth: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    min_depth: float = 1e-3,
    max_depth: float | None = None,
) -> np.ndarray:
    """Pixels to evaluate: finite positive ground truth in [min_depth, max_depth], finite prediction, and `valid`."""
    mask = np.isfinite(gt_depth) & np.isfinite(pred_depth) & (gt_depth > min_depth)
    if max_depth is not None:
        mask &= gt_depth <= max_depth
    if valid is not None:
        valid = np.asarray(valid)
        if valid.shape != gt_depth.shape:
            raise InputError(f"depth metrics valid mask: expected shape {gt_depth.shape}, got {valid.shape}")
        mask &= valid.astype(bool)
    return mask


def align_scale_shift(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """Least-squares (scale, shift) minimising |scale * pred + shift - gt|^2 over the given 1-D samples."""
    design = np.stack([pred, np.ones_like(pred)], axis=1)
    (scale, shift), *_ = np.linalg.lstsq(design, gt, rcond=None)
    return float(scale), float(shift)


def abs_rel(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean of |pred - gt| / gt over 1-D samples (gt > 0)."""
    return float(np.mean(np.abs(pred - gt) / gt))


def delta_accuracy(pred: np.ndarray, gt: np.ndarray, threshold: float = DELTA_THRESHOLD) -> float:
    """Fraction of samples with max(pred / gt, gt / pred) < threshold; non-positive predictions count as misses."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.maximum(pred / gt, gt / pred)
    return float(np.mean((pred > 0) & (ratio < threshold)))


def depth_metrics(
    pred_depth: np.ndarray,
    gt_depth: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    alignment: DepthAlignment = "median",
    min_depth: float = 1e-3,
    max_depth: float | None = None,
) -> dict[str, float]:
    """AbsRel and δ<1.25 of predicted z-depth [S, H, W] (or [H, W]) against ground truth of the same shape.

    Args:
        valid: optional bool mask of the same shape; combined with finite, positive ground truth.
        alignment: see the module docstring.
        min_depth, max_depth: ground-truth range evaluated, metres.

    Returns:
        {"abs_rel", "delta_1_25", "num_pixels", "scale", "shift"} (scale/shift: the sequence fit, or the mean
        per-frame median scale for "median").
    """
    pred_depth = np.asarray(pred_depth, dtype=np.float64)
    gt_depth = np.asarray(gt_depth, dtype=np.float64)
    if pred_depth.shape != gt_depth.shape or pred_depth.ndim not in (2, 3):
        raise InputError(
            f"depth metrics: expected prediction and ground truth of equal shape [S, H, W] or [H, W], got "
            f"{pred_depth.shape} and {gt_depth.shape}"
        )
    if alignment not in DEPTH_ALIGNMENTS:
        raise InputError(f"depth alignment {alignment!r}: expected one of {', '.join(DEPTH_ALIGNMENTS)}")
    if pred_depth.ndim == 2:
        pred_depth, gt_depth = pred_depth[None], gt_depth[None]
        valid = None if valid is None else np.asarray(valid)[None]
    mask = valid_depth_mask(gt_depth, pred_depth, valid, min_depth=min_depth, max_depth=max_depth)
    num_pixels = int(mask.sum())
    if num_pixels == 0:
        raise InputError("depth metrics: no valid pixel (ground truth missing, non-positive or masked out everywhere)")

    if alignment == "median":
        rows, scales = [], []
        for frame in range(len(gt_depth)):
            pred, gt = pred_depth[frame][mask[frame]], gt_depth[frame][mask[frame]]
            if len(gt) == 0:
                continue
            median_pred = np.median(pred)
            scale = float(np.median(gt) / median_pred) if median_pred > 0 else 1.0
            scales.append(scale)
            rows.append((abs_rel(np.maximum(scale * pred, min_depth), gt), delta_accuracy(scale * pred, gt)))
        values = np.array(rows)
        return {
            "abs_rel": float(values[:, 0].mean()),
            "delta_1_25": float(values[:, 1].mean()),
            "num_pixels": float(num_pixels),
            "scale": float(np.mean(scales)),
            "shift": 0.0,
        }

    pred, gt = pred_depth[mask], gt_depth[mask]
    scale, shift = 1.0, 0.0
    if alignment == "scale_shift":
        scale, shift = align_scale_shift(pred, gt)
    elif alignment == "scale":
        median_pred = np.median(pred)
        scale = float(np.median(gt) / median_pred) if median_pred > 0 else 1.0
    aligned = scale * pred + shift
    return {
        # aligned depth can reach zero or below with a shift; AbsRel clamps it to the evaluated range
        "abs_rel": abs_rel(np.maximum(aligned, min_depth), gt),
        "delta_1_25": delta_accuracy(aligned, gt),
        "num_pixels": float(num_pixels),
        "scale": scale,
        "shift": shift,
    }
