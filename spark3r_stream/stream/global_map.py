"""GlobalMap: one pose per keyframe in the map frame, points per keyframe in its camera frame, a voxel-fused map,
and the exports (TUM trajectories of keyframes and of every frame, PLY).

Memory is bounded: at most `max_points_per_keyframe` points per keyframe and `max_total_points` over all keyframes
(beyond that every keyframe is thinned evenly), keyframe images only for the `max_cached_images` newest keyframes,
and 16 bytes per input frame for the all-frame trajectory (144 with a ground-truth pose). A point costs 23 bytes (float32 xyz, uint8 rgb,
float32 confidence, int32 pixel index), so the default cap of 4 M points is about 92 MB.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from spark3r_stream.config import check_field
from spark3r_stream.errors import InputError
from spark3r_stream.eval.trajectory import write_tum
from spark3r_stream.geometry import apply_transform, interpolate_poses, sim3_scale, unproject_depth
from spark3r_stream.stream.alignment import AlignmentConfig, AlignmentResult, align_window
from spark3r_stream.stream.point_cloud import GREY, FusedMap, voxel_downsample, write_ply

log = logging.getLogger(__name__)

__all__ = ["GlobalMap", "GlobalMapConfig", "WindowIntegration"]


@dataclass(frozen=True, kw_only=True)
class GlobalMapConfig:
    """Point filtering, caps and fusion of the global map."""

    confidence_quantile: float = 0.25  # drop this lowest-confidence fraction of each keyframe (VGGT-SLAM: 25 %)
    min_confidence: float = 0.0  # and every point below this absolute confidence
    max_points_per_keyframe: int = 20_000  # kept per keyframe after filtering (evenly subsampled)
    # over all keyframes; beyond, every keyframe is thinned to the same share of `thin_to` of it: the headroom makes
    # thinning rare (it changes every keyframe's points, and fusion's saved state rewrites every block after it)
    max_total_points: int = 4_000_000
    thin_to: float = 0.8
    voxel_size: float = 0.02  # fused-map voxel edge, map units (the first window's scale)
    max_cached_images: int = 256  # newest keyframe images kept to colour points refreshed by later windows
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)

    def __post_init__(self):
        check_field(self, "confidence_quantile", 0 <= self.confidence_quantile < 1, "float in [0, 1)")
        check_field(self, "min_confidence", self.min_confidence >= 0, "float >= 0")
        check_field(self, "max_points_per_keyframe", self.max_points_per_keyframe >= 1, "int >= 1")
        check_field(self, "thin_to", 0 < self.thin_to <= 1, "float in (0, 1]")
        check_field(self, "max_total_points", self.max_total_points >= 1, "int >= 1")
        check_field(self, "voxel_size", self.voxel_size > 0, "float > 0")
        check_field(self, "max_cached_images", self.max_cached_images >= 0, "int >= 0")


@dataclass
class _KeyframeRecord:
    keyframe_id: int
    frame_seq: int | None = None
    t_capture: float | None = None
    world_from_cam: np.ndarray | None = None  # [4, 4] rigid, map frame
    intrinsics: np.ndarray | None = None  # [3, 3] at the depth resolution
    image_hw: tuple[int, int] | None = None
    window_id: int | None = None  # the run that last solved the pose
    points_cam: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))  # map units
    colors: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.uint8))
    confidence: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    pixel_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # row * W + col in depth
    # a pose graph's Sim(3) correction scales the points instead of rewriting them: map point =
    # world_from_cam @ (points_scale * points_cam); new points from a window reset it to 1
    points_scale: float = 1.0
    pose_revision: int = 0  # bumped on every pose change: the viewer re-logs only changed transforms
    points_revision: int = 0  # bumped when the points are replaced


@dataclass(frozen=True)
class WindowIntegration:
    """What one window result did to the map."""

    window_id: int
    alignment: AlignmentResult
    new_keyframe_ids: tuple[int, ...]  # posed for the first time
    moved_keyframe_ids: tuple[int, ...]  # re-solved by this run (their transforms changed)
    points_keyframe_ids: tuple[int, ...]  # whose points were (re)built from this run's depth


class GlobalMap:
    """The fusion state. Feed `add_keyframe` / `record_frame` as frames arrive and `integrate_window` per result."""

    def __init__(self, config: GlobalMapConfig | None = None):
        self.config = config or GlobalMapConfig()
        self._records: dict[int, _KeyframeRecord] = {}
        self._images: OrderedDict[int, np.ndarray] = OrderedDict()
        self._frame_times: dict[int, float] = {}  # frame_seq -> t_capture of every input frame
        self._ground_truth: dict[int, np.ndarray] = {}  # frame_seq -> ground-truth world_from_cam [4, 4], if known
        self._fused: FusedMap | None = None
        self.latest_depth: tuple[int, np.ndarray] | None = None  # (keyframe_id, depth [H, W] in map units)
        self.num_windows = 0
        self.num_thinnings = 0  # times the map went over max_total_points

    # ----------------------------------------------------------------------------------------------------- inputs

    def add_keyframe(self, keyframe_id: int, frame_seq: int, t_capture: float, image: np.ndarray | None = None) -> None:
        """Register a keyframe (its time for the trajectories, its image to colour its points)."""
        record = self._record(keyframe_id)
        record.frame_seq, record.t_capture = frame_seq, float(t_capture)
        self._frame_times[frame_seq] = float(t_capture)
        if image is not None and self.config.max_cached_images > 0:
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise InputError(
                    f"keyframe {keyframe_id} image: expected uint8 [H, W, 3], got {image.dtype} {image.shape}"
                )
            self._images[keyframe_id] = image
            self._images.move_to_end(keyframe_id)
            while len(self._images) > self.config.max_cached_images:
                self._images.popitem(last=False)

    def record_frame(self, frame_seq: int, t_capture: float, gt_world_from_cam: np.ndarray | None = None) -> None:
        """Remember an input frame's time, so `write_trajectory` gives it an interpolated pose, and its ground-truth
        camera-to-world pose when the source has one (`ground_truth()`: the same timestamps)."""
        self._frame_times[frame_seq] = float(t_capture)
        if gt_world_from_cam is not None:
            pose = np.array(gt_world_from_cam, dtype=np.float64)  # a copy: received arrays are views on messages
            if pose.shape != (4, 4):
                raise InputError(f"frame {frame_seq} ground truth: expected a [4, 4] pose, got shape {pose.shape}")
            self._ground_truth[frame_seq] = pose

    def integrate_window(
        self,
        window_id: int,
        keyframe_ids: Sequence[int],
        window_from_cam: np.ndarray,
        intrinsics: np.ndarray,
        dense_keyframe_ids: Sequence[int] = (),
        depth: np.ndarray | None = None,
        confidence: np.ndarray | None = None,
    ) -> WindowIntegration:
        """Align one window result onto the map and replace the estimates of its keyframes.

        Args:
            keyframe_ids: [S] the run's keyframes.
            window_from_cam: [S, 4, 4] rigid camera-to-window poses (the window's frame: the model's world frame for it).
            intrinsics: [S, 3, 3] pinhole intrinsics at the depth resolution.
            dense_keyframe_ids: [D] the keyframes that come with depth (a subset of `keyframe_ids`).
            depth: [D, H, W] z-depth in window units; confidence: [D, H, W] (higher is better).
        """
        keyframe_ids = [int(k) for k in keyframe_ids]
        dense_keyframe_ids = [int(k) for k in dense_keyframe_ids]
        window_from_cam, intrinsics, depth, confidence = self._check_window(
            window_id, keyframe_ids, window_from_cam, intrinsics, dense_keyframe_ids, depth, confidence
        )
        window_poses = dict(zip(keyframe_ids, window_from_cam, strict=True))
        map_poses = {k: self._records[k].world_from_cam for k in keyframe_ids if self._posed(k)}
        dense = {k: i for i, k in enumerate(dense_keyframe_ids)}
        window_cam_points = {k: unproject_depth(depth[i], intrinsics[keyframe_ids.index(k)]) for k, i in dense.items()}

        map_points, window_points, point_weights = {}, {}, {}
        for k in map_poses:
            record = self._records[k]
            if k in dense and len(record.pixel_index) and depth.shape[1:] == record.image_hw:
                window_cam = window_cam_points[k].reshape(-1, 3)[record.pixel_index]
                new_confidence = confidence[dense[k]].reshape(-1)[record.pixel_index]
                map_points[k] = apply_transform(record.world_from_cam, record.points_scale * record.points_cam)
                window_points[k] = apply_transform(window_poses[k], window_cam)
                point_weights[k] = np.sqrt(np.clip(record.confidence, 0, None) * np.clip(new_confidence, 0, None))
        alignment = align_window(
            map_poses,
            window_poses,
            map_points=map_points or None,
            window_points=window_points or None,
            point_weights=point_weights or None,
            config=self.config.alignment,
        )

        new_ids, moved_ids, points_ids = [], [], []
        for index, k in enumerate(keyframe_ids):
            record = self._record(k)
            world_from_cam = alignment.map_from_window @ window_poses[k]
            world_from_cam[:3, :3] /= sim3_scale(world_from_cam)  # a camera pose is rigid; the scale goes to points
            (moved_ids if record.world_from_cam is not None else new_ids).append(k)
            record.world_from_cam = world_from_cam
            record.window_id = window_id
            record.pose_revision += 1
            record.intrinsics = intrinsics[index].copy()
        for k, i in dense.items():
            self._set_points(self._records[k], window_cam_points[k], confidence[i], alignment.scale)
            points_ids.append(k)
        if dense_keyframe_ids:
            newest = max(dense_keyframe_ids)
            self.latest_depth = (newest, (depth[dense[newest]] * alignment.scale).astype(np.float32))
        self._enforce_total_cap()
        self._fused = None
        self.num_windows += 1
        log.info(
            "window %d: %d keyframes (%d new), %s alignment over %d overlapping, scale %.3f, rmse %.3g",
            window_id,
            len(keyframe_ids),
            len(new_ids),
            alignment.method,
            alignment.num_overlap,
            alignment.scale,
            alignment.rmse,
        )
        return WindowIntegration(window_id, alignment, tuple(new_ids), tuple(moved_ids), tuple(points_ids))

    def _record(self, keyframe_id: int) -> _KeyframeRecord:
        if keyframe_id not in self._records:
            self._records[keyframe_id] = _KeyframeRecord(keyframe_id)
        return self._records[keyframe_id]

    def _posed(self, keyframe_id: int) -> bool:
        return keyframe_id in self._records and self._records[keyframe_id].world_from_cam is not None

    def _check_window(self, window_id, keyframe_ids, window_from_cam, intrinsics, dense_ids, depth, confidence):
        name = f"window result {window_id}"
        num = len(keyframe_ids)
        if num == 0 or len(set(keyframe_ids)) != num:
            raise InputError(f"{name} keyframe_ids: expected distinct ids, got {keyframe_ids}")
        window_from_cam = np.asarray(window_from_cam, dtype=np.float64)
        intrinsics = np.asarray(intrinsics, dtype=np.float64)
        if window_from_cam.shape != (num, 4, 4) or not np.isfinite(window_from_cam).all():
            raise InputError(f"{name} window_from_cam: expected finite [{num}, 4, 4], got {window_from_cam.shape}")
        if intrinsics.shape != (num, 3, 3):
            raise InputError(f"{name} intrinsics: expected [{num}, 3, 3], got {intrinsics.shape}")
        if not set(dense_ids) <= set(keyframe_ids):
            raise InputError(f"{name} dense_keyframe_ids: {sorted(set(dense_ids) - set(keyframe_ids))} not in the run")
        if not dense_ids:
            return window_from_cam, intrinsics, np.zeros((0, 1, 1), np.float32), np.zeros((0, 1, 1), np.float32)
        depth = np.asarray(depth, dtype=np.float32) if depth is not None else None
        if depth is None or depth.ndim != 3 or len(depth) != len(dense_ids):
            shape = None if depth is None else depth.shape
            raise InputError(f"{name} depth: expected [{len(dense_ids)}, H, W], got {shape}")
        confidence = np.ones_like(depth) if confidence is None else np.asarray(confidence, dtype=np.float32)
        if confidence.shape != depth.shape:
            raise InputError(f"{name} confidence: expected the depth's shape {depth.shape}, got {confidence.shape}")
        return window_from_cam, intrinsics, depth, confidence

    def _set_points(
        self, record: _KeyframeRecord, cam_points: np.ndarray, confidence: np.ndarray, scale: float
    ) -> None:
        cfg = self.config
        height, width = confidence.shape
        flat_points = cam_points.reshape(-1, 3)
        flat_confidence = confidence.reshape(-1)
        is_valid = np.isfinite(flat_points).all(1) & (flat_points[:, 2] > 0) & np.isfinite(flat_confidence)
        is_valid &= flat_confidence >= cfg.min_confidence
        if is_valid.any() and cfg.confidence_quantile > 0:
            is_valid &= flat_confidence >= np.quantile(flat_confidence[is_valid], cfg.confidence_quantile)
        index = np.flatnonzero(is_valid)
        if len(index) > cfg.max_points_per_keyframe:
            rng = np.random.default_rng(record.keyframe_id)  # deterministic per keyframe
            index = np.sort(rng.choice(index, cfg.max_points_per_keyframe, replace=False))
        record.points_cam = (flat_points[index] * scale).astype(np.float32)
        record.points_scale = 1.0
        record.confidence = flat_confidence[index].astype(np.float32)
        record.pixel_index = index.astype(np.int32)
        record.image_hw = (height, width)
        record.colors = self._colors(record.keyframe_id, (height, width))[index]
        record.points_revision += 1

    def _colors(self, keyframe_id: int, hw: tuple[int, int]) -> np.ndarray:
        image = self._images.get(keyframe_id)
        if image is None:
            return np.full((hw[0] * hw[1], 3), GREY, np.uint8)
        if image.shape[:2] != hw:
            image = cv2.resize(image, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
        return image.reshape(-1, 3)

    def _enforce_total_cap(self) -> None:
        total = sum(len(record.pixel_index) for record in self._records.values())
        if total <= self.config.max_total_points:
            return
        share = max(1, int(self.config.max_total_points * self.config.thin_to) // len(self._records))
        for record in self._records.values():
            if len(record.pixel_index) > share:
                keep = np.linspace(0, len(record.pixel_index) - 1, share).round().astype(int)
                record.points_cam = record.points_cam[keep]
                record.colors = record.colors[keep]
                record.confidence = record.confidence[keep]
                record.pixel_index = record.pixel_index[keep]
                record.points_revision += 1
        self.num_thinnings += 1
        log.info("map over %d points: every keyframe thinned to at most %d", self.config.max_total_points, share)

    def set_poses(self, poses: dict[int, np.ndarray], points_scales: dict[int, float] | None = None) -> None:
        """Replace keyframe poses (a back end's refinement or pose graph); their points move with them (kept in
        camera frames), scaled by `points_scales` where given (a Sim(3) correction)."""
        for keyframe_id, world_from_cam in poses.items():
            record = self._record(keyframe_id)
            record.world_from_cam = np.asarray(world_from_cam, np.float64).copy()
            if points_scales is not None and keyframe_id in points_scales:
                record.points_scale = float(points_scales[keyframe_id])
            record.pose_revision += 1
        self._fused = None

    # ---------------------------------------------------------------------------------------------------- queries

    @property
    def keyframe_ids(self) -> list[int]:
        """Posed keyframes, in id order."""
        return sorted(k for k in self._records if self._posed(k))

    def world_from_cam(self, keyframe_id: int) -> np.ndarray:
        """[4, 4] rigid camera-to-map pose of a posed keyframe."""
        if not self._posed(keyframe_id):
            raise KeyError(f"keyframe {keyframe_id} has no pose in the map")
        return self._records[keyframe_id].world_from_cam.copy()

    def intrinsics(self, keyframe_id: int) -> np.ndarray | None:
        return self._records[keyframe_id].intrinsics

    def image_hw(self, keyframe_id: int) -> tuple[int, int] | None:
        return self._records[keyframe_id].image_hw

    def image(self, keyframe_id: int) -> np.ndarray | None:
        return self._images.get(keyframe_id)

    def t_capture(self, keyframe_id: int) -> float | None:
        return self._records[keyframe_id].t_capture if keyframe_id in self._records else None

    def frame_seq(self, keyframe_id: int) -> int | None:
        return self._records[keyframe_id].frame_seq if keyframe_id in self._records else None

    def keyframe_points(self, keyframe_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(points [N, 3] float32 in the keyframe's camera frame, to be scaled by `points_scale`; colours [N, 3])."""
        record = self._records[keyframe_id]
        return record.points_cam, record.colors

    def points_scale(self, keyframe_id: int) -> float:
        """The factor a pose graph's Sim(3) correction put on the keyframe's points (1 until one runs)."""
        return self._records[keyframe_id].points_scale

    def depth_samples(self, keyframe_id: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int] | None]:
        """(points [N, 3] as `keyframe_points`, their pixel index row * W + col [N], the depth's (H, W))."""
        record = self._records[keyframe_id]
        return record.points_cam, record.pixel_index, record.image_hw

    def ground_truth_pose(self, keyframe_id: int) -> np.ndarray | None:
        """The keyframe's ground-truth world_from_cam [4, 4] when the source has one."""
        frame_seq = self.frame_seq(keyframe_id)
        return self._ground_truth.get(frame_seq) if frame_seq is not None else None

    def revisions(self, keyframe_id: int) -> tuple[int, int]:
        """(pose revision, points revision): they change exactly when the pose or the points change."""
        record = self._records[keyframe_id]
        return record.pose_revision, record.points_revision

    @property
    def num_points(self) -> int:
        return sum(len(record.pixel_index) for record in self._records.values())

    def world_points(self) -> tuple[np.ndarray, np.ndarray]:
        """All keyframes' points in the map frame: ([N, 3] float64, [N, 3] uint8)."""
        points, colors = [np.zeros((0, 3))], [np.zeros((0, 3), np.uint8)]
        for k in self.keyframe_ids:
            record = self._records[k]
            if len(record.points_cam):
                points.append(apply_transform(record.world_from_cam, record.points_scale * record.points_cam))
                colors.append(record.colors)
        return np.concatenate(points), np.concatenate(colors)

    def fused(self) -> FusedMap:
        """The voxel-downsampled map (recomputed after a window changed poses or points)."""
        if self._fused is None:
            self._fused = voxel_downsample(*self.world_points(), self.config.voxel_size)
        return self._fused

    def keyframe_trajectory(self) -> tuple[np.ndarray, np.ndarray]:
        """(timestamps [K] s, world_from_cam [K, 4, 4]) of posed keyframes with a known time, in time order."""
        timed = [k for k in self.keyframe_ids if self._records[k].t_capture is not None]
        if len(timed) < len(self.keyframe_ids):
            log.warning("%d posed keyframes have no capture time", len(self.keyframe_ids) - len(timed))
        timed.sort(key=lambda k: self._records[k].t_capture)
        times = np.array([self._records[k].t_capture for k in timed], dtype=np.float64)
        poses = np.stack([self._records[k].world_from_cam for k in timed]) if timed else np.zeros((0, 4, 4))
        return times, poses

    def frame_trajectory(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(frame_seq [F], timestamps [F] s, world_from_cam [F, 4, 4]) for every recorded input frame:
        SLERP/linear between the keyframes around it, the nearest keyframe's pose before the first / after the last."""
        key_times, key_poses = self.keyframe_trajectory()
        if len(key_times) == 0:
            return np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4, 4))
        seqs = np.array(sorted(self._frame_times), dtype=np.int64)
        times = np.array([self._frame_times[s] for s in seqs], dtype=np.float64)
        unique_times, first = np.unique(key_times, return_index=True)  # interpolation needs strictly increasing times
        return seqs, times, interpolate_poses(unique_times, key_poses[first], times)

    def ground_truth(self) -> tuple[np.ndarray, np.ndarray]:
        """(timestamps [G] s, ground-truth world_from_cam [G, 4, 4]) of the recorded frames that have one, in
        frame_seq order, as in `frame_trajectory`."""
        seqs = sorted(self._ground_truth)
        times = np.array([self._frame_times[s] for s in seqs], dtype=np.float64)
        return times, (np.stack([self._ground_truth[s] for s in seqs]) if seqs else np.zeros((0, 4, 4)))

    # ---------------------------------------------------------------------------------------------------- exports

    def write_keyframe_trajectory(self, path: str | os.PathLike) -> Path:
        times, poses = self.keyframe_trajectory()
        write_tum(path, times, poses, comment="spark3r-stream keyframe poses (map frame)")
        return Path(path)

    def write_trajectory(self, path: str | os.PathLike) -> Path:
        _, times, poses = self.frame_trajectory()
        write_tum(path, times, poses, comment="spark3r-stream poses of every input frame, SLERP between keyframes")
        return Path(path)

    def write_ply(self, path: str | os.PathLike) -> Path:
        fused = self.fused()
        write_ply(path, fused.points, fused.colors)
        return Path(path)

    def export(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write `trajectory_keyframes.tum`, `trajectory.tum` and `map.ply` into `out_dir`; returns their paths."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        return {
            "trajectory_keyframes": self.write_keyframe_trajectory(out_dir / "trajectory_keyframes.tum"),
            "trajectory": self.write_trajectory(out_dir / "trajectory.tum"),
            "map": self.write_ply(out_dir / "map.ply"),
        }

    # ---------------------------------------------------------------------------------- persistence (issue 15)

    def export_state(self) -> dict:
        """The whole map as plain data for `stream.map_store` (a respawned fusion node reloads it): the input
        frames' times and ground truth, and per keyframe its record (pose, intrinsics, points in its camera frame,
        revisions) and cached image. Arrays are the map's own: do not mutate them."""
        keyframes = {}
        for keyframe_id, record in self._records.items():
            entry = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
            entry["image"] = self._images.get(keyframe_id)
            keyframes[keyframe_id] = entry
        gt_seqs = sorted(self._ground_truth)
        return {
            "frame_times": dict(self._frame_times),
            "ground_truth": {s: self._ground_truth[s] for s in gt_seqs},
            "keyframes": keyframes,
            "num_windows": self.num_windows,
        }

    def import_state(self, state: dict) -> None:
        """Replace this map's content by `export_state()`'s (as read back by `stream.map_store`)."""
        names = {f.name for f in dataclasses.fields(_KeyframeRecord)}
        self._records, self._images = {}, OrderedDict()
        for keyframe_id in sorted(state["keyframes"]):
            entry = state["keyframes"][keyframe_id]
            record = _KeyframeRecord(**{k: v for k, v in entry.items() if k in names})
            record.image_hw = None if record.image_hw is None else tuple(int(v) for v in record.image_hw)
            self._records[int(keyframe_id)] = record
            if entry.get("image") is not None and self.config.max_cached_images > 0:
                self._images[int(keyframe_id)] = entry["image"]
        while len(self._images) > self.config.max_cached_images:
            self._images.popitem(last=False)
        self._frame_times = {int(s): float(t) for s, t in state["frame_times"].items()}
        self._ground_truth = {int(s): np.asarray(p, np.float64) for s, p in state["ground_truth"].items()}
        self.num_windows = int(state["num_windows"])
        self._fused = None
