"""At-least-once delivery on lossless edges, in one process over ipc (issue 15, part C): a receiver that dies and
comes back gets the sender's buffer again and drops what its persisted state already holds; a restarted sender
starts a new sequence; a reconnect provider replaces the buffer. Every wait is a bounded poll."""

from __future__ import annotations

import pytest
import zmq

from spark3r_stream.transport import EndOfStream, FrameRecord, NodeLoop, WindowRequest, decode, encode, make_endpoint

pytestmark = pytest.mark.fault
MAX_POLLS = 200


def record(seq: int) -> FrameRecord:
    return FrameRecord(frame_seq=seq, t_capture=seq / 30, keyframe_id=None, gt_world_from_cam=None)


def receiver(ctx, ipc_dir, got: list[int], **kw) -> NodeLoop:
    ep = make_endpoint("frame_records", "in", run_dir=ipc_dir, upstream_nodes=("keyframes",))
    loop = NodeLoop("fusion", [ep], context=ctx, handle_signals=False, linger_ms=0, **kw)
    loop.on(FrameRecord, lambda r: got.append(r.frame_seq))
    return loop


def sender(ctx, ipc_dir, **kw) -> NodeLoop:
    ep = make_endpoint("frame_records", "out", run_dir=ipc_dir)
    return NodeLoop("keyframes", [ep], context=ctx, handle_signals=False, heartbeat_s=3600, **kw)


def poll_both(a: NodeLoop, b: NodeLoop, done) -> None:
    for _ in range(MAX_POLLS):
        if done():
            return
        a.poll_once(20)
        b.poll_once(20)
    raise AssertionError(f"not done: {dict(a.counters)} {dict(b.counters)}")


def test_restarted_receiver_gets_the_replay_and_drops_what_its_state_holds(ctx, ipc_dir):
    got: list[int] = []
    src = sender(ctx, ipc_dir)
    first = receiver(ctx, ipc_dir, got)
    with src:
        with first:
            for i in range(5):
                src.send(record(i))
            poll_both(first, src, lambda: len(got) == 5)
            saved = first.export_input_state()  # what a persisted state would hold: seqs 0..4
            for i in range(5, 8):
                src.send(record(i))
            poll_both(first, src, lambda: len(got) == 8)  # handled, but never persisted: gone with the node
        got.clear()
        second = receiver(ctx, ipc_dir, got, is_restart=True)
        with second:
            second.import_input_state(saved)
            poll_both(second, src, lambda: src.counters["reconnects.frame_records"] == 1 and len(got) == 3)
            for i in range(8, 10):
                src.send(record(i))
            src.end_stream()
            poll_both(second, src, lambda: second.is_finished)
    assert got == [5, 6, 7, 8, 9]  # 0..4 were in the state: dropped as duplicates, 5..7 replayed, nothing twice
    assert second.counters["dropped.duplicate"] == 5
    assert src.counters["replayed.frame_records"] == 8
    upstream = second.report()["inputs"]["frame_records"]["upstreams"]["keyframes"]
    assert upstream["num_sent"] == 10 and upstream["missing"] == 0, upstream
    assert second.counters["lost.frame_records"] == 0 and second.counters["gaps.frame_records"] == 0


def test_restarted_receiver_without_state_counts_from_the_first_seq_it_sees(ctx, ipc_dir):
    got: list[int] = []
    src = sender(ctx, ipc_dir, replay_max_messages=2)  # the buffer keeps only the last two
    first = receiver(ctx, ipc_dir, got)
    with src:
        with first:
            for i in range(6):
                src.send(record(i))
            poll_both(first, src, lambda: len(got) == 6)
        got.clear()
        second = receiver(ctx, ipc_dir, got, is_restart=True)
        with second:
            poll_both(second, src, lambda: len(got) == 2)
            src.end_stream()
            poll_both(second, src, lambda: second.is_finished)
    assert got == [4, 5]
    assert src.counters["replay_evicted.frame_records"] == 5  # 6 records and the end-of-stream sent, 2 kept
    assert second.counters["joined_at_seq.frame_records"] == 4
    assert second.counters["lost.frame_records"] == 0  # nothing missing from the first seq it saw on


def test_replay_after_newer_messages_fills_the_hole_and_loses_nothing(ctx, ipc_dir):
    """A replay can arrive after messages that were still queued: the seen set is a watermark plus seqs above it."""
    got: list[int] = []
    loop = receiver(ctx, ipc_dir, got)
    push = ctx.socket(zmq.PUSH)
    with loop:
        push.connect(loop.endpoints[0].address)
        epoch = 77
        for seq in (0, 3, 4, 1, 2, 3, 0):
            push.send_multipart(encode(record(seq), seq, node="keyframes", epoch=epoch))
        push.send_multipart(encode(EndOfStream(node="keyframes", num_sent=5), 5, node="keyframes", epoch=epoch))
        for _ in range(MAX_POLLS):
            if loop.is_finished:
                break
            loop.poll_once(20)
    push.close(linger=0)
    assert got == [0, 3, 4, 1, 2]
    assert loop.counters["dropped.duplicate"] == 2
    assert loop.counters["gaps.frame_records"] == 0 and loop.counters["lost.frame_records"] == 0


