"""Our trajectory metrics against the `evo` package on the same TUM files (evo is a test dependency).

evo is imported at module level on purpose: without it this module fails to collect, it never skips.
"""

import numpy as np
import pytest
from evo.core import metrics as evo_metrics
from evo.core import sync as evo_sync
from evo.tools import file_interface as evo_files
from scipy.spatial.transform import Rotation

from spark3r_stream.eval.trajectory import rpe_errors, trajectory_metrics_from_files, write_tum
from spark3r_stream.geometry import se3_matrix

AGREEMENT = 1e-6  # both read the same 9-decimal files; differences are float round-off


@pytest.fixture
def tum_pair(tmp_path):
    rng = np.random.default_rng(0)
    num_poses = 40
    rotations = Rotation.from_rotvec(np.cumsum(rng.normal(scale=0.05, size=(num_poses, 3)), axis=0))
    gt = se3_matrix(rotations.as_matrix(), np.cumsum(rng.normal(scale=0.1, size=(num_poses, 3)), axis=0))
    # estimate: a scaled, rotated, shifted copy with pose noise, on a slightly offset clock
    noise = Rotation.from_rotvec(rng.normal(scale=0.02, size=(num_poses, 3)))
    offset = Rotation.from_rotvec([0.3, -0.2, 0.9])
    est = se3_matrix(
        (offset * rotations * noise).as_matrix(),
        0.7 * offset.apply(gt[:, :3, 3] + rng.normal(scale=0.02, size=(num_poses, 3))) + [1.0, 2.0, -0.5],
    )
    times = 100.0 + np.arange(num_poses) / 30.0
    write_tum(tmp_path / "gt.txt", times, gt)
    write_tum(tmp_path / "est.txt", times + 0.002, est)
    return tmp_path / "est.txt", tmp_path / "gt.txt"


def _evo_pair(est_path, gt_path):
    traj_ref = evo_files.read_tum_trajectory_file(str(gt_path))
    traj_est = evo_files.read_tum_trajectory_file(str(est_path))
    return evo_sync.associate_trajectories(traj_ref, traj_est, max_diff=0.01)


@pytest.mark.parametrize("alignment", ["sim3", "se3"])
def test_ate_and_rpe_match_evo(tum_pair, alignment):
    est_path, gt_path = tum_pair
    ours = trajectory_metrics_from_files(est_path, gt_path, max_difference_s=0.01, alignment=alignment)

    traj_ref, traj_est = _evo_pair(est_path, gt_path)
    traj_est.align(traj_ref, correct_scale=alignment == "sim3")
    ape = evo_metrics.APE(evo_metrics.PoseRelation.translation_part)
    ape.process_data((traj_ref, traj_est))
    assert ours["ate_rmse_m"] == pytest.approx(ape.get_statistic(evo_metrics.StatisticsType.rmse), abs=AGREEMENT)
    assert ours["ate_mean_m"] == pytest.approx(ape.get_statistic(evo_metrics.StatisticsType.mean), abs=AGREEMENT)

    for relation, key in (
        (evo_metrics.PoseRelation.translation_part, "rpe_trans_rmse_m"),
        (evo_metrics.PoseRelation.rotation_angle_deg, "rpe_rot_rmse_deg"),
    ):
        rpe = evo_metrics.RPE(relation, delta=1, delta_unit=evo_metrics.Unit.frames)
        rpe.process_data((traj_ref, traj_est))
        assert ours[key] == pytest.approx(rpe.get_statistic(evo_metrics.StatisticsType.rmse), abs=AGREEMENT)
    assert ours["ate_rmse_m"] > 0.01  # the noise is visible, so agreement is not 0 == 0


def test_rpe_with_delta_matches_evo(tum_pair):
    est_path, gt_path = tum_pair
    traj_ref, traj_est = _evo_pair(est_path, gt_path)
    trans, rot = rpe_errors(
        np.array(traj_est.poses_se3), np.array(traj_ref.poses_se3), delta=5, alignment="none", all_pairs=True
    )
    for relation, ours in (
        (evo_metrics.PoseRelation.translation_part, trans),
        (evo_metrics.PoseRelation.rotation_angle_deg, rot),
    ):
        rpe = evo_metrics.RPE(relation, delta=5, delta_unit=evo_metrics.Unit.frames, all_pairs=True)
        rpe.process_data((traj_ref, traj_est))
        np.testing.assert_allclose(ours, rpe.error, atol=AGREEMENT)
