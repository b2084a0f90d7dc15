"""Fuzz a real node process: hostile messages, then valid frames; 0 crashes, every message accounted for (issue 15).

The keyframes node runs as `spark3r run-node keyframes --config launch/demo.yaml --out DIR` in its own process. This
script stands in for capture (it connects to the node's `frames` input) and for reconstruction and fusion (it binds
the node's `keyframes` and `frame_records` outputs and drains them on a thread). It sends `--messages` messages drawn
from the kinds in KINDS (random bytes, bad JSON, deep nesting, huge numbers, giant declared shapes, forged
end-of-stream and heartbeats, NaN/inf poses, wrong types, thin giant images, ...), then `--valid` valid frames, then
the real end-of-stream, and checks:

- the node never exits before the end-of-stream, and exits 0 after it with status ok;
- every message is accounted for: sent = received (`recv.*`) + dropped before handling (by reason), and each
  decode-time reason count equals what `decode` in this process says about the same bytes;
- every valid frame afterwards is processed (a FrameRecord comes back for each);
- the node's peak RSS: VmHWM of its process from /proc, read last after the valid frames were processed.

    python -m benchmarks.bench_faults                      # 100,000 messages -> benchmarks/results/bench_faults.md
    python -m benchmarks.bench_faults --messages 3000 --quick   # CI size, no result files
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from spark3r_stream.errors import DecodeError
from spark3r_stream.transport import (
    EndOfStream,
    Frame,
    FrameRecord,
    Heartbeat,
    Keyframe,
    MapUpdate,
    WindowRequest,
    decode,
    encode,
)
from spark3r_stream.transport.endpoints import default_run_dir

REPO = Path(__file__).resolve().parents[1]
NAME = "bench_faults"
UPSTREAM = "capture"  # the name the keyframes node of launch/demo.yaml accepts end-of-stream from
STARTUP_S = 120.0  # node start-up (imports) on 2 shared cores
RSS_SAMPLE_S = 0.2
#: drops that happen inside a handler: those messages were also counted as received (`recv.*`)
HANDLER_REASONS = frozenset({"handler_error", "handler_failed", "bad_image"})

Wire = list[bytes]


def to_wire(msg: Any, seq: int, node: str = UPSTREAM) -> Wire:
    return [bytes(memoryview(f).cast("B")) if not isinstance(f, bytes) else f for f in encode(msg, seq, node=node)]


@dataclass
class Fuzzer:
    """Draws hostile messages; `next_frame_seq` keeps the frames that should pass the selector in order."""

    rng: np.random.Generator
    next_frame_seq: int = 0
    seq: int = 0  # the header seq of messages sent as UPSTREAM

    def image(self, h: int = 16, w: int = 20) -> np.ndarray:
        return self.rng.integers(0, 256, (h, w, 3), dtype=np.uint8)

    def frame(self, **kw: Any) -> Frame:
        self.next_frame_seq += 1
        fields = {"frame_seq": self.next_frame_seq, "t_capture": self.next_frame_seq / 30, "source_id": "fuzz"}
        fields.update(kw)
        fields.setdefault("image", self.image())
        return Frame(**fields)

    def valid(self, msg: Any, node: str = UPSTREAM) -> Wire:
        self.seq += 1
        return to_wire(msg, self.seq, node)

    def good_header(self) -> Wire:
        return to_wire(Frame(frame_seq=1, t_capture=0.0, image=self.image(), source_id="fuzz"), self.seq)

    def with_header(self, base: Wire, change: Callable[[dict[str, Any]], Any]) -> Wire:
        header = json.loads(base[1])
        change(header)
        return [base[0], json.dumps(header).encode(), *base[2:]]

    # ------------------------------------------------------------------ the kinds
    def random_bytes(self) -> Wire:
        n = int(self.rng.integers(1, 5))
        return [self.rng.bytes(int(self.rng.integers(0, 300))) for _ in range(n)]

    def bad_json(self) -> Wire:
        g = self.good_header()
        cut = int(self.rng.integers(0, len(g[1])))
        return [g[0], g[1][:cut] + self.rng.bytes(int(self.rng.integers(0, 8))), *g[2:]]

    def deep_nesting(self) -> Wire:
        g = self.good_header()
        depth = int(self.rng.choice([17, 100, 1000, 30_000]))
        if self.rng.random() < 0.5:
            return [g[0], b"[" * depth + b"]" * depth, *g[2:]]
        return self.with_header(g, lambda h: h["scalars"].__setitem__("source_id", _nest(min(depth, 500))))

    def huge_number(self) -> Wire:
        key = str(self.rng.choice(["seq", "frame_seq", "t_capture", "t_sent"]))
        value = str(self.rng.choice(["1" + "0" * 400, "1e999", "-1e999", "NaN", "Infinity", str(2**64), "-1"]))
        g = self.good_header()
        text = g[1].decode()
        old = f'"{key}":'
        start = text.index(old) + len(old)
        end = start
        while text[end] not in ",}":
            end += 1
        return [g[0], (text[:start] + value + text[end:]).encode(), *g[2:]]

    def giant_shape(self) -> Wire:
        g = self.good_header()
        shape = [[2**40, 2**40, 3], [1_000_000, 8, 3], [2**62, 2, 3], [-1, -1, 3], [4096, 4096, 3], [1, 2, 3, 4]]
        chosen = shape[int(self.rng.integers(0, len(shape)))]
        return self.with_header(g, lambda h: h["arrays"][0].__setitem__("shape", chosen))

    def forged_end(self) -> Wire:
        node = str(self.rng.choice(["mallory", "", "capture2", "x" * 100]))
        if self.rng.random() < 0.7:
            return to_wire(EndOfStream(node=node, num_sent=int(self.rng.integers(0, 10))), 0, node=node)
        return to_wire(Heartbeat(node=node, counters={"dropped.x": 1e9}), 0, node=node)

    def non_finite_pose(self) -> Wire:
        pose = np.eye(4)
        pose[int(self.rng.integers(0, 3)), int(self.rng.integers(0, 4))] = self.rng.choice([np.nan, np.inf, -np.inf])
        k = np.eye(3) if self.rng.random() < 0.5 else np.full((3, 3), np.nan)
        return self.valid(self.frame(world_from_cam=pose, intrinsics=k))

    def wrong_type(self) -> Wire:
        g = self.good_header()
        key = str(self.rng.choice(["frame_seq", "t_capture", "source_id"]))
        value = [None, "7", [1, 2], {"a": 1}, True, 1.5, -5][int(self.rng.integers(0, 7))]
        changes: list[Callable[[dict[str, Any]], Any]] = [
            lambda h: h["scalars"].__setitem__(key, value),
            lambda h: h["scalars"].__setitem__("exposure_ms", 3),
            lambda h: h["scalars"].pop(key),
            lambda h: h.__setitem__("v", 99),
            lambda h: h.__setitem__("type", "pose"),
            lambda h: h.__setitem__("node", ["capture"]),
            lambda h: h["arrays"][0].__setitem__("dtype", "object"),
            lambda h: h["arrays"][0].__setitem__("name", ["image"]),
            lambda h: h.__setitem__("arrays", [7]),
        ]
        return self.with_header(g, changes[int(self.rng.integers(0, len(changes)))])

    def wrong_topic(self) -> Wire:
        g = self.good_header()
        return [str(self.rng.choice(["keyframe", "pose", "", "frame\0"])).encode(), *g[1:]]

    def truncated(self) -> Wire:
        g = self.good_header()
        return [g[0], g[1], g[2][: int(self.rng.integers(0, len(g[2])))]] if self.rng.random() < 0.7 else g[:2]

    def unhandled_type(self) -> Wire:
        choices = [
            MapUpdate(keyframe_ids=(0,), world_from_cam=np.eye(4)[None]),
            Keyframe(keyframe_id=0, frame_seq=0, t_capture=0.0, image=self.image()),
            WindowRequest(window_id=0, keyframe_ids=(0,)),
            FrameRecord(frame_seq=0, t_capture=0.0),
        ]
        return self.valid(choices[int(self.rng.integers(0, len(choices)))])

    def thin_image(self) -> Wire:
        shapes = [(1_000_000, 8), (8, 1_000_000), (20_000, 8), (3, 3), (2000, 2000), (600, 800)]  # issue 15: 1e6 x 8
        h, w = shapes[int(self.rng.integers(0, len(shapes)))]
        return self.valid(self.frame(image=np.zeros((h, w, 3), np.uint8)))

    def unknown_sender_frame(self) -> Wire:
        return to_wire(self.frame(), int(self.rng.integers(0, 2**62)), node="mallory")

    def out_of_order_frame(self) -> Wire:
        return self.valid(Frame(frame_seq=0, t_capture=0.0, image=self.image(), source_id="fuzz"))

    def flipped_bytes(self) -> Wire:
        g = self.good_header()
        header = bytearray(g[1])
        for _ in range(int(self.rng.integers(1, 4))):
            header[int(self.rng.integers(0, len(header)))] = int(self.rng.integers(0, 256))
        return [g[0], bytes(header), *g[2:]]


def _nest(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


#: kind -> relative weight. Frames that pass decode (NaN poses, thin images, unknown senders) are rarer: the node
#: runs keyframe selection on those.
KINDS: dict[str, float] = {
    "random_bytes": 3,
    "bad_json": 2,
    "deep_nesting": 1,
    "huge_number": 2,
    "giant_shape": 2,
    "forged_end": 2,
    "non_finite_pose": 0.3,
    "wrong_type": 3,
    "wrong_topic": 1,
    "truncated": 1,
    "unhandled_type": 1,
    "thin_image": 0.3,
    "unknown_sender_frame": 0.2,
    "out_of_order_frame": 0.2,
    "flipped_bytes": 2,
}


def hostile_messages(fuzzer: Fuzzer, num: int) -> Iterator[tuple[str, Wire]]:
    """`num` messages of kinds drawn by KINDS' weights: (kind, multipart frames)."""
    names = list(KINDS)
    weights = np.array([KINDS[k] for k in names])
    draws = fuzzer.rng.choice(len(names), size=num, p=weights / weights.sum())
    for i in draws:
        yield names[i], getattr(fuzzer, names[i])()


