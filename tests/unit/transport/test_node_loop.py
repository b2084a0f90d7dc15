"""NodeLoop with real zmq sockets over ipc in one process: delivery kinds, end-of-stream, signals, snapshots.

Every wait is a bounded poll; no sleeps, no timing assertions.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import numpy as np
import pytest

from spark3r_stream.errors import SourceError
from spark3r_stream.transport import EndOfStream, Frame, Keyframe, MapUpdate, NodeLoop, make_endpoint

MAX_POLLS = 200  # bound on every wait loop (each poll returns as soon as something arrives)


def frame(seq: int, size: tuple[int, int] = (24, 32)) -> Frame:
    image = np.full((*size, 3), seq % 256, dtype=np.uint8)
    return Frame(frame_seq=seq, t_capture=seq / 30, image=image, source_id="test")


def ep(edge, direction, ipc_dir, **kw):
    return make_endpoint(edge, direction, run_dir=ipc_dir, **kw)


def poll_until(loop: NodeLoop, done, max_polls: int = MAX_POLLS) -> None:
    for _ in range(max_polls):
        if done():
            return
        loop.poll_once(100)
    raise AssertionError(f"condition not met after {max_polls} polls; counters {dict(loop.counters)}")


def test_lossless_slow_consumer_receives_every_seq_in_order(ctx, ipc_dir):
    """The producer blocks at the HWM (backpressure) while the consumer is not reading; nothing is lost."""
    num = 60
    got: list[int] = []
    consumer = NodeLoop("consumer", [ep("frames", "in", ipc_dir, hwm=1)], context=ctx, handle_signals=False)
    producer = NodeLoop("producer", [ep("frames", "out", ipc_dir, hwm=1)], context=ctx, handle_signals=False)
    consumer.on(Frame, lambda f: got.append(f.frame_seq))
    with consumer, producer:
        thread = threading.Thread(target=producer.run, args=([frame(i, (240, 320)) for i in range(num)],))
        thread.start()
        for _ in range(MAX_POLLS):  # consumer reads nothing until the producer has had to wait for credit
            if producer.counters["send_waits.frames"] > 0 or not thread.is_alive():
                break
            thread.join(0.05)
        assert producer.counters["send_waits.frames"] > 0, "the producer never hit the HWM"
        assert len(got) == 0
        for _ in range(MAX_POLLS * 5):  # slow consumer: one message per poll
            if consumer.is_finished:
                break
            consumer.poll_once(100)
        thread.join(10)
    assert not thread.is_alive()
    assert got == list(range(num))
    report = consumer.report()
    assert report["inputs"]["frames"]["upstreams"]["producer"] == {
        "received": num,
        "num_sent": num,
        "missing": 0,
        "seq_gaps": 0,
        "stale": 0,
    }
    assert consumer.counters["lost.frames"] == 0
    assert producer.counters["sent.frame"] == num and producer.counters["dropped.unsent"] == 0
    json.dumps(report)


def test_latest_wins_keeps_the_newest_and_counts_what_it_dropped(ctx, ipc_dir):
    num = 30
    got: list[int] = []
    consumer = NodeLoop("viewer", [ep("frames", "in", ipc_dir, kind="latest")], context=ctx, handle_signals=False)
    camera = NodeLoop("camera", [ep("frames", "out", ipc_dir, kind="latest")], context=ctx, handle_signals=False)
    consumer.on(Frame, lambda f: got.append(f.frame_seq))
    with consumer, camera:
        warm_up = 255
        poll_until(camera, lambda: camera.send(frame(warm_up, (480, 640))) is True)  # first peer connection
        poll_until(consumer, lambda: warm_up in got)  # in flight until received; nothing else is queued to replace it
        got.clear()
        sent_before = camera.counters["sent.frame"]
        accepted = [i for i in range(num) if camera.send(frame(i, (480, 640))) is True]  # never blocks
        poll_until(consumer, lambda: accepted[-1] in got)
        camera.end_stream()
        poll_until(consumer, lambda: consumer.is_finished)
    upstream = consumer.report()["inputs"]["frames"]["upstreams"]["camera"]
    received = upstream["received"]
    assert got[-1] == accepted[-1] and got == sorted(got)  # the newest frame the camera queued wins
    assert len(accepted) + camera.counters["dropped.unsent"] == num + (sent_before - 1)
    assert upstream["num_sent"] == sent_before + len(accepted)
    dropped = consumer.counters["dropped.stale"]
    assert received + dropped == upstream["num_sent"]  # every queued frame accounted for: received or superseded
    assert received + dropped + camera.counters["dropped.unsent"] >= num  # and every offered one
    # a consumer that was not reading gets only the newest few 0.9 MB frames; the rest were dropped and counted
    assert dropped + camera.counters["dropped.unsent"] >= num - 6


def test_end_of_stream_propagates_through_a_middle_node_after_on_end(ctx, ipc_dir):
    source = NodeLoop("capture", [ep("frames", "out", ipc_dir)], context=ctx, handle_signals=False)
    middle = NodeLoop(
        "keyframes", [ep("frames", "in", ipc_dir), ep("keyframes", "out", ipc_dir)], context=ctx, handle_signals=False
    )
    sink = NodeLoop("reconstruction", [ep("keyframes", "in", ipc_dir)], context=ctx, handle_signals=False)
    kept: list[int] = []
    eos: list[EndOfStream] = []
    middle.on(
        Frame,
        lambda f: (
            Keyframe(keyframe_id=f.frame_seq // 2, frame_seq=f.frame_seq, t_capture=f.t_capture, image=f.image)
            if f.frame_seq % 2 == 0
            else None
        ),
    )
    middle.on_end(lambda: [Keyframe(keyframe_id=99, frame_seq=9, t_capture=0.3, image=np.zeros((2, 2, 3), np.uint8))])
    sink.on(Keyframe, lambda k: kept.append(k.keyframe_id))
    sink.on(EndOfStream, eos.append)
    with source, middle, sink:
        assert source.run([frame(i) for i in range(10)]) == 0  # sends 10 frames, then end-of-stream
        poll_until(middle, lambda: middle.is_finished)
        poll_until(sink, lambda: sink.is_finished)
    assert kept == [0, 1, 2, 3, 4, 99]
    assert [(e.node, e.num_sent) for e in eos] == [("keyframes", 6)]
    assert middle.counters["recv.frame"] == 10 and middle.counters["sent.keyframe"] == 6
    assert sink.counters["lost.keyframes"] == 0


def test_fanout_late_subscriber_gets_a_snapshot_of_the_current_state(ctx, ipc_dir):
    state = {"ids": (0, 1)}
    fusion = NodeLoop("fusion", [ep("map", "out", ipc_dir)], context=ctx, handle_signals=False)
    fusion.on_subscribe(
        "map",
        lambda: MapUpdate(
            keyframe_ids=state["ids"], world_from_cam=np.tile(np.eye(4), (len(state["ids"]), 1, 1)), is_snapshot=True
        ),
    )
    with fusion:
        fusion.send(MapUpdate(keyframe_ids=(0,), world_from_cam=np.eye(4)[None]))  # nobody listens yet: gone
        state["ids"] = (0, 1, 2)
        viewer = NodeLoop("viewer", [ep("map", "in", ipc_dir)], context=ctx, handle_signals=False)
        updates: list[MapUpdate] = []
        viewer.on(MapUpdate, updates.append)
        with viewer:
            for _ in range(MAX_POLLS):
                fusion.poll_once(10)
                viewer.poll_once(10)
                if updates:
                    break
            assert [(u.keyframe_ids, u.is_snapshot) for u in updates] == [((0, 1, 2), True)]
            fusion.send(MapUpdate(keyframe_ids=(3,), world_from_cam=np.eye(4)[None]))
            poll_until(viewer, lambda: len(updates) == 2)
        assert updates[1].keyframe_ids == (3,)
        assert fusion.counters["subscribed.map"] == 1 and fusion.counters["snapshots.map"] == 1


def test_sigint_stops_the_loop_and_still_reports_what_was_sent(ctx, ipc_dir):
    sink = NodeLoop("sink", [ep("frames", "in", ipc_dir)], context=ctx, handle_signals=False)
    capture = NodeLoop("capture", [ep("frames", "out", ipc_dir)], context=ctx)
    previous = signal.getsignal(signal.SIGINT)

    def frames():
        for i in range(100):
            if i == 5:
                signal.raise_signal(signal.SIGINT)  # as Ctrl-C or the launcher would
            yield frame(i)

    with sink, capture:
        assert signal.getsignal(signal.SIGINT) != previous
        assert capture.run(frames()) == 0
        assert capture.stop_reason == "SIGINT"
        poll_until(sink, lambda: sink.is_finished)
    assert signal.getsignal(signal.SIGINT) == previous  # restored on exit
    assert sink.counters["recv.frame"] == 5
    assert sink.report()["inputs"]["frames"]["upstreams"]["capture"]["num_sent"] == 5


def test_handler_rejecting_a_message_is_counted_and_the_loop_serves_on(ctx, ipc_dir, caplog):
    sink = NodeLoop("sink", [ep("frames", "in", ipc_dir)], context=ctx, handle_signals=False)
    src = NodeLoop("src", [ep("frames", "out", ipc_dir)], context=ctx, handle_signals=False)
    seen: list[int] = []

    def handle(f: Frame) -> None:
        if f.frame_seq == 1:
            raise SourceError("frame 1 of test: unusable")
        seen.append(f.frame_seq)

    sink.on(Frame, handle)
    with sink, src:
        for i in range(3):
            src.send(frame(i))
        poll_until(sink, lambda: len(seen) == 2)
    assert seen == [0, 2]
    assert sink.counters["dropped.handler_error"] == 1
    assert "frame 1 of test: unusable" in caplog.text


def test_sending_a_type_without_an_output_names_the_node_and_topic(ctx, ipc_dir):
    from spark3r_stream.errors import ConfigError

    with NodeLoop("capture", [ep("frames", "out", ipc_dir)], context=ctx, handle_signals=False) as loop:
        with pytest.raises(ConfigError, match="node 'capture' has no output for 'map_update' messages"):
            loop.send(MapUpdate(keyframe_ids=(), world_from_cam=np.zeros((0, 4, 4))))


def test_heartbeats_reach_downstream_peers(ctx, ipc_dir):
    sink = NodeLoop("sink", [ep("frames", "in", ipc_dir)], context=ctx, handle_signals=False)
    src = NodeLoop("src", [ep("frames", "out", ipc_dir)], context=ctx, handle_signals=False, heartbeat_s=0.0)
    with sink, src:
        src.send(frame(0))
        src.poll_once(0)  # tick: heartbeat due immediately
        poll_until(sink, lambda: "src" in sink.peers)
    assert sink.peers["src"]["counters"]["sent.frame"] == 1.0
    assert sink.counters["recv.heartbeat"] >= 1 and sink.counters["recv.frame"] == 1


def test_lossless_sender_closing_right_after_its_stream_loses_nothing(ctx, ipc_dir):
    """N large messages and end-of-stream, then the sender closes at once (linger 0) while the receiver still holds
    its first message: all N arrive, because a normal close waits until the receiver has disconnected. (Closing
    without that wait drops what is still queued in the sender: with linger 0 nearly all of it.)"""
    num = 20
    release = threading.Event()
    got: list[int] = []

    def on_frame(f: Frame) -> None:
        release.wait(30)  # bounded; set once the sender is done sending and about to close
        got.append(f.frame_seq)

    consumer = NodeLoop("consumer", [ep("frames", "in", ipc_dir, hwm=1)], context=ctx, handle_signals=False)
    consumer.on(Frame, on_frame)
    producer = NodeLoop(
        "producer", [ep("frames", "out", ipc_dir, hwm=64)], context=ctx, handle_signals=False, linger_ms=0
    )
    with consumer:
        thread = threading.Thread(target=consumer.run)
        thread.start()
        with producer:
            producer.run([frame(i, (480, 640)) for i in range(num)])  # 0.9 MB each: most stay queued at the sender
            assert producer.counters["sent.frame"] == num and not got
            release.set()
        thread.join(30)
    assert not thread.is_alive()
    assert got == list(range(num))
    assert consumer.counters["lost.frames"] == 0 and consumer.is_finished
    assert consumer.report()["inputs"]["frames"]["upstreams"]["producer"]["num_sent"] == num
    assert not any(k.startswith("drain_timeout") for k in producer.counters)


def test_stop_takes_effect_before_the_next_message_of_a_batch(ctx, ipc_dir):
    """stop() from inside a handler: no further message is handled; the rest are counted or left queued."""

    num = 10
    handled: list[int] = []
    src = NodeLoop("src", [ep("frames", "out", ipc_dir, hwm=32)], context=ctx, handle_signals=False)
    sink = NodeLoop("sink", [ep("frames", "in", ipc_dir, hwm=32)], context=ctx, handle_signals=False)

    def on_frame(f: Frame) -> None:
        handled.append(f.frame_seq)
        if f.frame_seq == 2:
            sink.stop("test")

    sink.on(Frame, on_frame)
    with src, sink:
        for i in range(num):
            src.send(frame(i))
        src.end_stream()
        assert sink._inputs["frames"].socket.poll(10_000)  # something has arrived: the first batch is not empty
        assert sink.run() == 0
        for _ in range(3):
            sink.poll_once(10)  # a stopped loop handles nothing, even when polled
        assert handled == [0, 1, 2]
        queued = 0
        sock = sink._inputs["frames"].socket
        while sock.poll(5_000):  # what the loop never took off the socket, up to the end-of-stream
            topic = sock.recv_multipart()[0]
            if topic == b"end_of_stream":
                break
            queued += topic == b"frame"
    assert sink.counters["recv.frame"] == 3
    assert sink.counters["dropped.stopping"] + queued == num - 3


def test_heartbeats_while_a_send_waits_leave_no_seq_gap(ctx, ipc_dir, caplog):
    """A producer blocked at the HWM keeps sending heartbeats (every tick here); seqs stay consecutive, so the
    receiver counts no gap and warns about none. Whether a tick finds the queue free is timing: up to 5 runs until
    a heartbeat went through between the frames, and every run must be gap-free."""
    num = 40
    for attempt in range(5):
        run_dir = Path(ipc_dir) / str(attempt)
        run_dir.mkdir()
        got: list[int] = []
        consumer = NodeLoop("consumer", [ep("frames", "in", str(run_dir), hwm=1)], context=ctx, handle_signals=False)
        producer = NodeLoop(
            "producer", [ep("frames", "out", str(run_dir), hwm=1)], context=ctx, handle_signals=False, heartbeat_s=0.0
        )
        consumer.on(Frame, lambda f, got=got: got.append(f.frame_seq))
        with producer, consumer:
            thread = threading.Thread(target=producer.run, args=([frame(i, (240, 320)) for i in range(num)],))
            thread.start()
            poll_until(consumer, lambda consumer=consumer: consumer.is_finished, max_polls=MAX_POLLS * 5)
            thread.join(10)
        assert got == list(range(num))
        assert producer.counters["send_waits.frames"] > 0  # it did wait, and ticked meanwhile
        assert consumer.counters["gaps.frames"] == 0
        assert "missing before seq" not in caplog.text
        if consumer.counters["recv.heartbeat"] > 0:
            return
    raise AssertionError("no heartbeat went out between the frames in 5 runs")


def test_a_real_seq_gap_is_counted_and_warned(ctx, ipc_dir, caplog):
    import zmq

    from spark3r_stream.transport import encode

    sink = NodeLoop("sink", [ep("frames", "in", ipc_dir)], context=ctx, handle_signals=False)
    seen: list[int] = []
    sink.on(Frame, lambda f: seen.append(f.frame_seq))
    with sink:
        push = ctx.socket(zmq.PUSH)
        push.connect(sink._inputs["frames"].endpoint.address)
        for seq in (0, 1, 3):  # seq 2 never sent: lost on the way
            push.send_multipart(encode(frame(seq), seq, node="src"))
        poll_until(sink, lambda: len(seen) == 3)
        push.close(linger=0)
    assert sink.counters["gaps.frames"] == 1
    assert "1 message(s) from 'src' missing before seq 3" in caplog.text


def test_idle_handler_runs_once_the_queue_is_drained(ctx, ipc_dir):
    """on_idle: deferred work sees every message that queued before it ran (a busy reconstruction node's requests).
    inproc: a sent message is in the receiver's queue when send returns, so what "queued" means is exact."""
    address = f"inproc://idle-{Path(ipc_dir).name}"
    source = NodeLoop(
        "capture", [ep("frames", "out", ipc_dir, hwm=16, address=address)], context=ctx, handle_signals=False
    )
    sink = NodeLoop(
        "keyframes", [ep("frames", "in", ipc_dir, hwm=16, address=address)], context=ctx, handle_signals=False
    )
    waiting: list[int] = []
    runs: list[list[int]] = []

    def run_waiting() -> None:
        if waiting:
            runs.append(waiting.copy())
            waiting.clear()
        if len(runs) == 2:
            raise RuntimeError("a failing deferred run")

    sink.on(Frame, lambda f: waiting.append(f.frame_seq))
    sink.on_idle(run_waiting)
    with source, sink:
        for i in range(10):
            source.send(frame(i))
        poll_until(sink, lambda: len(runs) == 1)
        for i in range(10, 13):
            source.send(frame(i))
        poll_until(sink, lambda: len(runs) == 2)
        sink.stop("test")
        source.send(frame(13))
        sink.poll_once(100)
    assert runs == [list(range(10)), [10, 11, 12]]  # each run took everything queued before it, in one go
    assert sink.counters["dropped.idle_failed"] == 1  # counted, the loop lives on
    assert waiting == []  # stopping: frame 13 was neither handled nor given to an idle run
