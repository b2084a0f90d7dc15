"""Malformed messages: each is rejected with a named reason; a NodeLoop drops, counts and logs it, then serves
the next good message."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zmq

from spark3r_stream.errors import DecodeError
from spark3r_stream.transport import Frame, NodeLoop, decode, encode, make_endpoint
from spark3r_stream.transport.codec import MAX_HEADER_BYTES

pytestmark = pytest.mark.fault


def good_frames(seq: int = 0) -> list[bytes]:
    msg = Frame(frame_seq=seq, t_capture=0.1 * seq, image=np.full((8, 10, 3), seq, np.uint8), source_id="fault")
    return [bytes(memoryview(f).cast("B")) if not isinstance(f, bytes) else f for f in encode(msg, seq, node="src")]


def with_header(frames: list[bytes], **changes) -> list[bytes]:
    header = json.loads(frames[1])
    for key, value in changes.items():
        if key.startswith("scalars."):
            name = key.split(".", 1)[1]
            if value is KeyError:
                del header["scalars"][name]
            else:
                header["scalars"][name] = value
        elif key.startswith("array."):
            header["arrays"][0][key.split(".", 1)[1]] = value
        elif value is KeyError:
            del header[key]
        else:
            header[key] = value
    return [frames[0], json.dumps(header).encode(), *frames[2:]]


def malformed() -> dict[str, tuple[list[bytes], str, str]]:
    """name -> (frames, expected reason, text the detail must contain)."""
    g = good_frames()
    big = Frame(frame_seq=0, t_capture=0.0, image=np.zeros((8, 10, 3), np.uint8), source_id="fault")
    return {
        "wrong version": (
            with_header(g, v=2),
            "version_mismatch",
            "'frame' message has version 2; this build reads v1",
        ),
        "unknown type": (with_header([b"pose", *g[1:]], type="pose"), "unknown_type", "type 'pose' is not one of"),
        "topic mismatch": ([b"keyframe", *g[1:]], "topic_mismatch", "header type 'frame'"),
        "bad dtype": (with_header(g, **{"array.dtype": "float32"}), "bad_dtype", "dtype float32 not in ['uint8']"),
        "non-whitelisted dtype": (with_header(g, **{"array.dtype": "object"}), "bad_dtype", "dtype object"),
        "bad shape": (with_header(g, **{"array.shape": [8, 10, 4]}), "bad_shape", "[8, 10, 4] does not match"),
        "truncated buffer": ([*g[:2], g[2][:-7]], "truncated", "buffer has 233 bytes, uint8[8, 10, 3] needs 240"),
        "missing buffer": (g[:2], "truncated", "header lists 1 arrays, got 0 buffers"),
        "header only": (g[:1], "truncated", "1 frame(s)"),
        "extra field": (with_header(g, **{"scalars.exposure_ms": 3}), "extra_field", "unexpected ['exposure_ms']"),
        "missing field": (with_header(g, **{"scalars.source_id": KeyError}), "missing_field", "missing ['source_id']"),
        "wrong field type": (with_header(g, **{"scalars.frame_seq": "7"}), "bad_field", "expected int, got str"),
        "missing header key": (with_header(g, seq=KeyError), "bad_header", "missing ['seq']"),
        "header not json": ([g[0], b"\xff{not json", g[2]], "bad_header", "not JSON"),
        "oversized header": (
            [g[0], b" " * (MAX_HEADER_BYTES + 1), g[2]],
            "header_too_large",
            f"{MAX_HEADER_BYTES + 1} bytes",
        ),
        "oversized array": (
            with_header([g[0], g[1], b"\0" * 3 * 4096 * 4096], **{"array.shape": [4096, 4096, 3]}),
            "too_large",
            "50331648 bytes > max_bytes 33554432",
        ),
        "hostile shape": (with_header(g, **{"array.shape": [2**62, 2**62, 3]}), "too_large", "> max_bytes"),
        "negative shape": (with_header(g, **{"array.shape": [-8, -10, 3]}), "bad_shape", "negative size"),
        "big ok dims": (encode_bytes(big), None, ""),
    }


def encode_bytes(msg) -> list[bytes]:
    return [bytes(memoryview(f).cast("B")) if not isinstance(f, bytes) else f for f in encode(msg, 0)]


CASES = {k: v for k, v in malformed().items() if v[1] is not None}


@pytest.mark.parametrize("name", list(CASES))
def test_decode_names_the_reason(name):
    frames, reason, text = CASES[name]
    with pytest.raises(DecodeError) as info:
        decode(frames)
    assert info.value.reason == reason
    assert text in info.value.detail


def test_a_good_message_still_decodes():
    msg, header = decode(good_frames(3))
    assert msg.frame_seq == 3 and header["node"] == "src"


@pytest.mark.parametrize("kind", ["lossless", "latest"])
def test_node_loop_drops_counts_logs_and_serves_the_next_good_message(ctx, ipc_dir, caplog, kind):
    endpoint = make_endpoint("frames", "in", run_dir=ipc_dir, kind=kind)
    served: list[int] = []
    loop = NodeLoop("keyframes", [endpoint], context=ctx, handle_signals=False)
    loop.on(Frame, lambda f: served.append(f.frame_seq))
    with loop:
        push = ctx.socket(zmq.PUSH)
        push.connect(endpoint.address)
        for seq, (frames, _, _) in enumerate(CASES.values()):
            push.send_multipart(frames)
            for _ in range(100):  # wait for the drop before the good one (latest-wins would supersede the bad one)
                if sum(v for k, v in loop.counters.items() if k.startswith("dropped.")) == seq + 1:
                    break
                loop.poll_once(100)
            good = good_frames(seq)
            push.send_multipart(good)
            for _ in range(100):  # bounded: each poll returns as soon as the message is there
                if len(served) == seq + 1:
                    break
                loop.poll_once(100)
        push.close(linger=0)
    assert served == list(range(len(CASES)))  # every good message after a bad one was served
    expected: dict[str, int] = {}
    for _, reason, _ in CASES.values():
        expected[f"dropped.{reason}"] = expected.get(f"dropped.{reason}", 0) + 1
    dropped = {k: v for k, v in loop.counters.items() if k.startswith("dropped.")}
    assert dropped == expected
    for reason in {r for _, r, _ in CASES.values()}:
        assert f"dropped a message on 'frames': {reason}" in caplog.text
