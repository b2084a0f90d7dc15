"""Tests for spark3r_stream.eval.depth: AbsRel and δ<1.25 under each alignment protocol, valid masks."""

import numpy as np
import pytest

from spark3r_stream.errors import InputError
from spark3r_stream.eval.depth import align_scale_shift, depth_metrics

EXACT = 1e-9


def test_hand_computed_without_alignment():
    gt = np.array([[1.0, 2.0, 4.0]])
    pred = np.array([[1.0, 2.0, 2.0]])
    metrics = depth_metrics(pred, gt, alignment="none")
    assert metrics["abs_rel"] == pytest.approx(0.5 / 3)  # only the last pixel is off, by half
    assert metrics["delta_1_25"] == pytest.approx(2 / 3)  # ratio 2 misses the 1.25 threshold
    assert metrics["num_pixels"] == 3


def test_median_scaling_is_per_frame():
    gt = np.random.default_rng(0).uniform(1, 5, size=(3, 4, 5))
    pred = gt / np.array([2.0, 0.5, 7.0])[:, None, None]  # a different unknown scale per frame
    metrics = depth_metrics(pred, gt, alignment="median")
    assert metrics["abs_rel"] < EXACT and metrics["delta_1_25"] == 1.0
    assert metrics["scale"] == pytest.approx((2.0 + 0.5 + 7.0) / 3)
    # one scale for the whole sequence cannot fix three different ones
    assert depth_metrics(pred, gt, alignment="scale")["abs_rel"] > 0.3


def test_median_scaling_averages_frames_not_pixels():
    gt = np.ones((2, 2, 2))
    pred = np.ones((2, 2, 2))
    pred[1, 0, 0] = 3.0  # frame 1: median stays 1, one of 4 pixels off by 2
    valid = np.ones((2, 2, 2), dtype=bool)
    valid[0, 1:] = False  # frame 0 keeps 2 pixels, frame 1 keeps 4
    metrics = depth_metrics(pred, gt, valid, alignment="median")
    assert metrics["abs_rel"] == pytest.approx((0.0 + 2.0 / 4) / 2)
    assert metrics["num_pixels"] == 6


def test_scale_shift_recovers_an_affine_depth():
    gt = np.random.default_rng(1).uniform(0.5, 6, size=(4, 6, 6))
    pred = (gt - 1.0) / 3.0  # affine-invariant prediction (scale 3, shift 1)
    metrics = depth_metrics(pred, gt, alignment="scale_shift")
    assert metrics["scale"] == pytest.approx(3.0) and metrics["shift"] == pytest.approx(1.0)
    assert metrics["abs_rel"] < EXACT and metrics["delta_1_25"] == 1.0
    assert align_scale_shift(np.array([0.0, 1.0]), np.array([1.0, 3.0])) == pytest.approx((2.0, 1.0))


def test_invalid_pixels_are_ignored():
    gt = np.array([[1.0, 0.0, np.nan, 2.0, 50.0]])
    pred = np.array([[1.0, 9.0, 9.0, np.inf, 1.0]])
    metrics = depth_metrics(pred, gt, alignment="none", max_depth=10.0)
    assert metrics["num_pixels"] == 1 and metrics["abs_rel"] == 0.0  # zero, NaN, inf and out-of-range dropped


def test_non_positive_predictions_count_as_misses():
    metrics = depth_metrics(np.array([[-1.0, 1.0]]), np.array([[1.0, 1.0]]), alignment="none")
    assert metrics["delta_1_25"] == 0.5


@pytest.mark.parametrize(
    ("pred", "gt", "kwargs", "message"),
    [
        (np.ones((2, 3)), np.ones((3, 2)), {}, r"equal shape \[S, H, W\] or \[H, W\]"),
        (np.ones((2, 3)), np.zeros((2, 3)), {}, "no valid pixel"),
        (np.ones((2, 3)), np.ones((2, 3)), {"alignment": "affine"}, "depth alignment 'affine'"),
        (np.ones((2, 3)), np.ones((2, 3)), {"valid": np.ones(3, bool)}, r"valid mask: expected shape \(1, 2, 3\)"),
    ],
)
def test_bad_input_raises(pred, gt, kwargs, message):
    with pytest.raises(InputError, match=message):
        depth_metrics(pred, gt, **kwargs)
