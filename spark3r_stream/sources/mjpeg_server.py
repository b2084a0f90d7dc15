"""MjpegServer: a frame sequence served as a live MJPEG stream over HTTP (multipart/x-mixed-replace), paced in wall time.

What many IP cameras serve, so `spark3r launch launch/live_camera.yaml --set capture.path=URL` can be tried on a
recorded or synthetic sequence: `python -m spark3r_stream.sources.mjpeg_server synth:frames=300 --port 8090`. The
live-stream test and `benchmarks/live_stream.py` use it. Like a camera it never waits for a slow client: each
connection gets the newest frame when it is ready for one (`frames_skipped` counts what a client missed).
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import cv2
import numpy as np

from spark3r_stream.errors import InputError

log = logging.getLogger(__name__)

LoopMode = Literal["once", "repeat", "bounce"]
BOUNDARY = "spark3rframe"
WAIT_S = 0.1  # how often a waiting connection checks that the server is still open


@dataclass
class ServerStats:
    """What the server did: frames its clock published, parts written to clients, frames clients were too slow for."""

    frames_published: int = 0
    frames_sent: int = 0
    frames_skipped: int = 0
    connections: int = 0
    connections_dropped: int = 0  # by drop_clients()
    # (frame number, wall time it was published) of every frame sent to a client: the stream's own clock
    sent: list[tuple[int, float]] = field(default_factory=list)


class MjpegServer:
    """Serve `images` (uint8 RGB [H, W, 3]) at `fps` on http://host:port/path, one publishing clock for all clients.

    `loop`: "once" ends every connection after the last image (a camera that went away), "repeat" starts over,
    "bounce" plays the sequence forwards then backwards (no jump in the camera path). The clock starts with
    `start()` and runs whether or not a client is connected, as a camera does.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        *,
        fps: float = 30.0,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/stream.mjpg",
        loop: LoopMode = "bounce",
        jpeg_quality: int = 90,
    ) -> None:
        if not images:
            raise InputError("mjpeg server images: expected at least one image, got none")
        if not fps > 0:
            raise InputError(f"mjpeg server fps: expected > 0, got {fps}")
        if loop not in ("once", "repeat", "bounce"):
            raise InputError(f"mjpeg server loop {loop!r}: expected one of once, repeat, bounce")
        self.fps, self.path, self.loop = fps, path, loop
        params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
        self._jpegs = [_encode(image, params) for image in images]  # encoded once: serving costs no CPU per client
        self.stats = ServerStats()
        self._cond = threading.Condition()
        self._latest: tuple[int, float, bytes] | None = None  # (frame number, wall time published, jpeg)
        self._is_open = True
        self._is_ended = False
        self._client_sockets: set[socket.socket] = set()
        self._httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}{self.path}"

    @property
    def num_images(self) -> int:
        return len(self._jpegs)

    def start(self) -> MjpegServer:
        for target, name in ((self._httpd.serve_forever, "mjpeg-http"), (self._publish, "mjpeg-clock")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def close(self) -> None:
        with self._cond:
            self._is_open = False
            self._cond.notify_all()
        self.drop_clients(count=False)
        if self._threads:  # shutdown() waits for serve_forever(): only once start() ran it
            self._httpd.shutdown()
        self._httpd.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> MjpegServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def drop_clients(self, *, count: bool = True) -> int:
        """Cut every open connection (a network drop); the server keeps listening. Returns how many were cut."""
        with self._cond:
            sockets = list(self._client_sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed by the client
                pass
        if count:
            self.stats.connections_dropped += len(sockets)
        return len(sockets)

    def image_index(self, number: int) -> int:
        """Which image frame `number` of the clock shows."""
        n = len(self._jpegs)
        if self.loop == "bounce" and n > 1:
            period = 2 * n - 2
            k = number % period
            return k if k < n else period - k
        return number % n

    # ------------------------------------------------------------------ the clock
    def _publish(self) -> None:
        t0 = time.monotonic()
        number = 0
        while True:
            if self.loop == "once" and number >= len(self._jpegs):
                with self._cond:
                    self._is_ended = True
                    self._cond.notify_all()
                return
            due = t0 + number / self.fps
            delay = due - time.monotonic()
            with self._cond:
                if delay > 0:
                    self._cond.wait_for(lambda: not self._is_open, timeout=delay)
                if not self._is_open:
                    return
                self._latest = (number, time.time(), self._jpegs[self.image_index(number)])
                self.stats.frames_published += 1
                self._cond.notify_all()
            number += 1
            if time.monotonic() - t0 > (number + 1) / self.fps:  # fell behind (a stalled machine): skip, do not burst
                number = int((time.monotonic() - t0) * self.fps)

    # ------------------------------------------------------------------ one client
    def _next_frame(self, last: int) -> tuple[int, float, bytes] | None:
        """The newest frame after `last`, waiting for it; None when the server closes or the sequence ended."""
        with self._cond:
            while self._is_open:
                if self._latest is not None and self._latest[0] > last:
                    return self._latest
                if self._is_ended:
                    return None
                self._cond.wait(WAIT_S)
        return None

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        handler.send_header("Cache-Control", "no-cache, no-store")
        handler.send_header("Connection", "close")
        handler.end_headers()
        sock = handler.connection
        with self._cond:
            self._client_sockets.add(sock)
            self.stats.connections += 1
        last = -1 if self._latest is None else self._latest[0] - 1  # a client joins at the newest frame
        try:
            while (frame := self._next_frame(last)) is not None:
                number, t_published, jpeg = frame
                head = (
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n"
                    f"X-Timestamp: {t_published:.6f}\r\nX-Frame-Number: {number}\r\n\r\n"
                ).encode()
                handler.wfile.write(head + jpeg + b"\r\n")
                handler.wfile.flush()
                with self._cond:
                    self.stats.frames_skipped += max(0, number - last - 1) if last >= 0 else 0
                    self.stats.frames_sent += 1
                    self.stats.sent.append((number, t_published))
                last = number
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, OSError):
            pass  # the client went away, or drop_clients() cut it
        finally:
            with self._cond:
                self._client_sockets.discard(sock)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.split("?")[0] != server.path:
                    self.send_error(404, f"no stream at {self.path}; try {server.path}")
                    return
                server._serve(self)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
                log.debug("mjpeg server: " + format, *args)

        return Handler


def _encode(image: np.ndarray, params: list[int]) -> bytes:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"mjpeg server image: expected uint8 RGB [H, W, 3], got {image.dtype} {image.shape}")
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    assert ok, "JPEG encoding of a uint8 RGB image cannot fail"
    return buf.tobytes()


