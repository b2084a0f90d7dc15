"""Transport throughput: 640x480 RGB Frame messages through each delivery kind (ipc://, tcp://127.0.0.1) between
two processes, against an in-process numpy copy and the codec alone. Median of k repeats, after a warm-up.

    python benchmarks/bench_transport.py [--frames N] [--repeats K] [--quick] [--out DIR]

Receiver-side rate: frames received / (time of end-of-stream - time of the first frame). For latest-wins the
sender never waits, so the table also shows how many frames the receiver got (the rest were superseded on purpose).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HEIGHT, WIDTH = 480, 640
FRAME_BYTES = HEIGHT * WIDTH * 3
READY_TIMEOUT_S = 60


def _frames(num: int) -> list[Any]:
    from spark3r_stream.transport import Frame

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    # A new array per message, as a camera delivers them: zero-copy sends must never see a mutated buffer.
    return [Frame(frame_seq=i, t_capture=i / 30, image=base.copy(), source_id="bench") for i in range(num)]


def _endpoint(kind: str, transport: str, direction: str, run_dir: str, port: int) -> Any:
    from spark3r_stream.transport import make_endpoint

    address = f"ipc://{run_dir}/bench" if transport == "ipc" else f"tcp://127.0.0.1:{port}"
    return make_endpoint("frames", direction, kind=kind, address=address, hwm=8)


def _receiver(kind: str, transport: str, run_dir: str, port: int, repeats: int, queue: Any) -> None:
    """Child process: one NodeLoop per repeat; reports (received, seconds first frame -> end-of-stream)."""
    from spark3r_stream.transport import EndOfStream, Frame, NodeLoop

    for _ in range(repeats):
        state: dict[str, Any] = {"n": 0, "t0": None, "t1": None}

        def on_frame(frame: Frame, state: dict[str, Any] = state) -> None:
            if state["t0"] is None:
                state["t0"] = time.perf_counter()
            state["n"] += 1
            _ = frame.image[0, 0, 0]  # touch the payload

        def on_end(eos: EndOfStream, state: dict[str, Any] = state) -> None:
            state["t1"] = time.perf_counter()

        loop = NodeLoop("bench-rx", [_endpoint(kind, transport, "in", run_dir, port)], handle_signals=False)
        loop.on(Frame, on_frame)
        loop.on(EndOfStream, on_end)
        with loop:
            queue.put("ready")
            loop.run()
        queue.put((state["n"], (state["t1"] or time.perf_counter()) - (state["t0"] or time.perf_counter())))


def _measure_kind(kind: str, transport: str, frames: list[Any], repeats: int) -> dict[str, Any]:
    from spark3r_stream.transport import NodeLoop

    run_dir = tempfile.mkdtemp(prefix="s3rb", dir="/tmp")
    port = _free_port()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_receiver, args=(kind, transport, run_dir, port, repeats + 1, queue), daemon=True)
    proc.start()
    runs = []
    try:
        for rep in range(repeats + 1):  # first run is the warm-up
            if kind != "fanout":
                assert queue.get(timeout=READY_TIMEOUT_S) == "ready"
            sender = NodeLoop("bench-tx", [_endpoint(kind, transport, "out", run_dir, port)], handle_signals=False)
            with sender:
                if kind == "fanout":
                    assert queue.get(timeout=READY_TIMEOUT_S) == "ready"
                    for _ in range(600):  # the subscription must arrive before publishing (slow joiner)
                        if sender.counters["subscribed.frames"]:
                            break
                        sender.poll_once(100)
                if kind == "latest":
                    for _ in range(600):  # first connection, else the frames go nowhere
                        if sender.send(frames[0]) is True:
                            break
                        sender.poll_once(10)
                t0 = time.perf_counter()
                sender.run(frames)  # sends every frame, then end-of-stream
                send_s = time.perf_counter() - t0
                sent = sender.counters["sent.frame"]
            print(f"{kind}/{transport} run {rep}: sent {sent} in {send_s:.3f} s", file=sys.stderr, flush=True)
            received, recv_s = queue.get(timeout=READY_TIMEOUT_S)
            if rep > 0:
                runs.append({"sent": sent, "received": received, "recv_s": recv_s, "send_s": send_s})
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.terminate()
        shutil.rmtree(run_dir, ignore_errors=True)
    fps = [r["received"] / max(r["recv_s"], 1e-9) for r in runs]
    mid = sorted(runs, key=lambda r: r["received"] / max(r["recv_s"], 1e-9))[len(runs) // 2]  # the median run
    send_fps = [len(frames) / max(r["send_s"], 1e-9) for r in runs]
    return {
        "kind": kind,
        "transport": transport,
        "frames_per_s": statistics.median(fps),
        "mb_per_s": statistics.median(fps) * FRAME_BYTES / 1e6,
        "send_frames_per_s": statistics.median(send_fps),
        "received_of_sent": f"{mid['received']}/{mid['sent']}/{len(frames)}",
        "runs": runs,
    }


def _measure_inprocess(frames: list[Any], repeats: int) -> list[dict[str, Any]]:
    from spark3r_stream.transport import decode, encode

    dst = np.empty_like(frames[0].image)
    rows = []
    for name, step in (
        ("numpy copy (np.copyto), in process", lambda f: np.copyto(dst, f.image)),
        ("codec encode + decode, no socket", lambda f: decode(encode(f, 0))),
    ):
        rates = []
        for rep in range(repeats + 1):
            t0 = time.perf_counter()
            for f in frames:
                step(f)
            dt = time.perf_counter() - t0
            if rep > 0:
                rates.append(len(frames) / dt)
        fps = statistics.median(rates)
        rows.append({"kind": name, "transport": "-", "frames_per_s": fps, "mb_per_s": fps * FRAME_BYTES / 1e6})
    return rows


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _git_sha() -> str | None:
    from spark3r_stream.report import git_sha

    return git_sha()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300, help="frames per run")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median), after one warm-up")
    parser.add_argument("--quick", action="store_true", help="smoke run: 40 frames, 1 repeat, ipc only")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.repeats = 40, 1
    transports = ("ipc",) if args.quick else ("ipc", "tcp")
    frames = _frames(args.frames)
    rows = _measure_inprocess(frames, args.repeats)
    for transport in transports:
        for kind in ("lossless", "latest", "fanout"):
            rows.append(_measure_kind(kind, transport, frames, args.repeats))
    command = "python " + shlex.join(["benchmarks/bench_transport.py", *(argv if argv is not None else sys.argv[1:])])
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "git_sha": _git_sha(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
            "pyzmq": __import__("zmq").__version__,
            "libzmq": __import__("zmq").zmq_version(),
        },
        "command": command,
        "frame": f"{HEIGHT}x{WIDTH}x3 uint8 ({FRAME_BYTES} bytes)",
        "frames_per_run": args.frames,
        "repeats": args.repeats,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_transport.json").write_text(json.dumps({**meta, "results": rows}, indent=2) + "\n")
    (out / "bench_transport.md").write_text(_markdown(meta, rows))
    print(_markdown(meta, rows))
    return 0


def _markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    base = rows[0]["frames_per_s"]
    m = meta["machine"]
    lines = [
        "# Transport throughput (bench_transport.py)",
        "",
        f"- date: {meta['date']}",
        f"- git sha: {meta['git_sha']}",
        f"- machine: {m['platform']}, {m['processor']}, {m['cpu_count']} CPUs, Python {m['python']}, "
        f"pyzmq {m['pyzmq']} / libzmq {m['libzmq']}",
        f"- command: `{meta['command']}`",
        f"- message: Frame, {meta['frame']}; {meta['frames_per_run']} frames per run; median of {meta['repeats']} "
        "repeats after one warm-up; sender and receiver in separate processes (NodeLoop on both sides)",
        "- rate = frames received / (end-of-stream time - first frame time), measured by the receiver; latest-wins "
        "and fanout drop on purpose: `received/accepted/offered` = handled by the receiver / accepted by ZeroMQ at "
        "the sender (the rest: `dropped.unsent`, counted) / offered (median run)",
        "",
        "| path | transport | frames/s | MB/s | sender frames/s | received/accepted/offered | vs in-process copy |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        send = f"{r['send_frames_per_s']:.0f}" if "send_frames_per_s" in r else "-"
        lines.append(
            f"| {r['kind']} | {r['transport']} | {r['frames_per_s']:.0f} | {r['mb_per_s']:.0f} | {send} | "
            f"{r.get('received_of_sent', '-')} | {r['frames_per_s'] / base:.3f} |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
