"""Messages built to crash a node (issue 15, findings 1, 2, 5, 6): deep JSON, huge numbers, out-of-range fields,
NaN/inf poses, forged end-of-stream, exceptions inside decode or a handler, a thin giant image. Each is rejected
with a named reason or counted, and the node serves the next good message."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import tracemalloc
from contextlib import contextmanager

import numpy as np
import pytest
import zmq

from spark3r_stream.errors import DecodeError, InputError
from spark3r_stream.launch_files import load_launch_file, resolve
from spark3r_stream.stream.keyframes import KeyframeSelector, KeyframeSelectorConfig
from spark3r_stream.transport import EndOfStream, Frame, FrameRecord, Heartbeat, Keyframe, NodeLoop, decode, encode
from spark3r_stream.transport import node_loop as node_loop_module
from spark3r_stream.transport.codec import MAX_HEADER_BYTES, MAX_JSON_DEPTH
from spark3r_stream.transport.endpoints import default_run_dir, make_endpoint

pytestmark = pytest.mark.fault

MAX_POLLS = 200  # bound on every wait (each poll returns as soon as something arrives)
THIN_IMAGE_PEAK_BYTES = 64 << 20  # rejecting the 1,000,000 x 8 image may copy it once (24 MB), never resize it


def wire(msg, seq: int = 0, node: str = "capture") -> list[bytes]:
    return [bytes(memoryview(f).cast("B")) if not isinstance(f, bytes) else f for f in encode(msg, seq, node=node)]


def frame(seq: int = 0, **kw) -> Frame:
    image = np.full((16, 20, 3), seq % 256, np.uint8)
    return Frame(frame_seq=seq, t_capture=0.1 * seq, image=image, source_id="fault", **kw)


def edit_header(frames: list[bytes], text_from: str, text_to: str) -> list[bytes]:
    assert text_from.encode() in frames[1]
    return [frames[0], frames[1].replace(text_from.encode(), text_to.encode(), 1), *frames[2:]]


def set_scalar(frames: list[bytes], name: str, value) -> list[bytes]:
    header = json.loads(frames[1])
    header["scalars"][name] = value
    return [frames[0], json.dumps(header).encode(), *frames[2:]]


def hostile() -> dict[str, tuple[list[bytes], str, str]]:
    """name -> (frames, reason, text the detail must contain)."""
    g = wire(frame())
    deep = b"[" * 30_000 + b"]" * 30_000
    assert len(deep) < MAX_HEADER_BYTES  # under the size limit: only the depth limit stops it
    kf = Keyframe(keyframe_id=0, frame_seq=0, t_capture=0.0, image=np.zeros((8, 8, 3), np.uint8), source_hw=(8, 8))
    return {
        "30,000 nested [": ([g[0], deep, g[2]], "too_deep", "deeper than the parser allows"),
        "17 nested objects": (
            edit_header(g, '"source_id":"fault"', '"source_id":' + '{"a":' * 16 + "1" + "}" * 16),
            "too_deep",
            f"> {MAX_JSON_DEPTH}",
        ),
        "seq = 10**400": (edit_header(g, '"seq":0', '"seq":' + "1" + "0" * 400), "bad_number", "401 digits"),
        "seq = 2**64": (edit_header(g, '"seq":0', f'"seq":{2**64}'), "bad_number", "does not fit int64"),
        "seq < 0": (edit_header(g, '"seq":0', '"seq":-1'), "bad_header", "header seq -1 is outside"),
        "t_sent = 1e999": (edit_header(g, '"seq":0', '"seq":0,"x":1e999'), "bad_number", "overflows float64"),
        "NaN literal": (edit_header(g, '"t_capture":0.0', '"t_capture":NaN'), "bad_number", "NaN is not a finite"),
        "Infinity literal": (edit_header(g, '"t_capture":0.0', '"t_capture":-Infinity'), "bad_number", "-Infinity"),
        "frame_seq < 0": (set_scalar(g, "frame_seq", -3), "bad_field", "frame.frame_seq: expected >= 0, got -3"),
        "frame_seq a float": (set_scalar(g, "frame_seq", 1.5), "bad_field", "expected int, got float"),
        "frame_seq a bool": (set_scalar(g, "frame_seq", True), "bad_field", "expected int, got bool"),
        "source_id a list": (set_scalar(g, "source_id", [1, 2]), "bad_field", "expected str, got list"),
        "array name a list": (edit_header(g, '"name":"image"', '"name":["image"]'), "bad_header", "not a string"),
        "node name of 1000 chars": (edit_header(g, '"node":"capture"', f'"node":"{"m" * 1000}"'), "bad_header", "1000"),
        "source_hw of 3 ints": (
            set_scalar(wire(kf), "source_hw", [8, 8, 8]),
            "bad_field",
            "has 3 items, expected 2",
        ),
        "source_hw of 0": (set_scalar(wire(kf), "source_hw", [0, 8]), "bad_field", "expected >= 1, got 0"),
        "end_of_stream num_sent < 0": (
            set_scalar(wire(EndOfStream(node="capture", num_sent=1)), "num_sent", -1),
            "bad_field",
            "num_sent: expected >= 0",
        ),
        "heartbeat counter a string": (
            set_scalar(wire(Heartbeat(node="capture", counters={})), "counters", {"a": "x"}),
            "bad_field",
            "non-numeric values for ['a']",
        ),
    }


HOSTILE = hostile()


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_header_is_a_decode_error_with_a_reason(name):
    frames, reason, text = HOSTILE[name]
    with pytest.raises(DecodeError) as info:
        decode(frames)
    assert info.value.reason == reason
    assert text in info.value.detail


def test_tracks_and_their_pixels_must_agree():
    kf = Keyframe(
        keyframe_id=0,
        frame_seq=0,
        t_capture=0.0,
        image=np.zeros((8, 8, 3), np.uint8),
        track_ids=np.arange(3, dtype=np.int64),
        track_uv=np.zeros((3, 2), np.float32),
    )
    frames = wire(kf)
    header = json.loads(frames[1])
    header["arrays"][2]["shape"] = [2, 2]  # track_uv: 2 pixels for 3 track ids
    with pytest.raises(DecodeError) as info:
        decode([frames[0], json.dumps(header).encode(), frames[2], frames[3], frames[4][:16]])
    assert (
        info.value.reason == "inconsistent" and "track_uv has 2 entries but there are 3 track_ids" in info.value.detail
    )
    with pytest.raises(ValueError, match="come together"):
        Keyframe(keyframe_id=0, frame_seq=0, t_capture=0.0, image=kf.image, track_ids=kf.track_ids)


def test_ranges_are_checked_when_sending_too():
    with pytest.raises(TypeError, match=r"Frame.frame_seq: expected >= 0, got -1"):
        encode(Frame(frame_seq=-1, t_capture=0.0, image=np.zeros((8, 8, 3), np.uint8), source_id=""), 0)
    with pytest.raises(TypeError, match="expected an int64"):
        encode(EndOfStream(node="capture", num_sent=2**70), 0)


@pytest.mark.parametrize("field", ["world_from_cam", "intrinsics"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_pose_or_intrinsics_is_cleared_not_forwarded(field, bad):
    value = np.eye(4) if field == "world_from_cam" else np.eye(3)
    value[0, -1] = bad
    msg, header = decode(wire(frame(**{field: value})))
    assert getattr(msg, field) is None and header["cleared"] == [field]
    assert msg.image.shape == (16, 20, 3)  # the frame itself is still good


def test_a_record_with_a_non_finite_ground_truth_is_cleared():
    pose = np.eye(4)
    pose[1, 3] = np.nan
    msg, header = decode(wire(FrameRecord(frame_seq=3, t_capture=0.3, gt_world_from_cam=pose)))
    assert msg.gt_world_from_cam is None and header["cleared"] == ["gt_world_from_cam"]


def test_finite_poses_pass_unchanged():
    pose = np.eye(4)
    pose[:3, 3] = (1.0, -2.0, 3.5)
    msg, header = decode(wire(frame(world_from_cam=pose, intrinsics=np.eye(3))))
    np.testing.assert_array_equal(msg.world_from_cam, pose)
    assert "cleared" not in header


def serve_until(loop: NodeLoop, done) -> None:
    for _ in range(MAX_POLLS):
        if done():
            return
        loop.poll_once(100)
    raise AssertionError(f"condition not met after {MAX_POLLS} polls; counters {dict(loop.counters)}")


@contextmanager
def frames_node(ctx, ipc_dir, upstream_nodes=None):
    """A keyframes-named node loop serving Frames (their seqs go to `served`) and a PUSH socket into its input."""
    endpoint = make_endpoint("frames", "in", run_dir=ipc_dir, upstream_nodes=upstream_nodes)
    served: list[int] = []
    loop = NodeLoop("keyframes", [endpoint], context=ctx, handle_signals=False)
    loop.on(Frame, lambda f: served.append(f.frame_seq))
    with loop:
        push = ctx.socket(zmq.PUSH)
        push.connect(endpoint.address)
        try:
            yield loop, push, served
        finally:
            push.close(linger=0)


def test_forged_end_of_stream_is_dropped_and_does_not_close_the_input(ctx, ipc_dir, caplog):
    with frames_node(ctx, ipc_dir, ["capture"]) as (loop, push, served):
        push.send_multipart(wire(EndOfStream(node="mallory", num_sent=0), 0, node="mallory"))
        push.send_multipart(wire(Heartbeat(node="mallory", counters={"x": 1.0}), 1, node="mallory"))
        for seq in range(10):
            push.send_multipart(wire(frame(seq), seq))
        serve_until(loop, lambda: len(served) == 10)
        assert not loop.is_finished
        push.send_multipart(wire(EndOfStream(node="capture", num_sent=10), 10))
        serve_until(loop, lambda: loop.is_finished)
    assert served == list(range(10))  # 10 of 10 valid frames after the forgery
    assert loop.counters["dropped.unknown_sender"] == 2 and "mallory" not in loop.peers
    report = loop.report()["inputs"]["frames"]
    assert set(report["upstreams"]) == {"capture"} and report["upstreams"]["capture"]["missing"] == 0
    assert "end_of_stream from 'mallory', not an upstream" in caplog.text


def test_data_from_an_unknown_sender_is_dropped_and_counted(ctx, ipc_dir, caplog):
    with frames_node(ctx, ipc_dir, ["capture"]) as (loop, push, served):
        push.send_multipart(wire(frame(0), 2**62, node="mallory"))  # a huge seq would be a huge "gap"
        push.send_multipart(wire(frame(1), 1, node=""))  # an unnamed client is not an upstream either
        push.send_multipart(wire(frame(2), 0))
        serve_until(loop, lambda: len(served) == 1)
    assert served == [2]  # the next good message is served
    assert loop.counters["dropped.unknown_sender"] == 2 and loop.counters["recv.frame"] == 1
    assert loop.counters["from_unknown.frames"] == 0 and loop.counters["gaps.frames"] == 0
    assert set(loop.report()["inputs"]["frames"]["upstreams"]) == {"capture"}
    assert "frame from 'mallory', not an upstream" in caplog.text


def test_without_upstream_names_data_from_any_sender_is_served(ctx, ipc_dir):
    with frames_node(ctx, ipc_dir) as (loop, push, served):  # library use: no configured upstreams
        push.send_multipart(wire(frame(0), 0, node="mallory"))
        push.send_multipart(wire(frame(1), 0))
        serve_until(loop, lambda: len(served) == 2)
    assert loop.counters["dropped.unknown_sender"] == 0
    assert set(loop.report()["inputs"]["frames"]["upstreams"]) == {"capture", "mallory"}


def test_without_upstream_names_a_sender_inventing_names_cannot_grow_the_node(ctx, ipc_dir):
    endpoint = make_endpoint("frames", "in", run_dir=ipc_dir)
    loop = NodeLoop("keyframes", [endpoint], context=ctx, handle_signals=False)
    with loop:
        push = ctx.socket(zmq.PUSH)
        push.connect(endpoint.address)
        total = node_loop_module.MAX_UPSTREAMS + 20
        for i in range(total):
            push.send_multipart(wire(Heartbeat(node=f"n{i}", counters={}), 0, node=f"n{i}"))
        serve_until(loop, lambda: loop.counters["recv.heartbeat"] + loop.counters["dropped.unknown_sender"] == total)
        push.close(linger=0)
    assert len(loop.report()["inputs"]["frames"]["upstreams"]) == node_loop_module.MAX_UPSTREAMS
    assert len(loop.peers) <= node_loop_module.MAX_UPSTREAMS and loop.counters["dropped.unknown_sender"] == 20


def test_any_exception_in_a_handler_or_in_decode_is_a_counted_drop(ctx, ipc_dir, monkeypatch, caplog):
    endpoint = make_endpoint("frames", "in", run_dir=ipc_dir)
    served: list[int] = []

    def handle(f: Frame) -> None:
        if f.frame_seq == 1:
            raise ZeroDivisionError("handler bug")
        served.append(f.frame_seq)

    real_decode = node_loop_module.decode

    def flaky_decode(frames):
        msg, header = real_decode(frames)
        if msg.frame_seq == 2:
            raise RecursionError("codec bug")
        return msg, header

    monkeypatch.setattr(node_loop_module, "decode", flaky_decode)
    loop = NodeLoop("keyframes", [endpoint], context=ctx, handle_signals=False)
    loop.on(Frame, handle)
    with loop:
        push = ctx.socket(zmq.PUSH)
        push.connect(endpoint.address)
        for seq in range(4):
            push.send_multipart(wire(frame(seq), seq))
        serve_until(loop, lambda: served == [0, 3])
        push.close(linger=0)
    assert loop.counters["dropped.handler_failed"] == 1 and loop.counters["dropped.decode_failed"] == 1
    assert "ZeroDivisionError: handler bug" in caplog.text and "RecursionError: codec bug" in caplog.text


def test_a_launch_file_names_each_input_s_producers():
    spec, source = load_launch_file("demo")
    run_id = f"fault-names-{os.getpid()}"
    try:
        nodes = {n.name: n.config for n in resolve(spec, source, tempfile.gettempdir(), run_id)}
    finally:
        shutil.rmtree(default_run_dir(run_id), ignore_errors=True)  # resolve made the ipc directory
    upstreams = {
        (name, ep["edge"]): ep["upstream_nodes"]
        for name, c in nodes.items()
        for ep in c["endpoints"]
        if ep["direction"] == "in"
    }
    assert upstreams == {
        ("keyframes", "frames"): ["capture"],
        ("reconstruction", "keyframes"): ["keyframes"],
        ("fusion", "results"): ["reconstruction"],
        ("fusion", "frame_records"): ["keyframes"],
    }


def test_thin_giant_image_is_rejected_before_any_resize():
    selector = KeyframeSelector(KeyframeSelectorConfig(model_hw=(112, 112)))
    thin = np.zeros((1_000_000, 8, 3), np.uint8)
    tracemalloc.start()
    with pytest.raises(InputError, match=r"1000000x8 has aspect ratio 125000.0 > max_aspect_ratio 4") as info:
        selector.offer(0, 0.0, thin)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert info.value.reason == "bad_image" and peak < THIN_IMAGE_PEAK_BYTES
    assert selector.offer(1, 0.1, np.zeros((48, 64, 3), np.uint8)) is not None  # the next frame is served


def test_image_limits_come_from_the_config():
    selector = KeyframeSelector(KeyframeSelectorConfig(max_pixels=48 * 64 - 1, max_aspect_ratio=1.2))
    with pytest.raises(InputError, match="has 3072 pixels > max_pixels"):
        selector.offer(0, 0.0, np.zeros((48, 64, 3), np.uint8))
    with pytest.raises(InputError, match="aspect ratio 1.3 > max_aspect_ratio 1.2"):
        selector.offer(1, 0.0, np.zeros((30, 40, 3), np.uint8))
    with pytest.raises(Exception, match="max_aspect_ratio: expected float >= 1"):
        KeyframeSelectorConfig(max_aspect_ratio=0.5)
