"""Model-vs-baseline scoring: the baselines' numbers and the sequence loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spark3r_stream.eval.model_eval import baseline_rows, load_sequence, static_trajectory_metrics
from spark3r_stream.geometry import se3_matrix


def test_static_predictor_ate_is_the_spread_around_the_mean_centre():
    poses = np.tile(np.eye(4), (4, 1, 1))
    poses[:, :3, 3] = [[0, 0, 0], [2, 0, 0], [0, 2, 0], [2, 2, 0]]
    metrics = static_trajectory_metrics(poses)
    assert np.isclose(metrics["ate_rmse_m"], np.sqrt(2.0))
    assert np.isclose(metrics["ate_over_extent"], np.sqrt(2.0) / np.sqrt(8.0))
    assert metrics["mean_relative_rotation_error_deg"] == 0.0


def test_identity_rotation_error_is_the_ground_truth_rotation():
    from scipy.spatial.transform import Rotation

    poses = np.stack(
        [se3_matrix(Rotation.from_euler("y", a, degrees=True).as_matrix(), np.zeros(3)) for a in (0, 10, 20)]
    )
    metrics = static_trajectory_metrics(poses)
    assert np.isclose(metrics["mean_relative_rotation_error_deg"], (10 + 20 + 10) / 3)


def test_synthetic_spec_loads_with_depth_and_constant_depth_baseline_is_scored():
    sequence = load_sequence("synth:seed=900003,frames=3,path=orbit", input_size=28)
    assert sequence.images.shape == (3, 28, 28, 3) and sequence.depth.shape == (3, 28, 28)
    rows = baseline_rows(sequence)
    assert [r["method"] for r in rows] == ["identity", "constant-velocity", "constant-depth"]
    assert 0.0 < rows[2]["depth_abs_rel_median"] < 1.0


def test_eval_command_writes_the_table_with_model_and_baselines(tmp_path, capsys):
    import json

    from spark3r_stream.cli import main

    assert main(["eval", "synth:seed=900000,frames=4", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "eval.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["vggt-tiny", "identity", "constant-velocity", "constant-depth"]
    assert 0 < rows[0]["depth_abs_rel_median"] < 1 and rows[0]["ate_over_extent"] >= 0
    table = (tmp_path / "eval.md").read_text()
    assert "mean of 1" in table and "synth-900000-handheld-4" in table


def test_pair_probe_scores_an_identity_camera_head_at_the_identity_baseline():
    from spark3r_stream.eval.model_eval import held_out_pair_errors
    from spark3r_stream.models import build_model

    model = build_model("vggt-tiny", random_weights=True)
    last = model.camera_head.pose_branch.fc2  # a constant update per refinement step: every camera at the origin
    torch.nn.init.zeros_(last.weight)
    with torch.no_grad():
        last.bias.copy_(torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1]) / model.camera_head.num_iterations)
    errors = held_out_pair_errors(model, num_pairs=3)
    assert errors["pairs"] == 3
    assert errors["rotation_error_deg"] == pytest.approx(errors["identity_rotation_error_deg"], abs=1e-3)
    assert errors["identity_rotation_error_deg"] > 2.0  # the probe's pairs move visibly


def test_tum_folder_with_depth_txt_loads_metric_depth_on_the_model_pixels():
    import cv2

    from tests.conftest import fixture_path

    folder = fixture_path("data", "tum_sun3d")
    sequence = load_sequence(str(folder), input_size=112)
    # 640x480 -> 112x84 (VGGT's crop preprocessing: width 112, height rounded to a multiple of 14)
    assert sequence.images.shape == (5, 84, 112, 3) and sequence.depth.shape == (5, 84, 112)
    raw = cv2.imread(str(folder / "depth" / "000935.png"), cv2.IMREAD_UNCHANGED).astype(np.float32) / 1000.0
    valid = sequence.depth[0] > 0
    assert 0.5 < valid.mean() and np.median(sequence.depth[0][valid]) == pytest.approx(np.median(raw[raw > 0]), rel=0.1)
    assert not sequence.depth[4].any()  # frame 943 has no depth image: nothing of it is scored
    rows = baseline_rows(sequence)
    assert 0.0 < rows[2]["depth_abs_rel_median"] < 1.0  # constant depth is scored against the real depth


def test_depth_preprocessing_matches_the_image_crop():
    from spark3r_stream.models.preprocess import preprocess_depth

    depth = np.zeros((1, 200, 100), np.float32)
    depth[0, 100:] = 2.0  # lower half at 2 m
    out = preprocess_depth(depth, target_size=28)
    assert out.shape == (1, 28, 28)  # 100x200 -> 28x56, centre-cropped to 28 rows
    assert (out[0, :14] == 0).all() and (out[0, 14:] == 2.0).all()


def test_constant_velocity_repeats_the_first_motion():
    from scipy.spatial.transform import Rotation

    from spark3r_stream.eval.model_eval import constant_velocity_trajectory

    step = se3_matrix(Rotation.from_euler("y", 5, degrees=True).as_matrix(), np.array([0.1, 0.0, 0.0]))
    gt = np.stack([np.eye(4), step, step @ step, np.eye(4)])  # moves twice, then jumps back
    poses = constant_velocity_trajectory(gt)
    np.testing.assert_allclose(poses[3], step @ step @ step, atol=1e-12)
    rows = baseline_rows(type("S", (), {"name": "x", "world_from_cam": gt, "depth": None})())
    assert rows[1]["method"] == "constant-velocity" and rows[1]["ate_rmse_m"] > 0


def test_eval_command_runs_the_pair_probe(tmp_path, capsys):
    import json

    from spark3r_stream.cli import main

    assert main(["eval", "--pairs", "2", "--out", str(tmp_path)]) == 0
    pairs = json.loads((tmp_path / "eval.json").read_text())["pairs"]
    assert pairs["pairs"] == 2 and pairs["identity_rotation_error_deg"] > 2.0
    assert "held-out pairs: 2, rotation error" in capsys.readouterr().out
    assert main(["eval", "--out", str(tmp_path)]) == 2  # nothing to score is a one-line error


def test_sequences_whose_ground_truth_starts_late_are_scored_on_the_frames_that_have_it():
    from tests.conftest import fixture_path

    sequence = load_sequence(str(fixture_path("data", "euroc_micro")), input_size=56)  # 4 frames, GT for the last 2
    assert len(sequence.images) == len(sequence.world_from_cam) == 2
