"""Tests for spark3r_stream.synth.render: determinism, ground-truth consistency, texture contrast."""

import numpy as np
import pytest

from spark3r_stream.errors import InputError
from spark3r_stream.geometry import apply_transform, unproject_depth
from spark3r_stream.synth import PATH_KINDS, pixel_correspondences, render_sequence
from spark3r_stream.synth.render import RayCaster, intrinsics_from_fov
from spark3r_stream.synth.scenes import Scene, sample_material

GEOMETRY_TOL_M = 1e-6  # ray-cast depth is exact up to float32 storage of ~5 m depths
MIN_LUMA_STD = 25.0  # 8-bit luminance spread of a view of high-contrast textures (measured 32-70)


def _scene(**objects) -> Scene:
    """A 4 x 6 x 3 m room at the origin with the given objects and plain lighting."""
    rng = np.random.default_rng(0)
    defaults = {
        "box_min": np.zeros((0, 3)),
        "box_max": np.zeros((0, 3)),
        "box_material": np.zeros(0, np.int64),
        "sphere_centre": np.zeros((0, 3)),
        "sphere_radius": np.zeros(0),
        "sphere_material": np.zeros(0, np.int64),
        "cylinder_centre_xy": np.zeros((0, 2)),
        "cylinder_radius": np.zeros(0),
        "cylinder_top": np.zeros(0),
        "cylinder_material": np.zeros(0, np.int64),
    }
    defaults.update(objects)
    return Scene(
        room_min=np.zeros(3),
        room_max=np.array([4.0, 6.0, 3.0]),
        materials=tuple(sample_material(rng) for _ in range(8)),
        room_material=np.arange(6),
        light_direction=np.array([0.0, 0.0, -1.0]),
        ambient=0.5,
        point_light=np.array([2.0, 3.0, 2.9]),
        point_light_strength=0.3,
        **defaults,
    )


def _camera_looking_along_y(eye: np.ndarray) -> np.ndarray:
    """world_from_cam looking along world +y (OpenCV: x = world x, y = world -z, z = world +y)."""
    world_from_cam = np.eye(4)
    world_from_cam[:3, :3] = np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])
    world_from_cam[:3, 3] = eye
    return world_from_cam


def test_render_is_deterministic_per_seed():
    first = render_sequence(7, 3, height=24, width=32)
    second = render_sequence(7, 3, height=24, width=32)
    other = render_sequence(8, 3, height=24, width=32)
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.depth, second.depth)
    np.testing.assert_array_equal(first.world_from_cam, second.world_from_cam)
    assert not np.array_equal(first.images, other.images)
    # the room does not depend on the frame count or the path
    longer = render_sequence(7, 5, height=24, width=32, path="orbit")
    np.testing.assert_array_equal(first.scene.room_max, longer.scene.room_max)


@pytest.mark.parametrize("path", PATH_KINDS)
def test_render_outputs_shapes_and_ground_truth_conventions(path):
    seq = render_sequence(3, 4, height=20, width=30, path=path)
    assert seq.images.shape == (4, 20, 30, 3) and seq.images.dtype == np.uint8
    assert seq.depth.shape == (4, 20, 30) and seq.depth.dtype == np.float32
    assert seq.world_from_cam.shape == (4, 4, 4) and seq.intrinsics.shape == (3, 3)
    np.testing.assert_allclose(seq.timestamps_s, np.arange(4) / 30.0)
    assert np.isfinite(seq.depth).all() and seq.depth.min() > 0.2
    rotations = seq.world_from_cam[:, :3, :3]
    np.testing.assert_allclose(
        rotations @ np.swapaxes(rotations, 1, 2), np.broadcast_to(np.eye(3), (4, 3, 3)), atol=1e-9
    )
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-9)
    centres = seq.world_from_cam[:, :3, 3]
    assert (centres >= seq.scene.room_min + 0.3).all() and (centres <= seq.scene.room_max - 0.3).all()
    assert (np.linalg.norm(np.diff(centres, axis=0), axis=1) > 0.01).all()  # the camera moves every frame
    assert seq.intrinsics[0, 2] == 15.0 and seq.intrinsics[1, 2] == 10.0  # principal point (W/2, H/2)


def test_textures_are_high_contrast():
    for seed in range(3):
        seq = render_sequence(seed, 2, height=56, width=56)
        luma = seq.images.astype(np.float64).mean(axis=-1)
        assert luma.std(axis=(1, 2)).min() > MIN_LUMA_STD


