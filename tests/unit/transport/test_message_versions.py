"""Schema versions: a build decodes the older versions a type lists in `reads` (fields added since are None), refuses
an older message that carries a newer field, and the window result's model tracks are checked like every field."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from spark3r_stream.errors import DecodeError
from spark3r_stream.transport import MESSAGE_TYPES, decode, encode

from .conftest import sample_message


def as_bytes(frames) -> list[bytes]:
    return [bytes(memoryview(f).cast("B")) if not isinstance(f, bytes) else f for f in frames]


def older(msg, version: int) -> list[bytes]:
    """`msg` as a sender of schema `version` wrote it: the fields added after that version left out."""
    mt = MESSAGE_TYPES[msg.TOPIC]
    newer = {name for name, since in mt.since.items() if since > version}
    frames = as_bytes(encode(dataclasses.replace(msg, **dict.fromkeys(newer)), 0))
    header = json.loads(frames[1])
    header["scalars"] = {k: v for k, v in header["scalars"].items() if k not in newer}  # not even as null
    assert not newer & {a["name"] for a in header["arrays"]}
    header["v"] = version
    return [frames[0], json.dumps(header).encode(), *frames[2:]]


@pytest.mark.parametrize("topic", [t for t, mt in MESSAGE_TYPES.items() if mt.reads])
def test_an_older_version_still_decodes_without_the_newer_fields(topic):
    msg = sample_message(topic)
    mt = MESSAGE_TYPES[topic]
    for version in sorted(mt.reads):
        out, header = decode(older(msg, version))
        assert header["v"] == version and type(out) is type(msg)
        for name, since in mt.since.items():
            assert (getattr(out, name) is None) == (since > version), name
        assert out.keyframe_ids == msg.keyframe_ids if topic == "window_result" else out.keyframe_id == 3


def test_v1_window_result_is_decoded_and_a_v1_header_with_v2_fields_is_refused():
    assert MESSAGE_TYPES["window_result"].version == 2 and MESSAGE_TYPES["window_result"].reads == {1}
    msg = sample_message("window_result")
    out, _ = decode(older(msg, 1))
    assert out.track_uv is None and out.track_ids is None and out.track_keyframe_ids is None
    np.testing.assert_array_equal(out.world_from_cam, msg.world_from_cam)
    frames = as_bytes(encode(msg, 0))
    header = json.loads(frames[1])
    header["v"] = 1  # a v1 sender never wrote tracks
    with pytest.raises(DecodeError, match=r"window_result v1: \['track_ids', 'track_keyframe_ids', 'track_uv'\] only"):
        decode([frames[0], json.dumps(header).encode(), *frames[2:]])


@pytest.mark.parametrize("version", [0, 3, "2", [2], True, 2.0])
def test_an_unread_version_is_a_version_mismatch(version):
    frames = as_bytes(encode(sample_message("window_result"), 0))
    header = json.loads(frames[1])
    header["v"] = version
    with pytest.raises(DecodeError, match="this build reads v1, v2") as info:
        decode([frames[0], json.dumps(header).encode(), *frames[2:]])
    assert info.value.reason == "version_mismatch"


def test_window_result_tracks_round_trip_exactly():
    msg = sample_message("window_result")
    out, header = decode(as_bytes(encode(msg, 0)))
    assert header["v"] == 2
    np.testing.assert_array_equal(out.track_keyframe_ids, [2, 2, 1, 0])
    np.testing.assert_array_equal(out.track_ids, [0, 1, 0, 1])
    np.testing.assert_array_equal(out.track_uv, msg.track_uv)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"track_uv": None}, "come together"),
        ({"track_ids": np.array([0, 1, 0], np.int64)}, "track_ids has 3 entries but there are 4"),
        ({"track_uv": np.zeros((5, 2), np.float32)}, "track_uv has 5 entries but there are 4"),
        ({"track_keyframe_ids": np.array([2, 2, 1, 9], np.int64)}, r"track_keyframe_ids \[9\] are not in keyframe_ids"),
        ({"track_ids": np.array([0, 1, -1, 1], np.int64)}, "negative id -1"),
        ({"track_uv": np.array([[0, 0], [1, np.nan], [2, 2], [3, 3]], np.float32)}, "NaN or inf"),
    ],
)
def test_window_result_tracks_are_checked_on_both_sides(change, match):
    msg = sample_message("window_result")
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(msg, **change)
    # the same message forged on the wire: a counted drop with the same reason, never a crash
    good = as_bytes(encode(msg, 0))
    header = json.loads(good[1])
    arrays = {a["name"]: i for i, a in enumerate(header["arrays"])}
    buffers = list(good[2:])
    for name, value in change.items():
        if value is None:
            index = arrays[name]
            header["arrays"].pop(index)
            buffers.pop(index)
            arrays = {a["name"]: i for i, a in enumerate(header["arrays"])}
            continue
        header["arrays"][arrays[name]] = {"name": name, "dtype": value.dtype.name, "shape": list(value.shape)}
        buffers[arrays[name]] = value.tobytes()
    with pytest.raises(DecodeError, match=match) as info:
        decode([good[0], json.dumps(header).encode(), *buffers])
    assert info.value.reason == "inconsistent"


def test_window_result_tracks_are_bounded_in_size():
    spec = MESSAGE_TYPES["window_result"].arrays["track_uv"]
    assert spec.problem("float32", (1 << 20, 2)) is None  # 1M observations
    assert spec.problem("float32", ((1 << 20) + 1, 2))[0] == "too_large"
    assert MESSAGE_TYPES["window_result"].arrays["track_ids"].problem("int64", ((1 << 20) + 1,))[0] == "too_large"
