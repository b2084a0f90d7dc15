"""MapLogger: the global map streamed to Rerun (rerun-sdk 0.41) over an explicit `rr.RecordingStream`.

The only module that imports rerun. One entity per keyframe: its transform (re-logged only when the pose
changes), pinhole camera with its image and points in its camera frame (logged once, again only if a later
window re-builds them); the trajectory, the fused map and the newest keyframe's depth. Timelines `frame_seq`
and `capture_time` (seconds as a duration: replayed datasets and synthetic sequences start anywhere, often at 0).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import rerun as rr

from spark3r_stream.errors import ConfigError
from spark3r_stream.stream.global_map import GlobalMap
from spark3r_stream.viz.config import RerunConfig

log = logging.getLogger(__name__)

__all__ = ["EntityPaths", "MapLogger", "RerunConfig", "open_recording"]


class EntityPaths:
    """Every entity path the pipeline logs, in one place."""

    WORLD = "world"  # the map frame: the first window's first camera (OpenCV: x right, y down, z forward)
    KEYFRAMES = "world/keyframes"
    TRAJECTORY = "world/trajectory"  # line strip through the keyframe centres, in time order
    FUSED_MAP = "world/map"  # voxel-fused points
    LATEST_DEPTH = "latest_keyframe/depth"  # 2-D view of the newest keyframe's depth
    RUN_CONFIG = "run/config"  # the resolved configuration of the run, as a text document
    TIMELINE_FRAME = "frame_seq"
    TIMELINE_TIME = "capture_time"

    @staticmethod
    def keyframe(keyframe_id: int) -> str:
        """Transform3D camera -> world (map units)."""
        return f"world/keyframes/{keyframe_id:06d}"

    @staticmethod
    def keyframe_points(keyframe_id: int) -> str:
        """Points3D in the keyframe's camera frame."""
        return f"world/keyframes/{keyframe_id:06d}/points"

    @staticmethod
    def keyframe_camera(keyframe_id: int) -> str:
        """Pinhole (frustum) with the keyframe's image."""
        return f"world/keyframes/{keyframe_id:06d}/camera"


def open_recording(config: RerunConfig) -> tuple[rr.RecordingStream, rr.MemoryRecording | None]:
    """A recording stream with the configured sinks (a disabled no-op stream when none is configured).

    Returns:
        (stream, the MemoryRecording when `config.memory`, else None).
    """
    if not config.is_enabled:
        return rr.RecordingStream(config.application_id, default_enabled=False), None
    recording = rr.RecordingStream(config.application_id, recording_id=config.recording_id)
    if config.memory:
        return recording, recording.memory_recording()
    sinks: list[rr.GrpcSink | rr.FileSink] = []
    if config.spawn:
        recording.spawn(port=config.viewer_port, connect=False)
        sinks.append(rr.GrpcSink(f"rerun+http://127.0.0.1:{config.viewer_port}/proxy"))
    if config.connect_url and not (config.spawn and config.connect_url.endswith(f":{config.viewer_port}/proxy")):
        sinks.append(rr.GrpcSink(config.connect_url))
    if config.rrd_path is not None:
        path = Path(config.rrd_path)
        if not path.parent.is_dir():
            raise ConfigError(f"rerun rrd_path {path}: folder {path.parent} does not exist")
        sinks.append(rr.FileSink(path))
    from spark3r_stream.viz.blueprint import default_blueprint  # here: blueprint.py imports EntityPaths from here

    recording.set_sinks(*sinks, default_blueprint=default_blueprint())
    log.info("rerun recording to %s", ", ".join(type(sink).__name__ for sink in sinks))
    return recording, None


