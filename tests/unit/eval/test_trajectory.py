"""Tests for spark3r_stream.eval.trajectory: hand-computed ATE/RPE, TUM files, association."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from spark3r_stream.errors import InputError
from spark3r_stream.eval.trajectory import (
    associate,
    ate_errors,
    ate_rmse,
    constant_trajectory_ate,
    read_tum,
    relative_rotation_errors_deg,
    rpe_errors,
    trajectory_extent,
    trajectory_metrics,
    trajectory_metrics_from_files,
    write_tum,
)
from spark3r_stream.geometry import se3_matrix, sim3_matrix

EXACT = 1e-9


def _straight_line(num_poses: int = 4) -> np.ndarray:
    """Identity rotations, centres at x = 0, 1, 2, ..."""
    return se3_matrix(
        np.broadcast_to(np.eye(3), (num_poses, 3, 3)), np.c_[np.arange(num_poses), np.zeros((num_poses, 2))]
    )


def _wiggly(num_poses: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rotations = Rotation.from_rotvec(np.cumsum(rng.normal(scale=0.1, size=(num_poses, 3)), axis=0)).as_matrix()
    return se3_matrix(rotations, np.cumsum(rng.normal(scale=0.3, size=(num_poses, 3)), axis=0))


def test_ate_hand_computed_without_alignment():
    gt = _straight_line()
    est = gt.copy()
    est[:2, 0, 3] += 1.0  # two of four centres off by 1 m
    errors, gt_from_est = ate_errors(est, gt, alignment="none")
    np.testing.assert_allclose(errors, [1, 1, 0, 0])
    np.testing.assert_array_equal(gt_from_est, np.eye(4))
    assert ate_rmse(est, gt, alignment="none") == pytest.approx(np.sqrt(0.5))


def test_ate_sim3_removes_a_similarity_and_se3_does_not():
    gt = _wiggly()
    gt_from_est = sim3_matrix(2.0, Rotation.from_rotvec([0.2, 0.4, -1.0]).as_matrix(), np.array([1.0, -2.0, 0.5]))
    est = gt.copy()
    est_from_gt = np.linalg.inv(gt_from_est)
    est[:, :3, 3] = gt[:, :3, 3] @ est_from_gt[:3, :3].T + est_from_gt[:3, 3]
    est[:, :3, :3] = Rotation.from_rotvec([0.2, 0.4, -1.0]).as_matrix().T @ gt[:, :3, :3]
    assert ate_rmse(est, gt, alignment="sim3") < EXACT
    assert ate_rmse(est, gt, alignment="se3") > 0.1
    metrics = trajectory_metrics(est, gt)
    assert metrics["alignment_scale"] == pytest.approx(2.0)
    assert metrics["rpe_trans_rmse_m"] < EXACT and metrics["rpe_rot_rmse_deg"] < 1e-6
    assert metrics["mean_relative_rotation_error_deg"] < 1e-6


def test_rpe_hand_computed():
    gt = _straight_line()
    est = gt.copy()
    est[2:, 0, 3] += 1.0  # one jump of 1 m between frames 1 and 2
    est[2, :3, :3] = Rotation.from_rotvec([0, 0, np.radians(10)]).as_matrix()
    trans, rot = rpe_errors(est, gt, alignment="none")
    np.testing.assert_allclose(trans[:2], [0.0, 1.0], atol=EXACT)
    # pair (2, 3): frame 2 rotated 10 degrees, so frame 3's 1 m step seen from frame 2 is off by that rotation
    assert trans[2] == pytest.approx(2 * np.sin(np.radians(5)), abs=EXACT)
    np.testing.assert_allclose(rot, [0.0, 10.0, 10.0], atol=1e-9)
    trans_2, _ = rpe_errors(est, gt, delta=2, alignment="none")
    assert len(trans_2) == 1 and trans_2[0] == pytest.approx(1.0)  # pairs (0, 2) only, as evo
    assert len(rpe_errors(est, gt, delta=2, alignment="none", all_pairs=True)[0]) == 2


def test_relative_rotation_error_of_identity_is_the_true_pairwise_angle():
    angles = np.radians([0.0, 10.0, 30.0])
    gt = se3_matrix(Rotation.from_rotvec(np.c_[np.zeros(3), np.zeros(3), angles]).as_matrix(), np.zeros((3, 3)))
    identity = np.broadcast_to(np.eye(4), (3, 4, 4))
    np.testing.assert_allclose(relative_rotation_errors_deg(identity, gt), [10.0, 30.0, 20.0], atol=1e-9)


def test_extent_and_ate_fraction():
    gt = _straight_line(5)
    assert trajectory_extent(gt) == pytest.approx(4.0)
    est = gt.copy()
    est[:, 1, 3] = [0.1, -0.1, 0.1, -0.1, 0.1]  # off the line: not removable by a similarity
    metrics = trajectory_metrics(est, gt, alignment="none")
    assert metrics["ate_rmse_m"] == pytest.approx(0.1)
    assert metrics["ate_over_extent"] == pytest.approx(0.1 / 4.0)


def test_static_estimate_is_aligned_by_its_mean():
    gt = _wiggly(6)
    static = np.broadcast_to(np.eye(4), (6, 4, 4)).copy()
    errors, gt_from_est = ate_errors(static, gt)  # coincident centres: no rotation, offset to the mean
    centres = gt[:, :3, 3]
    np.testing.assert_allclose(errors, np.linalg.norm(centres - centres.mean(0), axis=1), atol=EXACT)
    np.testing.assert_allclose(gt_from_est[:3, 3], centres.mean(0), atol=EXACT)
    # the constant-trajectory baseline every report prints next to the ATE is exactly this estimate's ATE
    metrics = trajectory_metrics(static, gt)
    assert metrics["ate_constant_baseline_m"] == pytest.approx(metrics["ate_rmse_m"], abs=1e-9)
    assert metrics["ate_constant_baseline_m"] == pytest.approx(constant_trajectory_ate(gt), abs=1e-12)


def test_tum_round_trip(tmp_path):
    world_from_cam = _wiggly(5)
    timestamps = 1403715273.262142976 + np.arange(5) * 0.05
    write_tum(tmp_path / "traj.txt", timestamps, world_from_cam, comment="test trajectory")
    text = (tmp_path / "traj.txt").read_text().splitlines()
    assert text[:2] == ["# test trajectory", "# timestamp tx ty tz qx qy qz qw"]
    read_times, read_poses = read_tum(tmp_path / "traj.txt")
    np.testing.assert_allclose(read_times, timestamps, atol=1e-6)
    np.testing.assert_allclose(read_poses, world_from_cam, atol=1e-8)


def test_read_tum_matches_the_real_data_convention(tmp_path):
    # first pose of the SUN3D fixture: quaternion order x y z w (TUM), camera-to-world
    (tmp_path / "gt.txt").write_text(
        "# timestamp tx ty tz qx qy qz qw\n31.166667 -1.174053 1.029539 -1.177953 -0.037252832 -0.126515902 0.991222204 -0.009192167\n"
    )
    _, world_from_cam = read_tum(tmp_path / "gt.txt")
    expected = Rotation.from_quat([-0.037252832, -0.126515902, 0.991222204, -0.009192167]).as_matrix()
    np.testing.assert_allclose(world_from_cam[0, :3, :3], expected, atol=1e-9)
    np.testing.assert_allclose(world_from_cam[0, :3, 3], [-1.174053, 1.029539, -1.177953])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("1.0 0 0 0 0 0 0\n", r"traj.txt:1: expected 8 values"),
        ("# only a comment\n", r"no poses"),
        ("1.0 0 0 0 0 0 0 x\n", r"traj.txt:1: could not convert"),
        ("1.0 0 0 0 0 0 0 2\n", r"quaternion of pose 0 has norm 2.0000"),
    ],
)
def test_read_tum_errors_name_file_and_line(tmp_path, content, message):
    (tmp_path / "traj.txt").write_text(content)
    with pytest.raises(InputError, match=message):
        read_tum(tmp_path / "traj.txt")


def test_read_tum_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_tum(tmp_path / "missing.txt")


def test_associate_is_one_to_one_within_tolerance():
    a = np.array([0.0, 0.1, 0.2, 0.3, 0.5])
    b = np.array([0.104, 0.099, 0.205, 0.9, -0.004])
    index_a, index_b = associate(a, b, max_difference_s=0.01)
    assert list(zip(index_a.tolist(), index_b.tolist(), strict=True)) == [(0, 4), (1, 1), (2, 2)]
    # b[0] lost to the closer b[1]; 0.3 and 0.5 have no partner within 10 ms


def test_metrics_from_files_associate_by_timestamp(tmp_path):
    gt = _wiggly(10)
    times = np.arange(10) * 0.1
    write_tum(tmp_path / "gt.txt", times, gt)
    write_tum(tmp_path / "est.txt", times[::2] + 0.004, gt[::2])  # every other pose, 4 ms late
    metrics = trajectory_metrics_from_files(tmp_path / "est.txt", tmp_path / "gt.txt", max_difference_s=0.01)
    assert metrics["num_poses"] == 5 and metrics["ate_rmse_m"] < 1e-7
    with pytest.raises(InputError, match="only 0 poses match"):
        trajectory_metrics_from_files(tmp_path / "est.txt", tmp_path / "gt.txt", max_difference_s=0.001)


def test_mismatched_inputs_raise():
    with pytest.raises(InputError, match=r"two \[N, 4, 4\] pose arrays of equal shape"):
        ate_rmse(_wiggly(3), _wiggly(4))
    with pytest.raises(InputError, match="too few for frame delta 3"):
        rpe_errors(_wiggly(3), _wiggly(3), delta=3)
