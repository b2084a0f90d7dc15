"""Fusion node: window results + forwarded keyframes + frame records -> GlobalMap, Rerun, map updates (fanout); on
shutdown (end, Ctrl-C, SIGTERM) the trajectories, map.ply, recording.rrd, groundtruth.tum and report.json with ATE.
Params: `map` (GlobalMapConfig), `rerun` (RerunConfig; saves <out>/recording.rrd unless `save_rrd: false`)."""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Sequence

import numpy as np

from spark3r_stream.eval.trajectory import trajectory_metrics_from_files, write_tum
from spark3r_stream.nodes import NodeContext, StageTimer, node_loop, run_main
from spark3r_stream.stream.global_map import GlobalMap, GlobalMapConfig
from spark3r_stream.transport import FrameRecord, Keyframe, MapUpdate, WindowResult
from spark3r_stream.viz.rerun_logger import MapLogger, RerunConfig

log = logging.getLogger("nodes.fusion")
SECTIONS = ("map", "rerun", "save_rrd")


def body(ctx: NodeContext) -> int:
    ctx.reject_unknown(SECTIONS)
    rerun = ctx.config(RerunConfig, "rerun")
    if ctx.params.get("save_rrd", True) and rerun.rrd_path is None:
        rerun = dataclasses.replace(rerun, rrd_path=ctx.out / "recording.rrd")
    gmap, timer = GlobalMap(ctx.config(GlobalMapConfig, "map")), StageTimer()
    ctx.out.mkdir(parents=True, exist_ok=True)
    viewer = MapLogger.open(dataclasses.replace(rerun, recording_id=rerun.recording_id or ctx.run_id or None))
    report = ctx.report(ctx.out / "report.json")
    newest = {"frame_seq": 0, "t": 0.0}

    def poses(snapshot: bool = False) -> MapUpdate | None:
        ids = tuple(gmap.keyframe_ids)
        stacked = np.stack([gmap.world_from_cam(k) for k in ids]) if ids else None
        return MapUpdate(keyframe_ids=ids, world_from_cam=stacked, is_snapshot=snapshot) if ids else None

    def on_keyframe(keyframe: Keyframe) -> None:
        gmap.add_keyframe(keyframe.keyframe_id, keyframe.frame_seq, keyframe.t_capture, keyframe.image)
        newest.update(frame_seq=keyframe.frame_seq, t=keyframe.t_capture)

    def on_result(result: WindowResult) -> MapUpdate | None:
        fields = ("window_id", "keyframe_ids", "world_from_cam", "intrinsics", "dense_keyframe_ids", "depth")
        step = gmap.integrate_window(*(getattr(result, f) for f in fields), result.depth_conf)
        viewer.sync(gmap, newest["frame_seq"], newest["t"])
        summary = {"num_dense": len(result.dense_keyframe_ids), "alignment": step.alignment.summary()}
        windows.append({"window_id": result.window_id, "timings": result.timings, **summary})
        plans[result.model] = result.plan
        return poses()

    windows, plans = [], {}
    with node_loop(ctx, report) as loop:
        loop.on(Keyframe, timer.wrap("add_keyframe", on_keyframe))
        loop.on(WindowResult, timer.wrap("fuse_window", on_result))
        loop.on(FrameRecord, lambda r: gmap.record_frame(r.frame_seq, r.t_capture, r.gt_world_from_cam))  # each frame
        loop.on_subscribe("map", lambda: poses(snapshot=True))  # late joiners get the whole map
        try:
            loop.run()
        finally:
            report.set("stages", timer.summary())
            report.set("windows", {"count": len(windows), "runs": windows})
            report.set("reduction_plans", plans)
            report.set("keyframes", {"posed": len(gmap.keyframe_ids), "points": gmap.num_points})
            write_outputs(ctx, gmap, viewer, report, newest, num_frames=loop.counters["recv.frame_record"])
    return 0


def write_outputs(ctx: NodeContext, gmap: GlobalMap, viewer: MapLogger, report, newest: dict, num_frames: int) -> None:
    """Everything fusion leaves behind, with what it has (also after a signal or an upstream failure)."""
    outputs = gmap.export(ctx.out) if gmap.keyframe_ids else {}
    viewer.finish(gmap, newest["frame_seq"], newest["t"])
    outputs["recording"] = viewer.config.rrd_path
    gt_times, gt_poses = gmap.ground_truth()
    report.set("frames", {"logged": num_frames, "with_ground_truth": len(gt_times)})
    trajectory = {}
    if len(gt_times):
        outputs["groundtruth"] = ctx.out / "groundtruth.tum"
        write_tum(outputs["groundtruth"], gt_times, gt_poses, comment="ground truth of the same frames")
        for name, key in (("all_frames", "trajectory"), ("keyframes", "trajectory_keyframes")):
            if len(gmap.keyframe_ids) >= 3:  # same timestamps in both files: associated exactly
                trajectory[name] = trajectory_metrics_from_files(outputs[key], outputs["groundtruth"])
    for name, path in outputs.items():
        if path is not None:
            report.output(name, path)
    report.set("trajectory", trajectory)
    if "all_frames" in trajectory:
        log.info("%s: ATE %.4f m (Sim(3), every frame)", ctx.name, trajectory["all_frames"]["ate_rmse_m"])


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("fusion", body, argv)


if __name__ == "__main__":
    sys.exit(main())
