"""Fusion's persisted state and the keyframes node's replay, in one process (issue 15, part C): what a respawned
fusion reloads equals what the killed one had saved, a save interrupted before its index leaves the previous state
readable, and a respawned reconstruction node gets the keyframes and requests of the current and previous window."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spark3r_stream.geometry import se3_matrix
from spark3r_stream.stream.global_map import GlobalMap, GlobalMapConfig
from spark3r_stream.stream.map_store import MapStore
from spark3r_stream.stream.pipeline import FusionStep
from spark3r_stream.stream.pose_graph import Sim3, relative_sim3
from spark3r_stream.stream.recovery import KeyframeReplay
from spark3r_stream.transport import FrameRecord, Keyframe, WindowRequest, WindowResult

pytestmark = pytest.mark.fault
HEIGHT, WIDTH = 6, 8
K = np.array([[8.0, 0, 4], [0, 8.0, 3], [0, 0, 1]])


def keyframe(k: int) -> Keyframe:
    return Keyframe(
        keyframe_id=k,
        frame_seq=3 * k,
        t_capture=0.1 * k,
        image=np.full((HEIGHT, WIDTH, 3), 20 * k % 256, np.uint8),
        track_ids=np.arange(3, dtype=np.int64) + k,
        track_uv=np.full((3, 2), 2.0 * k, np.float32),
        source_hw=(HEIGHT, WIDTH),
    )


def result(window_id: int, ids: list[int]) -> WindowResult:
    return WindowResult(
        window_id=window_id,
        keyframe_ids=tuple(ids),
        world_from_cam=np.stack([se3_matrix(np.eye(3), [0.3 * k, 0.05 * k * k, 0]) for k in ids]),
        intrinsics=np.stack([K] * len(ids)).astype(np.float32),
        dense_keyframe_ids=tuple(ids),
        depth=np.random.default_rng(window_id).uniform(1, 3, (len(ids), HEIGHT, WIDTH)).astype(np.float32),
        depth_conf=np.ones((len(ids), HEIGHT, WIDTH), np.float32),
        timings={"total_ms": 1.0},
        plan={"r_q": 1},
        model="test",
    )


def fusion_step() -> FusionStep:
    return FusionStep(GlobalMap(GlobalMapConfig(confidence_quantile=0.0)))


def feed(step: FusionStep, store: MapStore, keyframes: range, window: int) -> None:
    for k in keyframes:
        for seq in range(3 * k, 3 * k + 3):
            step.on_frame_record(FrameRecord(frame_seq=seq, t_capture=0.1 * seq / 3, keyframe_id=None,
                                             gt_world_from_cam=np.eye(4)))  # fmt: skip
        kf = keyframe(k)
        step.on_keyframe(kf)
        store.add_keyframe(kf)
    step.on_result(result(window, list(range(0, keyframes.stop))))


def test_reloaded_state_equals_the_saved_one(tmp_path):
    step, store = fusion_step(), MapStore.for_run(tmp_path)
    store.start_fresh()
    feed(step, store, range(0, 4), 0)
    store.save(step, {"results": {"ended_by": [], "upstreams": {}}})
    feed(step, store, range(4, 6), 1)  # moves 0-3, adds 4-5: new blocks for all, the old ones deleted after
    inputs = {"results": {"ended_by": ["reconstruction"], "upstreams": {}}}
    store.save(step, inputs)

    again = fusion_step()
    assert MapStore.for_run(tmp_path).load(again) == inputs
    assert again.gmap.keyframe_ids == step.gmap.keyframe_ids == list(range(6))
    for k in step.gmap.keyframe_ids:
        np.testing.assert_array_equal(again.gmap.world_from_cam(k), step.gmap.world_from_cam(k))
        for got, want in zip(again.gmap.keyframe_points(k), step.gmap.keyframe_points(k), strict=True):
            np.testing.assert_array_equal(got, want)
        assert again.gmap.revisions(k) == step.gmap.revisions(k)
        np.testing.assert_array_equal(again.gmap.image(k), step.gmap.image(k))
    seqs, times, poses = again.gmap.frame_trajectory()
    want_seqs, want_times, want_poses = step.gmap.frame_trajectory()
    np.testing.assert_array_equal(seqs, want_seqs)
    np.testing.assert_allclose(poses, want_poses)
    assert len(again.gmap.ground_truth()[0]) == 18
    assert (again.num_frames, again.newest, len(again.windows)) == (18, step.newest, 2)
    assert sorted(again.backend.tracks) == sorted(step.backend.tracks) == list(range(6))
    files = {p.name for p in store.path.iterdir()}
    assert len([f for f in files if f.startswith("kf_")]) == 6  # replaced blocks deleted
    assert len([f for f in files if f.startswith("frames_")]) == 2  # append-only chunks


def test_a_save_killed_before_its_index_leaves_the_previous_state(tmp_path, monkeypatch):
    step, store = fusion_step(), MapStore.for_run(tmp_path)
    store.start_fresh()
    feed(step, store, range(0, 3), 0)
    store.save(step, {})
    feed(step, store, range(3, 5), 1)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies where the index would be renamed into place

    monkeypatch.setattr("pathlib.Path.replace", killed)
    with pytest.raises(KeyboardInterrupt):
        store.save(step, {"later": True})
    monkeypatch.undo()
    again = fusion_step()
    assert MapStore.for_run(tmp_path).load(again) == {}
    assert again.gmap.keyframe_ids == [0, 1, 2] and again.num_frames == 9


def test_no_state_means_none(tmp_path):
    assert MapStore.for_run(tmp_path).load(fusion_step()) is None


def test_keyframe_replay_holds_the_current_and_previous_window():
    replay = KeyframeReplay()
    for k in range(12):
        replay.observe([keyframe(k)])
        if k in (3, 7):  # window A: 0-3, then 0-7
            replay.observe(WindowRequest(window_id=k, keyframe_ids=tuple(range(0, k + 1))))
        if k == 9:  # window B starts with the last 4 of A
            replay.observe(WindowRequest(window_id=9, keyframe_ids=tuple(range(4, 10))))
    messages = replay.messages()
    kinds = [(type(m).__name__, getattr(m, "keyframe_id", getattr(m, "window_id", None))) for m in messages]
    assert kinds == (
        [("Keyframe", k) for k in range(8)]
        + [("WindowRequest", 7)]
        + [("Keyframe", k) for k in (8, 9)]
        + [("WindowRequest", 9)]
        + [("Keyframe", 10), ("Keyframe", 11)]  # not in a run yet
    )
    replay.observe(WindowRequest(window_id=12, keyframe_ids=tuple(range(8, 12))))  # window C: A is forgotten
    assert min(replay.keyframes) == 4


def textured_keyframe(k: int) -> Keyframe:
    """A keyframe whose image has ORB features (loop closure keeps them)."""
    image = np.random.default_rng(k).integers(0, 256, (HEIGHT * 8, WIDTH * 8, 3), dtype=np.uint8)
    return Keyframe(
        keyframe_id=k, frame_seq=3 * k, t_capture=0.1 * k, image=image, track_ids=np.arange(3, dtype=np.int64) + k,
        track_uv=np.full((3, 2), 2.0 * k, np.float32), source_hw=(HEIGHT, WIDTH),
    )  # fmt: skip


def test_the_back_end_pose_graph_and_loop_features_survive_a_respawn(tmp_path):
    step, store = fusion_step(), MapStore.for_run(tmp_path)
    store.start_fresh()
    for k in range(6):
        store.add_keyframe(kf := textured_keyframe(k))
        step.on_keyframe(kf)
    step.on_result(result(0, [0, 1, 2, 3]))
    step.on_result(result(1, [2, 3, 4, 5]))  # the next window: keyframes 0 and 1 can be in no window any more
    loop = relative_sim3(Sim3.from_pose(step.gmap.world_from_cam(0)), Sim3.from_pose(step.gmap.world_from_cam(5), 1.1))
    step.backend.pose_graph.add_loop(0, 5, loop)
    store.save(step, {})
    graph = step.backend.pose_graph
    assert len(graph.edges) == 6 and graph.loops == [(0, 5)]  # 5 window edges and the loop
    features = step.backend.loop_detector.features
    assert sorted(features) == list(range(6)) and min(len(f.keypoints) for f in features.values()) > 50

    again = fusion_step()
    assert MapStore.for_run(tmp_path).load(again) == {}
    restored = again.backend.pose_graph
    assert list(restored.edges) == list(graph.edges) and restored.loops == [(0, 5)]
    for pair, edge in graph.edges.items():
        got = restored.edges[pair]
        assert got.kind == edge.kind and got.measured.scale == edge.measured.scale
        np.testing.assert_array_equal(got.measured.rotation, edge.measured.rotation)
        np.testing.assert_array_equal(got.measured.translation, edge.measured.translation)
    detector = again.backend.loop_detector
    assert list(detector.features) == list(features)  # the same order: retrieval ranks the same way
    for k, want in features.items():
        got = detector.features[k]
        for name in ("thumbnail", "keypoints", "descriptors"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
        assert got.image_hw == want.image_hw and got.intrinsics is None
    assert [r["window_id"] for r in again.backend.refinements] == [r["window_id"] for r in step.backend.refinements]
    # images of keyframes no window can hold are not kept: their loop features are in the loop chunks
    files = {p.name for p in store.path.iterdir()}
    assert sorted(f for f in files if f.startswith("msg_")) == [f"msg_{k:06d}.npz" for k in range(2, 6)]
    assert sorted(again.backend.tracks) == [2, 3, 4, 5] and again.window_start == 2
    assert len([f for f in files if f.startswith(("graph_", "loop_"))]) == 2

    # the reloaded back end goes on saving: a new keyframe's features are a new chunk, the graph a new file
    store2 = MapStore.for_run(tmp_path)
    third = fusion_step()
    store2.load(third)
    store2.add_keyframe(kf := textured_keyframe(6))
    third.on_keyframe(kf)
    third.on_result(result(2, [2, 3, 4, 5, 6]))
    store2.save(third, {})
    fourth = fusion_step()
    MapStore.for_run(tmp_path).load(fourth)
    assert sorted(fourth.backend.loop_detector.features) == list(range(7))
    assert len(fourth.backend.pose_graph.edges) == 7 and fourth.backend.pose_graph.loops == [(0, 5)]
    files = {p.name for p in store.path.iterdir()}
    assert len([f for f in files if f.startswith("graph_")]) == 1  # the replaced graph file was deleted
    assert len([f for f in files if f.startswith("loop_")]) == 2  # append-only


def test_a_version_1_state_reloads_without_the_back_end(tmp_path):
    step, store = fusion_step(), MapStore.for_run(tmp_path)
    store.start_fresh()
    feed(step, store, range(0, 4), 0)
    store.save(step, {"x": 1})
    index_path = store.path / "index.json"
    index = json.loads(index_path.read_text())
    for key in ("pose_graph", "loop_chunks", "backend"):
        del index[key]
    del index["step"]["window_start"]
    index["version"] = 1
    index_path.write_text(json.dumps(index))
    again = fusion_step()
    assert MapStore.for_run(tmp_path).load(again) == {"x": 1}
    assert again.gmap.keyframe_ids == [0, 1, 2, 3] and again.window_start == 0
    assert again.backend.pose_graph.edges == {}
    assert sorted(again.backend.loop_detector.features) == [0, 1, 2, 3]  # from the keyframe messages' images


def test_a_pose_graph_state_that_does_not_fit_is_refused_naming_the_file(tmp_path):
    step, store = fusion_step(), MapStore.for_run(tmp_path)
    store.start_fresh()
    feed(step, store, range(0, 4), 0)
    store.save(step, {})
    graph_file = next(store.path.glob("graph_*.npz"))
    with np.load(graph_file) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["scale"] = arrays["scale"][:-1]
    np.savez(graph_file, **arrays)
    with pytest.raises(ValueError, match=f"pose graph state {graph_file}: scale has shape"):
        MapStore.for_run(tmp_path).load(fusion_step())


def test_pending_keyframe_messages_are_bounded_without_saves(tmp_path):
    store = MapStore(tmp_path / "state", keep_keyframe_messages=3)
    for k in range(10):
        store.add_keyframe(keyframe(k))
    assert sorted(store._pending_messages) == [7, 8, 9]
