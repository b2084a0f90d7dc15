"""OpenCV capture sources: a live camera (index or stream URL) and a video file."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from spark3r_stream.errors import SourceError
from spark3r_stream.sources.base import Pacer, SourceOptions, load_intrinsics_json
from spark3r_stream.transport.messages import Frame

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")


class CameraSource:
    """A live camera: `device` is an index (0) or a stream URL (rtsp://, http://). Timestamps: wall clock at grab.

    Yields until `options.stop` frames were taken, or raises SourceError after `max_failed_reads` failed
    reads in a row (a camera that went away).
    """

    kind = "camera"

    def __init__(
        self,
        device: int | str,
        options: SourceOptions | None = None,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        intrinsics: str | None = None,
        max_failed_reads: int = 30,
    ) -> None:
        self.device = device
        self.options = options or SourceOptions()
        self.source_id = self.options.source_id or f"camera:{device}"
        self.counters: Counter[str] = Counter()
        self.max_failed_reads = max_failed_reads
        self._k = load_intrinsics_json(Path(intrinsics)) if intrinsics else None
        self._cap = cv2.VideoCapture(device)
        if not self._cap.isOpened():
            self._cap.release()
            what = "no such device, or it is busy" if isinstance(device, int) else "stream unreachable or not decodable"
            raise SourceError(f"camera {device!r} did not open: {what}")
        self._cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # no stale frames queued in the driver
        for prop, value in (
            (cv2.CAP_PROP_FRAME_WIDTH, width),
            (cv2.CAP_PROP_FRAME_HEIGHT, height),
            (cv2.CAP_PROP_FPS, fps),
        ):
            if value:
                self._cap.set(prop, value)
        self.info = {
            "kind": self.kind,
            "device": device,
            "fps": self._cap.get(cv2.CAP_PROP_FPS) or None,
            "num_frames": None,
            "has_gt": False,
            "has_intrinsics": self._k is not None,
            "timestamps_synthetic": False,
        }

    def __iter__(self) -> Iterator[Frame]:
        index, seq, failures = 0, 0, 0
        while self.options.stop is None or index < self.options.stop:
            ok, bgr = self._cap.read()
            t_capture = time.time()
            if not ok or bgr is None:
                failures += 1
                self.counters["failed_reads"] += 1
                if failures >= self.max_failed_reads:
                    raise SourceError(f"camera {self.device!r}: {failures} reads in a row failed; camera lost")
                continue
            failures = 0
            index += 1
            if not self.options.selects(index - 1):
                continue
            yield Frame(
                frame_seq=seq,
                t_capture=t_capture,
                image=_to_rgb(bgr),
                source_id=self.source_id,
                intrinsics=self._k,
            )
            seq += 1
            self.counters["frames"] += 1

    def close(self) -> None:
        self._cap.release()


class VideoSource:
    """A video file; timestamps from the container (CAP_PROP_POS_MSEC), replayed at `options.rate`."""

    kind = "video"

    def __init__(self, path: str | Path, options: SourceOptions | None = None, *, intrinsics: str | None = None):
        self.path = Path(path)
        self.options = options or SourceOptions()
        self.source_id = self.options.source_id or f"video:{self.path}"
        self.counters: Counter[str] = Counter()
        if not self.path.is_file():
            raise SourceError(f"video {self.path}: file not found")
        self._k = load_intrinsics_json(Path(intrinsics)) if intrinsics else None
        self._cap = cv2.VideoCapture(str(self.path))
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(f"video {self.path}: OpenCV cannot open or decode it")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self._fps = fps if fps and fps > 0 else 30.0
        self.info = {
            "kind": self.kind,
            "path": str(self.path),
            "fps": self._fps,
            "num_native_frames_estimate": int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None,
            "has_gt": False,
            "has_intrinsics": self._k is not None,
            "timestamps_synthetic": False,
        }

    def __iter__(self) -> Iterator[Frame]:
        pacer = Pacer(self.options.rate)
        index, seq = 0, 0
        while self.options.stop is None or index < self.options.stop:
            if not self.options.selects(index):
                if not self._cap.grab():  # skip without decoding
                    break
                index += 1
                continue
            ok, bgr = self._cap.read()
            if not ok or bgr is None:
                break
            msec = self._cap.get(cv2.CAP_PROP_POS_MSEC)
            t_capture = msec / 1000 if msec > 0 or index == 0 else index / self._fps
            index += 1
            pacer.wait(t_capture)
            yield Frame(
                frame_seq=seq, t_capture=t_capture, image=_to_rgb(bgr), source_id=self.source_id, intrinsics=self._k
            )
            seq += 1
            self.counters["frames"] += 1

    def close(self) -> None:
        self._cap.release()


def _to_rgb(bgr: np.ndarray) -> np.ndarray:
    if bgr.ndim == 2:
        return cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # a new array per frame: safe to send zero-copy
