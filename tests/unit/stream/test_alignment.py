"""Sim(3) alignment of a window onto the map: exact recovery, collinear centres, noise, outliers, 0/1 overlap."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from spark3r_stream.errors import InputError
from spark3r_stream.geometry import apply_transform, rotation_angle_deg, se3_matrix, sim3_matrix, sim3_scale
from spark3r_stream.stream.alignment import AlignmentConfig, align_window

EXACT = 1e-9  # float64 closed-form fits of noise-free data
NOISY_TRANSLATION = 0.02  # map units; point noise 0.01 on ~1-unit scenes
NOISY_ROTATION_DEG = 0.5
NOISY_SCALE = 0.01

MAP_FROM_WINDOW = sim3_matrix(
    1.7, Rotation.from_euler("xyz", [20, -35, 60], degrees=True).as_matrix(), [1.0, -2.0, 0.5]
)


def _rigid(transform: np.ndarray) -> np.ndarray:
    out = transform.copy()
    out[:3, :3] /= sim3_scale(transform)
    return out


def _window_poses(num: int, rng: np.random.Generator, straight: bool = False) -> dict[int, np.ndarray]:
    poses = {}
    for k in range(num):
        angles = [0, 5 * k, 0] if straight else rng.normal(0, 15, 3)
        centre = [0.2 * k, 0, 0] if straight else [0.3 * k, 0.1 * np.sin(k), 0.05 * k**2]
        poses[k] = se3_matrix(Rotation.from_euler("xyz", angles, degrees=True).as_matrix(), centre)
    return poses


def _to_map(window_poses: dict[int, np.ndarray], keys) -> dict[int, np.ndarray]:
    return {k: _rigid(MAP_FROM_WINDOW @ window_poses[k]) for k in keys}


def _points(window_poses, keys, rng, num=400):
    """Pixel-matched points: in front of each camera (depth 1-3), in the window frame."""
    out = {}
    for k in keys:
        cam = np.column_stack([rng.uniform(-1, 1, num), rng.uniform(-1, 1, num), rng.uniform(1, 3, num)])
        out[k] = apply_transform(window_poses[k], cam)
    return out


def _assert_close(result, translation_tol, rotation_tol_deg, scale_tol):
    delta = np.linalg.inv(MAP_FROM_WINDOW) @ result.map_from_window
    assert result.scale == pytest.approx(1.7, abs=scale_tol * 1.7)
    assert np.linalg.norm(result.map_from_window[:3, 3] - MAP_FROM_WINDOW[:3, 3]) < translation_tol
    assert rotation_angle_deg(delta[:3, :3] / sim3_scale(delta)) < rotation_tol_deg


def test_no_overlap_is_identity():
    rng = np.random.default_rng(0)
    result = align_window({}, _window_poses(3, rng))
    assert result.method == "identity" and np.array_equal(result.map_from_window, np.eye(4))


def test_known_transform_recovered_from_cameras_alone():
    rng = np.random.default_rng(1)
    window = _window_poses(6, rng)
    result = align_window(_to_map(window, range(4)), window)  # keyframes 4, 5 are new
    assert result.method == "umeyama" and result.num_overlap == 4
    np.testing.assert_allclose(result.map_from_window, MAP_FROM_WINDOW, atol=EXACT)
    assert max(result.centre_residuals.values()) < EXACT


def test_collinear_centres_still_determine_the_rotation():
    rng = np.random.default_rng(2)
    window = _window_poses(5, rng, straight=True)  # centres on a line: centres alone leave a free rotation
    result = align_window(_to_map(window, range(5)), window)
    np.testing.assert_allclose(result.map_from_window, MAP_FROM_WINDOW, atol=EXACT)


def test_single_overlap_uses_the_pose_and_the_point_depth_ratio():
    rng = np.random.default_rng(3)
    window = _window_poses(3, rng)
    window_points = _points(window, [0], rng)
    map_points = {0: apply_transform(MAP_FROM_WINDOW, window_points[0])}
    result = align_window(_to_map(window, [0]), window, map_points=map_points, window_points=window_points)
    assert result.method == "single_keyframe"
    np.testing.assert_allclose(result.map_from_window, MAP_FROM_WINDOW, atol=EXACT)
    assert result.rmse < EXACT
    without_points = align_window(_to_map(window, [0]), window)
    assert without_points.scale == pytest.approx(1.0)  # no depth: the scale cannot be known


def test_noise_and_outliers_are_rejected():
    rng = np.random.default_rng(4)
    window = _window_poses(6, rng)
    overlap = range(4)
    window_points = _points(window, overlap, rng)
    map_points = {
        k: apply_transform(MAP_FROM_WINDOW, p) + rng.normal(0, 0.01, p.shape) for k, p in window_points.items()
    }
    for k in overlap:  # 20 % gross outliers per keyframe, with high confidence (the worst case)
        map_points[k][:80] += rng.normal(0, 3.0, (80, 3))
    weights = {k: rng.uniform(1, 5, 400) for k in overlap}
    map_poses = _to_map(window, overlap)
    map_poses[3] = se3_matrix(map_poses[3][:3, :3], map_poses[3][:3, 3] + [2.0, 0, 0])  # one bad keyframe pose
    result = align_window(map_poses, window, map_points=map_points, window_points=window_points, point_weights=weights)
    _assert_close(result, NOISY_TRANSLATION, NOISY_ROTATION_DEG, NOISY_SCALE)
    assert result.centre_residuals[3] > 1.5 and max(result.centre_residuals[k] for k in range(3)) < 0.05
    assert result.num_correspondences == 4 * 4 + 4 * 400
    assert result.num_inliers <= result.num_correspondences - 4 * 80  # the gross outliers were trimmed

    plain = align_window(
        map_poses,
        window,
        map_points=map_points,
        window_points=window_points,
        point_weights=weights,
        config=AlignmentConfig(robust_iterations=0),
    )
    plain_error = np.linalg.norm(plain.map_from_window[:3, 3] - MAP_FROM_WINDOW[:3, 3])
    assert plain_error > 5 * np.linalg.norm(result.map_from_window[:3, 3] - MAP_FROM_WINDOW[:3, 3])


def test_points_are_subsampled_per_keyframe():
    rng = np.random.default_rng(5)
    window = _window_poses(3, rng)
    window_points = _points(window, range(3), rng, num=1000)
    map_points = {k: apply_transform(MAP_FROM_WINDOW, p) for k, p in window_points.items()}
    result = align_window(
        _to_map(window, range(3)),
        window,
        map_points=map_points,
        window_points=window_points,
        config=AlignmentConfig(max_points_per_keyframe=50),
    )
    assert result.num_correspondences == 3 * 4 + 3 * 50
    np.testing.assert_allclose(result.map_from_window, MAP_FROM_WINDOW, atol=1e-8)


def test_mismatched_points_are_an_error():
    rng = np.random.default_rng(6)
    window = _window_poses(2, rng)
    with pytest.raises(InputError, match=r"points\[0\]: map and window points must be pixel-matched"):
        align_window(
            _to_map(window, [0, 1]), window, map_points={0: np.zeros((3, 3))}, window_points={0: np.zeros((4, 3))}
        )
