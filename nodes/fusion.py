"""Fusion node: window results (+ forwarded keyframes) -> the global map, Rerun, map updates (fanout), and on
shutdown (normal end, Ctrl-C, SIGTERM) trajectory_keyframes.tum, trajectory.tum, map.ply, recording.rrd,
groundtruth.tum (when the source had ground truth) and report.json with the ATE.

Params: `map` (GlobalMapConfig), `rerun` (RerunConfig; by default saves <out>/recording.rrd), `save_rrd`.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Sequence

import numpy as np

from nodes import FRAME_LOG, NodeContext, StageTimer, node_loop, read_frame_log, run_main
from spark3r_stream.eval.trajectory import trajectory_metrics, write_tum
from spark3r_stream.stream.global_map import GlobalMap, GlobalMapConfig
from spark3r_stream.transport import Keyframe, MapUpdate, WindowResult
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
        return (
            MapUpdate(
                keyframe_ids=ids, world_from_cam=np.stack([gmap.world_from_cam(k) for k in ids]), is_snapshot=snapshot
            )
            if ids
            else None
        )

    def on_keyframe(keyframe: Keyframe) -> None:
        gmap.add_keyframe(keyframe.keyframe_id, keyframe.frame_seq, keyframe.t_capture, keyframe.image)
        newest.update(frame_seq=keyframe.frame_seq, t=keyframe.t_capture)

    def on_result(result: WindowResult) -> MapUpdate | None:
        step = gmap.integrate_window(
            result.window_id,
            result.keyframe_ids,
            result.world_from_cam,
            result.intrinsics,
            result.dense_keyframe_ids,
            result.depth,
            result.depth_conf,
        )
        viewer.sync(gmap, newest["frame_seq"], newest["t"])
        windows.append(
            {
                "window_id": result.window_id,
                "num_keyframes": len(result.keyframe_ids),
                "num_dense": len(result.dense_keyframe_ids),
                "timings": result.timings,
                "alignment": step.alignment.summary(),
            }
        )
        plans[result.model] = result.plan
        return poses()

    windows: list = []
    plans: dict = {}
    with node_loop(ctx, report) as loop:
        loop.on(Keyframe, timer.wrap("add_keyframe", on_keyframe))
        loop.on(WindowResult, timer.wrap("fuse_window", on_result))
        loop.on_subscribe("map", lambda: poses(snapshot=True))  # late joiners get the whole map
        try:
            loop.run()
        finally:
            report.set("stages", timer.summary())
            report.set("windows", {"count": len(windows), "runs": windows})
            report.set("reduction_plans", plans)
            report.set("keyframes", {"posed": len(gmap.keyframe_ids), "points": gmap.num_points})
            write_outputs(ctx, gmap, viewer, report, newest)
    return 0


def write_outputs(ctx: NodeContext, gmap: GlobalMap, viewer: MapLogger, report, newest: dict) -> None:
    """Everything fusion leaves behind, with what it has (also after a signal or an upstream failure)."""
    frame_log = ctx.out / FRAME_LOG
    seqs, times, gt = read_frame_log(frame_log) if frame_log.is_file() else (np.zeros(0), np.zeros(0), None)
    for seq, t in zip(seqs, times, strict=True):
        gmap.record_frame(int(seq), float(t))
    for name, path in gmap.export(ctx.out).items():
        report.output(name, path)
    viewer.finish(gmap, newest["frame_seq"], newest["t"])
    if viewer.config.rrd_path is not None:
        report.output("recording", viewer.config.rrd_path)
    has_gt = np.zeros(len(seqs), bool) if gt is None else ~np.isnan(gt[:, 0, 0])
    report.set("frames", {"logged": len(seqs), "with_ground_truth": int(has_gt.sum())})
    if not has_gt.any():
        return
    write_tum(ctx.out / "groundtruth.tum", times[has_gt], gt[has_gt], comment="ground truth of the same frames")
    report.output("groundtruth", ctx.out / "groundtruth.tum")
    gt_of = {int(s): gt[i] for i, s in enumerate(seqs) if has_gt[i]}
    est_seqs, _, est = gmap.frame_trajectory()
    keyframe_seqs = [gmap.frame_seq(k) for k in gmap.keyframe_ids]
    keyframe_est = [gmap.world_from_cam(k) for k in gmap.keyframe_ids]
    trajectory = {}
    for name, frame_seqs, poses in (("all_frames", est_seqs, est), ("keyframes", keyframe_seqs, keyframe_est)):
        pairs = [(pose, gt_of[int(s)]) for s, pose in zip(frame_seqs, poses, strict=True) if int(s) in gt_of]
        if len(pairs) >= 3:
            trajectory[name] = trajectory_metrics(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))
    report.set("trajectory", trajectory)
    if "all_frames" in trajectory:
        metrics = trajectory["all_frames"]
        log.info("%s: ATE %.4f m over %d frames (Sim(3))", ctx.name, metrics["ate_rmse_m"], metrics["num_poses"])


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("fusion", body, argv)


if __name__ == "__main__":
    sys.exit(main())
