"""Fixtures for transport tests: a zmq context per test, a short ipc directory, one sample per message type."""

from __future__ import annotations

import shutil
import tempfile

import numpy as np
import pytest
import zmq

from spark3r_stream.transport import messages as m


@pytest.fixture
def ctx():
    context = zmq.Context()  # one per test, never Context.instance() (it would leak across tests)
    yield context
    context.destroy(linger=0)


@pytest.fixture
def ipc_dir():
    path = tempfile.mkdtemp(prefix="s3r", dir="/tmp")  # short: AF_UNIX paths are limited to 107 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


def sample_message(topic: str, rng: np.random.Generator | None = None):
    """One fully populated message of each registered type (optional fields filled)."""
    rng = rng or np.random.default_rng(0)
    poses = np.tile(np.eye(4), (3, 1, 1))
    poses[:, :3, 3] = rng.normal(size=(3, 3))
    k = np.array([[500.0, 0, 32], [0, 500.0, 24], [0, 0, 1]])
    samples = {
        "frame": lambda: m.Frame(
            frame_seq=7,
            t_capture=1403715273.262143,
            image=rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
            source_id="tum:/data/seq",
            world_from_cam=poses[0],
            intrinsics=k,
        ),
        "frame_record": lambda: m.FrameRecord(
            frame_seq=12, t_capture=1403715273.262143, keyframe_id=3, gt_world_from_cam=poses[1]
        ),
        "keyframe": lambda: m.Keyframe(
            keyframe_id=3,
            frame_seq=12,
            t_capture=0.4,
            image=rng.integers(0, 256, (28, 42, 3), dtype=np.uint8),
            track_ids=np.arange(5, dtype=np.int64),
            track_uv=rng.random((5, 2), dtype=np.float32) * 100,
            source_hw=(480, 640),
            source_intrinsics=k,
        ),
        "window_request": lambda: m.WindowRequest(window_id=2, keyframe_ids=(0, 1, 2)),
        "window_result": lambda: m.WindowResult(
            window_id=2,
            keyframe_ids=(0, 1, 2),
            world_from_cam=poses,
            intrinsics=np.stack([k, k, k]).astype(np.float32),
            dense_keyframe_ids=(2,),
            depth=rng.random((1, 6, 8), dtype=np.float32),
            depth_conf=rng.random((1, 6, 8), dtype=np.float32),
            timings={"encoder_ms": 12.5, "total_ms": 40},
            plan={"r_q": 1, "r_kv": 1, "layers": [0, 1]},
            model="vggt-tiny",
            track_keyframe_ids=np.array([2, 2, 1, 0], np.int64),
            track_ids=np.array([0, 1, 0, 1], np.int64),
            track_uv=rng.random((4, 2), dtype=np.float32) * 8,
        ),
        "map_update": lambda: m.MapUpdate(
            keyframe_ids=(0, 1, 2),
            world_from_cam=poses,
            is_snapshot=True,
            points=rng.random((5, 3), dtype=np.float32),
            colors=rng.integers(0, 256, (5, 3), dtype=np.uint8),
            point_keyframe_ids=np.array([0, 0, 1, 2, 2], dtype=np.int32),
        ),
        "heartbeat": lambda: m.Heartbeat(node="keyframes", counters={"recv.frame": 10, "dropped.stale": 0.0}),
        "end_of_stream": lambda: m.EndOfStream(node="capture", num_sent=50),
    }
    return samples[topic]()


SAMPLE_TOPICS = (
    "frame",
    "frame_record",
    "keyframe",
    "window_request",
    "window_result",
    "map_update",
    "heartbeat",
    "end_of_stream",
)
