"""Codec: round trip of every registered message type, zero-copy views and sender-side schema checks."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from spark3r_stream.transport import (
    MESSAGE_TYPES,
    Frame,
    Keyframe,
    MapUpdate,
    WindowResult,
    decode,
    encode,
)
from spark3r_stream.transport.codec import MAX_HEADER_BYTES

from .conftest import SAMPLE_TOPICS, sample_message


def test_every_registered_type_has_a_sample():
    assert set(SAMPLE_TOPICS) == set(MESSAGE_TYPES)


@pytest.mark.parametrize("topic", list(MESSAGE_TYPES))
def test_round_trip(topic):
    msg = sample_message(topic)
    frames = encode(msg, seq=41, node="tester", t_sent=123.5)
    assert frames[0] == topic.encode()
    wire = [bytes(memoryview(f).cast("B")) if not isinstance(f, bytes) else f for f in frames]
    out, header = decode(wire)
    assert type(out) is type(msg)
    assert header["seq"] == 41 and header["node"] == "tester" and header["t_sent"] == 123.5
    assert header["v"] == MESSAGE_TYPES[topic].version
    for f in dataclasses.fields(msg):
        want, got = getattr(msg, f.name), getattr(out, f.name)
        if isinstance(want, np.ndarray):
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want)
            assert not got.flags.writeable
        else:
            assert got == want and type(got) is type(want), f.name


def test_arrays_are_sent_without_copy_and_received_as_views():
    msg = sample_message("frame")
    frames = encode(msg, seq=0)
    assert frames[2] is msg.image  # the message's own memory goes to zmq
    received = [frames[0], frames[1], *(bytearray(a.tobytes()) for a in frames[2:])]
    out, _ = decode(received)
    assert np.shares_memory(out.image, np.frombuffer(received[2], np.uint8))


def test_non_contiguous_and_byteswapped_arrays_round_trip():
    base = np.arange(48 * 64 * 3 * 2, dtype=np.uint8).reshape(48, 128, 3)
    msg = Keyframe(keyframe_id=0, frame_seq=0, t_capture=0.0, image=base[:, ::2])
    out, _ = decode(encode(msg, 0))
    np.testing.assert_array_equal(out.image, base[:, ::2])
    poses = np.tile(np.eye(4), (2, 1, 1)).astype(">f8")
    upd, _ = decode(encode(MapUpdate(keyframe_ids=(4, 5), world_from_cam=poses), 0))
    assert upd.world_from_cam.dtype == np.float64
    np.testing.assert_array_equal(upd.world_from_cam, poses)
    assert upd.points is None and upd.colors is None


def test_numpy_scalars_are_written_as_json_numbers():
    msg = dataclasses.replace(sample_message("window_result"), window_id=np.int64(5), timings={"a_ms": np.float32(1.5)})
    out, header = decode(encode(msg, 0))
    assert out.window_id == 5 and out.timings == {"a_ms": 1.5}


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"image": np.zeros((4, 4, 3), np.float32)}, ValueError, r"Frame.image: dtype float32 not in \['uint8'\]"),
        ({"image": np.zeros((4, 4), np.uint8)}, ValueError, r"shape \[4, 4\] does not match \[\*, \*, 3\]"),
        ({"world_from_cam": np.eye(3)}, ValueError, r"world_from_cam: shape \[3, 3\] does not match \[4, 4\]"),
        ({"frame_seq": 1.5}, TypeError, r"Frame.frame_seq: expected int, got float"),
        ({"source_id": None}, TypeError, r"source_id: is required"),
        ({"image": [[1, 2, 3]]}, TypeError, r"expected numpy array"),
    ],
)
def test_encode_rejects_a_message_that_breaks_its_schema(change, error, match):
    msg = dataclasses.replace(sample_message("frame"), **change)
    with pytest.raises(error, match=match):
        encode(msg, 0)


def test_encode_rejects_an_oversized_header():
    msg = dataclasses.replace(sample_message("window_result"), plan={"blob": "x" * MAX_HEADER_BYTES})
    with pytest.raises(ValueError, match="header is .* bytes > 65536"):
        encode(msg, 0)


def test_cross_field_invariants_are_checked_at_construction():
    good = sample_message("window_result")
    with pytest.raises(ValueError, match="world_from_cam has 3 entries but there are 2 keyframe_ids"):
        dataclasses.replace(good, keyframe_ids=(0, 1))
    with pytest.raises(ValueError, match=r"dense_keyframe_ids \[9\] are not in keyframe_ids"):
        dataclasses.replace(good, dense_keyframe_ids=(9,))
    with pytest.raises(ValueError, match="colors/point_keyframe_ids given without points"):
        MapUpdate(keyframe_ids=(), world_from_cam=np.zeros((0, 4, 4)), colors=np.zeros((0, 3), np.uint8))


def test_header_is_plain_json_with_the_documented_keys():
    header = json.loads(encode(sample_message("keyframe"), 9, node="kf")[1])
    assert set(header) == {"type", "v", "seq", "t_sent", "node", "scalars", "arrays"}
    assert header["arrays"] == [
        {"name": "image", "dtype": "uint8", "shape": [28, 42, 3]},
        {"name": "track_ids", "dtype": "int64", "shape": [5]},
        {"name": "track_uv", "dtype": "float32", "shape": [5, 2]},
        {"name": "source_intrinsics", "dtype": "float64", "shape": [3, 3]},
    ]
    assert header["scalars"] == {"keyframe_id": 3, "frame_seq": 12, "t_capture": 0.4, "source_hw": [480, 640]}


def test_window_result_plan_may_be_a_string():
    msg = dataclasses.replace(sample_message("window_result"), plan="dense")
    out, _ = decode(encode(msg, 0))
    assert out.plan == "dense"
    assert isinstance(out, WindowResult)
    assert Frame.TOPIC == "frame" and Frame.VERSION == 1


def test_frame_record_without_keyframe_or_ground_truth_round_trips_as_none():
    from spark3r_stream.transport import FrameRecord

    out, header = decode(encode(FrameRecord(frame_seq=5, t_capture=0.5), seq=5))
    assert (out.frame_seq, out.t_capture, out.keyframe_id, out.gt_world_from_cam) == (5, 0.5, None, None)
    assert header["arrays"] == [] and header["scalars"]["keyframe_id"] is None
