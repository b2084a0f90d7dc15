"""Fusion's back end: what checks the network's poses against the images after each window is on the map.

Per window result, in order:
1. refinement (stream/refine.py): bundle adjustment of the window's keyframes against their feature tracks;
2. the pose graph (stream/pose_graph.py) takes the run's edges between consecutive keyframes;
3. loop closure (stream/loop_closure.py): each new keyframe is matched against keyframes well before the window; a
   verified closure becomes a loop edge, and the graph is optimised once for the window; the map takes its poses.
Each step falls back to what the map had when it fails, and says so in the report.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from spark3r_stream.stream.global_map import GlobalMap, WindowIntegration
from spark3r_stream.stream.keyframes import model_from_source
from spark3r_stream.stream.loop_closure import (
    KeyframeGeometry,
    LoopCandidate,
    LoopClosureConfig,
    LoopDetector,
    verify_loop,
)
from spark3r_stream.stream.model_tracks import window_observations
from spark3r_stream.stream.pose_graph import PoseGraph, PoseGraphConfig, Sim3
from spark3r_stream.stream.refine import RefineConfig, refine_window
from spark3r_stream.stream.tracks import TrackObservations
from spark3r_stream.transport.messages import Keyframe, WindowResult

log = logging.getLogger(__name__)

__all__ = ["BackEnd", "BackendConfig"]


@dataclass(frozen=True, kw_only=True)
class BackendConfig:
    """`refine` bundle-adjusts each window's keyframes against their feature tracks; `loop_closure` finds revisits
    and optimises the keyframe pose graph with them."""

    # on: it lowers the ATE on every measured sequence (benchmarks/results/bench_backend.md; the demo at 30, 40, 80
    # and 150 frames and both real RGB-D fragments were checked)
    refine: bool = True
    refinement: RefineConfig = field(default_factory=RefineConfig)
    loop_closure: bool = True
    loops: LoopClosureConfig = field(default_factory=LoopClosureConfig)
    pose_graph: PoseGraphConfig = field(default_factory=PoseGraphConfig)

    @property
    def enabled(self) -> bool:
        return self.refine or self.loop_closure


@dataclass(frozen=True)
class KeyframeTracks:
    """What the back end keeps of a keyframe message: its tracks and the source frame they are measured in."""

    observations: TrackObservations
    source_hw: tuple[int, ...]
    source_intrinsics: np.ndarray | None


class BackEnd:
    """Holds the keyframes' tracks and loop-closure features (not their images) and the pose graph."""

    def __init__(self, config: BackendConfig | None = None):
        self.config = config or BackendConfig()
        # keyframe_id -> its tracks, source size and intrinsics; forgotten once no window can hold it
        self.tracks: dict[int, KeyframeTracks] = {}
        self.loop_detector = LoopDetector(self.config.loops)
        self.pose_graph = PoseGraph(self.config.pose_graph)
        self.refinements: list[dict[str, Any]] = []
        self.loop_candidates: list[dict[str, Any]] = []
        self.graph_runs: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self.step_s: dict[str, float] = {}  # step name -> seconds spent in it over all windows
        self.num_windows = 0

    def on_keyframe(self, keyframe: Keyframe) -> None:
        if self.config.refine and keyframe.track_ids is not None:
            observations = TrackObservations(keyframe.track_ids, keyframe.track_uv)
            self.tracks[keyframe.keyframe_id] = KeyframeTracks(
                observations, keyframe.source_hw, keyframe.source_intrinsics
            )
        if self.config.loop_closure:
            intrinsics = None
            if keyframe.source_intrinsics is not None:  # the source's, moved to the keyframe image's pixels
                scale, top, left = model_from_source(keyframe.source_hw, keyframe.image.shape[:2])
                intrinsics = np.diag([scale, scale, 1.0]) @ np.asarray(keyframe.source_intrinsics, np.float64)
                intrinsics[:2, 2] -= (left, top)
            self.loop_detector.add_keyframe(keyframe.keyframe_id, keyframe.image, intrinsics)

    def on_window(
        self, gmap: GlobalMap, result: WindowResult, step: WindowIntegration, before: dict[int, np.ndarray]
    ) -> None:
        """After `gmap.integrate_window(result)` (`before`: the map's poses of the window's keyframes just before
        it): refine, add the run to the pose graph, close loops. A step that raises leaves the map as the window's
        alignment put it; the failure is counted and the run goes on."""
        steps = []
        if self.config.refine:
            steps.append(("refinement", lambda: self._refine(gmap, result, step.alignment.scale, before)))
        if self.config.loop_closure:
            steps.append(("pose_graph", lambda: self.pose_graph.add_window(_nodes(gmap, result.keyframe_ids))))
            steps.append(("loop_closure", lambda: self._close_loops(gmap, result, step.new_keyframe_ids)))
        self.num_windows += 1
        for name, run in steps:
            started = time.perf_counter()
            try:
                run()
            except Exception as exc:  # noqa: BLE001 - a back-end failure must not stop fusion (issue 14)
                log.exception("window %d: %s failed; the window's chained poses stay", result.window_id, name)
                self.failures.append(
                    {"window_id": result.window_id, "step": name, "error": f"{type(exc).__name__}: {exc}"}
                )
            self.step_s[name] = self.step_s.get(name, 0.0) + time.perf_counter() - started

    def summary(self) -> dict[str, Any]:
        """The report's `backend` section."""
        per_window = {name: round(1000 * t / max(self.num_windows, 1), 2) for name, t in self.step_s.items()}
        summary: dict[str, Any] = {
            "failures": self.failures,
            "ms_per_window": per_window | {"total": round(sum(per_window.values()), 2)},
        }
        if self.config.refine:
            applied = sum(r["applied"] for r in self.refinements)
            summary.update(refinements=len(self.refinements), applied=applied, runs=self.refinements)
        if self.config.loop_closure:
            accepted = [c for c in self.loop_candidates if c["accepted"]]
            summary["loop_closure"] = {
                "candidates": len(self.loop_candidates),
                "accepted": len(accepted),
                # judged against the ground truth where the source has one (None otherwise)
                "true": sum(c.get("true") is True for c in accepted),
                "false": sum(c.get("true") is False for c in accepted),
                "optimisations": self.graph_runs,
                "runs": self.loop_candidates,
            }
        return summary

    # ------------------------------------------------------------------------------------------------ refinement

    def _refine(self, gmap: GlobalMap, result: WindowResult, map_scale: float, before: dict[int, np.ndarray]) -> None:
        """Bundle-adjust the window's keyframes (map frame) against their tracks; the map takes the refined poses."""
        # windows never reach back before the current one's first keyframe (stream/windows.py): older tracks go
        for old in [k for k in self.tracks if k < min(result.keyframe_ids)]:
            del self.tracks[old]
        posed = set(gmap.keyframe_ids)
        ids = [k for k in result.keyframe_ids if k in self.tracks and k in posed]
        if len(ids) < 2:
            return
        dense = {k: i for i, k in enumerate(result.dense_keyframe_ids)}
        model_hw = result.depth.shape[1:]
        intrinsics, depths = [], []
        observations = [self._observations(result, k, model_hw) for k in ids]
        for k, observed in zip(ids, observations, strict=True):
            keyframe = self.tracks[k]
            scale, top, left = model_from_source(keyframe.source_hw, model_hw)
            if keyframe.source_intrinsics is not None:
                intrinsics.append(np.asarray(keyframe.source_intrinsics, np.float64))
            else:  # the model's, moved to source pixels
                model_k = np.asarray(result.intrinsics[result.keyframe_ids.index(k)], np.float64)
                intrinsics.append(
                    np.diag([1 / scale, 1 / scale, 1.0]) @ (model_k + [[0, 0, left], [0, 0, top], [0, 0, 0]])
                )
            uv = observed.uv
            depth = np.full(len(uv), np.nan)
            if k in dense:  # the network's depth at each track, in map units
                cols = np.round(uv[:, 0] * scale - left).astype(int)
                rows = np.round(uv[:, 1] * scale - top).astype(int)
                inside = (rows >= 0) & (rows < model_hw[0]) & (cols >= 0) & (cols < model_hw[1])
                depth[inside] = result.depth[dense[k]][rows[inside], cols[inside]] * map_scale
            depths.append(depth)
        poses = np.stack([gmap.world_from_cam(k) for k in ids])
        anchors = {i: before[k] for i, k in enumerate(ids) if k in before}
        refinement = refine_window(poses, np.stack(intrinsics), observations, depths, self.config.refinement, anchors)
        self.refinements.append(
            {
                "window_id": result.window_id,
                "applied": refinement.applied,
                "reason": refinement.reason,
                "observations": refinement.num_observations,
                "error_before_px": refinement.error_before_px,
                "error_after_px": refinement.error_after_px,
            }  # fmt: skip
        )
        if refinement.applied:
            gmap.set_poses(dict(zip(ids, refinement.world_from_cam, strict=True)))

    def _observations(self, result: WindowResult, keyframe_id: int, model_hw: tuple[int, int]) -> TrackObservations:
        """A keyframe's observations for this window, in source pixels: its optical-flow tracks plus the window's
        model tracks when the result has them (issue 17: VGGT's track head, stream/model_tracks.py; their own ids)."""
        keyframe = self.tracks[keyframe_id]
        model = window_observations(result, keyframe_id, keyframe.source_hw, model_hw)
        if model is None:
            return keyframe.observations
        flow = keyframe.observations
        return TrackObservations(np.concatenate([flow.track_ids, model.track_ids]), np.concatenate([flow.uv, model.uv]))

    # ---------------------------------------------------------------------------------------------- loop closure

    def _close_loops(self, gmap: GlobalMap, result: WindowResult, new_ids: tuple[int, ...]) -> None:
        with_points = {k for k in gmap.keyframe_ids if gmap.depth_samples(k)[2] is not None}
        eligible = {k for k in with_points if k < min(result.keyframe_ids)}  # not this window: that is odometry
        accepted = 0
        for new in new_ids:
            if new not in with_points or new not in self.loop_detector.features:
                continue
            for old, score in self.loop_detector.candidates(new, eligible):
                features = (self.loop_detector.features[old], self.loop_detector.features[new])
                candidate = verify_loop(
                    old, new, score, features, (_geometry(gmap, old), _geometry(gmap, new)), self.config.loops
                )
                self.loop_candidates.append(candidate.summary() | _ground_truth_check(gmap, candidate))
                if candidate.accepted:
                    self.pose_graph.add_loop(old, new, candidate.new_in_old)
                    accepted += 1
                    break  # one closure per new keyframe
        if not accepted:
            return
        optimised = self.pose_graph.optimize(_nodes(gmap, gmap.keyframe_ids))
        self.graph_runs.append(
            {
                "window_id": result.window_id,
                "new_loops": accepted,
                "loop_edges": optimised.num_loops,
                "dropped_loops": optimised.dropped_loops,
                "applied": optimised.applied,
                "reason": optimised.reason,
                "error_before": optimised.error_before,
                "error_after": optimised.error_after,
            }  # fmt: skip
        )
        if optimised.applied:
            nodes = optimised.nodes
            gmap.set_poses({k: n.pose for k, n in nodes.items()}, {k: n.scale for k, n in nodes.items()})


