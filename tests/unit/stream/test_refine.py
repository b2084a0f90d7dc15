"""Local bundle adjustment (gtsam) on synthetic tracks: it recovers perturbed poses, shrugs off outliers, keeps
exact poses, and falls back to the network's poses when it cannot help."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from spark3r_stream.geometry import se3_matrix
from spark3r_stream.stream.refine import RefineConfig, refine_window
from spark3r_stream.stream.tracks import TrackObservations

K = np.array([[400.0, 0, 320], [0, 400.0, 240], [0, 0, 1]])


def scene(num_cameras=5, num_points=300, seed=0):
    rng = np.random.default_rng(seed)
    points = np.c_[rng.uniform(-3, 3, num_points), rng.uniform(-2, 2, num_points), rng.uniform(3, 8, num_points)]
    poses = np.stack(
        [
            se3_matrix(Rotation.from_euler("y", 3 * k, degrees=True).as_matrix(), [0.25 * k, 0.02 * k, 0])
            for k in range(num_cameras)
        ]
    )
    return points, poses


def observe(points, poses, noise_px=0.5, outliers=0.0, seed=1):
    rng = np.random.default_rng(seed)
    observations, depths = [], []
    for pose in poses:
        cam = (np.linalg.inv(pose) @ np.c_[points, np.ones(len(points))].T).T[:, :3]
        uv = (K @ cam.T).T
        uv = uv[:, :2] / uv[:, 2:]
        inside = (uv[:, 0] > 0) & (uv[:, 0] < 640) & (uv[:, 1] > 0) & (uv[:, 1] < 480) & (cam[:, 2] > 0)
        uv = uv + rng.normal(0, noise_px, uv.shape)
        bad = rng.random(len(uv)) < outliers
        uv[bad] = rng.uniform([0, 0], [640, 480], (bad.sum(), 2))
        ids = np.flatnonzero(inside)
        observations.append(TrackObservations(ids.astype(np.int64), uv[ids].astype(np.float32)))
        depths.append(cam[ids, 2] * (1 + rng.normal(0, 0.05, len(ids))))
    return observations, depths


def perturb(poses, seed=2, rot_deg=2.0, trans=0.05):
    rng = np.random.default_rng(seed)
    out = poses.copy()
    for k in range(1, len(poses)):  # the first pose is the gauge
        delta = se3_matrix(
            Rotation.from_rotvec(np.radians(rot_deg) * rng.normal(size=3) / np.sqrt(3)).as_matrix(),
            rng.normal(0, trans, 3),
        )
        out[k] = poses[k] @ delta
    return out


def pose_errors(estimate, truth):
    rot = [
        np.degrees(Rotation.from_matrix(a[:3, :3].T @ b[:3, :3]).magnitude())
        for a, b in zip(estimate, truth, strict=True)
    ]
    trans = [np.linalg.norm(a[:3, 3] - b[:3, 3]) for a, b in zip(estimate, truth, strict=True)]
    return float(np.max(rot)), float(np.max(trans))


@pytest.mark.parametrize("outliers", [0.0, 0.1])
def test_refinement_recovers_perturbed_poses(outliers):
    points, truth = scene()
    observations, depths = observe(points, truth, outliers=outliers)
    start = perturb(truth)
    result = refine_window(start, np.stack([K] * len(truth)), observations, depths)
    assert result.applied and result.reason == "ok"
    assert result.error_after_px < 1.0 < result.error_before_px
    rot_before, trans_before = pose_errors(start, truth)
    rot_after, trans_after = pose_errors(result.world_from_cam, truth)
    assert rot_after < 0.1 * rot_before and rot_after < 0.2
    assert trans_after < 0.3 * trans_before


def test_exact_poses_stay_where_they_are():
    points, truth = scene()
    observations, depths = observe(points, truth, noise_px=0.1)
    result = refine_window(truth, np.stack([K] * len(truth)), observations, depths)
    rot, trans = pose_errors(result.world_from_cam, truth)
    assert rot < 0.05 and trans < 0.01


def test_too_few_tracks_keep_the_network_poses():
    points, truth = scene(num_points=5)
    observations, depths = observe(points, truth)
    start = perturb(truth)
    result = refine_window(start, np.stack([K] * len(truth)), observations, depths, RefineConfig())
    assert not result.applied and "too few tracks" in result.reason
    np.testing.assert_array_equal(result.world_from_cam, start)
