"""Trajectory metrics (ATE after Sim(3)/SE(3) Umeyama, RPE, relative rotation error) and TUM trajectory files.

Definitions follow the TUM RGB-D benchmark and the `evo` package (same numbers on the same inputs, tested):
ATE is the RMSE of camera-centre differences after aligning the estimate onto the ground truth; RPE compares
the relative motion between frames i and i + delta, after the same alignment (its scale matters for Sim(3)).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
from scipy.spatial.distance import pdist
from scipy.spatial.transform import Rotation

from spark3r_stream.errors import InputError
from spark3r_stream.geometry import invert_se3, rotation_angle_deg, se3_matrix, sim3_matrix, umeyama_sim3

Alignment = Literal["sim3", "se3", "none"]
TUM_HEADER = "timestamp tx ty tz qx qy qz qw"
_MAX_EXTENT_POINTS = 2000  # trajectory extent is the exact diameter up to this many poses, else of a subsample


def read_tum(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a TUM trajectory (`timestamp tx ty tz qx qy qz qw` per line, camera-to-world; '#' comments).

    Returns:
        (timestamps_s [N] float64, world_from_cam [N, 4, 4] float64).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"TUM trajectory {path}: file not found")
    rows = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = text.replace(",", " ").split()
        if len(fields) != 8:
            raise InputError(
                f"TUM trajectory {path}:{line_number}: expected 8 values ({TUM_HEADER}), got {len(fields)}"
            )
        try:
            rows.append([float(field) for field in fields])
        except ValueError as error:
            raise InputError(f"TUM trajectory {path}:{line_number}: {error}") from None
    if not rows:
        raise InputError(f"TUM trajectory {path}: no poses")
    data = np.array(rows)
    quaternions = data[:, 4:8]
    norms = np.linalg.norm(quaternions, axis=1)
    if (np.abs(norms - 1.0) > 1e-2).any():
        bad = int(np.argmax(np.abs(norms - 1.0)))
        raise InputError(f"TUM trajectory {path}: quaternion of pose {bad} has norm {norms[bad]:.4f}, expected 1")
    rotations = Rotation.from_quat(quaternions / norms[:, None]).as_matrix()  # scipy order: x, y, z, w
    return data[:, 0], se3_matrix(rotations, data[:, 1:4])


def write_tum(
    path: str | os.PathLike,
    timestamps_s: np.ndarray,
    world_from_cam: np.ndarray,
    *,
    comment: str | None = None,
) -> None:
    """Write a TUM trajectory file (camera-to-world poses; rotations must be proper, scale is not stored).

    Args:
        comment: optional first line(s), written as '#' comments above the column header.
    """
    timestamps_s = np.asarray(timestamps_s, dtype=np.float64)
    world_from_cam = np.asarray(world_from_cam, dtype=np.float64)
    if world_from_cam.shape != (len(timestamps_s), 4, 4):
        raise InputError(
            f"write_tum {path}: expected world_from_cam of shape ({len(timestamps_s)}, 4, 4), got {world_from_cam.shape}"
        )
    quaternions = Rotation.from_matrix(world_from_cam[:, :3, :3]).as_quat()
    lines = [f"# {text}" for text in (comment.splitlines() if comment else [])]
    lines.append(f"# {TUM_HEADER}")
    for stamp, translation, quaternion in zip(timestamps_s, world_from_cam[:, :3, 3], quaternions, strict=True):
        values = " ".join(f"{value:.9f}" for value in (*translation, *quaternion))
        lines.append(f"{stamp:.9f} {values}")
    Path(path).write_text("\n".join(lines) + "\n")


def associate(
    timestamps_a: np.ndarray, timestamps_b: np.ndarray, *, max_difference_s: float = 0.02
) -> tuple[np.ndarray, np.ndarray]:
    """Match two timestamp lists one-to-one, closest pairs first, within `max_difference_s`.

    Returns:
        (indices_a [M], indices_b [M]) sorted by time of `a`.
    """
    timestamps_a = np.asarray(timestamps_a, dtype=np.float64)
    timestamps_b = np.asarray(timestamps_b, dtype=np.float64)
    order_b = np.argsort(timestamps_b, kind="stable")
    sorted_b = timestamps_b[order_b]
    right = np.searchsorted(sorted_b, timestamps_a)
    candidates_a, candidates_b = [], []
    for neighbour in (right - 1, right):  # the nearest b on either side of every a
        ok = (neighbour >= 0) & (neighbour < len(sorted_b))
        candidates_a.append(np.flatnonzero(ok))
        candidates_b.append(order_b[neighbour[ok]])
    cand_a = np.concatenate(candidates_a)
    cand_b = np.concatenate(candidates_b)
    difference = np.abs(timestamps_a[cand_a] - timestamps_b[cand_b])
    keep = difference <= max_difference_s
    cand_a, cand_b, difference = cand_a[keep], cand_b[keep], difference[keep]
    used_a = np.zeros(len(timestamps_a), dtype=bool)
    used_b = np.zeros(len(timestamps_b), dtype=bool)
    pairs = []
    for k in np.argsort(difference, kind="stable"):
        if not used_a[cand_a[k]] and not used_b[cand_b[k]]:
            used_a[cand_a[k]] = used_b[cand_b[k]] = True
            pairs.append((cand_a[k], cand_b[k]))
    pairs.sort()
    matched = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    return matched[:, 0], matched[:, 1]


def _check_pair(est_world_from_cam: np.ndarray, gt_world_from_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    est = np.asarray(est_world_from_cam, dtype=np.float64)
    gt = np.asarray(gt_world_from_cam, dtype=np.float64)
    if est.ndim != 3 or est.shape[1:] != (4, 4) or est.shape != gt.shape:
        raise InputError(
            f"trajectory metrics: expected two [N, 4, 4] pose arrays of equal shape, got {est.shape} and {gt.shape}"
        )
    if not (np.isfinite(est).all() and np.isfinite(gt).all()):
        raise InputError("trajectory metrics: poses contain NaN or infinite values")
    return est, gt


def align_trajectory(
    est_world_from_cam: np.ndarray, gt_world_from_cam: np.ndarray, alignment: Alignment = "sim3"
) -> np.ndarray:
    """The transform gt_from_est [4, 4] that best maps estimated camera centres onto ground-truth ones.

    "sim3": rotation, translation and scale (Umeyama); "se3": rigid; "none": identity. Fewer than 3 poses or
    collinear centres cannot fix a rotation: then only the mean offset (and the scale, for sim3) is fitted.
    """
    est, gt = _check_pair(est_world_from_cam, gt_world_from_cam)
    if alignment == "none":
        return np.eye(4)
    if alignment not in ("sim3", "se3"):
        raise InputError(f"trajectory alignment {alignment!r}: expected 'sim3', 'se3' or 'none'")
    est_centres, gt_centres = est[:, :3, 3], gt[:, :3, 3]
    try:
        scale, rotation, translation = umeyama_sim3(est_centres, gt_centres, with_scale=alignment == "sim3")
    except InputError:
        # too few or collinear centres: no rotation is determined; keep the estimate's orientation
        est_spread = np.linalg.norm(est_centres - est_centres.mean(0), axis=1)
        gt_spread = np.linalg.norm(gt_centres - gt_centres.mean(0), axis=1)
        usable_scale = alignment == "sim3" and est_spread.sum() > 0
        scale = float(est_spread @ gt_spread / (est_spread @ est_spread)) if usable_scale else 1.0
        rotation = np.eye(3)
        translation = gt_centres.mean(0) - scale * est_centres.mean(0)
    return sim3_matrix(scale, rotation, translation)


def _apply_alignment(gt_from_est: np.ndarray, est_world_from_cam: np.ndarray) -> np.ndarray:
    """Aligned rigid poses: rotation gets R_a R_i, the centre gets s R_a t_i + t_a (as evo does)."""
    scale = np.cbrt(np.linalg.det(gt_from_est[:3, :3]))
    rotation = gt_from_est[:3, :3] / scale
    aligned = np.empty_like(est_world_from_cam)
    aligned[:] = np.eye(4)
    aligned[:, :3, :3] = rotation @ est_world_from_cam[:, :3, :3]
    aligned[:, :3, 3] = est_world_from_cam[:, :3, 3] @ gt_from_est[:3, :3].T + gt_from_est[:3, 3]
    return aligned


def ate_errors(
    est_world_from_cam: np.ndarray, gt_world_from_cam: np.ndarray, alignment: Alignment = "sim3"
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pose absolute translation errors [N] (metres, ground-truth units) and the gt_from_est [4, 4] used."""
    est, gt = _check_pair(est_world_from_cam, gt_world_from_cam)
    gt_from_est = align_trajectory(est, gt, alignment)
    aligned = _apply_alignment(gt_from_est, est)
    return np.linalg.norm(aligned[:, :3, 3] - gt[:, :3, 3], axis=1), gt_from_est


