"""Helpers for multi-process tests: run the `spark3r` CLI with a deadline, read launcher output with bounded waits."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUN_DEADLINE_S = 240  # a whole short pipeline run on 2 shared cores (the demo's target is 300 s for 150 frames)
RANDOM = "reconstruction.random_weights=true"  # for runs whose checks do not depend on the weights (faults)


def spark3r(*args: str, timeout: float = RUN_DEADLINE_S) -> subprocess.CompletedProcess[str]:
    """Run `spark3r ARGS` as a subprocess (what a user types), output captured."""
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "spark3r_stream.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class LauncherProcess:
    """`spark3r launch` in the background; `wait_for(text)` reads its merged, prefixed output with a deadline."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spark3r_stream.cli", "launch", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []

    def wait_for(self, text: str, deadline_s: float = RUN_DEADLINE_S) -> str:
        end = time.monotonic() + deadline_s
        assert self.proc.stdout is not None
        while time.monotonic() < end:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                break
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"{text!r} not seen in the launcher output:\n{''.join(self.lines[-40:])}")

    def finish(self, deadline_s: float = RUN_DEADLINE_S) -> int:
        out, _ = self.proc.communicate(timeout=deadline_s)
        self.lines.append(out)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.communicate(timeout=30)

    @property
    def output(self) -> str:
        return "".join(self.lines)


def read_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def tum_rows(path: Path) -> list[list[float]]:
    return [[float(v) for v in line.split()] for line in path.read_text().splitlines() if not line.startswith("#")]