def serve_raw(loop: NodeLoop, push: zmq.Socket, sent: list, polls: int = MAX_POLLS) -> None:
    """Send (message, seq) pairs as sender 'keyframes' of epoch 7 and poll `loop` until it finishes (or `polls`)."""
    for msg, seq in sent:
        push.send_multipart(encode(msg, seq, node="keyframes", epoch=7))
    for _ in range(polls):
        if loop.is_finished:
            return
        loop.poll_once(20)


def test_end_of_stream_ahead_of_the_replay_waits_for_it(ctx, ipc_dir):
    """A respawned receiver gets what its sender queued while it was down (end-of-stream included) before the replay
    of what died in flight: the end waits for the holes to fill instead of counting them lost."""
    got: list[int] = []
    loop = receiver(ctx, ipc_dir, got)
    push = ctx.socket(zmq.PUSH)
    with loop:
        push.connect(loop.endpoints[0].address)
        eos = EndOfStream(node="keyframes", num_sent=5)
        serve_raw(loop, push, [(record(0), 0), (record(1), 1), (record(4), 4), (eos, 5)], polls=20)
        assert not loop.is_finished and loop.counters["eos_awaiting_replay.frame_records"] == 1
        serve_raw(loop, push, [(record(i), i) for i in range(5)] + [(eos, 5)])  # the whole buffer again
    push.close(linger=0)
    assert loop.is_finished and got == [0, 1, 4, 2, 3]
    assert loop.counters["lost.frame_records"] == 0  # complete once 3 filled the last hole: the input closed then
    assert loop.counters["dropped.duplicate"] == 2


def test_end_of_stream_whose_replay_never_comes_counts_the_loss(ctx, ipc_dir):
    got: list[int] = []
    loop = receiver(ctx, ipc_dir, got, eos_replay_wait_s=0.2)
    push = ctx.socket(zmq.PUSH)
    with loop:
        push.connect(loop.endpoints[0].address)
        serve_raw(loop, push, [(record(0), 0), (EndOfStream(node="keyframes", num_sent=2), 2)])
    push.close(linger=0)
    assert loop.is_finished and got == [0]
    assert loop.counters["lost.frame_records"] == 1


def test_restarted_sender_starts_a_new_sequence(ctx, ipc_dir):
    got: list[int] = []
    loop = receiver(ctx, ipc_dir, got)
    push = ctx.socket(zmq.PUSH)
    with loop:
        push.connect(loop.endpoints[0].address)
        for epoch, seqs in ((1, (0, 1, 2)), (2, (0, 1))):  # the second incarnation counts from 0 again
            for seq in seqs:
                push.send_multipart(encode(record(10 * epoch + seq), seq, node="keyframes", epoch=epoch))
        push.send_multipart(encode(EndOfStream(node="keyframes", num_sent=2), 2, node="keyframes", epoch=2))
        for _ in range(MAX_POLLS):
            if loop.is_finished:
                break
            loop.poll_once(20)
    push.close(linger=0)
    assert got == [10, 11, 12, 20, 21]
    assert loop.counters["upstream_restarts.frame_records"] == 1 and loop.counters["lost.frame_records"] == 0
    upstream = loop.report()["inputs"]["frame_records"]["upstreams"]["keyframes"]
    assert upstream["received_before_restart"] == 3 and upstream["sender_restarts"] == 1


def test_reconnect_provider_replaces_the_buffer(ctx, ipc_dir):
    got: list[int] = []
    out = make_endpoint("keyframes", "out", run_dir=ipc_dir)
    src = NodeLoop("keyframes", [out], context=ctx, handle_signals=False, heartbeat_s=3600)

    def make_sink() -> NodeLoop:
        ep = make_endpoint("keyframes", "in", run_dir=ipc_dir, upstream_nodes=("keyframes",))
        sink = NodeLoop("reconstruction", [ep], context=ctx, handle_signals=False, linger_ms=0, is_restart=True)
        sink.on(WindowRequest, lambda r: got.append(r.window_id))
        return sink

    with src:
        src.on_reconnect("keyframes", lambda: [WindowRequest(window_id=99, keyframe_ids=(3, 4))])
        with make_sink() as sink:
            for i in range(3):
                src.send(WindowRequest(window_id=i, keyframe_ids=(i,)))
            poll_both(sink, src, lambda: len(got) == 3)
        with make_sink() as sink:
            poll_both(sink, src, lambda: len(got) == 4)
    assert got == [0, 1, 2, 99]
    assert src.counters["resent.window_request"] == 1 and src.counters["sent.window_request"] == 3
    assert src.counters["replayed.keyframes"] == 0


def test_epoch_is_optional_and_checked():
    frames = encode(record(1), 1, node="x")
    assert "epoch" not in decode(frames)[1]
    assert decode(encode(record(1), 1, node="x", epoch=5))[1]["epoch"] == 5
    bad = encode(record(1), 1, node="x", epoch=5)
    bad[1] = bad[1].replace(b'"epoch":5', b'"epoch":-5')
    with pytest.raises(Exception, match="epoch"):
        decode(bad)
