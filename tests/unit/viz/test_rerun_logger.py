"""MapLogger: the .rrd is written and read back with the expected entities; points once, transforms on change."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from rerun.chunk import RrdReader

from spark3r_stream.errors import ConfigError
from spark3r_stream.geometry import se3_matrix
from spark3r_stream.stream.global_map import GlobalMap, GlobalMapConfig
from spark3r_stream.viz.rerun_logger import EntityPaths, MapLogger, RerunConfig

HEIGHT, WIDTH = 6, 8
K = np.array([[10.0, 0, 4], [0, 10.0, 3], [0, 0, 1]])


def _window(ids, dense, shift=0.0):
    return dict(
        keyframe_ids=tuple(ids),
        window_from_cam=np.stack([se3_matrix(np.eye(3), [0.3 * k + shift * (k > 1), 0.1 * k * k, 0]) for k in ids]),
        intrinsics=np.stack([K] * len(ids)),
        dense_keyframe_ids=tuple(dense),
        depth=np.full((len(dense), HEIGHT, WIDTH), 2.0, np.float32),
        confidence=np.ones((len(dense), HEIGHT, WIDTH), np.float32),
    )


def _map() -> GlobalMap:
    global_map = GlobalMap(GlobalMapConfig(confidence_quantile=0.0))
    for k in range(4):
        global_map.add_keyframe(k, 5 * k, 0.5 * k, np.full((HEIGHT, WIDTH, 3), 50 * k, np.uint8))
    return global_map


def _rows_per_entity(path) -> tuple[Counter, Counter, set]:
    """(rows with a transform per entity, rows with positions per entity, timelines) of a recording file."""
    transforms, positions, timelines = Counter(), Counter(), set()
    for chunk in RrdReader(path).stream():
        names = chunk.to_record_batch().schema.names
        if "Transform3D:translation" in names:
            transforms[chunk.entity_path] += chunk.num_rows
        if "Points3D:positions" in names:
            positions[chunk.entity_path] += chunk.num_rows
        timelines.update(chunk.timeline_names)
    return transforms, positions, timelines


def _entities(path) -> set[str]:
    """Entity paths in a recording, without the leading '/' the reader adds (as the logger writes them)."""
    return {chunk.entity_path.lstrip("/") for chunk in RrdReader(path).stream()}


def test_rrd_saved_and_read_back(tmp_path):
    rrd = tmp_path / "recording.rrd"
    logger = MapLogger.open(RerunConfig(rrd_path=rrd, fused_map_every=100, recording_id="run-test"))
    global_map = _map()
    global_map.integrate_window(0, **_window([0, 1, 2], dense=[0, 1, 2]))
    first = logger.sync(global_map, frame_seq=10, capture_time=1.0)
    assert first == {"transforms": 3, "points": 3, "cameras": 3, "fused_maps": 0, "depths": 1}
    global_map.integrate_window(1, **_window([0, 1, 2, 3], dense=[3], shift=0.05))  # re-solves 0-2, adds 3
    second = logger.sync(global_map, frame_seq=15, capture_time=1.5)
    assert second == {"transforms": 4, "points": 1, "cameras": 1, "fused_maps": 0, "depths": 1}
    assert logger.sync(global_map, frame_seq=16, capture_time=1.6)["transforms"] == 0  # nothing changed
    logger.finish(global_map, frame_seq=16, capture_time=1.6)

    assert rrd.stat().st_size > 0
    entities = _entities(rrd)
    for k in range(4):
        assert {EntityPaths.keyframe(k), EntityPaths.keyframe_points(k), EntityPaths.keyframe_camera(k)} <= entities
    assert {EntityPaths.WORLD, EntityPaths.TRAJECTORY, EntityPaths.FUSED_MAP, EntityPaths.LATEST_DEPTH} <= entities
    transforms, positions, timelines = _rows_per_entity(rrd)
    assert transforms["/world/keyframes/000000"] == 2  # logged, then moved once
    assert transforms["/world/keyframes/000003"] == 1
    assert positions["/world/keyframes/000000/points"] == 1  # points logged once despite the pose change
    assert positions["/world/map"] == 1  # the fused map at finish
    assert {"frame_seq", "capture_time"} <= timelines
    assert [entry.recording_id for entry in RrdReader(rrd).recordings()] == ["run-test"]
    assert len(RrdReader(rrd).blueprints()) == 1  # the default layout travels with the file


def test_a_pose_graph_correction_moves_transforms_not_points(tmp_path):
    rrd = tmp_path / "recording.rrd"
    logger = MapLogger.open(RerunConfig(rrd_path=rrd, fused_map_every=100))
    global_map = _map()
    global_map.integrate_window(0, **_window([0, 1, 2], dense=[0, 1, 2]))
    logger.sync(global_map, frame_seq=10, capture_time=1.0)
    moved = se3_matrix(np.eye(3), [1.0, 0.0, 0.0])
    global_map.set_poses({2: moved}, points_scales={2: 1.5})  # what a loop closure does to keyframe 2
    assert logger.sync(global_map, frame_seq=11, capture_time=1.1) == {
        "transforms": 1, "points": 0, "cameras": 0, "fused_maps": 0, "depths": 0,
    }  # fmt: skip
    points, _ = global_map.keyframe_points(2)
    world, _ = global_map.world_points()
    np.testing.assert_allclose(world[-len(points) :], 1.5 * points + [1.0, 0.0, 0.0], atol=1e-6)
    logger.finish(global_map, frame_seq=11, capture_time=1.1)
    transforms, positions, _ = _rows_per_entity(rrd)
    assert transforms["/world/keyframes/000002"] == 2 and positions["/world/keyframes/000002/points"] == 1


def test_memory_recording_holds_the_data(tmp_path):
    logger = MapLogger.open(RerunConfig(memory=True, fused_map_every=1, jpeg_quality=None))
    global_map = _map()
    global_map.integrate_window(0, **_window([0, 1], dense=[0, 1]))
    assert logger.sync(global_map, frame_seq=0, capture_time=0.0)["fused_maps"] == 1
    logger.close()
    path = tmp_path / "memory.rrd"
    path.write_bytes(logger.memory.drain_as_bytes())
    assert {EntityPaths.keyframe_points(1), EntityPaths.FUSED_MAP} <= _entities(path)


def test_disabled_logger_is_a_no_op():
    logger = MapLogger.open(RerunConfig())
    global_map = _map()
    global_map.integrate_window(0, **_window([0, 1], dense=[0]))
    assert logger.sync(global_map, frame_seq=0, capture_time=0.0)["transforms"] == 2
    logger.close()
    assert logger.memory is None


def test_config_errors():
    with pytest.raises(ConfigError, match=r"^memory: expected false when spawn, connect_url or rrd_path is set"):
        RerunConfig(memory=True, rrd_path="x.rrd")
    with pytest.raises(
        ConfigError, match=r"^connect_url: expected a rerun://, rerun\+http:// or rerun\+https:// URL, got 'tcp://x'$"
    ):
        RerunConfig(connect_url="tcp://x")
    with pytest.raises(ConfigError, match=r"rrd_path .*: folder .* does not exist"):
        MapLogger.open(RerunConfig(rrd_path="/nonexistent/dir/r.rrd"))