def ate_rmse(est_world_from_cam: np.ndarray, gt_world_from_cam: np.ndarray, alignment: Alignment = "sim3") -> float:
    """Absolute trajectory error: RMSE of camera-centre differences after alignment, in metres."""
    errors, _ = ate_errors(est_world_from_cam, gt_world_from_cam, alignment)
    return float(np.sqrt(np.mean(errors**2)))


def trajectory_extent(world_from_cam: np.ndarray) -> float:
    """Largest distance between two camera centres (exact up to 2,000 poses, else over an even subsample)."""
    centres = np.asarray(world_from_cam, dtype=np.float64)[:, :3, 3]
    if len(centres) > _MAX_EXTENT_POINTS:
        centres = centres[np.linspace(0, len(centres) - 1, _MAX_EXTENT_POINTS).astype(np.int64)]
    return float(pdist(centres).max()) if len(centres) > 1 else 0.0


def rpe_errors(
    est_world_from_cam: np.ndarray,
    gt_world_from_cam: np.ndarray,
    *,
    delta: int = 1,
    alignment: Alignment = "sim3",
    all_pairs: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Relative pose errors between frames i and i + delta: (translation [M] metres, rotation [M] degrees).

    Pairs are (0, delta), (delta, 2 delta), ... as in evo, or every (i, i + delta) with `all_pairs`. The
    estimate is aligned first, which for "sim3" fixes the scale of its relative translations.
    """
    est, gt = _check_pair(est_world_from_cam, gt_world_from_cam)
    if delta < 1:
        raise InputError(f"rpe delta: expected >= 1, got {delta}")
    if len(est) <= delta:
        raise InputError(f"rpe: {len(est)} poses are too few for frame delta {delta}")
    est = _apply_alignment(align_trajectory(est, gt, alignment), est)
    first = np.arange(len(est) - delta) if all_pairs else np.arange(0, len(est) - delta, delta)
    second = first + delta
    gt_relative = invert_se3(gt[first]) @ gt[second]
    est_relative = invert_se3(est[first]) @ est[second]
    error = invert_se3(gt_relative) @ est_relative
    return np.linalg.norm(error[:, :3, 3], axis=1), rotation_angle_deg(error[:, :3, :3])


def relative_rotation_errors_deg(est_world_from_cam: np.ndarray, gt_world_from_cam: np.ndarray) -> np.ndarray:
    """Angle between estimated and true relative rotations over every frame pair i < j: [N (N - 1) / 2] degrees.

    Independent of any alignment; the identity baseline scores the true pairwise rotation angles.
    """
    est, gt = _check_pair(est_world_from_cam, gt_world_from_cam)
    first, second = np.triu_indices(len(est), k=1)
    est_relative = np.swapaxes(est[first, :3, :3], 1, 2) @ est[second, :3, :3]
    gt_relative = np.swapaxes(gt[first, :3, :3], 1, 2) @ gt[second, :3, :3]
    return rotation_angle_deg(np.swapaxes(gt_relative, 1, 2) @ est_relative)


def constant_trajectory_ate(gt_world_from_cam: np.ndarray) -> float:
    """ATE RMSE of a trajectory that never moves: under any alignment its best fit is the mean ground-truth centre,
    so this is the centres' spread around their mean. What an ATE must beat to show that anything was reconstructed."""
    centres = np.asarray(gt_world_from_cam)[:, :3, 3]
    return float(np.sqrt(np.mean(np.sum((centres - centres.mean(0)) ** 2, axis=1))))


def trajectory_metrics(
    est_world_from_cam: np.ndarray,
    gt_world_from_cam: np.ndarray,
    *,
    alignment: Alignment = "sim3",
    delta: int = 1,
) -> dict[str, float]:
    """All trajectory numbers of one sequence as a flat dict (keys carry units)."""
    est, gt = _check_pair(est_world_from_cam, gt_world_from_cam)
    errors, gt_from_est = ate_errors(est, gt, alignment)
    ate = float(np.sqrt(np.mean(errors**2)))
    extent = trajectory_extent(gt)
    metrics = {
        "num_poses": float(len(est)),
        "ate_rmse_m": ate,
        "ate_mean_m": float(errors.mean()),
        "ate_max_m": float(errors.max()),
        "ate_over_extent": ate / extent if extent > 0 else float("nan"),
        "ate_constant_baseline_m": constant_trajectory_ate(gt),
        "alignment_scale": float(np.cbrt(np.linalg.det(gt_from_est[:3, :3]))),
    }
    if len(est) > delta:
        rpe_trans, rpe_rot = rpe_errors(est, gt, delta=delta, alignment=alignment)
        metrics["rpe_trans_rmse_m"] = float(np.sqrt(np.mean(rpe_trans**2)))
        metrics["rpe_rot_rmse_deg"] = float(np.sqrt(np.mean(rpe_rot**2)))
    if len(est) > 1:
        metrics["mean_relative_rotation_error_deg"] = float(relative_rotation_errors_deg(est, gt).mean())
    return metrics


def trajectory_metrics_from_files(
    est_path: str | os.PathLike,
    gt_path: str | os.PathLike,
    *,
    max_difference_s: float = 0.02,
    alignment: Alignment = "sim3",
    delta: int = 1,
) -> dict[str, float]:
    """`trajectory_metrics` of two TUM files, poses associated by timestamp within `max_difference_s`."""
    est_times, est = read_tum(est_path)
    gt_times, gt = read_tum(gt_path)
    est_index, gt_index = associate(est_times, gt_times, max_difference_s=max_difference_s)
    if len(est_index) < 2:
        raise InputError(
            f"trajectory {est_path}: only {len(est_index)} poses match {gt_path} within {max_difference_s} s; "
            "check that both use the same clock"
        )
    return trajectory_metrics(est[est_index], gt[gt_index], alignment=alignment, delta=delta)
