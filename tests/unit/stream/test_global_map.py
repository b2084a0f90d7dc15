"""GlobalMap: voxel fusion, two aligned windows, confidence filter and caps, TUM/PLY exports read back."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from spark3r_stream.errors import InputError
from spark3r_stream.eval.trajectory import read_tum
from spark3r_stream.geometry import invert_sim3, se3_matrix, sim3_matrix, sim3_scale
from spark3r_stream.stream.global_map import GlobalMap, GlobalMapConfig
from spark3r_stream.stream.point_cloud import read_ply, voxel_downsample, write_ply

EXACT = 1e-6  # float32 depth and points, float64 poses
HEIGHT, WIDTH = 12, 16
PLANE_Z = 3.0
K = np.array([[20.0, 0, WIDTH / 2], [0, 20.0, HEIGHT / 2], [0, 0, 1]])


def _world_from_cam(k: int) -> np.ndarray:
    return se3_matrix(np.eye(3), [0.25 * k, 0.05 * k, 0.1 * k])


def _depth(k: int) -> np.ndarray:
    return np.full((HEIGHT, WIDTH), PLANE_Z - _world_from_cam(k)[2, 3], np.float32)  # fronto-parallel wall


def _rigid(transform: np.ndarray) -> np.ndarray:
    out = transform.copy()
    out[:3, :3] /= sim3_scale(transform)
    return out


def _window(ids, world_from_window: np.ndarray, *, dense=None):
    """A window result seen in its own frame: poses, intrinsics, depth scaled into window units."""
    window_from_world = invert_sim3(world_from_window)
    scale = sim3_scale(window_from_world)
    dense = list(ids) if dense is None else dense
    confidence = np.tile(np.linspace(1, 2, HEIGHT * WIDTH, dtype=np.float32).reshape(HEIGHT, WIDTH), (len(dense), 1, 1))
    return dict(
        keyframe_ids=tuple(ids),
        window_from_cam=np.stack([_rigid(window_from_world @ _world_from_cam(k)) for k in ids]),
        intrinsics=np.stack([K] * len(ids)),
        dense_keyframe_ids=tuple(dense),
        depth=np.stack([_depth(k) * scale for k in dense]),
        confidence=confidence,
    )


def _map_with_two_windows(config: GlobalMapConfig | None = None) -> GlobalMap:
    global_map = GlobalMap(config or GlobalMapConfig(confidence_quantile=0.0))
    for k in range(6):
        global_map.add_keyframe(
            k, frame_seq=10 * k, t_capture=float(k), image=np.full((HEIGHT, WIDTH, 3), 40 * k, np.uint8)
        )
    global_map.integrate_window(0, **_window(range(4), np.eye(4)))
    world_from_window = sim3_matrix(2.0, Rotation.from_euler("z", 30, degrees=True).as_matrix(), [0.5, 0.1, 0.2])
    global_map.integrate_window(1, **_window(range(2, 6), world_from_window @ _world_from_cam(2)))
    return global_map


def test_voxel_downsample_counts_centroids_colours():
    points = np.array([[0.01, 0.01, 0.01], [0.03, 0.05, 0.07], [0.05, 0.03, 0.02], [0.15, 0.0, 0.0]])
    colors = np.array([[0, 0, 0], [30, 60, 90], [60, 0, 30], [200, 200, 200]], np.uint8)
    fused = voxel_downsample(points, colors, voxel_size=0.1)
    order = np.argsort(fused.counts)[::-1]
    assert fused.counts[order].tolist() == [3, 1]
    np.testing.assert_allclose(fused.points[order[0]], points[:3].mean(0), atol=EXACT)
    np.testing.assert_allclose(fused.points[order[1]], points[3], atol=EXACT)
    assert fused.colors[order[0]].tolist() == [30, 20, 40]
    empty = voxel_downsample(np.zeros((0, 3)), np.zeros((0, 3), np.uint8), 0.1)
    assert len(empty.points) == 0


def test_second_window_is_aligned_into_the_first_windows_frame():
    global_map = _map_with_two_windows()
    assert global_map.keyframe_ids == list(range(6))
    for k in range(6):
        np.testing.assert_allclose(global_map.world_from_cam(k), _world_from_cam(k), atol=EXACT)
    points, colors = global_map.world_points()
    assert len(points) == 6 * HEIGHT * WIDTH
    np.testing.assert_allclose(points[:, 2], PLANE_Z, atol=EXACT)  # every keyframe's points land on the wall
    assert set(colors[:, 0].tolist()) == {0, 40, 80, 120, 160, 200}
    assert global_map.latest_depth[0] == 5
    np.testing.assert_allclose(global_map.latest_depth[1], _depth(5), atol=EXACT)


def test_integration_reports_new_moved_and_revisions():
    global_map = GlobalMap(GlobalMapConfig(confidence_quantile=0.0))
    first = global_map.integrate_window(0, **_window(range(3), np.eye(4)))
    assert first.alignment.method == "identity" and first.new_keyframe_ids == (0, 1, 2)
    second = global_map.integrate_window(1, **_window(range(4), np.eye(4), dense=[3]))
    assert second.alignment.method == "umeyama"
    assert second.new_keyframe_ids == (3,) and second.moved_keyframe_ids == (0, 1, 2)
    assert second.points_keyframe_ids == (3,)
    assert global_map.revisions(0) == (2, 1)  # pose re-logged, points untouched
    assert global_map.revisions(3) == (1, 1)


def test_confidence_filter_and_point_caps():
    quantile_map = GlobalMap(GlobalMapConfig(confidence_quantile=0.25))
    quantile_map.integrate_window(0, **_window([0], np.eye(4)))
    assert quantile_map.num_points == HEIGHT * WIDTH * 3 // 4  # distinct confidences: exactly the top 75 %
    capped = GlobalMap(GlobalMapConfig(confidence_quantile=0.0, max_points_per_keyframe=50))
    capped.integrate_window(0, **_window(range(3), np.eye(4)))
    assert [len(capped.keyframe_points(k)[0]) for k in range(3)] == [50, 50, 50]
    total = GlobalMap(GlobalMapConfig(confidence_quantile=0.0, max_total_points=300, thin_to=1.0))
    total.integrate_window(0, **_window(range(4), np.eye(4)))
    assert total.num_points == 4 * 75
    assert total.num_thinnings == 1


def test_total_cap_leaves_headroom_so_thinning_is_rare():
    """Thinned to `thin_to` of the cap: the next keyframes fit without thinning (and rewriting) every keyframe."""
    per_keyframe = HEIGHT * WIDTH
    cap = 4 * per_keyframe
    gmap = GlobalMap(GlobalMapConfig(confidence_quantile=0.0, max_total_points=cap, thin_to=0.5))
    for k in range(12):
        gmap.integrate_window(k, **_window([k], np.eye(4)))
        assert gmap.num_points <= cap
    # over the cap at keyframe 4 (thinned to half: 2 keyframes' worth), then at 7 and 10: 3 thinnings in 12 windows
    assert gmap.num_thinnings == 3


def test_exports_read_back(tmp_path):
    global_map = _map_with_two_windows(GlobalMapConfig(confidence_quantile=0.0, voxel_size=0.05))
    for seq in range(0, 51):
        global_map.record_frame(seq, seq / 10)  # frames between keyframes (keyframe k is frame 10 k at t = k)
    paths = global_map.export(tmp_path)
    assert sorted(path.name for path in paths.values()) == ["map.ply", "trajectory.tum", "trajectory_keyframes.tum"]

    times, poses = read_tum(paths["trajectory_keyframes"])
    np.testing.assert_allclose(times, np.arange(6.0))
    np.testing.assert_allclose(poses, np.stack([_world_from_cam(k) for k in range(6)]), atol=1e-6)

    frame_times, frame_poses = read_tum(paths["trajectory"])
    assert len(frame_times) == 51
    np.testing.assert_allclose(
        frame_poses[15, :3, 3], (_world_from_cam(1)[:3, 3] + _world_from_cam(2)[:3, 3]) / 2, atol=1e-6
    )

    points, colors = read_ply(paths["map"])
    fused = global_map.fused()
    np.testing.assert_array_equal(points, fused.points)
    np.testing.assert_array_equal(colors, fused.colors)
    assert len(points) < global_map.num_points  # the overlapping keyframes' points were fused


def test_ply_ascii_and_errors(tmp_path):
    ascii_path = tmp_path / "a.ply"
    ascii_path.write_text(
        "ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n1 2 3 4 5 6\n"
    )
    points, colors = read_ply(ascii_path)
    assert points.tolist() == [[1, 2, 3]] and colors.tolist() == [[4, 5, 6]]
    with pytest.raises(InputError, match="colors .* do not match points"):
        write_ply(tmp_path / "b.ply", np.zeros((2, 3)), np.zeros((3, 3)))
    (tmp_path / "c.ply").write_bytes(b"not a ply")
    with pytest.raises(InputError, match="not a PLY file"):
        read_ply(tmp_path / "c.ply")


def test_bad_window_results_are_rejected():
    global_map = GlobalMap()
    window = _window(range(2), np.eye(4))
    with pytest.raises(InputError, match=r"window result 7 window_from_cam: expected finite \[3, 4, 4\]"):
        global_map.integrate_window(7, **{**window, "keyframe_ids": (0, 1, 2)})
    with pytest.raises(InputError, match=r"dense_keyframe_ids: \[9\] not in the run"):
        global_map.integrate_window(7, **{**window, "dense_keyframe_ids": (0, 9)})
    with pytest.raises(InputError, match=r"confidence: expected the depth's shape"):
        global_map.integrate_window(7, **{**window, "confidence": np.ones((2, 3, 3))})
    assert global_map.keyframe_ids == []  # nothing half-applied


def test_ground_truth_of_recorded_frames_in_frame_order_with_their_times():
    global_map = GlobalMap()
    global_map.record_frame(2, 0.2, _world_from_cam(2))
    global_map.record_frame(0, 0.0, _world_from_cam(0))
    global_map.record_frame(1, 0.1)  # a frame without ground truth
    times, poses = global_map.ground_truth()
    np.testing.assert_array_equal(times, [0.0, 0.2])
    np.testing.assert_array_equal(poses, np.stack([_world_from_cam(0), _world_from_cam(2)]))
    with pytest.raises(InputError, match=r"frame 3 ground truth: expected a \[4, 4\] pose, got shape \(3, 4\)"):
        global_map.record_frame(3, 0.3, np.eye(4)[:3])
    assert GlobalMap().ground_truth()[1].shape == (0, 4, 4)


def test_fusion_back_end_keeps_tracks_only_for_keyframes_a_later_window_can_hold():
    from spark3r_stream.stream.pipeline import FusionStep
    from spark3r_stream.transport.messages import Keyframe, WindowResult

    fusion = FusionStep(GlobalMap(GlobalMapConfig(confidence_quantile=0.0)))
    for k in range(6):
        image = np.full((HEIGHT, WIDTH, 3), 40 * k, np.uint8)
        tracks = {"track_ids": np.arange(3, dtype=np.int64), "track_uv": np.zeros((3, 2), np.float32)}
        fusion.on_keyframe(
            Keyframe(keyframe_id=k, frame_seq=k, t_capture=float(k), image=image, source_hw=(12, 16), **tracks)
        )
    assert sorted(fusion.backend.tracks) == list(range(6))
    for window_id, ids in ((0, range(4)), (1, range(2, 6))):
        window = _window(ids, np.eye(4))
        fusion.on_result(
            WindowResult(
                window_id=window_id, keyframe_ids=window["keyframe_ids"], world_from_cam=window["window_from_cam"],
                intrinsics=window["intrinsics"], dense_keyframe_ids=window["dense_keyframe_ids"],
                depth=window["depth"], depth_conf=window["confidence"], timings={}, plan={}, model="test",
            )
        )  # fmt: skip
    assert sorted(fusion.backend.tracks) == [2, 3, 4, 5]  # windows never reach back before keyframe 2 again
    assert (
        len(fusion.backend.refinements) == 2 and not fusion.backend.refinements[0]["applied"]
    )  # 3 tracks: too few to refine
