"""Keyframes node: frames -> keyframes (parallax, blur gate, min/max interval; resized to the model input) and
window requests (growing windows by keyframe id). Writes the frame log fusion uses for the every-frame trajectory
and the ground truth. Starts without torch.

Params: `selector` (KeyframeSelectorConfig), `windows` (WindowSchedulerConfig).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from nodes import FRAME_LOG, FRAME_LOG_HEADER, NodeContext, StageTimer, node_loop, run_main
from spark3r_stream.stream.keyframes import KeyframeSelector, KeyframeSelectorConfig
from spark3r_stream.stream.windows import WindowScheduler, WindowSchedulerConfig
from spark3r_stream.transport import Frame, Keyframe, WindowRequest

log = logging.getLogger("nodes.keyframes")
SECTIONS = ("selector", "windows")


def body(ctx: NodeContext) -> int:
    ctx.reject_unknown(SECTIONS)
    selector = KeyframeSelector(ctx.config(KeyframeSelectorConfig, "selector"))
    scheduler = WindowScheduler(ctx.config(WindowSchedulerConfig, "windows"))
    report, timer = ctx.report(), StageTimer()
    ctx.out.mkdir(parents=True, exist_ok=True)
    frame_log = open(ctx.out / FRAME_LOG, "w", buffering=1)  # line-buffered: complete lines for fusion
    frame_log.write(FRAME_LOG_HEADER + "\n")

    def request(run) -> WindowRequest | None:
        return None if run is None else WindowRequest(window_id=run.window_id, keyframe_ids=run.keyframe_ids)

    def on_frame(frame: Frame) -> list:
        chosen = selector.offer(frame.frame_seq, frame.t_capture, frame.image)
        gt = (
            "," * 11 if frame.world_from_cam is None else ",".join(f"{v:.9g}" for v in frame.world_from_cam[:3].ravel())
        )
        frame_log.write(
            f"{frame.frame_seq},{frame.t_capture:.9f},{-1 if chosen is None else chosen.keyframe_id},{gt}\n"
        )
        if chosen is None:
            return []
        keyframe = Keyframe(
            keyframe_id=chosen.keyframe_id, frame_seq=chosen.frame_seq, t_capture=chosen.t_capture, image=chosen.image
        )
        return [keyframe, request(scheduler.add(chosen.keyframe_id))]

    with node_loop(ctx, report) as loop:
        loop.on(Frame, timer.wrap("select_keyframe", on_frame))
        loop.on_end(lambda: request(scheduler.flush()))
        try:
            loop.run()
        finally:
            frame_log.close()
            report.set("frames", dict(selector.counts))
            report.set("windows", {"num_runs": scheduler.num_runs})
            report.set("stages", timer.summary())
            log.info("%s: %s; %d window requests", ctx.name, dict(selector.counts), scheduler.num_runs)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("keyframes", body, argv)


if __name__ == "__main__":
    sys.exit(main())
