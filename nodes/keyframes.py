"""Keyframes node: frames -> keyframes (parallax, blur gate, min/max interval; resized to the model input) and
window requests (growing windows by keyframe id), and one FrameRecord per frame straight to fusion (time, keyframe
id, ground truth) for the every-frame trajectory and groundtruth.tum. Starts without torch.

Params: `selector` (KeyframeSelectorConfig), `windows` (WindowSchedulerConfig).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from spark3r_stream.nodes import NodeContext, StageTimer, node_loop, run_main
from spark3r_stream.stream.keyframes import KeyframeSelector, KeyframeSelectorConfig
from spark3r_stream.stream.windows import WindowScheduler, WindowSchedulerConfig
from spark3r_stream.transport import Frame, FrameRecord, Keyframe, WindowRequest

log = logging.getLogger("nodes.keyframes")
SECTIONS = ("selector", "windows")


def body(ctx: NodeContext) -> int:
    ctx.reject_unknown(SECTIONS)
    selector = KeyframeSelector(ctx.config(KeyframeSelectorConfig, "selector"))
    scheduler = WindowScheduler(ctx.config(WindowSchedulerConfig, "windows"))
    report, timer = ctx.report(), StageTimer()

    def request(run) -> WindowRequest | None:
        return None if run is None else WindowRequest(window_id=run.window_id, keyframe_ids=run.keyframe_ids)

    def on_frame(frame: Frame) -> list:
        chosen = selector.offer(frame.frame_seq, frame.t_capture, frame.image)
        record = FrameRecord(
            frame_seq=frame.frame_seq,
            t_capture=frame.t_capture,
            keyframe_id=None if chosen is None else chosen.keyframe_id,
            gt_world_from_cam=frame.world_from_cam,
        )
        if chosen is None:
            return [record]
        keyframe = Keyframe(
            keyframe_id=chosen.keyframe_id, frame_seq=chosen.frame_seq, t_capture=chosen.t_capture, image=chosen.image
        )
        return [record, keyframe, request(scheduler.add(chosen.keyframe_id))]

    with node_loop(ctx, report) as loop:
        loop.on(Frame, timer.wrap("select_keyframe", on_frame))
        loop.on_end(lambda: request(scheduler.flush()))
        try:
            loop.run()
        finally:
            report.set("frames", dict(selector.counts))
            report.set("windows", {"num_runs": scheduler.num_runs})
            report.set("stages", timer.summary())
            log.info("%s: %s; %d window requests", ctx.name, dict(selector.counts), scheduler.num_runs)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("keyframes", body, argv)


if __name__ == "__main__":
    sys.exit(main())
