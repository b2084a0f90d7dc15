"""Fusion node: window results + forwarded keyframes + frame records -> GlobalMap, Rerun, map updates (fanout); on
shutdown (end, Ctrl-C, SIGTERM) the trajectories, map.ply, recording.rrd, groundtruth.tum and report.json with ATE.
Params: `map` (GlobalMapConfig), `rerun` (RerunConfig; saves <out>/recording.rrd unless `save_rrd: false`)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from spark3r_stream.nodes import NodeContext, node_loop, restart_count, run_main

log = logging.getLogger("nodes.fusion")
SAVE_EVERY_FRAMES = 200  # frame records between two saves of the state (windows and input ends save too)


def body(ctx: NodeContext) -> int:
    # imported here, after run_main took over SIGINT/SIGTERM: a stop during a slow import still exits cleanly
    from spark3r_stream.report import StageTimer
    from spark3r_stream.stream.global_map import GlobalMap
    from spark3r_stream.stream.map_store import MapStore
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
    store = MapStore.for_run(ctx.out)  # issue 15: the state a respawned fusion reloads (stream/map_store.py)
    with node_loop(ctx, report) as loop:
        if restart_count() and (inputs := store.load(step)) is not None:
            loop.import_input_state(inputs)  # the senders' replays of what the state holds are dropped as duplicates
            viewer.sync(step.gmap, step.newest["frame_seq"], step.newest["t"])
            report.set("restored", {"restarts": restart_count(), "keyframes": len(step.gmap.keyframe_ids)})
        else:
            store.start_fresh()

        def on_keyframe(keyframe: Keyframe) -> None:
            if step.gmap.frame_seq(keyframe.keyframe_id) == keyframe.frame_seq:  # resent after a restart upstream
                loop.counters["dropped.duplicate_keyframe"] += 1
                return
            step.on_keyframe(keyframe)
            store.add_keyframe(keyframe)

        def on_result(result: WindowResult) -> object:
            update = step.on_result(result)
            store.save(step, loop.export_input_state())  # every window: what a respawn reloads
            return update

        def on_frame_record(record: FrameRecord) -> None:
            step.on_frame_record(record)
            if step.num_frames % SAVE_EVERY_FRAMES == 0:
                store.save(step, loop.export_input_state())

        loop.on(Keyframe, timer.wrap("add_keyframe", on_keyframe))
        loop.on(WindowResult, timer.wrap("fuse_window", on_result))
        loop.on(FrameRecord, on_frame_record)  # every frame: the trajectory and its ground truth
        loop.on_input_end(lambda edge: store.save(step, loop.export_input_state()))  # before its senders leave
        loop.on_subscribe("map", lambda: step.poses(snapshot=True))  # late joiners get the whole map
        try:
            loop.run()
        finally:
            report.set("stages", timer.summary())
            report.set("state", {"saves": store.num_saves, "save_s": round(store.save_s, 3)})
            step.finish(ctx.out, report)  # with what it has, also after a signal or an upstream failure
        if loop.is_finished and not loop.is_stopping:
            store.remove()  # every input ended and the outputs are written: nothing left to recover
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("fusion", body, argv)


if __name__ == "__main__":
    sys.exit(main())
