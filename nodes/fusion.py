"""Fusion node: window results + forwarded keyframes + frame records -> GlobalMap, Rerun, map updates (fanout); on
shutdown (end, Ctrl-C, SIGTERM) the trajectories, map.ply, recording.rrd, groundtruth.tum and report.json with ATE.
Params: `map` (GlobalMapConfig), `rerun` (RerunConfig; saves <out>/recording.rrd unless `save_rrd: false`)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from spark3r_stream.nodes import NodeContext, node_loop, run_main

log = logging.getLogger("nodes.fusion")


def body(ctx: NodeContext) -> int:
    # imported here, after run_main took over SIGINT/SIGTERM: a stop during a slow import still exits cleanly
    from spark3r_stream.report import StageTimer
    from spark3r_stream.stream.global_map import GlobalMap
    from spark3r_stream.stream.pipeline import FusionConfig, FusionStep
    from spark3r_stream.transport import FrameRecord, Keyframe, WindowResult
    from spark3r_stream.viz.rerun_logger import MapLogger

    config = ctx.config(FusionConfig)
    ctx.out.mkdir(parents=True, exist_ok=True)
    viewer = MapLogger.open(config.rerun_config(ctx.out, ctx.run_id or None))
    # the resolved config of every node (the launcher writes them all before starting any), into the recording
    configs = sorted((ctx.out / "launch").glob("*.yaml"))
    viewer.log_run_config("\n".join(f"# {path.name}\n{path.read_text()}" for path in configs))
    step, timer = FusionStep(GlobalMap(config.map), viewer, config.backend), StageTimer()
    report = ctx.report(ctx.out / "report.json")
    with node_loop(ctx, report) as loop:
        loop.on(Keyframe, timer.wrap("add_keyframe", step.on_keyframe))
        loop.on(WindowResult, timer.wrap("fuse_window", step.on_result))
        loop.on(FrameRecord, step.on_frame_record)  # every frame: the trajectory and its ground truth
        loop.on_subscribe("map", lambda: step.poses(snapshot=True))  # late joiners get the whole map
        try:
            loop.run()
        finally:
            report.set("stages", timer.summary())
            step.finish(ctx.out, report)  # with what it has, also after a signal or an upstream failure
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("fusion", body, argv)


if __name__ == "__main__":
    sys.exit(main())
