"""RerunConfig: where a recording goes and what is in it; no rerun import (configs load without the SDK)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spark3r_stream.config import check_field

DEFAULT_VIEWER_PORT = 9876


@dataclass(frozen=True, kw_only=True)
class RerunConfig:  # every command's viewer flags map onto this (cli.add_viewer_options)
    """Where the recording goes (any combination of viewer, URL and file; memory alone, for tests) and what is in it."""

    spawn: bool = False  # start a local viewer (needs a display) and stream to it
    connect_url: str | None = None  # stream to a running viewer, e.g. rerun+http://127.0.0.1:9876/proxy
    rrd_path: Path | None = None  # save an .rrd file
    memory: bool = False  # keep the recording in memory (tests); cannot be combined with other sinks
    application_id: str = "spark3r_stream"
    recording_id: str | None = None  # share one id across nodes to merge their data in one recording
    viewer_port: int = DEFAULT_VIEWER_PORT
    jpeg_quality: int | None = 85  # keyframe images JPEG-compressed in the recording; None: raw pixels
    max_fused_points: int = 500_000  # fused map points logged at most (evenly subsampled beyond)
    fused_map_every: int = 5  # log the fused map every this many syncs (and always at `finish`)
    point_radius: float = 0.005  # map units

    def __post_init__(self):
        check_field(
            self,
            "memory",
            not (self.memory and (self.spawn or self.connect_url or self.rrd_path)),
            "false when spawn, connect_url or rrd_path is set (memory is a test sink on its own)",
        )
        check_field(
            self,
            "connect_url",
            self.connect_url is None or self.connect_url.startswith(("rerun://", "rerun+http://", "rerun+https://")),
            "a rerun://, rerun+http:// or rerun+https:// URL",
        )
        check_field(self, "viewer_port", 1 <= self.viewer_port <= 65535, "a port in [1, 65535]")
        check_field(
            self, "jpeg_quality", self.jpeg_quality is None or 1 <= self.jpeg_quality <= 100, "null or int in [1, 100]"
        )
        check_field(self, "max_fused_points", self.max_fused_points >= 1, "int >= 1")
        check_field(self, "fused_map_every", self.fused_map_every >= 1, "int >= 1")
        check_field(self, "point_radius", self.point_radius > 0, "float > 0")

    @property
    def is_enabled(self) -> bool:
        return bool(self.spawn or self.connect_url or self.rrd_path or self.memory)
