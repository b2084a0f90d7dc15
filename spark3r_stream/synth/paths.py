"""Camera paths inside a room: handheld-like walks, orbits, forward walks and closed loops.

Each path returns world_from_cam [S, 4, 4] (OpenCV camera axes, world z up) and keeps every camera centre at
least `margin_m` away from the walls, floor and ceiling.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.interpolate import CubicSpline

from spark3r_stream.errors import InputError
from spark3r_stream.geometry import se3_matrix

PathKind = Literal["handheld", "orbit", "forward", "loop"]
PATH_KINDS: tuple[PathKind, ...] = ("handheld", "orbit", "forward", "loop")

WORLD_UP = np.array([0.0, 0.0, 1.0])
DEFAULT_STEP_M = 0.08  # camera-centre motion per frame
DEFAULT_TURN_DEG = 2.0  # mean change of viewing direction per frame on handheld paths


def look_at(eyes: np.ndarray, targets: np.ndarray, roll_rad: np.ndarray | None = None) -> np.ndarray:
    """world_from_cam [S, 4, 4] for cameras at `eyes` [S, 3] looking at `targets` [S, 3], world z up.

    OpenCV axes: camera z towards the target, x to the right, y down in the image; `roll_rad` [S] rotates
    the camera about its viewing axis.
    """
    forward = targets - eyes
    forward = forward / np.linalg.norm(forward, axis=-1, keepdims=True)
    right = np.cross(forward, WORLD_UP)
    right_norm = np.linalg.norm(right, axis=-1, keepdims=True)
    assert (right_norm > 1e-6).all(), "look_at: viewing direction parallel to world up"
    right = right / right_norm
    down = np.cross(forward, right)
    if roll_rad is not None:
        cos, sin = np.cos(roll_rad)[:, None], np.sin(roll_rad)[:, None]
        right, down = cos * right + sin * down, -sin * right + cos * down
    rotation = np.stack([right, down, forward], axis=-1)  # columns: camera axes in world coordinates
    return se3_matrix(rotation, eyes)


def _direction(yaw: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)], axis=-1)


def _inner_box(room_min: np.ndarray, room_max: np.ndarray, margin_m: float) -> tuple[np.ndarray, np.ndarray]:
    low = room_min + margin_m
    high = room_max - margin_m
    # eye height of a person holding a camera, where the room allows it
    low[2] = max(low[2], room_min[2] + 0.9)
    high[2] = min(high[2], room_min[2] + 2.0)
    if (high <= low).any():
        raise InputError(f"camera path room {room_max - room_min}: too small for a {margin_m} m wall margin")
    return low, high


def _resample_by_arc_length(spline: CubicSpline, param_end: float, arc_positions: np.ndarray) -> np.ndarray:
    dense_param = np.linspace(0.0, param_end, 4000)
    dense = spline(dense_param)
    arc = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=-1))]
    return spline(np.interp(arc_positions, arc, dense_param)), arc[-1]


def handheld_path(
    rng: np.random.Generator,
    room_min: np.ndarray,
    room_max: np.ndarray,
    num_frames: int,
    *,
    step_m: float = DEFAULT_STEP_M,
    turn_deg: float = DEFAULT_TURN_DEG,
    margin_m: float = 0.5,
) -> np.ndarray:
    """A smooth random walk through waypoints, looking around along smoothly changing directions, with shake."""
    low, high = _inner_box(room_min, room_max, margin_m)
    total_m = step_m * max(num_frames - 1, 1)
    waypoints = [rng.uniform(low, high)]
    chord = 0.0
    while chord < total_m * 1.2 + 2.0 or len(waypoints) < 4:
        for _ in range(50):  # successive waypoints at least 0.8 m apart, so the spline does not dither
            candidate = rng.uniform(low, high)
            if np.linalg.norm(candidate - waypoints[-1]) > 0.8:
                break
        chord += np.linalg.norm(candidate - waypoints[-1])
        waypoints.append(candidate)
    waypoints = np.array(waypoints)
    knots = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(waypoints, axis=0), axis=-1))]
    spline = CubicSpline(knots, waypoints)
    eyes, _ = _resample_by_arc_length(spline, knots[-1], np.arange(num_frames) * step_m)
    eyes = np.clip(eyes, room_min + 0.3, room_max - 0.3)  # the spline may overshoot the inner box a little

    # viewing direction: yaw/pitch knots every few frames, a cubic spline between them
    knot_every = 8
    num_knots = num_frames // knot_every + 3
    yaw_steps = rng.normal(scale=np.radians(turn_deg) * knot_every, size=num_knots)
    yaw = rng.uniform(-np.pi, np.pi) + np.cumsum(yaw_steps)
    pitch = rng.uniform(np.radians(-25), np.radians(10), size=num_knots)
    frames = np.arange(num_frames) / knot_every
    knot_times = np.arange(num_knots, dtype=np.float64)
    yaw_f = CubicSpline(knot_times, yaw)(frames)
    pitch_f = np.clip(CubicSpline(knot_times, pitch)(frames), np.radians(-40), np.radians(30))
    shake = np.radians(0.3) * rng.normal(size=(num_frames, 3))  # hand shake: yaw, pitch, roll
    targets = eyes + _direction(yaw_f + shake[:, 0], pitch_f + shake[:, 1])
    return look_at(eyes, targets, roll_rad=shake[:, 2] + np.radians(rng.uniform(-3, 3)))


def orbit_path(
    rng: np.random.Generator,
    room_min: np.ndarray,
    room_max: np.ndarray,
    num_frames: int,
    *,
    step_m: float = DEFAULT_STEP_M,
    margin_m: float = 0.5,
) -> np.ndarray:
    """A circle around the room's centre at bobbing height, always looking at a point near the centre."""
    low, high = _inner_box(room_min, room_max, margin_m)
    centre = (room_min + room_max) / 2
    radius = max(0.5, min(high[:2] - centre[:2]) * rng.uniform(0.6, 1.0))
    angle = rng.uniform(0, 2 * np.pi) + np.arange(num_frames) * step_m / radius * rng.choice([-1.0, 1.0])
    height = np.clip(rng.uniform(1.2, 1.7) + 0.1 * np.sin(angle * 2), low[2], high[2])
    eyes = np.stack([centre[0] + radius * np.cos(angle), centre[1] + radius * np.sin(angle), height], axis=-1)
    target = np.array([centre[0], centre[1], room_min[2] + rng.uniform(0.4, 1.0)])
    return look_at(eyes, np.broadcast_to(target, eyes.shape))


