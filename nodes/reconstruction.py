"""Reconstruction node: keyframes + window requests -> window results (the backbone on growing windows).

Params: ReconstructionConfig (model, weights, spark3r, encoder_cache, refresh_budget, device, num_threads).
Keyframes are stored once and forgotten when they leave the window; if the results edge also carries the
`keyframe` topic (configs/pipeline.yaml), each keyframe is forwarded once so fusion has its image and timestamp.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Sequence

from spark3r_stream.nodes import NodeContext, StageTimer, node_loop, run_main
from spark3r_stream.stream.reconstructor import ReconstructionConfig, WindowReconstructor
from spark3r_stream.transport import Keyframe, WindowRequest, WindowResult

log = logging.getLogger("nodes.reconstruction")


def body(ctx: NodeContext) -> int:
    config = ctx.config(ReconstructionConfig)
    forwards = any("keyframe" in ep.get("topics", ()) for ep in ctx.endpoints if ep["direction"] == "out")
    report, timer = ctx.report(), StageTimer()
    report.set("config", dataclasses.asdict(config))
    with node_loop(ctx, report) as loop:
        reconstructor = WindowReconstructor.from_config(config)  # inside the loop: a bad checkpoint still reports
        log.info("%s: %s ready (spark3r %s)", ctx.name, config.model, "on" if config.spark3r else "off")

        def on_keyframe(keyframe: Keyframe) -> Keyframe | None:
            reconstructor.add_keyframe(keyframe.keyframe_id, keyframe.image)
            return keyframe if forwards else None

        def on_request(request: WindowRequest) -> WindowResult | None:
            # after a restart (respawn) keyframes sent before it are gone: run on what is stored, count the rest
            # (once stopping, NodeLoop hands out no further request: no model run starts on a queued one)
            ids = tuple(k for k in request.keyframe_ids if k in reconstructor.images)
            if len(ids) < len(request.keyframe_ids):
                loop.counters["dropped.missing_keyframes"] += len(request.keyframe_ids) - len(ids)
            if not ids:
                loop.counters["dropped.empty_window"] += 1
                return None
            output = reconstructor.run(request.window_id, ids)
            reconstructor.forget(set(ids))  # a later run only holds these or newer keyframes: memory ~ window
            plans.append(output.plan)
            log.info(
                "%s: window %d, %d keyframes (%d dense) in %.0f ms",
                ctx.name,
                output.window_id,
                len(ids),
                len(output.dense_keyframe_ids),
                output.timings.get("forward_ms", 0.0),
            )
            return WindowResult(**dataclasses.asdict(output))

        plans: list = []
        loop.on(Keyframe, timer.wrap("store_keyframe", on_keyframe))
        loop.on(WindowRequest, timer.wrap("reconstruct_window", on_request))
        try:
            loop.run()
        finally:
            report.set("stages", timer.summary())
            report.set("encoder_cache", dict(reconstructor.stats))
            report.set("reduction_plans", plans[-3:])
            report.set("num_runs", reconstructor.num_runs)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("reconstruction", body, argv)


if __name__ == "__main__":
    sys.exit(main())
