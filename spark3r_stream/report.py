"""RunReport (the JSON every command and node writes), Stopwatch timings and progress bars."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from spark3r_stream import __version__

log = logging.getLogger(__name__)
T = TypeVar("T")


def git_sha() -> str | None:
    """The commit of the source tree, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def machine_info() -> dict[str, Any]:
    import torch  # local: nodes without torch still import this module

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


class Stopwatch:
    """Accumulates wall time per named stage (`with watch("encoder"): ...`), in milliseconds."""

    def __init__(self) -> None:
        self.totals_ms: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str, sync: Any = None) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if sync is not None:
                sync()
            self.totals_ms[stage] += (time.perf_counter() - start) * 1e3

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.totals_ms.items()}


class RunReport:
    """What a command or node did: argv, config, counters, timings, outputs, status; written as JSON."""

    def __init__(self, command: str, path: str | Path | None = None, *, with_machine: bool = True) -> None:
        self.path = Path(path) if path is not None else None
        self.data: dict[str, Any] = {
            "command": command,
            "argv": sys.argv,
            "version": __version__,
            "git_sha": git_sha(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "status": "running",
            "counters": {},
            "timings_ms": {},
            "outputs": {},
        }
        if with_machine:
            self.data["machine"] = machine_info()
        self._t0 = time.perf_counter()

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value

    def count(self, name: str, n: int = 1) -> None:
        self.data["counters"][name] = self.data["counters"].get(name, 0) + n

    def output(self, name: str, path: str | Path) -> None:
        self.data["outputs"][name] = str(path)

    def finish(self, status: str = "ok", error: str | None = None) -> None:
        self.data["status"] = status
        if error is not None:
            self.data["error"] = error
        self.data["wall_s"] = round(time.perf_counter() - self._t0, 3)

    def write(self, path: str | Path | None = None) -> Path:
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("RunReport.write needs a path")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=_json_default))
        tmp.replace(target)  # atomic: a reader never sees half a report
        return target


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(obj)
    return str(obj)


def progress(items: Iterable[T], total: int | None = None, desc: str = "") -> Iterator[T]:
    """A tqdm progress bar over `items` on an interactive terminal; the bare items elsewhere (logs, CI, pipes)."""
    from tqdm import tqdm

    return iter(tqdm(items, total=total, desc=desc, disable=not sys.stderr.isatty(), leave=False, dynamic_ncols=True))


class StageTimer:
    """Per-message wall time of one stage (handler), summarised for the report: count, mean, p50, p95, max in ms."""

    def __init__(self) -> None:
        self.samples_ms: dict[str, list[float]] = {}

    def wrap(self, stage: str, handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
        samples = self.samples_ms.setdefault(stage, [])

        def timed(msg: Any) -> Any:
            start = time.perf_counter()
            try:
                return handler(msg)
            finally:
                samples.append((time.perf_counter() - start) * 1e3)

        return timed

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for stage, samples in self.samples_ms.items():
            if samples:
                arr = np.asarray(samples)
                out[stage] = {
                    "count": len(arr),
                    "mean_ms": round(float(arr.mean()), 3),
                    "p50_ms": round(float(np.percentile(arr, 50)), 3),
                    "p95_ms": round(float(np.percentile(arr, 95)), 3),
                    "max_ms": round(float(arr.max()), 3),
                    "total_s": round(float(arr.sum()) / 1e3, 3),
                }
        return out
