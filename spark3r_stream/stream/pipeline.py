"""The whole chain in one process, step by step: frames -> keyframe selection -> window scheduling -> reconstruction
-> the global map (MASt3R-SLAM's single-thread mode is the model).

Each step is what one node does: the keyframes, reconstruction and fusion nodes (`spark3r_stream.nodes`) are loops
over the same `KeyframeStep`, `ReconstructionStep` and `FusionStep` with transport in between; `Pipeline` chains them
directly (`spark3r launch FILE --single-process`, the benchmarks, tests). Messages are the transport's dataclasses
either way, so both run the same code on the same data.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spark3r_stream.eval.trajectory import trajectory_metrics_from_files, write_tum
from spark3r_stream.report import RunReport, StageTimer
from spark3r_stream.stream.backend import BackEnd, BackendConfig
from spark3r_stream.stream.global_map import GlobalMap, GlobalMapConfig
from spark3r_stream.stream.keyframes import KeyframeSelector, KeyframeSelectorConfig
from spark3r_stream.stream.tracks import KeyframeTracker, TrackerConfig
from spark3r_stream.stream.windows import WindowScheduler, WindowSchedulerConfig
from spark3r_stream.transport.messages import Frame, FrameRecord, Keyframe, MapUpdate, WindowRequest, WindowResult
from spark3r_stream.viz.config import RerunConfig

log = logging.getLogger(__name__)

MAX_TIMELINE = 100_000  # per-keyframe wall times and per-run rows kept for the report (bench_streaming's lag)


@dataclass(frozen=True, kw_only=True)
class KeyframesConfig:
    """The keyframes node's params."""

    selector: KeyframeSelectorConfig = field(default_factory=KeyframeSelectorConfig)
    windows: WindowSchedulerConfig = field(default_factory=WindowSchedulerConfig)
    tracks: TrackerConfig = field(default_factory=TrackerConfig)


@dataclass(frozen=True, kw_only=True)
class FusionConfig:
    """The fusion node's params: the map, the recording (`rerun`), and whether to save <out>/recording.rrd when
    `rerun.rrd_path` is not set."""

    map: GlobalMapConfig = field(default_factory=GlobalMapConfig)
    rerun: RerunConfig = field(default_factory=RerunConfig)
    save_rrd: bool = True
    backend: BackendConfig = field(default_factory=BackendConfig)

    def rerun_config(self, out: Path, recording_id: str | None = None) -> RerunConfig:
        """The RerunConfig of this run: the default .rrd path under `out` and a recording id shared by the nodes."""
        rerun = self.rerun
        if self.save_rrd and rerun.rrd_path is None:
            rerun = dataclasses.replace(rerun, rrd_path=Path(out) / "recording.rrd")
        return dataclasses.replace(rerun, recording_id=rerun.recording_id or recording_id)


class KeyframeStep:
    """Frames -> one FrameRecord each, plus a Keyframe (with its feature tracks) and possibly a WindowRequest when
    the frame is selected."""

    def __init__(self, config: KeyframesConfig) -> None:
        self.selector = KeyframeSelector(config.selector)
        self.scheduler = WindowScheduler(config.windows)
        self.tracker = KeyframeTracker(config.tracks)
        self.selected_s: list[tuple[int, float]] = []  # (keyframe_id, wall time of its selection), MAX_TIMELINE at most

    def on_frame(self, frame: Frame) -> list[FrameRecord | Keyframe | WindowRequest]:
        chosen = self.selector.offer(frame.frame_seq, frame.t_capture, frame.image)
        record = FrameRecord(
            frame_seq=frame.frame_seq,
            t_capture=frame.t_capture,
            keyframe_id=None if chosen is None else chosen.keyframe_id,
            gt_world_from_cam=frame.world_from_cam,
        )
        if chosen is None:
            if not self.selector.last_was_blurry:  # LK through motion blur loses tracks a sharper frame keeps
                self.tracker.follow(frame.image)
            return [record]
        if len(self.selected_s) < MAX_TIMELINE:
            self.selected_s.append((chosen.keyframe_id, round(time.time(), 4)))
        tracks = self.tracker.add(frame.image)  # at the source's resolution
        keyframe = Keyframe(
            keyframe_id=chosen.keyframe_id,
            frame_seq=chosen.frame_seq,
            t_capture=chosen.t_capture,
            image=chosen.image,
            track_ids=tracks.track_ids,
            track_uv=tracks.uv,
            source_hw=tuple(frame.image.shape[:2]),
            source_intrinsics=frame.intrinsics,
        )
        request = self._request(self.scheduler.add(chosen.keyframe_id))
        return [record, keyframe] + ([request] if request is not None else [])

    def on_end(self) -> WindowRequest | None:
        """The last window (the keyframes since the previous run), once the frames have ended."""
        return self._request(self.scheduler.flush())

    def summary(self) -> dict[str, Any]:
        return {
            "frames": dict(self.selector.counts),
            "windows": {"num_runs": self.scheduler.num_runs},
            "tracks": {"started": self.tracker.next_id},
            "keyframe_selected_s": self.selected_s,
        }

    @staticmethod
    def _request(run) -> WindowRequest | None:
        return None if run is None else WindowRequest(window_id=run.window_id, keyframe_ids=run.keyframe_ids)


