"""Tests for spark3r_stream.eval.points: accuracy, completeness, normal consistency, point-map normals."""

import numpy as np
import pytest

from spark3r_stream.errors import InputError
from spark3r_stream.eval.points import point_map_normals, point_metrics


def test_hand_computed_accuracy_and_completeness():
    gt = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    pred = np.array([[0.0, 0.0, 0.5]])
    metrics = point_metrics(pred, gt)
    assert metrics["accuracy_mean_m"] == pytest.approx(0.5)
    assert metrics["completeness_mean_m"] == pytest.approx((0.5 + np.sqrt(1.25)) / 2)
    assert metrics["chamfer_m"] == pytest.approx((0.5 + (0.5 + np.sqrt(1.25)) / 2) / 2)
    assert "normal_consistency" not in metrics


def test_shifted_plane_and_normal_consistency():
    u, v = np.meshgrid(np.linspace(0, 1, 11), np.linspace(0, 1, 11))
    gt = np.stack([u.ravel(), v.ravel(), np.zeros(u.size)], axis=1)
    pred = gt + [0.0, 0.0, 0.02]
    up = np.tile([0.0, 0.0, 1.0], (len(gt), 1))
    sideways = np.tile([1.0, 0.0, 0.0], (len(gt), 1))
    aligned = point_metrics(pred, gt, pred_normals=-up, gt_normals=up)  # flipped sign still counts as agreeing
    assert aligned["accuracy_mean_m"] == pytest.approx(0.02) and aligned["completeness_median_m"] == pytest.approx(0.02)
    assert aligned["normal_consistency"] == pytest.approx(1.0)
    assert point_metrics(pred, gt, pred_normals=sideways, gt_normals=up)["normal_consistency"] == pytest.approx(0.0)


def test_point_map_normals_of_a_tilted_plane():
    u, v = np.meshgrid(np.arange(5.0), np.arange(4.0))
    points = np.stack([u, v, 2.0 + 0.5 * u], axis=-1)  # plane z = 2 + x / 2
    normals = point_map_normals(points[None])[0]
    expected = np.array([-0.5, 0.0, 1.0]) / np.linalg.norm([-0.5, 0.0, 1.0])
    np.testing.assert_allclose(normals.reshape(-1, 3), np.tile(expected, (20, 1)), atol=1e-12)


@pytest.mark.parametrize(
    ("pred", "gt", "kwargs", "message"),
    [
        (np.zeros((0, 3)), np.zeros((2, 3)), {}, r"pred_points: expected a non-empty \[N, 3\] array"),
        (np.zeros((2, 3)), np.full((2, 3), np.nan), {}, "gt_points: contains NaN"),
        (
            np.zeros((2, 3)),
            np.zeros((2, 3)),
            {"pred_normals": np.zeros((2, 3))},
            "give both pred_normals and gt_normals",
        ),
    ],
)
def test_bad_input_raises(pred, gt, kwargs, message):
    with pytest.raises(InputError, match=message):
        point_metrics(pred, gt, **kwargs)
