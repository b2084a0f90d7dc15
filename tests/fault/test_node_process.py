"""A real node process (`spark3r run-node keyframes`) fed malformed messages on its input: it keeps running, drops
and counts each by reason (live in its heartbeats, and in its report), and serves the valid frame that follows."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import zmq

from spark3r_stream.transport import EndOfStream, Frame, FrameRecord, Heartbeat, MapUpdate, decode, encode
from spark3r_stream.transport.endpoints import default_run_dir
from tests.fault.test_messages import CASES
from tests.integration.conftest import REPO

pytestmark = pytest.mark.fault

DEADLINE_S = 120  # node start-up (imports) plus a few messages on 2 shared cores


def wire(msg, seq: int) -> list[bytes]:
    return [bytes(memoryview(f).cast("B")) if not isinstance(f, bytes) else f for f in encode(msg, seq, node="capture")]


def receive_until(sockets: list[zmq.Socket], done, deadline: float) -> list:
    """Decode messages from `sockets` until `done(messages)` is true; every wait bounded by the deadline."""
    poller = zmq.Poller()
    for sock in sockets:
        poller.register(sock, zmq.POLLIN)
    messages: list = []
    while not done(messages):
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        assert remaining_ms > 0, f"deadline passed; received {[type(m).__name__ for m in messages]}"
        for sock, _ in poller.poll(min(remaining_ms, 1000)):
            messages.append(decode(sock.recv_multipart())[0])
    return messages


def test_keyframes_node_drops_counts_and_serves_on(tmp_path):
    run_id = f"fault-{uuid.uuid4().hex[:8]}"
    run_dir = default_run_dir(run_id)  # the node's ipc endpoints: ipc://<run_dir>/<edge>
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "SPARK3R_RUN_ID": run_id}
    command = [sys.executable, "-m", "spark3r_stream.cli", "run-node", "keyframes", "--config", "launch/demo.yaml"]
    ctx = zmq.Context()
    proc = subprocess.Popen(
        [*command, "--out", str(out)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        downstream = []
        for edge in ("keyframes", "frame_records"):  # stand in for reconstruction and fusion (they bind)
            sock = ctx.socket(zmq.PULL)
            sock.bind(f"ipc://{run_dir}/{edge}")
            downstream.append(sock)
        push = ctx.socket(zmq.PUSH)
        push.connect(f"ipc://{run_dir}/frames")  # the node binds its input; connecting first is fine

        bad = [frames for frames, _, _ in CASES.values()]  # bad JSON, dtype, shape, oversized, unknown type, ...
        bad.append(wire(MapUpdate(keyframe_ids=(0,), world_from_cam=np.eye(4)[None]), 0))  # valid, not for this node
        for frames in bad:
            push.send_multipart(frames)
        image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        push.send_multipart(wire(Frame(frame_seq=0, t_capture=0.5, image=image, source_id="fault"), 1))
        push.send_multipart(wire(Frame(frame_seq=0, t_capture=0.6, image=image, source_id="fault"), 2))  # repeat
        deadline = time.monotonic() + DEADLINE_S

        expected: dict[str, int] = {"dropped.handler_error": 1}  # the repeated frame_seq, rejected by the selector
        for _, reason, _ in CASES.values():
            expected[f"dropped.{reason}"] = expected.get(f"dropped.{reason}", 0) + 1

        def counted(messages: list) -> bool:
            beats = [m.counters for m in messages if isinstance(m, Heartbeat)]
            return bool(beats) and all(beats[-1].get(k) == v for k, v in expected.items())

        got = receive_until(downstream, counted, deadline)  # the node's own heartbeat shows every drop, by reason
        assert proc.poll() is None, "the node died on malformed input"
        records = [m for m in got if isinstance(m, FrameRecord)]
        assert [(r.frame_seq, r.t_capture, r.keyframe_id) for r in records] == [(0, 0.5, 0)]  # the valid frame

        push.send_multipart(wire(EndOfStream(node="capture", num_sent=3), 3))  # the three valid messages
        rest = receive_until(downstream, lambda ms: sum(isinstance(m, EndOfStream) for m in ms) == 2, deadline)
        assert not [m for m in rest if isinstance(m, FrameRecord)]
        for sock in (*downstream, push):
            sock.close(linger=0)  # the node's close waits for this disconnect
        output, _ = proc.communicate(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
        ctx.destroy(linger=0)
        shutil.rmtree(run_dir, ignore_errors=True)
    assert proc.returncode == 0, output[-3000:]
    report = json.loads((out / "nodes" / "keyframes.json").read_text())
    counters = report["transport"]["counters"]
    assert {k: v for k, v in counters.items() if k.startswith("dropped.")} == expected
    assert counters["recv.frame"] == 2 and counters["ignored.map_update"] == 1
    assert counters["sent.frame_record"] == 1 and counters["lost.frames"] == 0
    assert report["transport"]["inputs"]["frames"]["upstreams"]["capture"]["missing"] == 0
    assert report["status"] == "ok"
    for reason in {r for _, r, _ in CASES.values()}:
        assert f"dropped a message on 'frames': {reason}" in output