def images_of(frames: Iterable[Any]) -> list[np.ndarray]:
    """The images of a FrameSource (or any iterable of Frame messages)."""
    return [frame.image for frame in frames]


def main(argv: Sequence[str] | None = None) -> int:
    from spark3r_stream.errors import Spark3RError
    from spark3r_stream.sources import open_source

    parser = argparse.ArgumentParser(
        prog="python -m spark3r_stream.sources.mjpeg_server",
        description="Serve a frame source (synth:..., a video, a TUM folder, ...) as a live MJPEG stream over HTTP.",
    )
    parser.add_argument("source", help="source spec, as capture.path: synth:frames=300, clip.mp4, /data/tum_dir, ...")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--loop", choices=("once", "repeat", "bounce"), default="bounce")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (1-100)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        source = open_source(args.source)
        try:
            images = images_of(source)
        finally:
            source.close()
        server = MjpegServer(
            images, fps=args.fps, host=args.host, port=args.port, loop=args.loop, jpeg_quality=args.quality
        )
    except (Spark3RError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with server:
        print(f"serving {len(images)} frames of {args.source} at {args.fps:g} fps on {server.url} (Ctrl-C stops)")
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
    s = server.stats
    print(f"published {s.frames_published}, sent {s.frames_sent}, skipped {s.frames_skipped}, {s.connections} clients")
    return 0


if __name__ == "__main__":
    sys.exit(main())
