"""FrameSource protocol, shared options (start/stop/stride/rate), pacing, image reading, indexed datasets."""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from spark3r_stream.errors import ConfigError, SourceError
from spark3r_stream.transport.messages import Frame

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@runtime_checkable
class FrameSource(Protocol):
    """Yields `Frame` messages (uint8 RGB [H, W, 3], seconds, optional GT world_from_cam and intrinsics).

    `frame_seq` counts the frames yielded, from 0 without gaps; `info` describes the source (kind, path, fps,
    num_frames when known, has_gt, timestamps_synthetic); `counters` holds e.g. `skipped_unreadable`.
    """

    source_id: str
    info: dict[str, Any]
    counters: Counter[str]

    def __iter__(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...


@dataclass(frozen=True, kw_only=True)
class SourceOptions:
    """Which frames to take and how fast.

    start/stop/stride select native frames `[start:stop:stride]`. `rate`: 0 = as fast as the pipeline takes
    them, 1 = the recorded rate, 2 = twice as fast (live cameras ignore it).
    """

    start: int = 0
    stop: int | None = None
    stride: int = 1
    rate: float = 0.0
    source_id: str | None = None

    def __post_init__(self) -> None:
        if self.start < 0:
            raise ConfigError(f"source start: expected int >= 0, got {self.start}")
        if self.stop is not None and self.stop <= self.start:
            raise ConfigError(f"source stop: expected > start ({self.start}), got {self.stop}")
        if self.stride < 1:
            raise ConfigError(f"source stride: expected int >= 1, got {self.stride}")
        if not (self.rate >= 0 and math.isfinite(self.rate)):
            raise ConfigError(f"source rate: expected a finite number >= 0, got {self.rate}")

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    def selects(self, index: int) -> bool:
        """Whether native frame `index` is taken."""
        if index < self.start or (self.stop is not None and index >= self.stop):
            return False
        return (index - self.start) % self.stride == 0


class Pacer:
    """Holds frames back to `rate` x their recorded timing (rate 0: no waiting)."""

    def __init__(
        self, rate: float, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.rate, self._clock, self._sleep = rate, clock, sleep
        self._origin: tuple[float, float] | None = None

    def wait(self, t_capture: float) -> None:
        if self.rate <= 0:
            return
        now = self._clock()
        if self._origin is None:
            self._origin = (now, t_capture)
            return
        due = self._origin[0] + (t_capture - self._origin[1]) / self.rate
        if due > now:
            self._sleep(due - now)


def read_rgb(path: Path) -> np.ndarray | None:
    """An image file as uint8 RGB [H, W, 3] (grey and 16-bit are converted; EXIF orientation applied), None if
    it cannot be decoded."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def natural_key(name: str) -> list[Any]:
    """Sort key with numbers compared as numbers: frame_2 < frame_10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def load_intrinsics_json(path: Path) -> np.ndarray:
    """K [3, 3] from a JSON file with fx, fy, cx, cy (the layout of the datasets in tests/ and ../shared/data)."""
    try:
        data = json.loads(Path(path).read_text())
        return intrinsics_matrix(*(float(data[k]) for k in ("fx", "fy", "cx", "cy")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SourceError(
            f"intrinsics file {path}: expected JSON with fx, fy, cx, cy ({type(exc).__name__}: {exc})"
        ) from None


def require_dir(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{what} {path}: does not exist")
    if not path.is_dir():
        raise SourceError(f"{what} {path}: is not a directory")
    return path


@dataclass(frozen=True)
class FrameEntry:
    """One frame of an indexed dataset before it is read."""

    t_capture: float
    path: Path
    world_from_cam: np.ndarray | None = None
    intrinsics: np.ndarray | None = None


class IndexedSource:
    """A recorded sequence known up front (folder, TUM, EuRoC, 7-Scenes): entries -> Frame messages.

    Unreadable images are skipped with a warning and counted (`counters["skipped_unreadable"]`); frame_seq stays
    contiguous over the frames actually yielded.
    """

    kind = "indexed"

    def __init__(
        self,
        path: Path,
        entries: Sequence[FrameEntry],
        options: SourceOptions | None = None,
        *,
        timestamps_synthetic: bool = False,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.options = options or SourceOptions()
        self.entries = [e for i, e in enumerate(entries) if self.options.selects(i)]
        self.source_id = self.options.source_id or f"{self.kind}:{self.path}"
        self.counters: Counter[str] = Counter()
        self.info = {
            "kind": self.kind,
            "path": str(self.path),
            "num_frames": len(self.entries),
            "num_native_frames": len(entries),
            "has_gt": any(e.world_from_cam is not None for e in self.entries),
            "num_gt": sum(e.world_from_cam is not None for e in self.entries),
            "has_intrinsics": any(e.intrinsics is not None for e in self.entries),
            "timestamps_synthetic": timestamps_synthetic,
            **(info or {}),
        }

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Frame]:
        pacer = Pacer(self.options.rate)
        seq = 0
        for entry in self.entries:
            image = read_rgb(entry.path)
            if image is None:
                self.counters["skipped_unreadable"] += 1
                log.warning("%s: skipped %s: not a readable image", self.source_id, entry.path)
                continue
            image = self.postprocess(image)
            pacer.wait(entry.t_capture)
            yield Frame(
                frame_seq=seq,
                t_capture=float(entry.t_capture),
                image=image,
                source_id=self.source_id,
                world_from_cam=entry.world_from_cam,
                intrinsics=entry.intrinsics,
            )
            seq += 1
            self.counters["frames"] += 1

    def postprocess(self, image: np.ndarray) -> np.ndarray:
        return image

    def close(self) -> None:
        """Nothing held open between frames."""