class ReconstructionStep:
    """Keyframes and window requests -> WindowResults (the backbone on growing windows).

    Keyframes are stored once and forgotten when they leave the window. A request naming keyframes that are not
    stored (sent before a restart of the reconstruction node) runs on the ones that are, and counts the rest.

    Two ways to take requests: `on_request` runs each one at once (the single-process `Pipeline`: every request, in
    order); the node `offer`s them and calls `run_pending` whenever its input queue is empty, so a request that a
    newer run of the same window reaches before its run starts is superseded (latest-wins on requests, never on
    keyframes: every keyframe is still stored, and the superseding request holds all of the superseded one's; a closed
    window's last run is never superseded). Runs then follow each other back to back and each takes every keyframe
    that arrived during the previous one: the re-run cadence adapts to the run time, and keyframe lag stays bounded
    by about two run times whatever the window size. The dense heads still decode only the never-decoded keyframes plus
    the refresh budget (WindowReconstructor.dense_selection).
    """

    def __init__(
        self, reconstructor: Any, name: str = "reconstruction", clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.reconstructor = reconstructor  # a stream.reconstructor.WindowReconstructor (imports torch)
        self._clock = clock
        self._waiting_since: float | None = None  # when the oldest waiting request started to wait
        self._last_run_s = 0.0  # duration of the last run_pending run (on `clock`)
        self.name = name  # in the log lines
        self.counters: Counter[str] = Counter()
        self.plans: list[Any] = []
        # waiting runs (streaming), the newest per window (`offer`), each with the number of requests it superseded
        self.pending: list[tuple[WindowRequest, int]] = []
        self._posed: set[int] = set()  # stored keyframes that a finished run held
        self.runs: list[dict[str, Any]] = []  # one row per run, the newest MAX_TIMELINE (bench_streaming reads them)
        self.first_pose_s: dict[int, float] = {}  # keyframe_id -> wall time (time.time()) of its first run's end

    def on_keyframe(self, keyframe: Keyframe) -> None:
        self.reconstructor.add_keyframe(keyframe.keyframe_id, keyframe.image)

    def offer(self, request: WindowRequest) -> None:
        """Queue `request`; the waiting request it holds every keyframe of (an earlier run of the same growing
        window) is superseded, counted `superseded.window_request`. A request it does not cover (a closed window's
        last run) is kept, so every window still gets its full-size run and every keyframe a pose."""
        if not self.pending:
            self._waiting_since = self._clock()
        superseded = 0
        if self.pending and set(self.pending[-1][0].keyframe_ids) <= set(request.keyframe_ids):
            superseded = self.pending.pop()[1] + 1
            self.counters["superseded.window_request"] += 1
        self.pending.append((request, superseded))

    def run_pending(self) -> WindowResult | None:
        """Run the oldest waiting request, if any (the node calls this whenever its input queue is empty, and until
        none is left at the end)."""
        if not self.pending:
            return None
        request, superseded = self.pending.pop(0)
        start = self._clock()
        try:
            return self.on_request(request, superseded=superseded)
        finally:
            self._last_run_s = self._clock() - start
            self._waiting_since = self._clock() if self.pending else None

    def is_overdue(self, max_wait_s: float) -> bool:
        """Whether a request has waited `max_wait_s` or more, and at least as long as the last run took: the node
        then runs it without waiting for an empty input queue (an input that never empties, e.g. keyframes handled
        slower than they come on a loaded machine, must not starve the backbone until the stream ends).

        The wait scales with the run time so that a long run is not re-triggered back to back: the keyframes that
        arrived during a run of T seconds get at least T seconds of intake before the next run, so the node spends at
        most half its time in runs while its input is busy (bench_streaming: with a fixed 2 s wait the keyframe lag
        grew over the stream with the node's intake between runs, not with the runs)."""
        if self._waiting_since is None:
            return False
        return self._clock() - self._waiting_since >= max(max_wait_s, self._last_run_s)

    def on_request(self, request: WindowRequest, superseded: int = 0) -> WindowResult | None:
        ids = tuple(k for k in request.keyframe_ids if k in self.reconstructor.images)
        if len(ids) < len(request.keyframe_ids):
            self.counters["dropped.missing_keyframes"] += len(request.keyframe_ids) - len(ids)
        if not ids:
            self.counters["dropped.empty_window"] += 1
            return None
        t_start = time.time()
        output = self.reconstructor.run(request.window_id, ids)
        t_end = time.time()
        # a later run only holds these or newer keyframes (stored already when runs are deferred): memory ~ window
        self.reconstructor.forget(set(ids) | {k for k in self.reconstructor.images if k > ids[-1]})
        new = [k for k in ids if k not in self._posed]
        self._posed = {k for k in self._posed | set(ids) if k in self.reconstructor.images}
        if len(self.first_pose_s) < MAX_TIMELINE:
            self.first_pose_s.update((k, round(t_end, 4)) for k in new)
        self.runs = self.runs[-(MAX_TIMELINE - 1) :] + [
            {
                "window_id": request.window_id,
                "num_keyframes": len(ids),
                "num_new": len(new),
                "num_dense": len(output.dense_keyframe_ids),
                "superseded": superseded,
                "t_start_s": round(t_start, 4),
                "run_ms": round((t_end - t_start) * 1e3, 1),
            }
        ]
        self.plans.append(output.plan)
        log.info(
            "%s: window %d, %d keyframes (%d new, %d dense, %d request(s) superseded) in %.0f ms",
            self.name,
            output.window_id,
            len(ids),
            len(new),
            len(output.dense_keyframe_ids),
            superseded,
            output.timings.get("forward_ms", 0.0),
        )
        return WindowResult(**dataclasses.asdict(output))

    def summary(self) -> dict[str, Any]:
        return {
            "encoder_cache": dict(self.reconstructor.stats),
            "model_tracks": {"enabled": self.reconstructor.sends_tracks, **self.reconstructor.track_stats},
            "reduction_plans": self.plans[-3:],
            "num_runs": self.reconstructor.num_runs,
            "runs": self.runs,
            "keyframe_first_pose_s": sorted(self.first_pose_s.items()),
        }


class FusionStep:
    """Frame records, keyframes and window results -> the global map, the Rerun recording and the run's outputs."""

    def __init__(self, gmap: GlobalMap, viewer: Any = None, backend: BackendConfig | None = None) -> None:
        self.gmap = gmap
        self.viewer = viewer  # a viz.rerun_logger.MapLogger; None records nothing (benchmarks)
        self.backend = BackEnd(backend)
        self.newest = {"frame_seq": 0, "t": 0.0}
        self.num_frames = 0
        self.windows: list[dict[str, Any]] = []
        self.plans: dict[str, Any] = {}
        # the first keyframe of the newest window run: later runs never reach further back (stream/windows.py)
        self.window_start = 0

    def on_frame_record(self, record: FrameRecord) -> None:
        self.num_frames += 1
        self.gmap.record_frame(record.frame_seq, record.t_capture, record.gt_world_from_cam)

    def on_keyframe(self, keyframe: Keyframe) -> None:
        self.gmap.add_keyframe(keyframe.keyframe_id, keyframe.frame_seq, keyframe.t_capture, keyframe.image)
        self.newest.update(frame_seq=keyframe.frame_seq, t=keyframe.t_capture)
        self.backend.on_keyframe(keyframe)

    def on_result(self, result: WindowResult) -> MapUpdate | None:
        fields = ("window_id", "keyframe_ids", "world_from_cam", "intrinsics", "dense_keyframe_ids", "depth")
        posed = set(self.gmap.keyframe_ids)
        before = {k: self.gmap.world_from_cam(k) for k in result.keyframe_ids if k in posed}
        step = self.gmap.integrate_window(*(getattr(result, f) for f in fields), result.depth_conf)
        self.backend.on_window(self.gmap, result, step, before)
        if self.viewer is not None:
            self.viewer.sync(self.gmap, self.newest["frame_seq"], self.newest["t"])
        summary = {"num_dense": len(result.dense_keyframe_ids), "alignment": step.alignment.summary()}
        self.windows.append({"window_id": result.window_id, "timings": result.timings, **summary})
        self.plans[result.model] = result.plan
        self.window_start = max(self.window_start, min(result.keyframe_ids))
        return self.poses()

    def poses(self, snapshot: bool = False) -> MapUpdate | None:
        """Every keyframe's current pose (a snapshot for subscribers that join late)."""
        ids = tuple(self.gmap.keyframe_ids)
        if not ids:
            return None
        stacked = np.stack([self.gmap.world_from_cam(k) for k in ids])
        return MapUpdate(keyframe_ids=ids, world_from_cam=stacked, is_snapshot=snapshot)

    def finish(self, out: Path, report: RunReport) -> None:
        """Everything fusion leaves behind, with what it has (also after a signal or an upstream failure): the
        trajectories, map.ply, groundtruth.tum, the finished recording, and ATE against the ground truth."""
        gmap = self.gmap
        report.set("windows", {"count": len(self.windows), "runs": self.windows})
        report.set("reduction_plans", self.plans)
        if self.backend.config.enabled:
            report.set("backend", self.backend.summary())
        report.set("keyframes", {"posed": len(gmap.keyframe_ids), "points": gmap.num_points})
        outputs = gmap.export(out) if gmap.keyframe_ids else {}
        if self.viewer is not None:
            self.viewer.finish(gmap, self.newest["frame_seq"], self.newest["t"])
            outputs["recording"] = self.viewer.config.rrd_path
        gt_times, gt_poses = gmap.ground_truth()
        report.set("frames", {"logged": self.num_frames, "with_ground_truth": len(gt_times)})
        trajectory = {}
        if len(gt_times):
            outputs["groundtruth"] = out / "groundtruth.tum"
            write_tum(outputs["groundtruth"], gt_times, gt_poses, comment="ground truth of the same frames")
            for name, key in (("all_frames", "trajectory"), ("keyframes", "trajectory_keyframes")):
                if len(gmap.keyframe_ids) >= 3:  # same timestamps in both files: associated exactly
                    trajectory[name] = trajectory_metrics_from_files(outputs[key], outputs["groundtruth"])
        for name, path in outputs.items():
            if path is not None:
                report.output(name, path)
        report.set("trajectory", trajectory)
        if "all_frames" in trajectory:
            log.info("ATE %.4f m (Sim(3), every frame)", trajectory["all_frames"]["ate_rmse_m"])


@dataclass
class Pipeline:
    """The three steps chained in this process: every message goes straight to the step that takes it."""

    keyframes: KeyframeStep
    reconstruction: ReconstructionStep
    fusion: FusionStep
    timer: StageTimer = field(default_factory=StageTimer)

    def __post_init__(self) -> None:
        wrap = self.timer.wrap
        self._routes = {
            FrameRecord: [self.fusion.on_frame_record],
            Keyframe: [
                wrap("store_keyframe", self.reconstruction.on_keyframe),
                wrap("add_keyframe", self.fusion.on_keyframe),
            ],
            WindowRequest: [wrap("reconstruct_window", self.reconstruction.on_request)],
            WindowResult: [wrap("fuse_window", self.fusion.on_result)],
        }
        self._select = wrap("select_keyframe", self.keyframes.on_frame)

    def process(self, frame: Frame) -> None:
        self._deliver(self._select(frame))

    def end(self) -> None:
        self._deliver([self.keyframes.on_end()])

    def run(self, frames: Iterable[Frame], out: str | Path, report: RunReport | None = None) -> RunReport:
        """Process every frame, then the last window; write the outputs and report.json into `out`."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        report = report or RunReport("pipeline (single process)", out / "report.json")
        start, count = time.perf_counter(), 0
        try:
            for frame in frames:
                self.process(frame)
                count += 1
            self.end()
        finally:
            wall_s = time.perf_counter() - start
            report.set("pipeline", {"mode": "single-process", "frames": count, "wall_s": round(wall_s, 3),
                                    "frames_per_s": round(count / wall_s, 2) if wall_s > 0 else None})  # fmt: skip
            report.set("selection", self.keyframes.summary())
            report.set(
                "reconstruction", self.reconstruction.summary() | {"counters": dict(self.reconstruction.counters)}
            )
            report.set("stages", self.timer.summary())
            self.fusion.finish(out, report)
            report.write()
        return report

    @classmethod
    def from_params(cls, params: dict[str, dict[str, Any]], out: str | Path, source: str = "<params>") -> Pipeline:
        """The steps from the nodes' params of a launch file (`{"keyframes": {...}, "reconstruction": {...},
        "fusion": {...}}`); errors name `source` and the key."""
        from spark3r_stream.config import from_dict
        from spark3r_stream.stream.reconstructor import ReconstructionConfig, WindowReconstructor
        from spark3r_stream.viz.rerun_logger import MapLogger

        def config(cls_, node: str):
            return from_dict(cls_, params.get(node) or {}, source=f"{source}: nodes.{node}.params")

        keyframes, fusion = config(KeyframesConfig, "keyframes"), config(FusionConfig, "fusion")
        reconstruction = config(ReconstructionConfig, "reconstruction")
        Path(out).mkdir(parents=True, exist_ok=True)
        return cls(
            KeyframeStep(keyframes),
            ReconstructionStep(WindowReconstructor.from_config(reconstruction)),
            FusionStep(GlobalMap(fusion.map), MapLogger.open(fusion.rerun_config(out)), fusion.backend),
        )

    def _deliver(self, messages: list[Any]) -> None:
        queue = [m for m in messages if m is not None]
        while queue:
            message = queue.pop(0)
            for handler in self._routes[type(message)]:
                produced = handler(message)
                if produced is not None and not isinstance(produced, (MapUpdate, Keyframe)):
                    queue.append(produced)
