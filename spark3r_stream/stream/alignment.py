"""Confidence-weighted, robust Sim(3) of a window's reconstruction onto the global map (DESIGN.md §5).

Correspondences: each overlapping keyframe's camera centre and three points along its axes (so the camera
orientations constrain the rotation even when the centres are collinear), plus, when given, pixel-matched points
of the overlapping keyframes weighted by confidence. Weighted Umeyama, then iteratively re-weighted with Huber
weights and a hard trim of gross outliers (the VGGT-Long recipe, research/streaming_anchors.md §2.2).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from spark3r_stream.config import check_field
from spark3r_stream.errors import InputError
from spark3r_stream.geometry import invert_sim3, sim3_matrix, sim3_scale, umeyama_sim3

log = logging.getLogger(__name__)

__all__ = ["AlignmentConfig", "AlignmentResult", "align_window"]

_MAD_TO_SIGMA = 1.4826  # median absolute deviation -> standard deviation of a Gaussian
# residual scale floor, relative to the correspondences' extent: exact data must not make every residual an outlier
_MIN_SIGMA_RELATIVE = 1e-6


@dataclass(frozen=True, kw_only=True)
class AlignmentConfig:
    """Robust Sim(3) alignment of a window onto the map."""

    robust_iterations: int = 5  # IRLS re-weightings after the first plain weighted fit
    huber_k: float = 1.345  # Huber threshold in robust sigmas (95 % efficiency on Gaussian noise)
    trim_k: float = 4.0  # residuals beyond this many robust sigmas get weight 0
    max_points_per_keyframe: int = 2000  # point correspondences per overlapping keyframe (evenly subsampled)
    camera_weight: float = 0.5  # share of the total weight on camera correspondences when points are given
    with_scale: bool = True  # False: SE(3) (metric backbones)

    def __post_init__(self):
        check_field(self, "robust_iterations", self.robust_iterations >= 0, "int >= 0")
        check_field(self, "huber_k", self.huber_k > 0, "float > 0")
        check_field(self, "trim_k", self.trim_k >= self.huber_k, "float >= huber_k")
        check_field(self, "max_points_per_keyframe", self.max_points_per_keyframe >= 1, "int >= 1")
        check_field(self, "camera_weight", 0 < self.camera_weight <= 1, "float in (0, 1]")


@dataclass(frozen=True)
class AlignmentResult:
    """`map_from_window` [4, 4] Sim(3) and how well it fits; residuals in map units."""

    map_from_window: np.ndarray
    scale: float
    method: Literal["identity", "single_keyframe", "umeyama"]
    num_overlap: int
    num_correspondences: int = 0
    num_inliers: int = 0
    rmse: float = 0.0  # weighted RMS residual of the inliers
    median_residual: float = 0.0
    centre_residuals: dict[int, float] = field(default_factory=dict)  # keyframe_id -> camera-centre residual

    def summary(self) -> dict[str, float | int | str]:
        """Scalars for logs and reports."""
        return {
            "method": self.method,
            "scale": self.scale,
            "num_overlap": self.num_overlap,
            "num_correspondences": self.num_correspondences,
            "num_inliers": self.num_inliers,
            "rmse": self.rmse,
            "median_residual": self.median_residual,
        }


def align_window(
    map_world_from_cam: Mapping[int, np.ndarray],
    window_world_from_cam: Mapping[int, np.ndarray],
    *,
    map_points: Mapping[int, np.ndarray] | None = None,
    window_points: Mapping[int, np.ndarray] | None = None,
    point_weights: Mapping[int, np.ndarray] | None = None,
    config: AlignmentConfig | None = None,
) -> AlignmentResult:
    """Estimate `map_from_window` such that `map_world_from_cam[k] ≈ map_from_window @ window_world_from_cam[k]`.

    Args:
        map_world_from_cam: keyframe_id -> [4, 4] rigid pose in the map (keyframes already in the map).
        window_world_from_cam: keyframe_id -> [4, 4] rigid pose in the window's frame (the new run).
        map_points: keyframe_id -> [N, 3] points in the map frame, for some overlapping keyframes.
        window_points: keyframe_id -> [N, 3] the same pixels' points in the window frame (same order).
        point_weights: keyframe_id -> [N] confidences (>= 0); uniform when None.

    Returns:
        No overlap (the first window): identity. One overlapping keyframe: that keyframe's pose, with the scale
        from the ratio of point distances to the camera (1 without points). More: robust weighted Umeyama.
    """
    cfg = config or AlignmentConfig()
    overlap = sorted(set(map_world_from_cam) & set(window_world_from_cam))
    if not overlap:
        return AlignmentResult(map_from_window=np.eye(4), scale=1.0, method="identity", num_overlap=0)
    map_poses = {k: _pose(map_world_from_cam[k], "map_world_from_cam", k) for k in overlap}
    window_poses = {k: _pose(window_world_from_cam[k], "window_world_from_cam", k) for k in overlap}
    pairs = _point_pairs(overlap, map_points, window_points, point_weights, cfg.max_points_per_keyframe)
    scale = _initial_scale(overlap, map_poses, window_poses, pairs) if cfg.with_scale else 1.0

    if len(overlap) == 1:
        return _single_keyframe(overlap[0], map_poses, window_poses, pairs, scale)
    src, dst, weights = _correspondences(overlap, map_poses, window_poses, pairs, scale, cfg.camera_weight)
    try:
        return _robust_umeyama(overlap, map_poses, window_poses, src, dst, weights, cfg)
    except InputError as error:
        newest = overlap[-1]
        log.warning("window alignment degenerate (%s); using keyframe %d's pose alone", error, newest)
        return _single_keyframe(newest, map_poses, window_poses, pairs, scale)


def _pose(transform: np.ndarray, name: str, keyframe_id: int) -> np.ndarray:
    transform = np.asarray(transform, dtype=np.float64)
    if transform.shape != (4, 4) or not np.isfinite(transform).all():
        raise InputError(
            f"align_window {name}[{keyframe_id}]: expected a finite [4, 4] transform, got {transform.shape}"
        )
    return transform


_PointPairs = dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]  # keyframe_id -> (map [N,3], window [N,3], w [N])


def _point_pairs(
    overlap: list[int],
    map_points: Mapping[int, np.ndarray] | None,
    window_points: Mapping[int, np.ndarray] | None,
    point_weights: Mapping[int, np.ndarray] | None,
    max_points: int,
) -> _PointPairs:
    pairs: _PointPairs = {}
    if map_points is None or window_points is None:
        return pairs
    for k in overlap:
        if k not in map_points or k not in window_points:
            continue
        map_k = np.asarray(map_points[k], dtype=np.float64).reshape(-1, 3)
        window_k = np.asarray(window_points[k], dtype=np.float64).reshape(-1, 3)
        if map_k.shape != window_k.shape:
            raise InputError(
                f"align_window points[{k}]: map and window points must be pixel-matched, got {map_k.shape} and "
                f"{window_k.shape}"
            )
        weights_k = np.ones(len(map_k)) if point_weights is None or k not in point_weights else point_weights[k]
        weights_k = np.asarray(weights_k, dtype=np.float64).reshape(-1)
        if weights_k.shape != (len(map_k),):
            raise InputError(f"align_window point_weights[{k}]: expected shape ({len(map_k)},), got {weights_k.shape}")
        is_valid = np.isfinite(map_k).all(1) & np.isfinite(window_k).all(1) & np.isfinite(weights_k) & (weights_k > 0)
        index = np.flatnonzero(is_valid)
        if len(index) > max_points:
            index = index[np.linspace(0, len(index) - 1, max_points).round().astype(int)]
        if len(index):
            pairs[k] = (map_k[index], window_k[index], weights_k[index])
    return pairs


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])


def _initial_scale(
    overlap: list[int], map_poses: dict[int, np.ndarray], window_poses: dict[int, np.ndarray], pairs: _PointPairs
) -> float:
    """Scale of the map relative to the window: from point distances to their camera when points are given
    (robust, works with one keyframe), else from the spread of the camera centres, else 1."""
    if pairs:
        ratios, weights = [], []
        for k, (map_k, window_k, weights_k) in pairs.items():
            map_dist = np.linalg.norm(map_k - map_poses[k][:3, 3], axis=1) / sim3_scale(map_poses[k])
            window_dist = np.linalg.norm(window_k - window_poses[k][:3, 3], axis=1) / sim3_scale(window_poses[k])
            is_usable = window_dist > 0
            ratios.append(map_dist[is_usable] / window_dist[is_usable])
            weights.append(weights_k[is_usable])
        ratios_all, weights_all = np.concatenate(ratios), np.concatenate(weights)
        if len(ratios_all) and (ratio := _weighted_median(ratios_all, weights_all)) > 0:
            return ratio
    if len(overlap) >= 2:
        map_centres = np.stack([map_poses[k][:3, 3] for k in overlap])
        window_centres = np.stack([window_poses[k][:3, 3] for k in overlap])
        window_spread = float(((window_centres - window_centres.mean(0)) ** 2).sum())
        map_spread = float(((map_centres - map_centres.mean(0)) ** 2).sum())
        if window_spread > 0 and map_spread > 0:
            return float(np.sqrt(map_spread / window_spread))
    return 1.0


def _unit_rotation(transform: np.ndarray) -> np.ndarray:
    return transform[:3, :3] / sim3_scale(transform)


def _correspondences(
    overlap: list[int],
    map_poses: dict[int, np.ndarray],
    window_poses: dict[int, np.ndarray],
    pairs: _PointPairs,
    scale: float,
    camera_weight: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(window points [M, 3], map points [M, 3], weights [M]) for Umeyama."""
    map_centres = np.stack([map_poses[k][:3, 3] for k in overlap])
    if pairs:
        length = float(
            np.median(
                np.concatenate([np.linalg.norm(m - map_poses[k][:3, 3], axis=1) for k, (m, _, _) in pairs.items()])
            )
        )
    else:
        length = float(np.sqrt(((map_centres - map_centres.mean(0)) ** 2).sum(1).mean()))
    length = length if length > 0 else 1.0
    src, dst = [], []
    for k in overlap:
        map_rotation, window_rotation = _unit_rotation(map_poses[k]), _unit_rotation(window_poses[k])
        # the centre plus a point `length` ahead on each camera axis: orientation constrains the rotation too
        src.append(window_poses[k][:3, 3] + np.vstack([np.zeros(3), (length / scale) * window_rotation.T]))
        dst.append(map_poses[k][:3, 3] + np.vstack([np.zeros(3), length * map_rotation.T]))
    src_cam, dst_cam = np.concatenate(src), np.concatenate(dst)
    if not pairs:
        return src_cam, dst_cam, np.ones(len(src_cam))
    point_weights = np.concatenate([w for _, _, w in pairs.values()])
    weights = np.concatenate(
        [
            np.full(len(src_cam), camera_weight / len(src_cam)),
            (1.0 - camera_weight) * point_weights / point_weights.sum(),
        ]
    )
    src_all = np.concatenate([src_cam, *(w for _, w, _ in pairs.values())])
    dst_all = np.concatenate([dst_cam, *(m for m, _, _ in pairs.values())])
    return src_all, dst_all, weights