def _nodes(gmap: GlobalMap, keyframe_ids) -> dict[int, Sim3]:
    return {k: Sim3.from_pose(gmap.world_from_cam(k), gmap.points_scale(k)) for k in keyframe_ids}


def _geometry(gmap: GlobalMap, keyframe_id: int) -> KeyframeGeometry:
    points, pixel_index, depth_hw = gmap.depth_samples(keyframe_id)
    return KeyframeGeometry(points, pixel_index, depth_hw, gmap.intrinsics(keyframe_id))


def _ground_truth_check(gmap: GlobalMap, candidate: LoopCandidate) -> dict[str, Any]:
    """Where both keyframes have ground truth: how far apart they truly are and, for an accepted closure, whether its
    relative rotation (within 5°) and translation direction (within 30°, when they are 10 cm+ apart) are right."""
    old_truth, new_truth = gmap.ground_truth_pose(candidate.old), gmap.ground_truth_pose(candidate.new)
    if old_truth is None or new_truth is None:
        return {}
    truth = np.linalg.inv(old_truth) @ new_truth
    check: dict[str, Any] = {
        "gt_distance_m": round(float(np.linalg.norm(truth[:3, 3])), 4),
        "gt_angle_deg": round(float(np.degrees(Rotation.from_matrix(truth[:3, :3]).magnitude())), 2),
    }
    if candidate.new_in_old is not None:
        measured = candidate.new_in_old
        rotation_error = np.degrees(Rotation.from_matrix(truth[:3, :3].T @ measured.rotation).magnitude())
        direction_error = 0.0
        if np.linalg.norm(truth[:3, 3]) > 0.1:
            cosine = truth[:3, 3] @ measured.translation
            cosine /= np.linalg.norm(truth[:3, 3]) * max(np.linalg.norm(measured.translation), 1e-12)
            direction_error = float(np.degrees(np.arccos(np.clip(cosine, -1, 1))))
        check.update(
            rotation_error_deg=round(float(rotation_error), 2),
            direction_error_deg=round(direction_error, 2),
            true=bool(rotation_error <= 5 and direction_error <= 30),
        )
    return check