class MapLogger:
    """Log a `GlobalMap` to Rerun incrementally: call `sync` after each window, `finish` at the end."""

    def __init__(self, recording: rr.RecordingStream, config: RerunConfig | None = None):
        self.recording = recording
        self.config = config or RerunConfig()
        self.memory: rr.MemoryRecording | None = None
        self.counts = {"syncs": 0, "transforms": 0, "points": 0, "cameras": 0, "fused_maps": 0, "depths": 0}
        self._logged_pose: dict[int, int] = {}  # keyframe_id -> pose revision logged
        self._logged_points: dict[int, int] = {}  # keyframe_id -> points revision logged
        self._logged_camera: set[int] = set()
        self._logged_depth_of: tuple[int, int] | None = None  # (keyframe_id, sync) of the depth on screen
        self.recording.log(EntityPaths.WORLD, rr.ViewCoordinates.RDF, static=True)

    @classmethod
    def open(cls, config: RerunConfig) -> MapLogger:
        """A logger with the sinks of `config` (see `open_recording`)."""
        recording, memory = open_recording(config)
        logger = cls(recording, config)
        logger.memory = memory
        return logger

    def log_run_config(self, text: str) -> None:
        """The run's resolved configuration (YAML) as a text document: a recording says how it was made."""
        self.recording.log(EntityPaths.RUN_CONFIG, rr.TextDocument(text, media_type="text/plain"), static=True)

    def set_time(self, frame_seq: int, capture_time: float) -> None:
        """Set both timelines for the following log calls (`capture_time` in seconds)."""
        self.recording.set_time(EntityPaths.TIMELINE_FRAME, sequence=int(frame_seq))
        self.recording.set_time(EntityPaths.TIMELINE_TIME, duration=float(capture_time))

    def sync(self, global_map: GlobalMap, frame_seq: int, capture_time: float) -> dict[str, int]:
        """Log what changed in the map since the last sync; returns how many entities of each kind were logged."""
        self.set_time(frame_seq, capture_time)
        before = dict(self.counts)
        for keyframe_id in global_map.keyframe_ids:
            self._sync_keyframe(global_map, keyframe_id)
        self._log_trajectory(global_map)
        self._log_latest_depth(global_map)
        self.counts["syncs"] += 1
        if self.counts["syncs"] % self.config.fused_map_every == 0:
            self.log_fused_map(global_map)
        return {key: self.counts[key] - before[key] for key in self.counts if key != "syncs"}

    def finish(self, global_map: GlobalMap, frame_seq: int, capture_time: float) -> None:
        """Final sync with the fused map, then flush and close the sinks (the .rrd file is complete after this)."""
        self.sync(global_map, frame_seq, capture_time)
        if self.counts["syncs"] % self.config.fused_map_every != 0:
            self.log_fused_map(global_map)
        self.close()

    def close(self) -> None:
        """Flush pending data and close the sinks."""
        self.recording.flush()
        if self.memory is None:  # a memory recording stays readable after the stream is done with it
            self.recording.disconnect()

    def _sync_keyframe(self, global_map: GlobalMap, keyframe_id: int) -> None:
        pose_revision, points_revision = global_map.revisions(keyframe_id)
        if self._logged_pose.get(keyframe_id) != pose_revision:
            world_from_cam = global_map.world_from_cam(keyframe_id)
            scale = global_map.points_scale(keyframe_id)  # a pose graph's Sim(3): the points are not re-logged
            self.recording.log(
                EntityPaths.keyframe(keyframe_id),
                rr.Transform3D(translation=world_from_cam[:3, 3], mat3x3=scale * world_from_cam[:3, :3]),
            )
            self._logged_pose[keyframe_id] = pose_revision
            self.counts["transforms"] += 1
        if keyframe_id not in self._logged_camera:
            self._log_camera(global_map, keyframe_id)
        if self._logged_points.get(keyframe_id) != points_revision:
            points, colors = global_map.keyframe_points(keyframe_id)
            if len(points):
                self.recording.log(
                    EntityPaths.keyframe_points(keyframe_id),
                    rr.Points3D(points, colors=colors, radii=self.config.point_radius),
                )
                self.counts["points"] += 1
            self._logged_points[keyframe_id] = points_revision

    def _log_camera(self, global_map: GlobalMap, keyframe_id: int) -> None:
        intrinsics, hw = global_map.intrinsics(keyframe_id), global_map.image_hw(keyframe_id)
        image = global_map.image(keyframe_id)
        if hw is None and image is not None:
            hw = image.shape[:2]
        if intrinsics is None or hw is None:
            return  # no depth yet for this keyframe: the frustum waits for its resolution
        path = EntityPaths.keyframe_camera(keyframe_id)
        self.recording.log(
            path,
            rr.Pinhole(image_from_camera=intrinsics, resolution=[hw[1], hw[0]], camera_xyz=rr.ViewCoordinates.RDF),
        )
        if image is not None:
            if image.shape[:2] != tuple(hw):
                log.debug("keyframe %d image %s differs from depth %s", keyframe_id, image.shape[:2], hw)
            picture = rr.Image(image)
            self.recording.log(
                path, picture if self.config.jpeg_quality is None else picture.compress(self.config.jpeg_quality)
            )
        self._logged_camera.add(keyframe_id)
        self.counts["cameras"] += 1

    def _log_trajectory(self, global_map: GlobalMap) -> None:
        _, world_from_cam = global_map.keyframe_trajectory()
        if len(world_from_cam) >= 2:
            self.recording.log(EntityPaths.TRAJECTORY, rr.LineStrips3D([world_from_cam[:, :3, 3]]))

    def _log_latest_depth(self, global_map: GlobalMap) -> None:
        latest = global_map.latest_depth
        if latest is None:
            return
        keyframe_id, depth = latest
        marker = (keyframe_id, global_map.num_windows)
        if marker == self._logged_depth_of:
            return
        self.recording.log(EntityPaths.LATEST_DEPTH, rr.DepthImage(depth, meter=1.0))
        self._logged_depth_of = marker
        self.counts["depths"] += 1

    def log_fused_map(self, global_map: GlobalMap) -> None:
        """Log the voxel-fused map (evenly subsampled to `max_fused_points`)."""
        fused = global_map.fused()
        points, colors = fused.points, fused.colors
        if len(points) > self.config.max_fused_points:
            keep = np.linspace(0, len(points) - 1, self.config.max_fused_points).round().astype(int)
            points, colors = points[keep], colors[keep]
        self.recording.log(EntityPaths.FUSED_MAP, rr.Points3D(points, colors=colors, radii=self.config.point_radius))
        self.counts["fused_maps"] += 1


def recorded_entity_paths(rrd_path: str | Path) -> set[str]:
    """Entity paths stored in an .rrd file (without the leading '/'): a check that a recording is valid and complete."""
    from rerun.chunk import RrdReader

    return {chunk.entity_path.lstrip("/") for chunk in RrdReader(rrd_path).stream()}