def _robust_umeyama(
    overlap: list[int],
    map_poses: dict[int, np.ndarray],
    window_poses: dict[int, np.ndarray],
    src: np.ndarray,
    dst: np.ndarray,
    prior_weights: np.ndarray,
    cfg: AlignmentConfig,
) -> AlignmentResult:
    extent = float(np.sqrt(((dst - dst.mean(0)) ** 2).sum(1).mean()))
    sigma_floor = _MIN_SIGMA_RELATIVE * max(extent, 1e-12)
    robust_weights = np.ones(len(src))
    map_from_window = sim3_matrix(*umeyama_sim3(src, dst, prior_weights, with_scale=cfg.with_scale))
    for _ in range(cfg.robust_iterations):
        residuals = _residuals(map_from_window, src, dst)
        sigma = max(_MAD_TO_SIGMA * float(np.median(residuals[prior_weights > 0])), sigma_floor)
        delta = cfg.huber_k * sigma
        new_weights = np.where(residuals <= delta, 1.0, delta / np.maximum(residuals, 1e-300))
        new_weights[residuals > cfg.trim_k * sigma] = 0.0
        if np.allclose(new_weights, robust_weights, atol=1e-3):
            break
        robust_weights = new_weights
        try:
            map_from_window = sim3_matrix(
                *umeyama_sim3(src, dst, prior_weights * robust_weights, with_scale=cfg.with_scale)
            )
        except InputError:
            break  # trimming left a degenerate set: keep the last good estimate
    residuals = _residuals(map_from_window, src, dst)
    is_inlier = (robust_weights > 0) & (prior_weights > 0)
    inlier_weights = prior_weights[is_inlier]
    rmse = float(np.sqrt((inlier_weights * residuals[is_inlier] ** 2).sum() / inlier_weights.sum()))
    centre_residuals = {
        k: float(np.linalg.norm(map_poses[k][:3, 3] - (map_from_window @ window_poses[k])[:3, 3])) for k in overlap
    }
    scale = float(sim3_scale(map_from_window))
    log.debug("window alignment: scale %.4f, rmse %.4g, %d/%d inliers", scale, rmse, is_inlier.sum(), len(src))
    return AlignmentResult(
        map_from_window=map_from_window,
        scale=scale,
        method="umeyama",
        num_overlap=len(overlap),
        num_correspondences=len(src),
        num_inliers=int(is_inlier.sum()),
        rmse=rmse,
        median_residual=float(np.median(residuals)),
        centre_residuals=centre_residuals,
    )


