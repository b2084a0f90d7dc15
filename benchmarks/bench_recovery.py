"""Recovery from a killed node and from a stopped launcher (issue 15, part C): the demo pipeline (synthetic replay,
vggt-tiny with random weights: the books do not depend on the weights) is run once per scenario; a node is killed
with SIGKILL after fusion has placed window 1, with respawn on or off, or the launcher gets SIGINT / SIGTERM. Per run:
frames captured and posed (lines of trajectory.tum), keyframes sent and posed, what was lost, the exit code and
status, the problems the report names, and the time to recover: from the kill to the respawned process's start
(launcher) and to the next window fused after it.

    python -m benchmarks.bench_recovery [--frames 48] [--quick]

Writes benchmarks/results/bench_recovery.md and .json (bench_faults.md is part A's: the fuzz run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_attention import header, write_results

REPO = Path(__file__).resolve().parents[1]
RUN_S = 300.0  # deadline of one run
FUSED = "global_map: window "  # fusion's line per window it has placed

SCENARIOS: list[dict[str, Any]] = [
    {"name": "no fault", "kill": None, "respawn": False},
    {"name": "kill -9 reconstruction, respawn on", "kill": "reconstruction", "respawn": True},
    {"name": "kill -9 fusion, respawn on", "kill": "fusion", "respawn": True},
    {
        # the stream ends while fusion is down: its end-of-stream reaches the respawned fusion before the replay
        "name": "kill -9 fusion, stream ends while it is down, respawn after 15 s",
        "kill": "fusion",
        "respawn": True,
        "set": ("capture.rate=0.15", "fusion.restart_delay_s=15"),
    },
    {"name": "kill -9 reconstruction, respawn off", "kill": "reconstruction", "respawn": False},
    {"name": "kill -9 fusion, respawn off", "kill": "fusion", "respawn": False},
    {"name": "SIGINT to the launcher", "signal": signal.SIGINT},
    {"name": "SIGTERM to the launcher", "signal": signal.SIGTERM},
]


def run_scenario(scenario: dict[str, Any], frames: int, out: Path) -> dict[str, Any]:
    """One launcher run; returns its row."""
    args = [
        "demo",
        "--out",
        str(out),
        "--set",
        f"capture.frames={frames}",
        "--set",
        "reconstruction.random_weights=true",
    ]
    node = scenario.get("kill")
    if node and scenario["respawn"]:
        args += ["--set", f"{node}.respawn=on-failure", "--set", f"{node}.restart_delay_s=0"]
    for setting in scenario.get("set", ()):
        args += ["--set", setting]
    if scenario.get("signal"):
        args += ["--set", "capture.rate=8"]  # frames still coming when the signal arrives
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "spark3r_stream.cli", "launch", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    pids: dict[str, int] = {}
    t_kill = t_started = t_fused = None
    t0 = time.monotonic()
    lines: list[str] = []
    try:
        while time.monotonic() - t0 < RUN_S:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            line = proc.stdout.readline()
            if not line:
                break
            now = time.monotonic()
            lines.append(line)
            started = re.search(r"\[(\w+)\] launcher: started \(pid (\d+)\)", line)
            if started:
                pids.setdefault(started.group(1), int(started.group(2)))
                if t_kill is not None and started.group(1) == node and t_started is None:
                    t_started = now
            if FUSED in line and t_kill is None and "window 1:" in line:
                if node:
                    os.kill(pids[node], signal.SIGKILL)  # a node process this run's launcher started
                    t_kill = now
                elif scenario.get("signal"):
                    proc.send_signal(scenario["signal"])
                    t_kill = now
            elif FUSED in line and t_started is not None and t_fused is None:
                t_fused = now
        code = proc.wait(timeout=RUN_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            for pid in pids.values():  # what the killed launcher left behind (its nodes' own process groups)
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
    report = json.loads((out / "report.json").read_text())
    acc = report["pipeline"]["accounting"]
    trajectory = out / "trajectory.tum"
    lines_tum = (
        sum(1 for x in trajectory.read_text().splitlines() if x and not x.startswith("#"))
        if trajectory.is_file()
        else 0
    )
    lost = {
        k: acc.get(k) for k in ("frames_lost", "keyframes_lost", "results_lost", "frame_records_lost") if acc.get(k)
    }
    return {
        "scenario": scenario["name"],
        "exit_code": code,
        "status": report.get("status"),
        "frames_captured": acc.get("frames_captured"),
        "frames_in_trajectory": lines_tum,
        "keyframes_sent": acc.get("keyframes_sent"),
        "keyframes_posed": acc.get("keyframes_posed"),
        "keyframes_resent": acc.get("keyframes_resent"),
        "frames_unprocessed_at_stop": acc.get("frames_unprocessed_at_stop"),
        "lost": lost,
        "all_frames_accounted": acc.get("all_frames_accounted"),
        "problems": report["pipeline"].get("problems", []),
        "restored_keyframes": (report.get("restored") or {}).get("keyframes"),
        "respawn_s": round(t_started - t_kill, 2) if t_started and t_kill else None,
        "recover_s": round(t_fused - t_kill, 2) if t_fused and t_kill else None,
        "wall_s": report["pipeline"].get("wall_s"),
    }


def markdown(rows: list[dict[str, Any]], frames: int) -> str:
    out = [
        f"The demo launch file, {frames} synthetic frames, vggt-tiny with random weights; the kill (SIGKILL of the "
        "node process) or the signal comes right after fusion has placed window 1. `respawn`: time from the kill to "
        "the respawned process's start (restart_delay_s 0 unless the scenario says otherwise); `recover`: to the next window fused after that start "
        "(the respawned process's imports included). `trajectory`: lines of trajectory.tum (one per captured frame "
        "when nothing is missing). Respawned fusion reloads its state from `<out>/state/fusion` (`restored` "
        "keyframes); respawned reconstruction gets the current windows' keyframes again from the keyframes node "
        "(`resent`).",
        "",
        "| scenario | exit | status | captured | trajectory | keyframes posed / sent | resent | restored | "
        "unprocessed at stop | lost | accounted | respawn s | recover s | wall s | problems named |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lost = ", ".join(f"{k} {v}" for k, v in r["lost"].items()) or "0"
        out.append(
            f"| {r['scenario']} | {r['exit_code']} | {r['status']} | {r['frames_captured']} | "
            f"{r['frames_in_trajectory']} | {r['keyframes_posed']} / {r['keyframes_sent']} | {r['keyframes_resent']} | "
            f"{r['restored_keyframes'] if r['restored_keyframes'] is not None else '-'} | "
            f"{r['frames_unprocessed_at_stop']} | {lost} | {r['all_frames_accounted']} | "
            f"{r['respawn_s'] if r['respawn_s'] is not None else '-'} | "
            f"{r['recover_s'] if r['recover_s'] is not None else '-'} | {r['wall_s']} | "
            f"{'; '.join(r['problems']) or '-'} |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_recovery", description=__doc__)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--quick", action="store_true", help="only the two respawn runs, results not written")
    parser.add_argument("--work", default="runs/bench_recovery", help="run directories")
    args = parser.parse_args(argv)
    scenarios = [s for s in SCENARIOS if s.get("respawn")] if args.quick else SCENARIOS
    rows = []
    for i, scenario in enumerate(scenarios):
        row = run_scenario(scenario, args.frames, Path(args.work) / f"run{i}")
        print(json.dumps(row), flush=True)
        rows.append(row)
    if not args.quick:
        head = header("bench_recovery", list(argv if argv is not None else sys.argv[1:]))
        print(write_results("bench_recovery", head, markdown(rows, args.frames), {"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
