"""Tests for spark3r_stream.synth.paths: each camera path's shape, bounds and character."""

import numpy as np
import pytest

from spark3r_stream.errors import InputError
from spark3r_stream.geometry import rotation_angle_deg
from spark3r_stream.synth.paths import camera_path, forward_path, handheld_path, look_at, loop_path, orbit_path

ROOM_MIN = np.array([0.0, 0.0, 0.0])
ROOM_MAX = np.array([5.0, 4.0, 2.8])


def test_look_at_uses_opencv_axes():
    world_from_cam = look_at(np.zeros((1, 3)), np.array([[1.0, 0.0, 0.0]]))[0]
    np.testing.assert_allclose(world_from_cam[:3, 2], [1, 0, 0], atol=1e-12)  # camera z: forward
    np.testing.assert_allclose(world_from_cam[:3, 0], [0, -1, 0], atol=1e-12)  # camera x: right of +x, z up
    np.testing.assert_allclose(world_from_cam[:3, 1], [0, 0, -1], atol=1e-12)  # camera y: down


def test_handheld_is_smooth_and_inside_the_room():
    world_from_cam = handheld_path(np.random.default_rng(0), ROOM_MIN, ROOM_MAX, 120, step_m=0.05, turn_deg=2.0)
    centres = world_from_cam[:, :3, 3]
    steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    np.testing.assert_allclose(steps, 0.05, rtol=0.05)  # arc-length resampling: constant speed
    assert (centres >= ROOM_MIN + 0.3).all() and (centres <= ROOM_MAX - 0.3).all()
    turns = rotation_angle_deg(np.swapaxes(world_from_cam[:-1, :3, :3], 1, 2) @ world_from_cam[1:, :3, :3])
    assert turns.max() < 10.0 and 0.3 < turns.mean() < 6.0


def test_orbit_keeps_its_radius_and_looks_inward():
    world_from_cam = orbit_path(np.random.default_rng(1), ROOM_MIN, ROOM_MAX, 40, step_m=0.1)
    centre_xy = (ROOM_MIN[:2] + ROOM_MAX[:2]) / 2
    radii = np.linalg.norm(world_from_cam[:, :2, 3] - centre_xy, axis=1)
    np.testing.assert_allclose(radii, radii[0], rtol=1e-9)
    towards_centre = centre_xy - world_from_cam[:, :2, 3]
    assert (np.einsum("ni,ni->n", world_from_cam[:, :2, 2], towards_centre) > 0).all()


def test_forward_moves_monotonically_along_the_long_axis():
    world_from_cam = forward_path(np.random.default_rng(2), ROOM_MIN, ROOM_MAX, 30, step_m=0.1)
    along_x = np.diff(world_from_cam[:, 0, 3])
    np.testing.assert_allclose(np.abs(along_x), 0.1, rtol=1e-9)
    assert (np.sign(along_x) == np.sign(along_x[0])).all()
    assert (np.sign(world_from_cam[:, 0, 2]) == np.sign(along_x[0])).all()  # looking where it walks


def test_forward_shrinks_its_step_to_fit_the_room():
    world_from_cam = forward_path(np.random.default_rng(2), ROOM_MIN, ROOM_MAX, 100, step_m=0.5)
    assert np.abs(world_from_cam[-1, 0, 3] - world_from_cam[0, 0, 3]) == pytest.approx(5.0 - 2 * 0.5)


def test_loop_returns_to_its_start():
    world_from_cam = loop_path(np.random.default_rng(3), ROOM_MIN, ROOM_MAX, 60)
    centres = world_from_cam[:, :3, 3]
    steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    closing = np.linalg.norm(centres[-1] - centres[0])
    assert closing == pytest.approx(steps.mean(), rel=0.1)  # one more step closes the loop
    assert np.linalg.norm(centres - centres[0], axis=1).max() > 15 * closing
    closing_turn = rotation_angle_deg(world_from_cam[-1, :3, :3].T @ world_from_cam[0, :3, :3])
    assert closing_turn < 3 * rotation_angle_deg(world_from_cam[0, :3, :3].T @ world_from_cam[1, :3, :3]) + 1e-6


def test_unknown_path_and_tiny_room_raise():
    with pytest.raises(InputError, match="camera path kind 'zigzag': unknown"):
        camera_path("zigzag", np.random.default_rng(0), ROOM_MIN, ROOM_MAX, 5)
    with pytest.raises(InputError, match="too small for a 0.5 m wall margin"):
        handheld_path(np.random.default_rng(0), ROOM_MIN, np.array([0.8, 4.0, 2.8]), 5)
