"""Fusion's persisted state and the keyframes node's replay, in one process (issue 15, part C): what a respawned
fusion reloads equals what the killed one had saved, a save interrupted before its index leaves the previous state
readable, and a respawned reconstruction node gets the keyframes and requests of the current and previous window."""

from __future__ import annotations

import numpy as np
import pytest

from spark3r_stream.geometry import se3_matrix
from spark3r_stream.stream.global_map import GlobalMap, GlobalMapConfig
from spark3r_stream.stream.map_store import MapStore
from spark3r_stream.stream.pipeline import FusionStep
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
