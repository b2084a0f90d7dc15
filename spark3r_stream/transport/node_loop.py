"""NodeLoop: where a node meets ZeroMQ (polling, signals, validation, end-of-stream; sockets from sockets.py).

Delivery kinds (chosen per edge in the endpoint table):

| kind       | sender socket        | receiver socket      | behaviour                                                   |
| ---------- | -------------------- | -------------------- | ----------------------------------------------------------- |
| `lossless` | PUSH, SNDHWM         | PULL, RCVHWM         | blocking send at the HWM (backpressure), never drops; replay |
| `latest`   | PUSH, small SNDHWM,  | PULL, small RCVHWM   | each poll drains the queue and handles only the newest data  |
|            | never blocks         |                      | message (`dropped.stale`); frames the sender could not queue |
|            |                      |                      | count as `dropped.unsent` there; live camera                 |
| `fanout`   | XPUB (verbose,       | SUB (all topics)     | any number of subscribers; a late joiner gets a snapshot;   |
|            | NODROP)              |                      | a full subscriber queue drops the message for all, counted  |
|            |                      |                      | at the sender (`dropped.unsent`); end-of-stream waits       |

Every message carries `seq` (per sender and edge, +1 per message accepted by ZeroMQ) and the sender's node name;
`EndOfStream.num_sent` counts the data messages before it, so a receiver proves that nothing was lost
(`lost.<edge>` stays 0 on lossless edges) or counts exactly what latest-wins superseded.

Latest-wins does not use ZMQ_CONFLATE: it drops multipart messages, and closing a conflating pipe lets libzmq's
termination delimiter replace the message waiting in its single slot (the final end-of-stream was lost over tcp
here). Draining a short queue gives the same effect with exact counts. Heartbeats are not sent on latest edges
(the frames themselves show liveness there).

Late joiners on fanout edges: the publisher binds an XPUB socket, which receives every subscription. When one
arrives, NodeLoop calls the snapshot provider registered with `loop.on_subscribe(edge, provider)` and publishes
its result (e.g. the fusion node's full map as `MapUpdate(is_snapshot=True)`). ZeroMQ guarantees that a message
sent after the subscription arrived reaches that subscriber, so no sleep or handshake is needed; existing
subscribers receive the snapshot too, which is harmless because map updates carry absolute poses.

Closing a lossless output: libzmq can drop messages still queued on a PUSH socket when it closes while the
receiver's queue is full, whatever the linger (seen here: 8 of 41 messages arrived; the engine's unsent bytes die
with the socket). So on a normal exit (no exception, no stop) every lossless output whose stream has ended
(`run()` returned, or `end_stream()`) stays open until its receivers have disconnected, watched through a socket
monitor. A receiver closes an input as soon as every upstream has ended it, so the sender is released when the
end-of-stream has been handled, not when the receiving process exits. After a stop or an exception closing waits
at most `linger_ms`.

Sequence numbers are consecutive per output: a heartbeat never goes out on an output whose data message is
waiting for the receiver (that message was encoded with the next seq), so a seq gap on a point-to-point edge is a
real loss, and only then warned about.

Zero-copy: arrays are sent with `copy=False`; never mutate an array after sending it (see codec.py).

No message ends a node: decoding and handling run under one guard per message, so a DecodeError is counted as
`dropped.<reason>`, a handler's Spark3RError as `dropped.handler_error` (or `dropped.<its reason>`), any other
exception in decode or handling as `dropped.decode_failed` / `dropped.handler_failed` (traceback logged once).
End-of-stream, heartbeats and sequence accounting count only from the input's `upstream_nodes` (the launch file's
producers of that edge): any message from another name, data or control, is `dropped.unknown_sender` and never
handled. Without `upstream_nodes` (library use) any name is served; at most MAX_UPSTREAMS names are tracked per input,
so a sender inventing names cannot grow the node's memory: control messages from further names are dropped, their data
is served but kept out of the accounting (`from_unknown.<edge>`).

At-least-once delivery on lossless edges (issue 15), after the zguide's reliability chapter: sequence numbers per
sender incarnation (the header's optional `epoch`; a sender without one is not deduplicated), a bounded resend buffer at the sender as in "Titanic"/"Clone"-style
replay, and peer liveness from connection events instead of Lazy Pirate's request timeouts (PUSH/PULL has no reply
to time out on). Every lossless output keeps what it sent (data, heartbeats, end-of-stream, with their seq) in a
buffer bounded by `replay_max_messages` and `replay_max_bytes` (the oldest leave first, `replay_evicted.<edge>`).
When its receiver reconnects after a disconnect (the receiving node was killed and respawned), the buffer is sent
again, or, where the node registered `loop.on_reconnect(edge, provider)`, what the provider returns (the keyframes
node: the current window's keyframes and requests; counted `resent.<topic>`). Receivers drop what they have seen by
(sender, epoch, seq) (`dropped.duplicate`; replays may arrive after newer messages, so the seen set is a watermark
plus the seqs above it, and a refilled hole no longer counts in `gaps.<edge>`). A sender restarted with a new epoch
starts a new accounting (`upstream_restarts.<edge>`). A receiver that was itself restarted (`is_restart`) without
persisted state counts each lossless upstream from the first seq it sees; one that persists its state saves
`export_input_state()` with it and restores it with `import_input_state()`, so a replay is deduplicated against
what the state already holds. An end-of-stream can overtake the replay (a respawned receiver first gets what the
sender queued while it was down): with seqs still missing before it, the input waits up to `eos_replay_wait_s` for
them before it ends and counts them lost. `on_input_end(handler)` runs before an ended input is closed (the sender is released
then), the moment to make that state durable.

A sender whose stream has ended waits for its receivers to disconnect (see "Closing a lossless output"); it cannot
tell a receiver that closed its input after the end-of-stream from one that was killed. So after a disconnect it
waits `reconnect_grace_s` more, and SIGUSR1 (the launcher sends it to the upstreams of a node it is about to respawn)
keeps it waiting until a receiver reconnects (or SIGUSR2: the respawned receiver ended normally); the respawned
receiver then gets the replay, end-of-stream included.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from spark3r_stream.errors import ConfigError, DecodeError, Spark3RError
from spark3r_stream.transport.codec import decode, encode
from spark3r_stream.transport.endpoints import Endpoint, parse_endpoints
from spark3r_stream.transport.messages import CONTROL_TYPES, MESSAGE_TYPES, EndOfStream, Heartbeat, message_type
from spark3r_stream.transport.sockets import open_socket, release_authentication

log = logging.getLogger(__name__)

MAX_BATCH = 64  # messages taken from one socket per poll, so other sockets and signals are served too
MAX_UPSTREAMS = 64  # sender names tracked per input when the endpoint does not list them (memory bound)
WARN_SUMMARY_S = 10.0  # repeated drops: first one logged as a warning, then a summary at most this often
EOS_REPLAY_WAIT_S = 30.0  # how long an end-of-stream waits for the replay of messages it overtook
REPLAY_MAX_MESSAGES = 10_000  # per lossless output: sent messages kept to replay to a restarted receiver
REPLAY_MAX_BYTES = 64 << 20  # and their bytes (sent arrays are held, not copied): a few window results at 518 px
MAX_AHEAD = 100_000  # seqs seen above a hole that never fills, per upstream, before the hole is given up as lost


@dataclass
class _Upstream:
    """What one input has seen from one sending node."""

    received: int = 0  # data messages decoded
    last_seq: int | None = None
    gaps: int = 0  # messages missing between consecutive seqs
    stale: int = 0  # latest-wins: received but superseded by a newer one, not handled
    num_sent: int | None = None  # from its EndOfStream
    # at-least-once bookkeeping (lossless inputs): every seq below `below` has been seen, plus those in `ahead`
    epoch: int | None = None  # the sender's incarnation
    below: int = 0
    ahead: set[int] = field(default_factory=set)
    num_seen: int = 0  # distinct seqs of this epoch, control messages included
    joined_at: int | None = None  # a restarted receiver without state: the first seq it saw
    eos_seq: int | None = None
    received_before: int = 0  # data messages of earlier epochs (the sender was restarted)
    restarts: int = 0
    # an end-of-stream that overtook messages still to be replayed (see _end_or_await_replay), and since when
    pending_eos: EndOfStream | None = None
    pending_since: float = 0.0


@dataclass
class _Input:
    endpoint: Endpoint
    socket: zmq.Socket
    upstreams: dict[str, _Upstream] = field(default_factory=dict)
    ended_by: set[str] = field(default_factory=set)
    is_closed: bool = False  # closed once every upstream ended it (releases the senders' close)

    @property
    def ended(self) -> bool:
        return len(self.ended_by) >= self.endpoint.upstreams


@dataclass
class _Output:
    endpoint: Endpoint
    socket: zmq.Socket
    seq: int = 0
    num_sent: int = 0  # data messages
    eos_sent: bool = False
    subscribers: int = 0
    is_sending: bool = False  # a data message waits for the receiver; heartbeats skip this output (seq order)
    monitor: zmq.Socket | None = None  # lossless: connection events, so that a normal close waits for receivers
    peers: int = 0  # connections open now (from the monitor)
    was_connected: bool = False
    replay: deque[tuple[int, list[Any], int]] = field(default_factory=deque)  # (seq, frames, bytes) sent lately
    replay_bytes: int = 0
    lost_peer: bool = False  # a receiver disconnected; its next connection gets the replay
    disconnected_at: float | None = None  # monotonic time of the last disconnect
    needs_replay: bool = False


class NodeLoop:
    """Sockets from an endpoint table, handlers per message type, 100 ms polls, signals, counters, end-of-stream.

    Use as a context manager; `run()` serves messages until every input has ended (then end-of-stream is sent
    downstream), a signal arrives, or `stop()` is called. A handler may return a message (or an iterable of
    messages); it is sent on the outputs that carry its topic. Counters (`loop.counters`, `loop.report()`):
    `recv.<topic>`, `sent.<topic>`, `dropped.<reason>` (bad messages, by DecodeError reason), `dropped.stale`
    (latest-wins), `dropped.unsent` (not sent: no peer on a latest edge, a full fanout subscriber, or shutdown
    while blocked), `dropped.stopping` (received but not handled because the loop was stopping),
    `lost.<edge>` (lossless messages that never arrived, known at end-of-stream), `gaps.<edge>` (seq gaps: messages
    missing on the way), `send_waits.<edge>`, `drain_timeout.<edge>` (a normal close gave up waiting for receivers).

    `linger_ms`: how long closing waits for queued messages after a stop or an exception; `drain_timeout_s`: how
    long a normal close waits for the receivers of ended lossless outputs (see the module docstring).
    """

    def __init__(
        self,
        name: str,
        endpoints: Any,
        *,
        poll_ms: int = 100,
        heartbeat_s: float = 1.0,
        log_every_s: float = 10.0,
        linger_ms: int = 1000,
        drain_timeout_s: float = 3600.0,
        handle_signals: bool = True,
        context: zmq.Context | None = None,
        report: Any = None,
        replay_max_messages: int = REPLAY_MAX_MESSAGES,
        replay_max_bytes: int = REPLAY_MAX_BYTES,
        is_restart: bool = False,
        reconnect_grace_s: float = 0.0,
        eos_replay_wait_s: float = EOS_REPLAY_WAIT_S,
    ) -> None:
        self.name = name
        self.replay_max_messages = replay_max_messages
        self.replay_max_bytes = replay_max_bytes
        self.is_restart = is_restart  # respawned: lossless inputs are counted from the first seq seen
        self.reconnect_grace_s = reconnect_grace_s
        self.eos_replay_wait_s = eos_replay_wait_s
        self._receiver_respawning = False  # SIGUSR1: a receiver will come back, keep its replay
        self.epoch = time.time_ns() // 1000  # this incarnation, in every header
        self._reconnect_providers: dict[str, Callable[[], Any]] = {}
        self._input_end_handlers: list[Callable[[str], Any]] = []
        self._idle_handlers: list[Callable[[], Any]] = []
        self.endpoints = parse_endpoints(endpoints)
        self.poll_ms = poll_ms
        self.heartbeat_s = heartbeat_s
        self.log_every_s = log_every_s
        self.linger_ms = linger_ms
        self.drain_timeout_s = drain_timeout_s
        self.handle_signals = handle_signals
        self.counters: Counter[str] = Counter()
        self.peers: dict[str, dict[str, Any]] = {}  # node -> last heartbeat {"t_received", "counters"}
        self.stop_reason: str | None = None
        self._report = report
        self._own_context = context is None
        self._context = context
        self._handlers: dict[str, Callable[[Any], Any]] = {}
        self._end_handlers: list[Callable[[], Any]] = []
        self._snapshots: dict[str, Callable[[], Any]] = {}
        self._inputs: dict[str, _Input] = {}
        self._outputs: dict[str, _Output] = {}
        self._routes: dict[str, list[str]] = {}
        self._poller = zmq.Poller()
        self._socket_role: dict[zmq.Socket, tuple[str, str]] = {}
        self._stop = False
        self._give_up = False  # a second signal came: stop waiting to deliver
        self._delivering = False  # end_stream(deliver=True) is waiting for a receiver
        self._finished = False
        self._old_signals: dict[int, Any] = {}
        self._warned: set[str] = set()
        self._suppressed: Counter[str] = Counter()
        now = time.monotonic()
        self._t_start = now
        self._next_heartbeat = now + heartbeat_s
        self._next_log = now + log_every_s
        self._next_warn_summary = now + WARN_SUMMARY_S
        self._last_log_counts: Counter[str] = Counter()
        self._last_log_t = now

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> NodeLoop:
        if self._context is None:
            self._context = zmq.Context()
        try:
            for ep in self.endpoints:
                self._open(ep)
        except BaseException:
            self._close()
            raise
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._old_signals[signum] = signal.signal(signum, self._on_signal)
            self._old_signals[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, self._on_respawn_notice)
            self._old_signals[signal.SIGUSR2] = signal.signal(signal.SIGUSR2, self._on_respawn_notice)
        log.info("%s: %d input(s), %d output(s) open", self.name, len(self._inputs), len(self._outputs))
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc is None and not self._stop:
                self._drain()
        finally:
            for signum, handler in self._old_signals.items():
                signal.signal(signum, handler)
            self._old_signals.clear()
            if self._report is not None:
                self._write_report(exc)
            self._close()

    def _drain(self) -> None:
        """Normal exit: keep every ended lossless output open until its receivers have disconnected (they have then
        read everything), waking every poll_ms for signals; give up after drain_timeout_s."""
        pending = [out for out in self._outputs.values() if out.monitor is not None and out.eos_sent]
        poller = zmq.Poller()
        for out in pending:
            poller.register(out.monitor, zmq.POLLIN)
        deadline = time.monotonic() + self.drain_timeout_s
        while True:
            for out in pending:
                self._read_monitor(out)
            self._replay_pending()  # a receiver respawned while this node waits for it to finish
            now = time.monotonic()
            pending = [
                out
                for out in pending
                if out.peers > 0
                or not out.was_connected
                or self._receiver_respawning
                or (out.disconnected_at is not None and now - out.disconnected_at < self.reconnect_grace_s)
            ]
            if not pending or self._stop or time.monotonic() >= deadline:
                break
            poller.poll(self.poll_ms)
        for out in [] if self._stop else pending:
            self.counters[f"drain_timeout.{out.endpoint.edge}"] += 1
            state = "still connected" if out.was_connected else "never connected"
            log.warning(
                "%s: receiver of %r %s %.0f s after the end of stream; closing",
                self.name,
                out.endpoint.edge,
                state,
                self.drain_timeout_s,
            )

    def _read_monitor(self, out: _Output) -> None:
        assert out.monitor is not None
        while True:
            try:
                event = recv_monitor_message(out.monitor, flags=zmq.NOBLOCK)["event"]
            except zmq.Again:
                return
            if event in (zmq.EVENT_CONNECTED, zmq.EVENT_ACCEPTED):
                out.peers += 1
                out.needs_replay = out.needs_replay or out.lost_peer  # a receiver came back: it gets the replay
                out.lost_peer = False
                out.was_connected = True
            elif event == zmq.EVENT_DISCONNECTED:
                out.peers = max(out.peers - 1, 0)
                out.lost_peer = True
                out.disconnected_at = time.monotonic()

    def _close(self) -> None:
        if self._context is None:
            return
        for out in self._outputs.values():
            if out.monitor is not None:
                out.socket.disable_monitor()
                out.monitor.close(linger=0)
                out.monitor = None
        # the ZAP handler stops before its context (inputs closed at their end are no longer in _socket_role)
        release_authentication(self._context, [p.socket for p in [*self._inputs.values(), *self._outputs.values()]])
        if self._own_context:
            self._context.destroy(linger=self.linger_ms)
        else:
            for sock in list(self._socket_role):
                sock.close(linger=self.linger_ms)
        self._socket_role.clear()

    def _write_report(self, exc: Any) -> None:
        """Fill a duck-typed RunReport (`set`, `finish`, `write`, `path`) without importing report.py (torch-free)."""
        self._report.set("transport", self.report())
        if exc is not None:
            self._report.finish("error", error=f"{type(exc).__name__}: {exc}")
        else:
            self._report.finish("interrupted" if self.stop_reason and self.stop_reason.startswith("SIG") else "ok")
        if getattr(self._report, "path", None) is not None:
            self._report.write()

    def _open(self, ep: Endpoint) -> None:
        assert self._context is not None
        sock, monitor = open_socket(self._context, ep, linger_ms=self.linger_ms, node=self.name, counters=self.counters)
        self._socket_role[sock] = (ep.direction, ep.edge)
        if ep.direction == "in":
            self._inputs[ep.edge] = _Input(ep, sock)
            self._poller.register(sock, zmq.POLLIN)
        else:
            self._outputs[ep.edge] = _Output(ep, sock, monitor=monitor)
            for topic in ep.topics:
                if topic not in MESSAGE_TYPES:
                    raise ConfigError(f"endpoint {ep.edge!r}: topic {topic!r} is not one of {sorted(MESSAGE_TYPES)}")
                self._routes.setdefault(topic, []).append(ep.edge)
            if sock.type == zmq.XPUB:
                self._poller.register(sock, zmq.POLLIN)  # subscription notifications
        log.debug("%s: %s %s %s (%s)", self.name, "bound" if ep.bind else "connected", ep.edge, ep.address, ep.kind)

    def _on_respawn_notice(self, signum: int, frame: Any) -> None:
        """SIGUSR1 from the launcher: a downstream node died and is being respawned, wait for it to reconnect;
        SIGUSR2: a downstream node ended normally (it needs nothing more)."""
        self._receiver_respawning = signum == signal.SIGUSR1

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop:
            self._give_up = True  # a second signal: stop waiting to deliver an end-of-stream
            if signum == signal.SIGINT and not self._delivering:
                raise KeyboardInterrupt  # second Ctrl-C: stop waiting for anything
        self.stop(signal.Signals(signum).name)

    # ------------------------------------------------------------------ registration
    def on(self, msg_type: type, handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """Call `handler(msg)` for every valid message of `msg_type`; its returned message(s) are sent."""
        self._handlers[message_type(msg_type).topic] = handler
        return handler

    def on_end(self, handler: Callable[[], Any]) -> Callable[[], Any]:
        """Call `handler()` once every input has ended, before end-of-stream goes downstream (flush here)."""
        self._end_handlers.append(handler)
        return handler

    def on_subscribe(self, edge: str, snapshot: Callable[[], Any]) -> None:
        """On a fanout output: when a subscriber joins, publish `snapshot()` (a message, iterable, or None)."""
        kinds = {e.edge: e.kind for e in self.endpoints if e.direction == "out"}
        if kinds.get(edge) != "fanout":
            raise ConfigError(
                f"node {self.name!r}: on_subscribe needs a fanout output edge; {edge!r} is {kinds.get(edge, 'not an output')}"
            )
        self._snapshots[edge] = snapshot

    def on_reconnect(self, edge: str, provider: Callable[[], Any]) -> None:
        """On a lossless output: when its receiver reconnects after a disconnect (it was restarted), send
        `provider()` (a message or iterable) instead of replaying the buffer; nothing is buffered on that edge."""
        if self._output(edge).monitor is None:
            raise ConfigError(f"node {self.name!r}: on_reconnect needs a lossless output edge; {edge!r} is not one")
        self._reconnect_providers[edge] = provider

    def on_idle(self, handler: Callable[[], Any]) -> None:
        """Call `handler()` after every poll that leaves no message waiting on any open input; what it returns is
        sent. Deferred work goes here (the reconstruction node runs its newest window request: whatever queued
        during that run is served before the next one). Not called once stopping or finished; an exception in it is
        a counted drop (`dropped.idle_failed`, or the Spark3RError's reason), never an exit."""
        self._idle_handlers.append(handler)

    def on_input_end(self, handler: Callable[[str], Any]) -> None:
        """Call `handler(edge)` when every upstream has ended an input, before it is closed (which releases the
        senders' replay buffers): persist what the input brought here."""
        self._input_end_handlers.append(handler)

    # ------------------------------------------------------------------ sending
    def send(self, msg: Any, edge: str | None = None, *, track: bool = False) -> Any:
        """Send `msg` on `edge`, or on every output carrying its topic. Returns True (or a MessageTracker with
        `track=True`, single edge only) when sent, False when it was not (latest-wins without a peer, shutdown).

        Lossless edges block at the HWM until the receiver takes the message, waking every poll_ms for signals.
        Never mutate `msg`'s arrays after this call (zero-copy).
        """
        topic = message_type(msg).topic
        edges = [edge] if edge is not None else self._routes.get(topic, [])
        if not edges:
            raise ConfigError(
                f"node {self.name!r} has no output for {topic!r} messages (outputs: {sorted(self._outputs)})"
            )
        result: Any = True
        for name in edges:
            sent = self._send_on(self._output(name), msg, topic, track=track)
            result = sent if (len(edges) == 1 and sent is not False) else (result and sent is not False)
        return result

    def _send_on(
        self,
        out: _Output,
        msg: Any,
        topic: str,
        *,
        track: bool = False,
        block: bool | None = None,
        resend: bool = False,
    ) -> Any:
        if out.monitor is not None and not resend and not out.is_sending:
            self._read_monitor(out)  # a receiver that came back gets the replay before anything newer
            self._replay_pending()
        frames = encode(msg, out.seq, node=self.name, epoch=self.epoch)
        kind = out.endpoint.kind
        is_data = topic not in ("heartbeat", "end_of_stream")
        if block is None:
            block = kind == "lossless"
        out.is_sending = True
        try:
            sent = self._send_frames(out, frames, block=block, track=track)
        finally:
            out.is_sending = False
        if sent is False:
            if is_data:
                self.counters["dropped.unsent"] += 1
            return False
        if out.monitor is not None and out.endpoint.edge not in self._reconnect_providers:
            self._remember(out, frames)
        out.seq += 1
        if is_data:
            out.num_sent += 1
            self.counters[f"{'resent' if resend else 'sent'}.{topic}"] += 1
        return sent

    def _remember(self, out: _Output, frames: list[Any]) -> None:
        """Keep a sent message (by reference: arrays are never mutated after sending) for a replay."""
        size = sum(memoryview(f).nbytes for f in frames)
        out.replay.append((out.seq, frames, size))
        out.replay_bytes += size
        while out.replay and (len(out.replay) > self.replay_max_messages or out.replay_bytes > self.replay_max_bytes):
            out.replay_bytes -= out.replay.popleft()[2]
            self.counters[f"replay_evicted.{out.endpoint.edge}"] += 1

    def _replay_one(self, out: _Output, frames: list[Any]) -> bool:
        """Send one buffered message again, waiting for the receiver; False if it left again (a later reconnect
        replays anew) or the loop is stopping."""
        while True:
            try:
                out.socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                return True
            except zmq.Again:
                pass
            out.socket.poll(self.poll_ms, zmq.POLLOUT)
            self._read_monitor(out)
            if self._stop or (out.peers == 0 and out.lost_peer):
                return False

    def _replay_pending(self) -> None:
        """Outputs whose receiver reconnected: send the provider's messages, or the buffer again (same seqs)."""
        for out in self._outputs.values():
            if not out.needs_replay or out.is_sending:
                continue
            out.needs_replay = False
            self._receiver_respawning = False
            edge = out.endpoint.edge
            self.counters[f"reconnects.{edge}"] += 1
            provider = self._reconnect_providers.get(edge)
            if provider is not None:
                result = provider()
                items = [] if result is None else [result] if hasattr(type(result), "TOPIC") else list(result)
                for item in items:
                    self._send_on(out, item, message_type(item).topic, resend=True)
                if out.eos_sent:  # the stream had ended: the new receiver must learn it too
                    self._send_on(out, EndOfStream(node=self.name, num_sent=out.num_sent), "end_of_stream")
                log.info("%s: receiver of %r reconnected; resent %d message(s)", self.name, edge, len(items))
                continue
            entries = list(out.replay)
            out.is_sending = True
            try:
                for _, frames, _ in entries:
                    if not self._replay_one(out, frames):
                        break
                    self.counters[f"replayed.{edge}"] += 1
            finally:
                out.is_sending = False
            first = entries[0][0] if entries else out.seq
            log.info(
                "%s: receiver of %r reconnected; replayed %d message(s) from seq %d",
                self.name, edge, self.counters[f"replayed.{edge}"], first,
            )  # fmt: skip

    def _send_frames(self, out: _Output, frames: list[Any], *, block: bool, track: bool) -> Any:
        """Send one message; `block` waits for the receiver (waking for signals), until a stop, or while delivering
        an end-of-stream (`end_stream(deliver=True)`) until a second signal."""
        sock = out.socket
        waited = False
        while True:
            try:
                tracker = sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False, track=track)
                return tracker if track else True
            except zmq.Again:
                if not block or (self._stop and not self._delivering) or self._give_up:
                    return False
            if not waited:
                self.counters[f"send_waits.{out.endpoint.edge}"] += 1
                waited = True
            if out.endpoint.kind == "fanout":
                time.sleep(0.005)  # XPUB reports POLLOUT even when a subscriber's queue is full: retry shortly
            else:
                sock.poll(self.poll_ms, zmq.POLLOUT)  # backpressure: wait for the receiver, waking for signals
            self._tick()

    def end_stream(self, deliver: bool = False) -> None:
        """Send EndOfStream(num_sent) on every output (once). Blocks on lossless edges unless stopping; `deliver`
        blocks on every edge, stopping or not (a second signal ends the wait)."""
        for out in self._outputs.values():
            if out.eos_sent:
                continue
            if out.monitor is not None:
                self._await_returning_receiver(out)
            eos = EndOfStream(node=self.name, num_sent=out.num_sent)
            self._delivering = deliver
            try:
                sent = self._send_on(out, eos, "end_of_stream", block=deliver or not self._stop)
            finally:
                self._delivering = False
            out.eos_sent = sent is not False
            if not out.eos_sent:
                log.warning("%s: end-of-stream on %r could not be sent (no receiver)", self.name, out.endpoint.edge)
            else:
                log.info("%s: end of stream on %r after %d messages", self.name, out.endpoint.edge, out.num_sent)

    def _await_returning_receiver(self, out: _Output) -> None:
        """Before the end-of-stream: a receiver that left and may come back (SIGUSR1: it is being respawned, or it
        left less than reconnect_grace_s ago) is waited for and gets its replay first. Sent now, the end-of-stream
        would sit in the pipe of the dead connection and reach the new receiver ahead of the replay, which a
        restarted receiver without state (it counts from the first seq it sees) cannot tell from a complete stream."""
        self._read_monitor(out)
        while (
            not self._stop
            and out.peers == 0
            and out.lost_peer
            and (self._receiver_respawning or time.monotonic() - (out.disconnected_at or 0.0) < self.reconnect_grace_s)
        ):
            out.monitor.poll(self.poll_ms)
            self._read_monitor(out)
        self._replay_pending()

    # ------------------------------------------------------------------ receiving
    def run(self, source: Iterable[Any] | None = None, *, max_polls: int | None = None) -> int:
        """Serve until every input ended, a signal, or stop(); returns 0 (exceptions propagate).

        `source`: messages to send (a capture node's frames); inputs are served between them; when it is
        exhausted end-of-stream is sent. `max_polls` bounds the loop (tests); it then returns without ending.
        """
        polls = 0
        try:
            if source is not None:
                for msg in source:
                    if self._stop:
                        break
                    self.send(msg)
                    self.poll_once(0)
                if not self._inputs and not self._stop:
                    self._finish()
            while not (self._stop or self._finished):
                if max_polls is not None and polls >= max_polls:
                    return 0
                if not self._inputs and not self._snapshots:
                    break
                self.poll_once(self.poll_ms)
                polls += 1
        except BaseException:
            self._stop = True  # no blocking any more: tell downstream what was sent, as far as it can take it
            self.end_stream()
            raise
        # after a signal or stop() too: downstream learns num_sent; a source's end-of-stream is delivered, so that the
        # other nodes finish what it sent (the launcher stops capture first, issue 16)
        self.end_stream(deliver=source is not None)
        return 0

    def poll_once(self, timeout_ms: int | None = None) -> int:
        """Wait up to `timeout_ms` (default poll_ms) and serve what arrived; returns the number of messages handled."""
        events = dict(self._poller.poll(self.poll_ms if timeout_ms is None else timeout_ms))
        self._replay_pending()
        handled = 0
        for sock in events:
            direction, edge = self._socket_role[sock]
            if direction == "out":
                self._serve_subscriptions(self._outputs[edge])
            else:
                handled += self._serve_input(self._inputs[edge])
        self._tick()
        if self._idle_handlers and not (self._stop or self._finished) and self._inputs_drained():
            self._run_idle_handlers()
        return handled

    def _inputs_drained(self) -> bool:
        return not any(
            inp.socket.getsockopt(zmq.EVENTS) & zmq.POLLIN for inp in self._inputs.values() if not inp.is_closed
        )

    def _run_idle_handlers(self) -> None:
        for handler in self._idle_handlers:
            try:
                self._send_result(handler())
            except Spark3RError as exc:
                self._drop("idle", getattr(exc, "reason", None) or "handler_error", f"idle handler: {exc}")
            except Exception as exc:
                self._drop("idle", "idle_failed", f"{type(exc).__name__}: {exc}", exc_info=True)

    def _serve_input(self, inp: _Input) -> int:
        latest = inp.endpoint.kind == "latest"
        batch: list[tuple[Any, dict[str, Any]]] = []
        for _ in range(MAX_BATCH):
            if self._stop:  # stopping: leave the rest in the queue
                break
            try:
                frames = inp.socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                batch.append(decode(frames))
            except DecodeError as exc:
                self._drop(inp.endpoint.edge, exc.reason, exc.detail)
            except Exception as exc:  # a codec bug must not end the node: count it, log it once with the trace
                self._drop(inp.endpoint.edge, "decode_failed", f"{type(exc).__name__}: {exc}", exc_info=True)
        # Latest-wins: of the data messages queued now, only the newest is handled; control messages all are.
        newest = max((i for i, (msg, _) in enumerate(batch) if not isinstance(msg, CONTROL_TYPES)), default=-1)
        handled = 0
        for i, (msg, header) in enumerate(batch):
            if self._finished:
                break
            if self._stop:  # stop() takes effect before the next message, even inside a batch
                unserved = sum(not isinstance(m, CONTROL_TYPES) for m, _ in batch[i:])
                self.counters["dropped.stopping"] += unserved
                break
            stale = latest and i != newest and not isinstance(msg, CONTROL_TYPES)
            self._dispatch(inp, msg, header, stale=stale)
            handled += not stale
        return handled

    def _dispatch(self, inp: _Input, msg: Any, header: dict[str, Any], *, stale: bool = False) -> None:
        """Account for and handle one decoded message; whatever it raises is a counted drop, never an exit."""
        try:
            self._dispatch_one(inp, msg, header, stale=stale)
        except Spark3RError as exc:  # the handler rejected this input; the node keeps serving
            reason = getattr(exc, "reason", None) or "handler_error"  # e.g. InputError(..., "bad_image")
            self._drop(inp.endpoint.edge, reason, f"{header['type']}: {exc}")
        except Exception as exc:
            detail = f"{header['type']}: {type(exc).__name__}: {exc}"
            self._drop(inp.endpoint.edge, "handler_failed", detail, exc_info=True)
        self._finish_if_all_ended()

    def _upstream(self, inp: _Input, src: str) -> _Upstream | None:
        """The accounting of sender `src` on this input; None if `src` is not one of its upstreams."""
        allowed = inp.endpoint.upstream_nodes
        if src not in inp.upstreams:
            if (src not in allowed) if allowed is not None else len(inp.upstreams) >= MAX_UPSTREAMS:
                return None
            # Senders count seq from 0, so on point-to-point edges a first seq > 0 means earlier messages were
            # dropped (latest-wins) or lost; a fanout subscriber may join at any seq.
            inp.upstreams[src] = _Upstream(last_seq=None if inp.endpoint.kind == "fanout" else -1)
        return inp.upstreams[src]

    def _dispatch_one(self, inp: _Input, msg: Any, header: dict[str, Any], *, stale: bool) -> None:
        topic = header["type"]
        src = header["node"]
        for name in header.get("cleared", ()):  # an optional array that held NaN/inf, e.g. a ground-truth pose
            self.counters[f"cleared.{topic}.{name}"] += 1
            self._warn(f"cleared.{topic}.{name}", f"{topic}.{name} from {src[:40]!r} held NaN/inf; cleared to None")
        up = self._upstream(inp, src)
        if up is None:
            # only a configured upstream may end an input, report as a peer or (issue 15) bring data
            if isinstance(msg, CONTROL_TYPES) or inp.endpoint.upstream_nodes is not None:
                self._drop(inp.endpoint.edge, "unknown_sender", f"{topic} from {src[:40]!r}, not an upstream")
                return
            self.counters[f"from_unknown.{inp.endpoint.edge}"] += 1
            self._warn(f"from_unknown.{inp.endpoint.edge}", f"{topic} from {src[:40]!r}, not an upstream; served")
            up = _Upstream()  # served, but kept out of the sequence accounting
        elif inp.endpoint.kind == "lossless" and "epoch" in header and self._seen_before(inp, up, header, msg):
            return  # a sender without an epoch (not a NodeLoop) gets no deduplication: its seqs may repeat
        if up.last_seq is not None and header["seq"] > up.last_seq + 1:
            missing = header["seq"] - up.last_seq - 1
            up.gaps += missing
            self.counters[f"gaps.{inp.endpoint.edge}"] += missing
            if inp.endpoint.kind != "fanout":
                self._warn(
                    f"gap.{inp.endpoint.edge}", f"{missing} message(s) from {src!r} missing before seq {header['seq']}"
                )
        up.last_seq = header["seq"] if up.last_seq is None else max(up.last_seq, header["seq"])  # replays come late
        if stale:  # superseded by a newer frame in the same queue (latest-wins)
            up.stale += 1
            self.counters["dropped.stale"] += 1
            return
        self.counters[f"recv.{topic}"] += 1
        if isinstance(msg, Heartbeat):
            if msg.node in self.peers or len(self.peers) < MAX_UPSTREAMS:
                self.peers[msg.node] = {"t_received": time.time(), "counters": dict(msg.counters)}
        elif isinstance(msg, EndOfStream):
            self._end_or_await_replay(inp, src, up, msg, header)
        else:
            up.received += 1
        handler = self._handlers.get(topic)
        if handler is None:
            if not isinstance(msg, (Heartbeat, EndOfStream)):
                self.counters[f"ignored.{topic}"] += 1
        else:
            self._send_result(handler(msg))
        if up.pending_eos is not None and up.below > up.eos_seq:  # the replay filled the last hole
            log.info("%s: the replay from %r on %r is complete", self.name, src, inp.endpoint.edge)
            self._end_upstream(inp, src, up, up.pending_eos)

    def _end_or_await_replay(
        self, inp: _Input, src: str, up: _Upstream, eos: EndOfStream, header: dict[str, Any]
    ) -> None:
        """End `src`'s stream, unless messages before its end-of-stream are still missing on a lossless edge.

        A receiver respawned after a kill gets what its sender queued while it was down first (ZeroMQ keeps a
        connecting socket's pipe), end-of-stream included, and only then the sender's replay of what died in flight.
        Ending at once would count those as lost and close the input before they arrive: wait for the holes to fill
        (or `eos_replay_wait_s`, then they are lost)."""
        holes = inp.endpoint.kind == "lossless" and "epoch" in header and up.below <= header["seq"]
        if not holes:
            self._end_upstream(inp, src, up, eos)
            return
        up.pending_eos, up.pending_since = eos, time.monotonic()
        self.counters[f"eos_awaiting_replay.{inp.endpoint.edge}"] += 1
        log.info(
            "%s: %r ended %r with seqs from %d missing; waiting up to %.0f s for its replay",
            self.name, src, inp.endpoint.edge, up.below, self.eos_replay_wait_s,
        )  # fmt: skip

    def _finish_if_all_ended(self) -> None:
        if self._inputs and all(i.ended for i in self._inputs.values()) and not self._finished:
            self._finish()

    def _end_upstream(self, inp: _Input, src: str, up: _Upstream, eos: EndOfStream) -> None:
        up.pending_eos = None
        self._upstream_ended(inp, src, up, eos)
        if inp.ended:
            self._close_input(inp)

    def _send_result(self, result: Any) -> None:
        if result is None or isinstance(result, bool) or type(result).__name__ == "MessageTracker":
            return
        if hasattr(type(result), "TOPIC"):
            self.send(result)
            return
        if isinstance(result, (list, tuple)) or hasattr(result, "__next__"):
            for item in result:
                self._send_result(item)

    def _upstream_ended(self, inp: _Input, src: str, up: _Upstream, eos: EndOfStream) -> None:
        up.num_sent = eos.num_sent
        inp.ended_by.add(src)
        edge, kind = inp.endpoint.edge, inp.endpoint.kind
        missing = eos.num_sent - up.received
        if up.joined_at is not None and up.eos_seq is not None:  # restarted without state: from the first seq seen
            missing = (up.eos_seq - up.joined_at) - (up.num_seen - 1)
        if kind == "lossless":
            self.counters[f"lost.{edge}"] += max(missing, 0)
            if missing:
                log.error(
                    "%s: %d of %d messages from %r on %r never arrived", self.name, missing, eos.num_sent, src, edge
                )
            else:
                log.info("%s: all %d messages from %r on %r arrived", self.name, eos.num_sent, src, edge)
        else:
            log.info(
                "%s: %r ended %r after %d messages, %d received (%s)",
                self.name,
                src,
                edge,
                eos.num_sent,
                up.received,
                kind,
            )

    def _seen_before(self, inp: _Input, up: _Upstream, header: dict[str, Any], msg: Any) -> bool:
        """At-least-once bookkeeping of one lossless message: True if (epoch, seq) was seen (a replay: counted
        `dropped.duplicate`, not handled); a new sender epoch starts a new accounting; a hole refilled by a
        replay leaves `gaps`."""
        edge, seq, epoch = inp.endpoint.edge, header["seq"], header.get("epoch", 0)
        if up.epoch is None or up.epoch != epoch:
            if up.epoch is not None:  # the sender was restarted: its seq starts again
                self.counters[f"upstream_restarts.{edge}"] += 1
                log.info("%s: %r restarted on %r; a new sequence from seq %d", self.name, header["node"], edge, seq)
                up.received_before += up.received
                up.received, up.gaps, up.num_sent = 0, 0, None
                up.restarts += 1
                inp.ended_by.discard(header["node"])
                up.below, up.ahead, up.num_seen, up.joined_at, up.eos_seq = 0, set(), 0, None, None
                up.pending_eos = None  # the old incarnation's replay will not come
                up.last_seq = -1
            elif self.is_restart and up.num_seen == 0 and seq > 0:  # what came before went to the last incarnation
                up.below, up.joined_at, up.last_seq = seq, seq, seq - 1
                self.counters[f"joined_at_seq.{edge}"] = seq
            up.epoch = epoch
        if seq < up.below or seq in up.ahead:
            self.counters["dropped.duplicate"] += 1
            return True
        if up.last_seq is not None and seq < up.last_seq:  # fills a hole counted as a gap when it opened
            up.gaps = max(up.gaps - 1, 0)
            self.counters[f"gaps.{edge}"] = max(self.counters[f"gaps.{edge}"] - 1, 0)
        up.num_seen += 1
        if isinstance(msg, EndOfStream):
            up.eos_seq = seq
        up.ahead.add(seq)
        while up.below in up.ahead:
            up.ahead.remove(up.below)
            up.below += 1
        if len(up.ahead) > MAX_AHEAD:  # a hole that never filled: give it up (it stays counted in gaps)
            up.below = min(up.ahead)
            while up.below in up.ahead:
                up.ahead.remove(up.below)
                up.below += 1
        return False

    def export_input_state(self) -> dict[str, Any]:
        """The lossless inputs' accounting (JSON-able), to persist with the state built from them."""
        state: dict[str, Any] = {}
        for edge, inp in self._inputs.items():
            if inp.endpoint.kind != "lossless":
                continue
            state[edge] = {
                "ended_by": sorted(inp.ended_by),
                "upstreams": {
                    src: {
                        "epoch": up.epoch,
                        "below": up.below,
                        "ahead": sorted(up.ahead),
                        "num_seen": up.num_seen,
                        "received": up.received,
                        "received_before": up.received_before,
                        "last_seq": up.last_seq,
                        "gaps": up.gaps,
                        "num_sent": up.num_sent,
                        "restarts": up.restarts,
                    }
                    for src, up in inp.upstreams.items()
                },
            }
        return state

    def import_input_state(self, state: dict[str, Any]) -> None:
        """Restore `export_input_state()` (a respawned node reloading its persisted state): replays of what it
        covers are dropped as duplicates, and an input that had ended is closed at once."""
        for edge, saved in state.items():
            inp = self._inputs.get(edge)
            if inp is None or inp.is_closed:
                continue
            for src, data in saved["upstreams"].items():
                up = _Upstream(
                    received=data["received"],
                    last_seq=data["last_seq"],
                    gaps=data["gaps"],
                    num_sent=data["num_sent"],
                    epoch=data["epoch"],
                    below=data["below"],
                    ahead=set(data["ahead"]),
                    num_seen=data["num_seen"],
                    received_before=data["received_before"],
                    restarts=data["restarts"],
                )
                inp.upstreams[src] = up
            inp.ended_by = set(saved["ended_by"])
            if inp.ended:
                self._poller.unregister(inp.socket)
                del self._socket_role[inp.socket]
                inp.socket.close(linger=0)
                inp.is_closed = True
        self._finish_if_all_ended()

    def _close_input(self, inp: _Input) -> None:
        """Every upstream has ended this input: close it now, so the senders' close sees the disconnect."""
        for handler in self._input_end_handlers:
            try:
                handler(inp.endpoint.edge)
            except Exception:  # the input must still close, or its senders wait for ever
                self.counters["input_end_failed"] += 1
                log.exception("%s: input-end handler for %r failed", self.name, inp.endpoint.edge)
        self._poller.unregister(inp.socket)
        del self._socket_role[inp.socket]
        inp.socket.close(linger=0)
        inp.is_closed = True

    def _finish(self) -> None:
        """Every input ended (or the source ran out): flush handlers, then end-of-stream downstream."""
        self._finished = True
        for handler in self._end_handlers:
            self._send_result(handler())
        self.end_stream()

    def _serve_subscriptions(self, out: _Output) -> None:
        joined = 0
        for _ in range(MAX_BATCH):
            try:
                event = out.socket.recv(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            if event[:1] == b"\x01":
                joined += 1
                out.subscribers += 1
            elif event[:1] == b"\x00":
                out.subscribers = max(out.subscribers - 1, 0)
        if joined:
            self.counters[f"subscribed.{out.endpoint.edge}"] += joined
            if out.endpoint.edge in self._snapshots:
                self._send_snapshot(out)

    def _send_snapshot(self, out: _Output) -> None:
        result = self._snapshots[out.endpoint.edge]()
        items = [] if result is None else [result] if hasattr(type(result), "TOPIC") else list(result)
        for item in items:
            self._send_on(out, item, message_type(item).topic)
        self.counters[f"snapshots.{out.endpoint.edge}"] += 1

    def stop(self, reason: str = "stopped") -> None:
        """Ask the loop to stop before the next message (signal handlers call this); a running handler finishes,
        messages already taken off a socket are not handled (`dropped.stopping`), the rest stay queued."""
        if not self._stop:
            log.info("%s: stopping (%s)", self.name, reason)
        self._stop = True
        self.stop_reason = self.stop_reason or reason

    @property
    def is_stopping(self) -> bool:
        return self._stop

    @property
    def is_finished(self) -> bool:
        return self._finished

    # ------------------------------------------------------------------ periodic work and reporting
    def _tick(self) -> None:
        now = time.monotonic()
        for inp in self._inputs.values():
            for src, up in inp.upstreams.items():
                if up.pending_eos is not None and now - up.pending_since > self.eos_replay_wait_s:
                    log.warning("%s: no replay from %r on %r; ending it", self.name, src, inp.endpoint.edge)
                    self._end_upstream(inp, src, up, up.pending_eos)
                    self._finish_if_all_ended()
        for out in self._outputs.values():
            if out.monitor is not None:
                self._read_monitor(out)  # keeps the peer count current (and the monitor queue short)
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.heartbeat_s
            self._heartbeat()
        if now >= self._next_warn_summary:
            self._next_warn_summary = now + WARN_SUMMARY_S
            if self._suppressed:
                log.warning("%s: in the last %.0f s also dropped %s", self.name, WARN_SUMMARY_S, dict(self._suppressed))
                self._suppressed.clear()
        if now >= self._next_log:
            self._log_rates(now)

    def _heartbeat(self) -> None:
        beat = Heartbeat(node=self.name, counters={k: float(v) for k, v in self.counters.items()})
        for out in self._outputs.values():
            if out.endpoint.kind != "latest" and not out.eos_sent and not out.is_sending:
                self._send_on(out, beat, "heartbeat", block=False)

    def _log_rates(self, now: float) -> None:
        dt = max(now - self._last_log_t, 1e-9)
        moved = {
            k: (v - self._last_log_counts[k]) / dt for k, v in self.counters.items() if k.startswith(("recv.", "sent."))
        }
        drops = {k: v for k, v in self.counters.items() if k.startswith(("dropped.", "lost.", "gaps."))}
        rates = ", ".join(f"{k} {v:.1f}/s" for k, v in sorted(moved.items()) if v > 0) or "idle"
        log.info("%s: %s; drops %s", self.name, rates, drops or "none")
        self._last_log_counts = Counter(self.counters)
        self._last_log_t = now
        self._next_log = now + self.log_every_s

    def _drop(self, edge: str, reason: str, detail: str, *, exc_info: bool = False) -> None:
        self.counters[f"dropped.{reason}"] += 1
        self._warn(reason, f"dropped a message on {edge!r}: {reason}: {detail[:300]}", exc_info=exc_info)

    def _warn(self, key: str, text: str, *, exc_info: bool = False) -> None:
        if key in self._warned:
            self._suppressed[key] += 1
            return
        self._warned.add(key)
        log.warning("%s: %s", self.name, text, exc_info=exc_info)

    def _output(self, edge: str) -> _Output:
        if edge not in self._outputs:
            raise ConfigError(f"node {self.name!r} has no output edge {edge!r} (outputs: {sorted(self._outputs)})")
        return self._outputs[edge]

    def report(self) -> dict[str, Any]:
        """Counters and per-edge accounting for the node's run report (JSON-able)."""
        inputs = {}
        for edge, inp in self._inputs.items():
            inputs[edge] = {
                "address": inp.endpoint.address,
                "kind": inp.endpoint.kind,
                "ended": inp.ended,
                "upstreams": {
                    src: {
                        "received": up.received,
                        "num_sent": up.num_sent,
                        "missing": None if up.num_sent is None else up.num_sent - up.received,
                        "seq_gaps": up.gaps,
                        "stale": up.stale,
                    }
                    | (  # at-least-once: only when a restart happened on either side
                        {
                            "sender_restarts": up.restarts,
                            "received_before_restart": up.received_before,
                            "joined_at_seq": up.joined_at,
                        }
                        if up.restarts or up.joined_at is not None
                        else {}
                    )
                    for src, up in inp.upstreams.items()
                },
            }
        outputs = {
            edge: {
                "address": out.endpoint.address,
                "kind": out.endpoint.kind,
                "num_sent": out.num_sent,
                "end_of_stream_sent": out.eos_sent,
                "subscribers": out.subscribers if out.endpoint.kind == "fanout" else None,
            }
            for edge, out in self._outputs.items()
        }
        return {
            "node": self.name,
            "uptime_s": round(time.monotonic() - self._t_start, 3),
            "stop_reason": self.stop_reason,
            "counters": dict(sorted(self.counters.items())),
            "inputs": inputs,
            "outputs": outputs,
            "peers": {k: v["counters"] for k, v in self.peers.items()},
        }