def test_room_depth_lands_on_walls():
    scene = _scene()
    intrinsics = intrinsics_from_fov(70.0, 24, 32)
    world_from_cam = _camera_looking_along_y(np.array([2.0, 1.0, 1.5]))
    _, depth = RayCaster(scene, intrinsics, 24, 32).render(world_from_cam)
    points = apply_transform(world_from_cam, unproject_depth(depth, intrinsics))
    to_faces = np.abs(np.concatenate([points - scene.room_min, scene.room_max - points], axis=-1)).min(axis=-1)
    assert to_faces.max() < GEOMETRY_TOL_M * 10
    # the central pixel sees the far wall y = 6 straight ahead: 5 m of z-depth
    assert depth[12, 16] == pytest.approx(5.0, abs=GEOMETRY_TOL_M * 10)


def test_objects_occlude_the_wall_at_the_right_depth():
    intrinsics = intrinsics_from_fov(70.0, 24, 32)
    world_from_cam = _camera_looking_along_y(np.array([2.0, 1.0, 1.5]))
    # principal-point ray: x = 2, z = 1.5, along +y
    box = _scene(box_min=np.array([[1.5, 3.0, 1.0]]), box_max=np.array([[2.5, 3.5, 2.0]]), box_material=np.array([6]))
    sphere = _scene(
        sphere_centre=np.array([[2.0, 4.0, 1.5]]), sphere_radius=np.array([0.5]), sphere_material=np.array([6])
    )
    cylinder = _scene(
        cylinder_centre_xy=np.array([[2.0, 2.5]]),
        cylinder_radius=np.array([0.25]),
        cylinder_top=np.array([2.0]),
        cylinder_material=np.array([6]),
    )
    for scene, expected in ((box, 2.0), (sphere, 2.5), (cylinder, 1.25)):
        _, depth = RayCaster(scene, intrinsics, 24, 32).render(world_from_cam)
        assert depth[12, 16] == pytest.approx(expected, abs=GEOMETRY_TOL_M * 10)
    # looking down onto the cylinder's top cap from above it
    down = np.eye(4)
    down[:3, :3] = np.array([[1.0, 0, 0], [0, -1, 0], [0, 0, -1]])  # camera z = world -z
    down[:3, 3] = [2.0, 2.5, 2.8]
    _, depth = RayCaster(cylinder, intrinsics, 24, 32).render(down)
    assert depth[12, 16] == pytest.approx(0.8, abs=GEOMETRY_TOL_M * 10)


def test_reprojection_of_frame_0_agrees_with_frame_2():
    seq = render_sequence(1, 3, path="handheld")
    uv, is_visible = pixel_correspondences(seq, 0, 2)
    assert is_visible.mean() > 0.6
    u = np.round(uv[..., 0][is_visible]).astype(np.int64)
    v = np.round(uv[..., 1][is_visible]).astype(np.int64)
    colour_0 = seq.images[0][is_visible].astype(np.float64)
    colour_2 = seq.images[2][v, u].astype(np.float64)
    difference = np.abs(colour_0 - colour_2).mean(axis=-1)
    shuffled = np.abs(colour_0 - colour_2[np.random.default_rng(0).permutation(len(colour_2))]).mean(axis=-1)
    # nearest-pixel sampling misses texture edges by up to half a pixel; most pixels still agree exactly
    assert np.median(difference) <= 2.0
    assert np.mean(difference < 10) > 0.75
    assert np.median(shuffled) > 20.0


def test_pixel_correspondences_to_itself_are_the_pixel_grid():
    seq = render_sequence(2, 2, height=16, width=20)
    uv, is_visible = pixel_correspondences(seq, 1, 1)
    assert is_visible.all()
    np.testing.assert_allclose(uv[..., 0], np.broadcast_to(np.arange(20.0), (16, 20)), atol=1e-6)
    np.testing.assert_allclose(uv[..., 1], np.broadcast_to(np.arange(16.0)[:, None], (16, 20)), atol=1e-6)
    with pytest.raises(InputError, match=r"dst_frame: 2 outside \[0, 2\)"):
        pixel_correspondences(seq, 0, 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_frames": 0}, "num_frames: expected >= 1, got 0"),
        ({"num_frames": 2, "path": "spiral"}, "path 'spiral': unknown; expected one of handheld, orbit, forward, loop"),
        ({"num_frames": 2, "height": 1}, "expected height, width >= 2"),
    ],
)
def test_render_rejects_bad_arguments(kwargs, message):
    with pytest.raises(InputError, match=message):
        render_sequence(0, **kwargs)