def expected_outcome(frames: Wire) -> tuple[str, bool]:
    """What the node should do with these bytes, by this process's own decode: ('dropped.<reason>' or 'recv.<topic>',
    whether it counts toward the upstream's num_sent)."""
    try:
        msg, header = decode(frames)
    except DecodeError as exc:
        return f"dropped.{exc.reason}", False
    if header["node"] != UPSTREAM:  # launch/demo.yaml names the input's upstream: nothing else gets in
        return "dropped.unknown_sender", False
    return f"recv.{header['type']}", not isinstance(msg, (EndOfStream, Heartbeat))


@dataclass
class Downstream:
    """The node's outputs, drained on a thread (so the lossless edges never block the node)."""

    ctx: zmq.Context
    run_dir: Path
    records: list[int] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    ends: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.sockets = []
        for edge in ("keyframes", "frame_records"):
            sock = self.ctx.socket(zmq.PULL)
            sock.bind(f"ipc://{self.run_dir}/{edge}")
            self.sockets.append(sock)
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        poller = zmq.Poller()
        for sock in self.sockets:
            poller.register(sock, zmq.POLLIN)
        while not self.stop.is_set():
            for sock, _ in poller.poll(100):
                msg, _ = decode(sock.recv_multipart())
                self.counts[type(msg).__name__] += 1
                if isinstance(msg, FrameRecord):
                    self.records.append(msg.frame_seq)
                elif isinstance(msg, EndOfStream):
                    self.ends += 1

    def close(self) -> None:
        self.stop.set()
        if hasattr(self, "thread"):
            self.thread.join(timeout=10)
        for sock in getattr(self, "sockets", []):
            sock.close(linger=0)