def forward_path(
    rng: np.random.Generator,
    room_min: np.ndarray,
    room_max: np.ndarray,
    num_frames: int,
    *,
    step_m: float = DEFAULT_STEP_M,
    margin_m: float = 0.5,
) -> np.ndarray:
    """A walk along the room's longer horizontal axis with a gentle sway, looking ahead.

    The step shrinks when the room is too short for `num_frames` steps.
    """
    low, high = _inner_box(room_min, room_max, margin_m)
    axis = int(np.argmax(room_max[:2] - room_min[:2]))
    side = 1 - axis
    sign = rng.choice([-1.0, 1.0])
    length = high[axis] - low[axis]
    step = min(step_m, length / max(num_frames - 1, 1))
    travel = np.arange(num_frames) * step
    eyes = np.empty((num_frames, 3))
    eyes[:, axis] = low[axis] + travel if sign > 0 else high[axis] - travel
    sway_phase = rng.uniform(0, 2 * np.pi)
    mid_side = (low[side] + high[side]) / 2
    sway = min(0.3, (high[side] - low[side]) / 2)
    eyes[:, side] = mid_side + sway * np.sin(travel * 1.5 + sway_phase)
    eyes[:, 2] = np.clip(rng.uniform(1.3, 1.7) + 0.02 * np.sin(travel * 8), low[2], high[2])
    ahead = np.zeros((num_frames, 3))
    ahead[:, axis] = sign
    ahead[:, side] = 0.25 * np.sin(travel * 1.1 + rng.uniform(0, 2 * np.pi))
    ahead[:, 2] = rng.uniform(-0.25, 0.0)
    return look_at(eyes, eyes + ahead)


def loop_path(
    rng: np.random.Generator,
    room_min: np.ndarray,
    room_max: np.ndarray,
    num_frames: int,
    *,
    margin_m: float = 0.5,
) -> np.ndarray:
    """A closed smooth loop around the room's centre, walked once: the frame after the last is the first.

    The step is the loop's length over `num_frames`. The camera looks into the loop, 60-80 degrees off its
    direction of travel, so the start is seen again at the end.
    """
    low, high = _inner_box(room_min, room_max, margin_m)
    centre = (low + high) / 2
    half = (high - low) / 2
    num_waypoints = 6
    angles = (np.arange(num_waypoints) + rng.uniform(-0.3, 0.3, num_waypoints)) * 2 * np.pi / num_waypoints
    radii = rng.uniform(0.55, 1.0, num_waypoints)
    waypoints = np.stack(
        [
            centre[0] + half[0] * radii * np.cos(angles),
            centre[1] + half[1] * radii * np.sin(angles),
            rng.uniform(low[2], high[2], num_waypoints),
        ],
        axis=-1,
    )
    waypoints = np.vstack([waypoints, waypoints[:1]])
    knots = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(waypoints, axis=0), axis=-1))]
    spline = CubicSpline(knots, waypoints, bc_type="periodic")
    _, length = _resample_by_arc_length(spline, knots[-1], np.zeros(1))
    eyes, _ = _resample_by_arc_length(spline, knots[-1], np.arange(num_frames) * length / num_frames)
    eyes = np.clip(eyes, room_min + 0.3, room_max - 0.3)
    travel = np.roll(eyes, -1, axis=0) - np.roll(eyes, 1, axis=0)  # periodic central difference
    heading = np.arctan2(travel[:, 1], travel[:, 0])
    inward = np.radians(rng.uniform(60, 80))  # counter-clockwise loop: the centre is to the left
    pitch = np.radians(-10.0) + np.radians(5.0) * np.sin(heading)
    return look_at(eyes, eyes + _direction(heading + inward, pitch))


def camera_path(
    kind: PathKind,
    rng: np.random.Generator,
    room_min: np.ndarray,
    room_max: np.ndarray,
    num_frames: int,
    *,
    step_m: float | None = None,
    turn_deg: float | None = None,
) -> np.ndarray:
    """Dispatch to the path of `kind`; `step_m`/`turn_deg` None take each path's default."""
    step = DEFAULT_STEP_M if step_m is None else step_m
    if kind == "handheld":
        turn = DEFAULT_TURN_DEG if turn_deg is None else turn_deg
        return handheld_path(rng, room_min, room_max, num_frames, step_m=step, turn_deg=turn)
    if kind == "orbit":
        return orbit_path(rng, room_min, room_max, num_frames, step_m=step)
    if kind == "forward":
        return forward_path(rng, room_min, room_max, num_frames, step_m=step)
    if kind == "loop":
        return loop_path(rng, room_min, room_max, num_frames)
    raise InputError(f"camera path kind {kind!r}: unknown; expected one of {', '.join(PATH_KINDS)}")
