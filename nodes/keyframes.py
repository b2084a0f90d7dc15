"""Keyframes node: frames -> keyframes (parallax, blur gate, min/max interval; resized to the model input) and
window requests (growing windows by keyframe id), and one FrameRecord per frame straight to fusion (time, keyframe
id, ground truth) for the every-frame trajectory and groundtruth.tum. Starts without torch.

Params: `selector` (KeyframeSelectorConfig), `windows` (WindowSchedulerConfig).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from spark3r_stream.nodes import NodeContext, node_loop, run_main

log = logging.getLogger("nodes.keyframes")


def body(ctx: NodeContext) -> int:
    # imported here, after run_main took over SIGINT/SIGTERM: a stop during a slow import still exits cleanly
    from spark3r_stream.report import StageTimer
    from spark3r_stream.stream.pipeline import KeyframesConfig, KeyframeStep
    from spark3r_stream.stream.recovery import KeyframeReplay
    from spark3r_stream.transport import Frame

    step = KeyframeStep(ctx.config(KeyframesConfig))
    report, timer, replay = ctx.report(), StageTimer(), KeyframeReplay()
    with node_loop(ctx, report) as loop:
        select = timer.wrap("select_keyframe", step.on_frame)
        loop.on(Frame, lambda frame: replay.observe(select(frame)))
        loop.on_end(lambda: replay.observe(step.on_end()))
        if "keyframes" in {ep["edge"] for ep in ctx.endpoints if ep["direction"] == "out" and ep["kind"] == "lossless"}:
            loop.on_reconnect("keyframes", replay.messages)  # a restarted reconstruction node gets its windows back
        try:
            loop.run()
        finally:
            for key, value in step.summary().items():
                report.set(key, value)
            report.set("stages", timer.summary())
            log.info("%s: %s; %d window requests", ctx.name, dict(step.selector.counts), step.scheduler.num_runs)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("keyframes", body, argv)


if __name__ == "__main__":
    sys.exit(main())