def rss_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run(num_messages: int, num_valid: int = 20, seed: int = 0, out: Path | None = None) -> dict[str, Any]:
    """Fuzz one keyframes node process; returns the accounting (see the module docstring). Raises AssertionError
    only for this script's own failures (node never came up); the caller checks the numbers."""
    run_id = f"fuzz-{uuid.uuid4().hex[:8]}"
    run_dir = default_run_dir(run_id)
    tmp = Path(tempfile.mkdtemp(prefix="s3r-fuzz-"))
    out = out or tmp / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "SPARK3R_RUN_ID": run_id}
    command = [sys.executable, "-m", "spark3r_stream.cli", "--log-level", "warning", "run-node", "keyframes"]
    command += ["--config", "launch/demo.yaml", "--out", str(out)]
    log_path = tmp / "node.log"
    ctx = zmq.Context()
    downstream = Downstream(ctx, run_dir)
    sent: Counter[str] = Counter()
    expected: Counter[str] = Counter()
    crashes = 0
    peak_rss_kb = 0
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        downstream.start()
        push = ctx.socket(zmq.PUSH)
        push.connect(f"ipc://{run_dir}/frames")
        upstream_data = 0
        t0 = time.monotonic()
        next_sample = t0
        fuzzer = Fuzzer(np.random.default_rng(seed))
        for kind, frames in hostile_messages(fuzzer, num_messages):
            outcome, counts_as_sent = expected_outcome(frames)
            expected[outcome] += 1
            upstream_data += counts_as_sent
            sent[kind] += 1
            while True:  # blocking send with a liveness check: a dead node must not hang the benchmark
                if push.poll(1000, zmq.POLLOUT):
                    push.send_multipart(frames)
                    break
                if proc.poll() is not None:
                    raise RuntimeError(f"node exited with {proc.returncode} after {sum(sent.values())} messages")
                if time.monotonic() - t0 > STARTUP_S and not sum(sent.values()) > 1:
                    raise RuntimeError("node did not take its first message")
            if time.monotonic() >= next_sample:
                peak_rss_kb = max(peak_rss_kb, rss_kb(proc.pid, "VmHWM"))
                next_sample = time.monotonic() + RSS_SAMPLE_S
        fuzz_s = time.monotonic() - t0
        valid_seqs = []
        for _ in range(num_valid):
            msg = fuzzer.frame()
            valid_seqs.append(msg.frame_seq)
            push.send_multipart(fuzzer.valid(msg))
            expected["recv.frame"] += 1
            upstream_data += 1
        deadline = time.monotonic() + STARTUP_S
        while not set(valid_seqs) <= set(downstream.records) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        alive_before_end = proc.poll() is None
        crashes += not alive_before_end
        peak_rss_kb = max(peak_rss_kb, rss_kb(proc.pid, "VmHWM"))
        push.send_multipart(to_wire(EndOfStream(node=UPSTREAM, num_sent=upstream_data), fuzzer.seq + 1))
        expected["recv.end_of_stream"] += 1
        while downstream.ends < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        downstream.close()  # the node's close waits for its receivers to disconnect (NodeLoop's drain)
        push.close(linger=0)
        returncode = proc.wait(timeout=STARTUP_S)
    finally:
        downstream.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        ctx.destroy(linger=0)
        shutil.rmtree(run_dir, ignore_errors=True)
    report = json.loads((out / "nodes" / "keyframes.json").read_text())
    counters = report["transport"]["counters"]
    total_sent = sum(sent.values()) + num_valid + 1
    received = sum(v for k, v in counters.items() if k.startswith("recv."))
    pre_handler = {k: v for k, v in counters.items() if k.startswith("dropped.") and k[8:] not in HANDLER_REASONS}
    in_handler = {k: v for k, v in counters.items() if k.startswith("dropped.") and k[8:] in HANDLER_REASONS}
    log_text = log_path.read_text()
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "messages": total_sent,
        "hostile": sum(sent.values()),
        "by_kind": dict(sorted(sent.items())),
        "fuzz_s": round(fuzz_s, 2),
        "crashes": crashes + (returncode != 0),
        "returncode": returncode,
        "status": report["status"],
        "received": received,
        "dropped_before_handling": dict(sorted(pre_handler.items())),
        "dropped_in_handler": dict(sorted(in_handler.items())),
        "accounted": received + sum(pre_handler.values()),
        "expected": dict(sorted(expected.items())),
        "counters": counters,
        "valid_sent": num_valid,
        "valid_processed": len(set(valid_seqs) & set(downstream.records)),
        "downstream": dict(downstream.counts),
        "lost": counters.get("lost.frames", 0),
        # VmHWM of the node's own memory (reset at exec); the report's ru_maxrss keeps the spawning process's
        # high-water mark across exec, so under pytest it shows the test process, not the node
        "peak_rss_mb": round(peak_rss_kb / 1024, 1),
        "report_max_rss_mb": report.get("max_rss_mb"),
        "tracebacks_in_log": log_text.count("Traceback"),
    }


