"""Local refinement of a window: bundle adjustment of the keyframe poses and the tracks' 3-D points (gtsam).

The network's poses and depths are the starting point and priors; the feature tracks (stream/tracks.py) are what
the poses are checked against. Factors, all in the source's pixels:
- a robust (Cauchy) reprojection factor per observation of a track seen by at least `min_views` keyframes;
- the network's relative pose between consecutive keyframes as a between-factor (`prior_rotation_deg`,
  `prior_translation`, the latter as a fraction of the median point depth);
- the network's depth as a weak prior on each point's distance from the camera that measured it (`depth_prior`, a
  fraction of that distance), which also fixes the window's scale. A prior on the point's world position instead
  holds it where that camera's network pose put it, and pulls the poses back towards the network's error: with
  exact depths and a drift of 2° per keyframe, the window's keyframes ended 2.1° off (1.7° with the range prior)
  at 112 px;
- the gauge: keyframes an earlier window refined held near their map poses (`anchors`), else the first one fixed.
Levenberg-Marquardt via gtsam (the engine VGGT-SLAM uses). If it fails or does not lower the reprojection error,
the network's poses are kept and the result says why.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from spark3r_stream.config import check_field
from spark3r_stream.geometry import invert_se3
from spark3r_stream.stream.tracks import TrackObservations

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RefineConfig:
    pixel_sigma: float = 1.0  # reprojection noise (px)
    robust_px: float = 2.0  # Cauchy kernel width in sigmas (measured: Huber let 10 % outliers pull the poses)
    prior_rotation_deg: float = 5.0  # trust in the network's relative rotations
    # trust in its relative translations, a fraction of the median point depth (0.1 let a 30-frame demo window drift:
    # ATE 0.46 -> 0.60 m with refinement; 0.03 gave 0.26 m and the same gains elsewhere)
    prior_translation: float = 0.03
    depth_prior: float = 0.3  # trust in its depth of each point, a fraction of that depth
    anchor_rotation_deg: float = 0.2  # hold on a keyframe an earlier window already refined (see `anchors`)
    anchor_translation: float = 0.002  # ... a fraction of the median point depth
    min_views: int = 2  # keyframes that must see a track for it to enter
    # the network's poses already explain the tracks this well (median px): nothing to fix, and a bundle adjustment
    # would only fit the tracks' noise (exact poses through tests/unit/stream/test_backend.py: 0.2-0.4 px before,
    # keyframes moved by up to 0.3 m and 4° after, ATE 0 -> 3 % of the extent)
    keep_below_px: float = 1.0
    # Levenberg-Marquardt iterations: 10 gave the same ATE as 30 on the demo (0.949 vs 0.956 m) and the real
    # fragments (0.033 / 0.054 vs 0.033 / 0.053 m) in 82 instead of 99 ms per demo window
    max_iterations: int = 10

    def __post_init__(self):
        for name in (
            "pixel_sigma",
            "robust_px",
            "prior_rotation_deg",
            "prior_translation",
            "depth_prior",
            "anchor_rotation_deg",
            "anchor_translation",
        ):
            check_field(self, name, getattr(self, name) > 0, "float > 0")
        check_field(self, "min_views", self.min_views >= 2, "int >= 2")
        check_field(self, "keep_below_px", self.keep_below_px >= 0, "float >= 0")
        check_field(self, "max_iterations", self.max_iterations >= 1, "int >= 1")


@dataclass(frozen=True)
class Refinement:
    world_from_cam: np.ndarray  # [K, 4, 4], refined (or the input when `applied` is False)
    track_ids: np.ndarray  # [M] the tracks that entered
    points: np.ndarray  # [M, 3] their refined world points
    num_observations: int
    error_before_px: float  # median reprojection error with the network's poses and depths
    error_after_px: float
    applied: bool
    reason: str  # "ok" or why the network's poses were kept


def refine_window(
    world_from_cam: np.ndarray,
    intrinsics: np.ndarray,
    observations: Sequence[TrackObservations],
    point_depths: Sequence[np.ndarray],
    config: RefineConfig | None = None,
    anchors: Mapping[int, np.ndarray] | None = None,
) -> Refinement:
    """Bundle-adjust one window.

    Args:
        world_from_cam: [K, 4, 4] camera-to-world poses from the network (any consistent scale).
        intrinsics: [K, 3, 3] in the pixels of the observations (the source's).
        observations: per keyframe, its tracks.
        point_depths: per keyframe, the network's depth at each of its observations ([N_k], NaN where unknown), in
            the poses' scale: the first keyframe that sees a track with a depth places its initial point.
        anchors: window index -> [4, 4] the pose the map had for that keyframe before this window (an earlier
            window's refined pose): it starts there and is held by a tight prior (`anchor_rotation_deg`,
            `anchor_translation`) instead of being re-solved from scratch by every window that holds it, which let
            the same keyframes drift window after window. Without anchors the first keyframe is fixed (the gauge).
    """
    import gtsam
    from gtsam.symbol_shorthand import L, X

    cfg = config or RefineConfig()
    poses = np.asarray(world_from_cam, np.float64)
    K = len(poses)
    anchors = dict(anchors or {})
    start = np.stack([np.asarray(anchors.get(k, poses[k]), np.float64) for k in range(K)])
    seen = _tracks_seen(observations, cfg.min_views)
    initial = _initial_points(start, intrinsics, observations, point_depths, seen)
    track_ids = np.array(sorted(initial), dtype=np.int64)
    initial_points = np.array([initial[t][0] for t in track_ids]).reshape(-1, 3)
    keep = Refinement(poses, track_ids, initial_points, 0, np.nan, np.nan, False, "")
    if len(track_ids) < 8 or K < 2:
        return _kept(keep, f"too few tracks seen by {cfg.min_views}+ keyframes ({len(track_ids)})")

    graph, values = gtsam.NonlinearFactorGraph(), gtsam.Values()
    depths = np.array([initial[t][1] for t in track_ids])
    scale = float(np.median(depths))
    pixel = gtsam.noiseModel.Robust.Create(
        gtsam.noiseModel.mEstimator.Cauchy.Create(cfg.robust_px), gtsam.noiseModel.Isotropic.Sigma(2, cfg.pixel_sigma)
    )
    relative = gtsam.noiseModel.Diagonal.Sigmas(
        np.r_[np.full(3, np.radians(cfg.prior_rotation_deg)), np.full(3, cfg.prior_translation * scale)]
    )
    for k in range(K):
        values.insert(X(k), gtsam.Pose3(start[k]))
    if anchors:
        anchor = gtsam.noiseModel.Diagonal.Sigmas(
            np.r_[np.full(3, np.radians(cfg.anchor_rotation_deg)), np.full(3, cfg.anchor_translation * scale)]
        )
        for k, pose in anchors.items():
            graph.add(gtsam.PriorFactorPose3(X(k), gtsam.Pose3(pose), anchor))
    else:
        graph.add(gtsam.NonlinearEqualityPose3(X(0), gtsam.Pose3(poses[0])))
    for k in range(K - 1):
        between = gtsam.Pose3(np.linalg.inv(poses[k]) @ poses[k + 1])
        graph.add(gtsam.BetweenFactorPose3(X(k), X(k + 1), between, relative))
    index = {int(t): j for j, t in enumerate(track_ids)}
    observed: list[tuple[int, int, np.ndarray]] = []  # (keyframe, point, pixel) of every reprojection factor
    for j, t in enumerate(track_ids):
        point, _, k, distance = initial[int(t)]
        values.insert(L(j), gtsam.Point3(point))
        graph.add(
            gtsam.RangeFactor3D(X(k), L(j), distance, gtsam.noiseModel.Isotropic.Sigma(1, cfg.depth_prior * distance))
        )
    for k, obs in enumerate(observations):
        calibration = gtsam.Cal3_S2(*_calibration(intrinsics[k]))
        for t, uv in zip(obs.track_ids, obs.uv, strict=True):
            if int(t) in index:
                graph.add(
                    gtsam.GenericProjectionFactorCal3_S2(
                        uv.astype(np.float64), pixel, X(k), L(index[int(t)]), calibration
                    )
                )
                observed.append((k, index[int(t)], uv))
    num_observations = len(observed)
    errors = _Reprojection(intrinsics, observed)
    before = errors.median(start, initial_points)
    if before <= cfg.keep_below_px:
        return _kept(keep, f"already consistent ({before:.2f} px)", num_observations, before, before)
    try:
        params = gtsam.LevenbergMarquardtParams()
        params.setMaxIterations(cfg.max_iterations)
        result = gtsam.LevenbergMarquardtOptimizer(graph, values, params).optimize()
    except RuntimeError as exc:  # an indeterminate system, a cheirality failure: keep the network's poses
        return _kept(keep, f"optimiser failed: {exc}", num_observations, before)
    refined = np.stack([result.atPose3(X(k)).matrix() for k in range(K)])
    points = np.stack([result.atPoint3(L(j)) for j in range(len(track_ids))])
    after = errors.median(refined, points)
    if not np.isfinite(after) or after > before:
        return _kept(keep, f"no improvement ({before:.2f} -> {after:.2f} px)", num_observations, before, after)
    return Refinement(refined, track_ids, points, num_observations, before, after, True, "ok")


def _tracks_seen(observations: Sequence[TrackObservations], min_views: int) -> set[int]:
    ids, counts = np.unique(np.concatenate([o.track_ids for o in observations]), return_counts=True)
    return {int(t) for t in ids[counts >= min_views]}


def _initial_points(
    poses, intrinsics, observations, point_depths, seen: set[int]
) -> dict[int, tuple[np.ndarray, float, int, float]]:
    """Track id -> (world point, its depth, the window index of the keyframe that placed it, its distance from that
    camera) from the first keyframe that sees it with a finite, positive depth."""
    points: dict[int, tuple[np.ndarray, float, int, float]] = {}
    for k, (obs, depth) in enumerate(zip(observations, point_depths, strict=True)):
        inverse_k = np.linalg.inv(intrinsics[k])
        for t, uv, z in zip(obs.track_ids, obs.uv, depth, strict=True):
            t = int(t)
            if t in points or t not in seen or not (np.isfinite(z) and z > 0):
                continue
            ray = inverse_k @ np.array([uv[0], uv[1], 1.0])
            points[t] = (poses[k, :3, :3] @ (ray * z) + poses[k, :3, 3], float(z), k, float(np.linalg.norm(ray) * z))
    return points


def _calibration(k: np.ndarray) -> tuple[float, float, float, float, float]:
    return float(k[0, 0]), float(k[1, 1]), float(k[0, 1]), float(k[0, 2]), float(k[1, 2])


class _Reprojection:
    """Pixel errors of the reprojection factors for given poses and points, unweighted (the robust kernel's input);
    numpy over all observations at once, as one gtsam camera per factor took as long as the optimisation."""

    def __init__(self, intrinsics: np.ndarray, observed: Sequence[tuple[int, int, np.ndarray]]) -> None:
        self.keyframe = np.array([k for k, _, _ in observed], dtype=np.int64)
        self.point = np.array([j for _, j, _ in observed], dtype=np.int64)
        self.pixel = np.array([uv for _, _, uv in observed], dtype=np.float64).reshape(-1, 2)
        self.intrinsics = np.asarray(intrinsics, np.float64)

    def median(self, world_from_cam: np.ndarray, points: np.ndarray) -> float:
        """Median error (px); a point behind its camera counts as infinitely far off."""
        if not len(self.keyframe):
            return float("nan")
        cam_from_world = invert_se3(world_from_cam)[self.keyframe]
        in_cam = np.einsum("nij,nj->ni", cam_from_world[:, :3, :3], points[self.point]) + cam_from_world[:, :3, 3]
        projected = np.einsum("nij,nj->ni", self.intrinsics[self.keyframe], in_cam)
        with np.errstate(divide="ignore", invalid="ignore"):
            errors = np.linalg.norm(projected[:, :2] / projected[:, 2:] - self.pixel, axis=1)
        errors[~(in_cam[:, 2] > 0)] = np.inf
        return float(np.median(errors))


def _kept(
    keep: Refinement, reason: str, num_observations: int = 0, before: float = np.nan, after: float = np.nan
) -> Refinement:
    log.info("refinement not applied: %s", reason)
    return Refinement(keep.world_from_cam, keep.track_ids, keep.points, num_observations, before, after, False, reason)
