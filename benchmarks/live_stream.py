"""The live path for real: a synthetic sequence served as an MJPEG stream over HTTP on 127.0.0.1 (what an IP camera
serves), `launch/live_camera.yaml` run on its URL for a bounded time and stopped with SIGINT, and the live figures.

    python -m benchmarks.live_stream [--seconds 20] [--fps 30] [--height 240 --width 320] [--out DIR]

`live_stream_figures()` returns the figures as a dict (bench_streaming tabulates them under `--live`);
`run_live_stream()` is the run itself (tests/integration/test_live_stream.py checks its outputs). The clock of the
bounded run starts when the reconstruction node has loaded its model and the capture node is reading the stream.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spark3r_stream.sources.mjpeg_server import MjpegServer, ServerStats

REPO = Path(__file__).resolve().parent.parent
READY_TEXT = "ready (spark3r"  # the reconstruction node's line once its model is loaded
FUSED_RE = re.compile(r"^\[fusion\] .*window \d+: \d+ keyframes")  # fusion's line for each window it fused
STARTUP_DEADLINE_S = 180.0  # torch import and model load on 2 shared cores
STOP_DEADLINE_S = 90.0
# A hand-held camera at 30 fps: 0.6 m/s and 15 deg/s (synth's defaults, 0.08 m and 2 deg per frame, are a replay's
# subsampled frames: 2.4 m/s at 30 fps, a keyframe every second frame).
HANDHELD_STEP_M = 0.02
HANDHELD_TURN_DEG = 0.5  # SIGINT -> every node ended and fusion wrote its outputs


@dataclass
class LiveRun:
    """One bounded live run: where its outputs are, what the launcher said, what the server did, when."""

    out: Path
    url: str
    returncode: int
    output: str
    server: ServerStats
    t_launch: float  # wall clock (time.time()) at launch, at the start of the bounded run, at SIGINT, at exit
    t_ready: float
    t_sigint: float
    t_exit: float
    t_drop: float | None = None  # when the server cut the camera's connection (drop_at_s), and how many it cut
    num_dropped: int = 0
    launch_args: list[str] = field(default_factory=list)

    @property
    def report(self) -> dict[str, Any]:
        return json.loads((self.out / "report.json").read_text())


def run_live_stream(
    out: str | Path,
    *,
    seconds: float = 10.0,
    fps: float = 30.0,
    frames: int = 90,
    height: int = 120,
    width: int = 160,
    seed: int = 0,
    step_m: float = HANDHELD_STEP_M,
    turn_deg: float = HANDHELD_TURN_DEG,
    drop_at_s: float | None = None,
    overrides: Sequence[str] = (),
) -> LiveRun:
    """Serve `frames` rendered views (played forwards and backwards) at `fps`, run live_camera.yaml on the stream for
    `seconds` after the pipeline is ready (and until fusion has fused a window), then SIGINT the launcher and wait for it. Raises RuntimeError (with the
    launcher's output) if the pipeline never gets ready or does not stop; never kills anything it did not start.
    `drop_at_s`: cut the camera's connection that many seconds into the bounded run (a network drop)."""
    from spark3r_stream.synth import render_sequence

    out = Path(out)
    images = list(
        render_sequence(
            seed, frames, height=height, width=width, path="handheld", step_m=step_m, turn_deg=turn_deg, fps=fps
        ).images
    )
    with MjpegServer(images, fps=fps, loop="bounce") as server:
        args = [sys.executable, "-m", "spark3r_stream.cli", "launch", "live_camera", "--out", str(out)]
        args += ["--set", f"capture.path={server.url}"]
        for item in overrides:
            args += ["--set", item]
        t_launch = time.time()
        proc = subprocess.Popen(
            args,
            cwd=REPO,
            env={**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: the last resort below kills only what this started
        )
        lines: list[str] = []
        ready, fused = threading.Event(), threading.Event()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if READY_TEXT in line:
                    ready.set()
                if FUSED_RE.match(line):
                    fused.set()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + STARTUP_DEADLINE_S
            while not (ready.is_set() and server.stats.frames_sent > 0):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"live pipeline on {server.url} not ready (exit code {proc.poll()}, "
                        f"{server.stats.frames_sent} frames sent):\n{''.join(lines[-60:])}"
                    )
                time.sleep(0.05)
            t_ready = time.time()
            # the bounded live run: the server keeps publishing in its own thread
            if drop_at_s is not None and 0 <= drop_at_s < seconds:
                time.sleep(drop_at_s)
                t_drop = time.time()
                num_dropped = server.drop_clients()
                time.sleep(seconds - drop_at_s)
            else:
                t_drop, num_dropped = None, 0
                time.sleep(seconds)
            # ... and at least one window fused (a machine under load), else the outputs would hold no pose
            if not fused.wait(max(0.0, deadline - time.monotonic())) or proc.poll() is not None:
                raise RuntimeError(
                    f"live pipeline on {server.url} fused no window within {STARTUP_DEADLINE_S:.0f} s of its start "
                    f"(exit code {proc.poll()}):\n{''.join(lines[-60:])}"
                )
            t_sigint = time.time()
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                raise RuntimeError(
                    f"live pipeline did not stop {STOP_DEADLINE_S:.0f} s after SIGINT:\n{''.join(lines[-60:])}"
                ) from None
            t_exit = time.time()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the group this function started (launcher and its nodes)
                proc.wait(timeout=30)
            reader.join(timeout=10)
    return LiveRun(
        out=out,
        url=server.url,
        returncode=proc.returncode,
        output="".join(lines),
        server=server.stats,
        t_launch=t_launch,
        t_ready=t_ready,
        t_sigint=t_sigint,
        t_exit=t_exit,
        t_drop=t_drop,
        num_dropped=num_dropped,
        launch_args=args[3:],
    )


def keyframe_lags_s(report: dict[str, Any]) -> list[float]:
    """Per keyframe posed: seconds from its selection (keyframes node) to the end of its first window run."""
    nodes = report["pipeline"]["nodes"]
    selected = dict((nodes["keyframes"]["report"] or {}).get("keyframe_selected_s") or [])
    posed = dict((nodes["reconstruction"]["report"] or {}).get("keyframe_first_pose_s") or [])
    return [posed[k] - selected[k] for k in sorted(selected) if k in posed]


def run_times_s(report: dict[str, Any]) -> list[float]:
    """Seconds of every window run of the reconstruction node."""
    runs = (report["pipeline"]["nodes"]["reconstruction"]["report"] or {}).get("runs") or []
    return [row["run_ms"] / 1e3 for row in runs]


def figures_of(run: LiveRun) -> dict[str, Any]:
    """The live figures of a finished run (report.json and the server's counts)."""
    report = run.report
    acc = report["pipeline"]["accounting"]
    capture = report["pipeline"]["nodes"]["capture"]["report"] or {}
    source = capture.get("source_counters") or {}
    lags = keyframe_lags_s(report)
    times = _tum_times(run.out / "trajectory.tum")
    stream_s = run.t_sigint - run.t_ready
    return {
        "fps": None,  # filled by live_stream_figures
        "stream_s": round(stream_s, 2),
        "wall_s": round(run.t_exit - run.t_launch, 2),
        "stop_s": round(run.t_exit - run.t_sigint, 2),
        "exit_code": run.returncode,
        "frames_published": run.server.frames_published,
        "frames_offered": run.server.frames_sent,  # written to the capture node's connection(s)
        "frames_grabbed": source.get("grabbed", 0),
        "frames_dropped_stale_source": source.get("dropped_stale", 0),
        "frames_captured": acc.get("frames_captured"),  # sent by the capture node
        "frames_unsent": acc.get("frames_unsent"),  # the frames edge was full (or not connected yet): not queued
        "frames_dropped_stale": acc.get("frames_stale_dropped"),  # at the keyframes node (latest-wins edge)
        "frames_dropped_total": sum(
            v or 0 for v in (source.get("dropped_stale"), acc.get("frames_unsent"), acc.get("frames_stale_dropped"))
        ),
        "frames_processed": acc.get("frames_received"),
        "frames_unprocessed_at_stop": acc.get("frames_unprocessed_at_stop"),
        "frames_posed": len(times),
        "processed_per_s": round((acc.get("frames_received") or 0) / stream_s, 2) if stream_s > 0 else None,
        "reconnects": source.get("reconnects", 0),
        "keyframes": acc.get("keyframes_sent"),
        "keyframes_posed": acc.get("keyframes_posed"),
        "windows": acc.get("window_results_received"),
        "keyframe_lag_p50_s": round(float(np.percentile(lags, 50)), 3) if lags else None,
        "keyframe_lag_p95_s": round(float(np.percentile(lags, 95)), 3) if lags else None,
        "keyframe_lag_max_s": round(max(lags), 3) if lags else None,
        # lag over time: a pipeline that keeps up has the same lag in both halves of the run; one falling behind not
        "keyframe_lag_p95_first_half_s": _p95(lags[: len(lags) // 2]),
        "keyframe_lag_p95_second_half_s": _p95(lags[len(lags) // 2 :]),
        "keyframes_per_s": round((acc.get("keyframes_sent") or 0) / stream_s, 2) if stream_s > 0 else None,
        "window_run_max_s": round(max(run_times_s(report), default=0.0), 3),
        "newest_posed_frame_age_at_stop_s": round(run.t_sigint - times[-1], 3) if times else None,
        "all_frames_accounted": acc.get("all_frames_accounted"),
    }


def live_stream_figures(
    seconds: float = 20.0,
    fps: float = 30.0,
    *,
    height: int = 240,
    width: int = 320,
    frames: int = 120,
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    quick: bool = False,
) -> dict[str, Any]:
    """Run the live stream for `seconds` at `fps` and return its figures: frames offered by the server / captured /
    processed / dropped stale, keyframe lag p50/p95 (selection -> first pose), wall time. `quick`: a CI smoke run
    (6 s of 120x160 frames)."""
    if quick:
        seconds, height, width, frames = min(seconds, 6.0), 120, 160, 60
    with tempfile.TemporaryDirectory(prefix="spark3r-live-") as tmp:
        run = run_live_stream(
            Path(out) if out is not None else Path(tmp) / "live",
            seconds=seconds,
            fps=fps,
            frames=frames,
            height=height,
            width=width,
            overrides=overrides,
        )
        if run.returncode != 130:
            raise RuntimeError(f"live run ended with exit code {run.returncode}:\n{run.output[-4000:]}")
        figures = figures_of(run)
    figures.update(fps=fps, height=height, width=width)
    return figures


def _p95(values: Sequence[float]) -> float | None:
    return round(float(np.percentile(values, 95)), 3) if len(values) else None


def _tum_times(path: Path) -> list[float]:
    if not path.is_file():
        return []
    return [float(line.split()[0]) for line in path.read_text().splitlines() if line and not line.startswith("#")]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--frames", type=int, default=120, help="rendered views, played forwards and backwards")
    parser.add_argument("--out", help="keep the run's outputs here (default: a temporary folder)")
    parser.add_argument("--set", action="append", default=[], help="launch-file override, as spark3r launch --set")
    parser.add_argument(
        "--no-save", action="store_true", help="print only (default: benchmarks/results/live_stream.md)"
    )
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    figures = live_stream_figures(
        args.seconds,
        args.fps,
        height=args.height,
        width=args.width,
        frames=args.frames,
        out=args.out,
        overrides=args.set,
    )
    print(json.dumps(figures, indent=2))
    if not args.no_save:
        from benchmarks.bench_attention import header, write_results
        from benchmarks.bench_streaming import live_table

        path = write_results("live_stream", header("live_stream", argv), live_table(figures), {"live": figures})
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
