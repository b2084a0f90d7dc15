"""Tests for spark3r_stream.geometry: transforms, weighted Umeyama, unprojection, pose interpolation."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from spark3r_stream.errors import InputError
from spark3r_stream.geometry import (
    apply_transform,
    interpolate_poses,
    invert_se3,
    invert_sim3,
    project_points,
    rotation_angle_deg,
    se3_matrix,
    sim3_matrix,
    sim3_scale,
    umeyama_sim3,
    unproject_depth,
)

EXACT = 1e-9  # float64 round-off on O(1) quantities
NOISY = 2e-2  # recovery error allowed with 1 cm Gaussian noise on 200 points in a ~2 m cloud


def _known_sim3() -> tuple[float, np.ndarray, np.ndarray]:
    rotation = Rotation.from_rotvec([0.3, -1.1, 0.7]).as_matrix()
    return 1.7, rotation, np.array([0.5, -2.0, 3.0])


def test_sim3_matrix_and_inverse_round_trip():
    scale, rotation, translation = _known_sim3()
    dst_from_src = sim3_matrix(scale, rotation, translation)
    assert sim3_scale(dst_from_src) == pytest.approx(scale, abs=EXACT)
    np.testing.assert_allclose(invert_sim3(dst_from_src) @ dst_from_src, np.eye(4), atol=EXACT)
    point = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(apply_transform(dst_from_src, point), scale * rotation @ point + translation, atol=EXACT)


def test_invert_se3_batched_matches_linalg_inv():
    rotations = Rotation.from_rotvec([[0.1, 0.2, 0.3], [-1.0, 0.5, 2.0]]).as_matrix()
    world_from_cam = se3_matrix(rotations, np.array([[1.0, 2.0, 3.0], [-4.0, 0.0, 0.5]]))
    np.testing.assert_allclose(invert_se3(world_from_cam), np.linalg.inv(world_from_cam), atol=EXACT)


def test_apply_transform_rejects_wrong_shapes():
    with pytest.raises(InputError, match=r"points: expected shape \[\.\.\., 3\], got \(4, 2\)"):
        apply_transform(np.eye(4), np.zeros((4, 2)))
    with pytest.raises(InputError, match=r"transform: expected shape \(4, 4\)"):
        apply_transform(np.eye(3), np.zeros((4, 3)))


def test_rotation_angle_deg():
    rotations = Rotation.from_rotvec([[0, 0, 0], [0, np.radians(30), 0], [np.pi, 0, 0]]).as_matrix()
    np.testing.assert_allclose(rotation_angle_deg(rotations), [0.0, 30.0, 180.0], atol=1e-6)


def test_umeyama_recovers_exact_sim3():
    scale, rotation, translation = _known_sim3()
    src = np.random.default_rng(1).normal(size=(20, 3))
    dst = scale * src @ rotation.T + translation
    est_scale, est_rotation, est_translation = umeyama_sim3(src, dst)
    assert est_scale == pytest.approx(scale, abs=EXACT)
    np.testing.assert_allclose(est_rotation, rotation, atol=EXACT)
    np.testing.assert_allclose(est_translation, translation, atol=EXACT)


def test_umeyama_without_scale_is_rigid():
    _, rotation, translation = _known_sim3()
    src = np.random.default_rng(2).normal(size=(20, 3))
    dst = 3.0 * src @ rotation.T + translation
    est_scale, est_rotation, _ = umeyama_sim3(src, dst, with_scale=False)
    assert est_scale == 1.0
    np.testing.assert_allclose(est_rotation, rotation, atol=EXACT)


def test_weighted_umeyama_ignores_down_weighted_outliers():
    rng = np.random.default_rng(3)
    scale, rotation, translation = _known_sim3()
    src = rng.uniform(-1, 1, size=(200, 3))
    dst = scale * src @ rotation.T + translation + rng.normal(scale=0.01, size=(200, 3))
    outliers = rng.choice(200, size=40, replace=False)
    dst[outliers] += rng.normal(scale=3.0, size=(40, 3))
    weights = np.ones(200)
    weights[outliers] = 1e-6

    unweighted_scale, unweighted_rotation, _ = umeyama_sim3(src, dst)
    est_scale, est_rotation, est_translation = umeyama_sim3(src, dst, weights)

    assert abs(est_scale - scale) < NOISY
    assert rotation_angle_deg(est_rotation.T @ rotation) < 1.0
    np.testing.assert_allclose(est_translation, translation, atol=NOISY * 3)
    # the outliers visibly corrupt the unweighted fit, so the weights are what fixed it
    assert abs(unweighted_scale - scale) > 10 * abs(est_scale - scale) or (
        rotation_angle_deg(unweighted_rotation.T @ rotation) > 3.0
    )


def test_umeyama_zero_weights_equal_dropping_points():
    rng = np.random.default_rng(4)
    src, dst = rng.normal(size=(30, 3)), rng.normal(size=(30, 3))
    weights = np.r_[np.ones(20), np.zeros(10)]
    full = umeyama_sim3(src, dst, weights)
    subset = umeyama_sim3(src[:20], dst[:20])
    assert full[0] == pytest.approx(subset[0], abs=EXACT)
    np.testing.assert_allclose(full[1], subset[1], atol=EXACT)
    np.testing.assert_allclose(full[2], subset[2], atol=EXACT)


def test_umeyama_never_returns_a_reflection():
    src = np.random.default_rng(5).normal(size=(10, 3))
    dst = src * np.array([1.0, 1.0, -1.0])  # a mirror image: the best proper rotation, not the mirror
    _, rotation, _ = umeyama_sim3(src, dst)
    assert np.linalg.det(rotation) == pytest.approx(1.0, abs=EXACT)


@pytest.mark.parametrize(
    ("src", "dst", "weights", "message"),
    [
        (np.zeros((5, 3)), np.zeros((4, 3)), None, r"two \[N, 3\] arrays of equal shape"),
        (np.eye(3)[:2], np.eye(3)[:2], None, r"at least 3 points with positive weight, got 2"),
        (np.eye(3), np.eye(3), np.array([1.0, 0.0, 0.0]), r"at least 3 points with positive weight, got 1"),
        (np.eye(3), np.eye(3), np.array([1.0, -1.0, 1.0]), r"weights: must be >= 0"),
        (np.eye(3), np.eye(3), np.ones(2), r"weights: expected shape \(3,\)"),
        (np.full((4, 3), np.nan), np.zeros((4, 3)), None, r"NaN or infinite"),
        (np.ones((4, 3)), np.ones((4, 3)), None, r"coincident or collinear"),
        (np.outer(np.arange(5.0), [1, 2, 3]), np.outer(np.arange(5.0), [3, 2, 1]), None, r"coincident or collinear"),
    ],
)
def test_umeyama_degenerate_input_raises(src, dst, weights, message):
    with pytest.raises(InputError, match=message):
        umeyama_sim3(src, dst, weights)


def test_unproject_depth_uses_integer_pixel_convention():
    intrinsics = np.array([[100.0, 0, 2.0], [0, 50.0, 1.0], [0, 0, 1]])
    depth = np.full((3, 5), 2.0)
    points = unproject_depth(depth, intrinsics)
    assert points.shape == (3, 5, 3)
    np.testing.assert_allclose(points[1, 2], [0.0, 0.0, 2.0])  # principal point (u=2, v=1)
    np.testing.assert_allclose(points[2, 4], [(4 - 2) * 2.0 / 100.0, (2 - 1) * 2.0 / 50.0, 2.0])


def test_unproject_then_project_is_identity_batched():
    rng = np.random.default_rng(6)
    intrinsics = np.stack([np.array([[f, 0, 5.5], [0, f, 3.5], [0, 0, 1]]) for f in (40.0, 60.0)])
    depth = rng.uniform(0.5, 4.0, size=(2, 8, 12))
    points = unproject_depth(depth, intrinsics)
    for frame in range(2):
        uv, z = project_points(points[frame], intrinsics[frame])
        np.testing.assert_allclose(z, depth[frame], atol=EXACT)
        np.testing.assert_allclose(uv[..., 0], np.broadcast_to(np.arange(12.0), (8, 12)), atol=EXACT)
        np.testing.assert_allclose(uv[..., 1], np.broadcast_to(np.arange(8.0)[:, None], (8, 12)), atol=EXACT)


def test_project_points_behind_camera_is_nan():
    uv, z = project_points(np.array([[0.0, 0.0, -1.0], [0.0, 0.0, 1.0]]), np.eye(3))
    assert np.isnan(uv[0]).all() and not np.isnan(uv[1]).any()
    assert z[0] == -1.0


def test_interpolate_poses_slerp_midpoint_and_clamping():
    world_from_cam = se3_matrix(
        Rotation.from_rotvec([[0, 0, 0], [0, 0, np.radians(90)]]).as_matrix(),
        np.array([[0.0, 0.0, 0.0], [2.0, 4.0, 0.0]]),
    )
    out = interpolate_poses(np.array([10.0, 20.0]), world_from_cam, np.array([5.0, 10.0, 12.5, 15.0, 25.0]))
    assert out.shape == (5, 4, 4)
    np.testing.assert_allclose(out[0], world_from_cam[0], atol=EXACT)  # before: hold the first
    np.testing.assert_allclose(out[1], world_from_cam[0], atol=EXACT)
    np.testing.assert_allclose(out[4], world_from_cam[1], atol=EXACT)  # after: hold the last
    np.testing.assert_allclose(out[3, :3, 3], [1.0, 2.0, 0.0], atol=EXACT)
    np.testing.assert_allclose(Rotation.from_matrix(out[3, :3, :3]).as_rotvec(), [0, 0, np.radians(45)], atol=1e-9)
    np.testing.assert_allclose(Rotation.from_matrix(out[2, :3, :3]).as_rotvec(), [0, 0, np.radians(22.5)], atol=1e-9)


def test_interpolate_poses_single_and_bad_times():
    world_from_cam = se3_matrix(np.eye(3), np.array([1.0, 2.0, 3.0]))[None]
    np.testing.assert_allclose(interpolate_poses([0.0], world_from_cam, [-1.0, 3.0]), np.repeat(world_from_cam, 2, 0))
    with pytest.raises(InputError, match="strictly increasing"):
        interpolate_poses([1.0, 1.0], np.repeat(world_from_cam, 2, 0), [1.0])
    with pytest.raises(InputError, match=r"expected shape \(2, 4, 4\)"):
        interpolate_poses([0.0, 1.0], world_from_cam, [0.5])