def check(result: dict[str, Any]) -> list[str]:
    """What is wrong with a run (empty: 0 crashes, everything accounted for, every valid frame processed)."""
    problems = []
    if result["crashes"] or result["status"] != "ok":
        problems.append(f"node crashed or failed: exit {result['returncode']}, status {result['status']}")
    if result["accounted"] != result["messages"]:
        problems.append(f"sent {result['messages']} but accounted for {result['accounted']}")
    node = {k: v for k, v in result["counters"].items() if k.startswith("recv.")} | result["dropped_before_handling"]
    if node != result["expected"]:
        problems.append(f"counters {node} differ from this process's decode {result['expected']}")
    if result["valid_processed"] != result["valid_sent"]:
        problems.append(f"{result['valid_processed']} of {result['valid_sent']} valid frames processed afterwards")
    if result["lost"]:
        problems.append(f"lost.frames = {result['lost']}")
    return problems


def markdown(result: dict[str, Any], problems: list[str]) -> str:
    from benchmarks.bench_attention import table

    summary = [
        {"what": "messages sent (hostile + valid + end-of-stream)", "value": result["messages"]},
        {"what": "hostile messages", "value": result["hostile"]},
        {"what": "fuzz wall time, s", "value": result["fuzz_s"]},
        {
            "what": "node crashes / exit code / report status",
            "value": f"{result['crashes']} / {result['returncode']} / {result['status']}",
        },
        {
            "what": "received (recv.*) + dropped before handling",
            "value": f"{result['received']} + "
            f"{sum(result['dropped_before_handling'].values())} = {result['accounted']}",
        },
        {"what": "of the received, dropped by a handler", "value": sum(result["dropped_in_handler"].values())},
        {"what": "valid frames afterwards processed", "value": f"{result['valid_processed']}/{result['valid_sent']}"},
        {"what": "lost.frames", "value": result["lost"]},
        {"what": "node peak RSS (VmHWM), MB", "value": result["peak_rss_mb"]},
        {"what": "tracebacks in the node's log", "value": result["tracebacks_in_log"]},
        {"what": "problems", "value": "; ".join(problems) or "none"},
    ]
    drops = [{"counter": k, "count": v} for k, v in result["dropped_before_handling"].items()]
    drops += [{"counter": f"{k} (in handler)", "count": v} for k, v in result["dropped_in_handler"].items()]
    drops += [
        {"counter": k, "count": v}
        for k, v in result["counters"].items()
        if k.startswith(("recv.", "cleared.", "from_unknown.", "ignored."))
    ]
    kinds = [{"kind": k, "sent": v} for k, v in result["by_kind"].items()]
    return (
        "Target: the keyframes node as its own process (`spark3r run-node keyframes --config launch/demo.yaml`); "
        "this script stands in for capture upstream and for reconstruction and fusion downstream. Each message is "
        "either dropped before handling (`dropped.<reason>`: malformed, or any message from a name that is not the "
        "input's upstream, `unknown_sender`) or received (`recv.<topic>`); of the received, a "
        "handler may still refuse one (`handler_error`: a frame_seq that does not increase; `bad_image`: beyond "
        "max_pixels/max_aspect_ratio or under 8 px). `cleared.frame.*`: a frame whose ground-truth pose or "
        "intrinsics held NaN/inf, served without them. Peak RSS: VmHWM of the node process.\n\n"
        + table(summary, [("what", "measure"), ("value", "value")])
        + "\n## Node counters (report of the keyframes node)\n\n"
        + table(drops, [("counter", "counter"), ("count", "count")])
        + "\n## Hostile messages by kind\n\n"
        + table(kinds, [("kind", "kind (bench_faults.Fuzzer)"), ("sent", "sent")])
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="bench_faults", description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000, help="hostile messages")
    parser.add_argument("--valid", type=int, default=20, help="valid frames after them")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="3,000 messages, no result files")
    args = parser.parse_args(argv)
    num = 3000 if args.quick else args.messages
    result = run(num, args.valid, args.seed)
    problems = check(result)
    text = markdown(result, problems)
    print(text)
    if not args.quick:
        from benchmarks.bench_attention import header, write_results

        path = write_results(NAME, header(NAME, argv), text, result)
        print(f"written to {path}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