def _residuals(map_from_window: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    return np.linalg.norm(src @ map_from_window[:3, :3].T + map_from_window[:3, 3] - dst, axis=1)


def _single_keyframe(
    keyframe_id: int,
    map_poses: dict[int, np.ndarray],
    window_poses: dict[int, np.ndarray],
    pairs: _PointPairs,
    scale: float,
) -> AlignmentResult:
    """map_from_window = map_world_from_cam @ scale @ cam_from_window_world: the keyframe's camera coordinates,
    scaled, are its map camera coordinates."""
    window_pose = window_poses[keyframe_id]
    map_from_window = map_poses[keyframe_id] @ np.diag([scale, scale, scale, 1.0]) @ invert_sim3(window_pose)
    residuals = np.zeros(0)
    if keyframe_id in pairs:
        map_k, window_k, _ = pairs[keyframe_id]
        residuals = _residuals(map_from_window, window_k, map_k)
    return AlignmentResult(
        map_from_window=map_from_window,
        scale=float(sim3_scale(map_from_window)),
        method="single_keyframe",
        num_overlap=len(map_poses),
        num_correspondences=len(residuals),
        num_inliers=len(residuals),
        rmse=float(np.sqrt((residuals**2).mean())) if len(residuals) else 0.0,
        median_residual=float(np.median(residuals)) if len(residuals) else 0.0,
        centre_residuals={keyframe_id: 0.0},
    )
