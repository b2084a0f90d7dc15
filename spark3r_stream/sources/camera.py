"""OpenCV capture sources: a live camera (index or stream URL) and a video file."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from spark3r_stream.errors import ConfigError, SourceError
from spark3r_stream.sources.base import Pacer, SourceOptions, load_intrinsics_json
from spark3r_stream.transport.messages import Frame

log = logging.getLogger(__name__)

RECONNECT_BACKOFF_S = 0.5  # between attempts to reopen a lost camera
WAIT_S = 0.1  # how often a consumer waiting for a frame checks stop_when() and close()
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")


class CameraSource:
    """A live camera: `device` is an index (0) or a stream URL (http:// MJPEG, rtsp://). Latest-wins at the source.

    A grabber thread reads the camera continuously and keeps only the newest frame; the iterator yields the newest
    frame it has not yielded yet, so a consumer slower than the camera gets fresh frames, never a queue of old ones
    (neither OpenCV's FFmpeg backend nor the socket buffers drop anything: after a 1 s stall an MJPEG stream here
    handed back 37 old frames in 0.2 s). Frames read and superseded before they were taken count as `dropped_stale`.
    `t_capture` is the wall clock when the frame was grabbed (stream timestamps are not usable: FFmpeg's MJPEG demuxer
    reports 25 fps and frame count x 40 ms whatever the camera sends).

    A lost stream is reopened: after `max_failed_reads` failed reads in a row (a stream that ended fails at once) the
    camera is reopened every RECONNECT_BACKOFF_S (`reconnects` counts successes) until `reconnect_timeout_s` have
    passed since the last frame; then SourceError (camera lost). Reads and opens of streams give up after
    `read_timeout_s` (a silent network). Yields until `options.stop` frames were taken, or `stop_when()` is true.
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
        reconnect_timeout_s: float = 10.0,
        read_timeout_s: float = 5.0,
    ) -> None:
        self.device = device
        self.options = options or SourceOptions()
        self.source_id = self.options.source_id or f"camera:{device}"
        self.counters: Counter[str] = Counter()
        if max_failed_reads < 1:
            raise ConfigError(f"camera max_failed_reads: expected int >= 1, got {max_failed_reads}")
        if not (reconnect_timeout_s >= 0 and read_timeout_s > 0):
            raise ConfigError(
                f"camera timeouts: expected reconnect_timeout_s >= 0 and read_timeout_s > 0, "
                f"got {reconnect_timeout_s} and {read_timeout_s}"
            )
        self.max_failed_reads = max_failed_reads
        self.reconnect_timeout_s = reconnect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._settings = {cv2.CAP_PROP_FRAME_WIDTH: width, cv2.CAP_PROP_FRAME_HEIGHT: height, cv2.CAP_PROP_FPS: fps}
        self._k = load_intrinsics_json(Path(intrinsics)) if intrinsics else None
        self._cap = self._open()
        if self._cap is None:
            what = "no such device, or it is busy" if isinstance(device, int) else "stream unreachable or not decodable"
            raise SourceError(f"camera {device!r} did not open: {what}")
        self.stop_when: Callable[[], bool] = lambda: False  # the capture node: stop waiting once it is stopping
        self._cond = threading.Condition()
        self._newest: tuple[int, float, np.ndarray] | None = None  # (grab number, wall time at grab, BGR image)
        self._error: SourceError | None = None
        self._is_closed = False
        self._grabber: threading.Thread | None = None
        self.info = {
            "kind": self.kind,
            "device": device,
            "fps": self._cap.get(cv2.CAP_PROP_FPS) or None,
            "num_frames": None,
            "has_gt": False,
            "has_intrinsics": self._k is not None,
            "timestamps_synthetic": False,
        }

    def _open(self) -> cv2.VideoCapture | None:
        if isinstance(self.device, int):
            cap = cv2.VideoCapture(self.device)
        else:  # a stream: bounded open and read (OpenCV's FFmpeg default is 30 s each)
            timeout_ms = int(self.read_timeout_s * 1000)
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
            cap = cv2.VideoCapture(self.device, cv2.CAP_ANY, params)
        if not cap.isOpened():
            cap.release()
            return None
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # V4L2: fewer driver buffers; FFmpeg ignores it (the grabber drops)
        for prop, value in self._settings.items():
            if value:
                cap.set(prop, value)
        return cap

    def __iter__(self) -> Iterator[Frame]:
        if self._grabber is None:
            self._grabber = threading.Thread(target=self._grab_loop, name=f"grab {self.device}", daemon=True)
            self._grabber.start()
        index, seq, last = 0, 0, -1
        try:
            while self.options.stop is None or index < self.options.stop:
                taken = self._take_newer(last)
                if taken is None:  # stop_when() or close()
                    return
                number, t_capture, bgr = taken
                self.counters["dropped_stale"] += number - last - 1
                last = number
                index += 1
                if not self.options.selects(index - 1):
                    self.counters["not_selected"] += 1
                    continue
                self.counters["frames"] += 1  # before the yield: a consumer may stop at it (one frame unsent)
                yield Frame(
                    frame_seq=seq,
                    t_capture=t_capture,
                    image=_to_rgb(bgr),
                    source_id=self.source_id,
                    intrinsics=self._k,
                )
                seq += 1
        finally:  # the consumer is done: stop grabbing, so grabbed = frames + dropped_stale + not_selected + at_stop
            self._stop_grabber()
            with self._cond:
                newest = -1 if self._newest is None else self._newest[0]
            self.counters["unused_at_stop"] += max(0, newest - last)

    def _take_newer(self, last: int) -> tuple[int, float, np.ndarray] | None:
        with self._cond:
            while True:
                if self._newest is not None and self._newest[0] > last:
                    return self._newest
                if self._error is not None:
                    raise self._error
                if self._is_closed or self.stop_when():
                    return None
                self._cond.wait(WAIT_S)

    def _grab_loop(self) -> None:
        """The grabber thread: read as fast as the camera delivers, keep the newest, reopen a lost stream."""
        number, failures = 0, 0
        last_frame = time.monotonic()
        while not self._is_closed:
            cap = self._cap
            ok = cap is not None and cap.grab()
            t_capture = time.time()  # at grab, before the colour conversion
            if ok:
                ok, bgr = cap.retrieve()
            if ok and bgr is not None:
                failures, last_frame = 0, time.monotonic()
                with self._cond:
                    self._newest = (number, t_capture, bgr)
                    self._cond.notify_all()
                number += 1
                self.counters["grabbed"] += 1
                continue
            failures += 1
            self.counters["failed_reads"] += 1
            if failures < self.max_failed_reads and cap is not None:
                continue
            lost_s = time.monotonic() - last_frame
            if lost_s > self.reconnect_timeout_s:
                with self._cond:
                    self._error = SourceError(
                        f"camera {self.device!r}: no frame for {lost_s:.1f} s ({self.counters['failed_reads']} failed "
                        f"reads, {self.counters['reconnect_attempts']} reopen attempts); camera lost"
                    )
                    self._cond.notify_all()
                return
            with self._cond:  # wait before reopening, waking at once on close()
                self._cond.wait_for(lambda: self._is_closed, timeout=RECONNECT_BACKOFF_S)
            if self._is_closed:
                return
            if cap is not None:
                cap.release()
            self.counters["reconnect_attempts"] += 1
            self._cap = self._open()
            if self._cap is not None:
                self.counters["reconnects"] += 1
                failures = 0
                log.warning("camera %r: stream lost for %.1f s; reopened", self.device, lost_s)

    def _stop_grabber(self) -> bool:
        """End the grabber thread; False if it is still blocked in a read after read_timeout_s."""
        with self._cond:
            self._is_closed = True
            self._cond.notify_all()
        if self._grabber is not None:
            self._grabber.join(timeout=self.read_timeout_s + 1.0)
            if self._grabber.is_alive():
                log.warning("camera %r: grabber still in a read after %.0f s", self.device, self.read_timeout_s)
                return False
        return True

    def close(self) -> None:
        if self._stop_grabber() and self._cap is not None:  # never release under a read still running: a crash
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
