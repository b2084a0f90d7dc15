"""Tests for spark3r_stream.eval.sequence: one row per sequence on synthetic ground truth, and the table."""

import numpy as np
import pytest

from spark3r_stream.errors import InputError
from spark3r_stream.eval.sequence import evaluate_sequence, format_markdown_table
from spark3r_stream.geometry import sim3_matrix
from spark3r_stream.synth import render_sequence


@pytest.fixture(scope="module")
def sequence():
    return render_sequence(3, 6, height=24, width=32)


def test_a_similar_copy_of_the_ground_truth_scores_perfectly(sequence):
    est_from_gt = sim3_matrix(0.5, np.eye(3), np.array([1.0, 2.0, 3.0]))
    est = sequence.world_from_cam.copy()
    est[:, :3, 3] = sequence.world_from_cam[:, :3, 3] * 0.5 + est_from_gt[:3, 3]
    row = evaluate_sequence(
        "copy",
        gt_world_from_cam=sequence.world_from_cam,
        est_world_from_cam=est,
        gt_depth=sequence.depth,
        est_depth=sequence.depth * 0.5,  # the estimate's depth shares its scale
        gt_intrinsics=sequence.intrinsics,
        est_intrinsics=sequence.intrinsics,
    )
    assert row["sequence"] == "copy" and row["num_frames"] == 6
    assert row["ate_rmse_m"] < 1e-9 and row["alignment_scale"] == pytest.approx(2.0)
    assert row["depth_abs_rel_median"] < 1e-6 and row["depth_delta_1_25_scale_shift"] == 1.0
    assert row["accuracy_mean_m"] < 1e-6 and row["completeness_mean_m"] < 1e-6
    assert row["normal_consistency"] == pytest.approx(1.0, abs=1e-6)


def test_trivial_baselines_score_badly(sequence):
    static = np.broadcast_to(np.eye(4), sequence.world_from_cam.shape)
    row = evaluate_sequence(
        "baseline",
        gt_world_from_cam=sequence.world_from_cam,
        est_world_from_cam=static,
        gt_depth=sequence.depth,
        est_depth=np.full_like(sequence.depth, 2.0),
    )
    assert row["ate_over_extent"] > 0.2
    assert row["depth_abs_rel_median"] > 0.1 and "accuracy_mean_m" not in row  # no intrinsics: no point metrics


def test_depth_without_its_pair_raises(sequence):
    with pytest.raises(InputError, match="give both gt_depth and est_depth"):
        evaluate_sequence(
            "x",
            gt_world_from_cam=sequence.world_from_cam,
            est_world_from_cam=sequence.world_from_cam,
            gt_depth=sequence.depth,
        )


def test_format_markdown_table():
    rows = [{"sequence": "a", "num_frames": 16.0, "ate_rmse_m": 0.012345}, {"sequence": "b", "abs_rel": 0.5}]
    assert format_markdown_table(rows) == (
        "| sequence | num_frames | ate_rmse_m | abs_rel |\n"
        "|---|---|---|---|\n"
        "| a | 16 | 0.01235 | – |\n"
        "| b | – | – | 0.5 |\n"
    )
    assert format_markdown_table(rows, ["sequence"]) == "| sequence |\n|---|\n| a |\n| b |\n"
