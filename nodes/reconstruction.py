"""Reconstruction node: keyframes + window requests -> window results (the backbone on growing windows).

Params: ReconstructionConfig (model, weights, spark3r, encoder_cache, refresh_budget, device, num_threads, requests:
"every" runs each window request in order, "latest" lets a newer one supersede a request waiting on a busy backbone).
Keyframes are stored once and forgotten when they leave the window; if the results edge also carries the
`keyframe` topic (configs/pipeline.yaml), each keyframe is forwarded once so fusion has its image and timestamp.
"""

from __future__ import annotations

import dataclasses
import logging
import resource
import sys
from collections.abc import Sequence

from spark3r_stream.nodes import NodeContext, node_loop, run_main

log = logging.getLogger("nodes.reconstruction")


def body(ctx: NodeContext) -> int:
    # imported here, after run_main took over SIGINT/SIGTERM: a stop during a slow import still exits cleanly
    from spark3r_stream.report import StageTimer
    from spark3r_stream.stream.pipeline import ReconstructionStep
    from spark3r_stream.stream.reconstructor import ReconstructionConfig, WindowReconstructor
    from spark3r_stream.transport import Keyframe, WindowRequest, WindowResult

    config = ctx.config(ReconstructionConfig)
    forwards = any("keyframe" in ep.get("topics", ()) for ep in ctx.endpoints if ep["direction"] == "out")
    report, timer = ctx.report(), StageTimer()
    report.set("config", dataclasses.asdict(config))
    with node_loop(ctx, report) as loop:
        # inside the loop: a bad checkpoint still reports
        step = ReconstructionStep(WindowReconstructor.from_config(config), ctx.name)
        log.info("%s: %s ready (spark3r %s)", ctx.name, config.model, "on" if config.spark3r else "off")

        def on_keyframe(keyframe: Keyframe) -> Keyframe | None:
            step.on_keyframe(keyframe)
            return keyframe if forwards else None

        def saved(result: WindowResult | None) -> WindowResult | None:
            # the report after every run: a node killed inside a long run (SIGKILL after the launcher's shutdown
            # timeout; a dense 1,000-keyframe run takes minutes) still leaves its runs and keyframe times
            for key, value in step.summary().items():
                report.set(key, value)
            report.set("max_rss_mb", round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
            if report.path is not None:
                report.write()
            return result

        reconstruct = timer.wrap("reconstruct_window", lambda _: saved(step.run_pending()))

        def run_waiting() -> WindowResult | None:
            return reconstruct(None) if step.pending else None

        def offer(request: WindowRequest) -> WindowResult | None:
            step.offer(request)  # runs once the input queue is empty, or at once when a request waited too long
            return run_waiting() if step.is_overdue(config.max_request_wait_s) else None

        def run_rest() -> list[WindowResult]:  # end of stream: what still waits runs
            results = []
            while step.pending:
                try:
                    results.append(reconstruct(None))
                except Exception:  # a failed run must not keep end-of-stream from going downstream
                    step.counters["dropped.handler_failed"] += 1
                    log.exception("%s: a window run at the end of the stream failed", ctx.name)
            return [r for r in results if r is not None]

        # requests "latest": a request waits until the input queue is empty and a newer one supersedes it (never a
        # keyframe: ReconstructionStep.offer); once stopping, NodeLoop hands out no further request and runs no idle
        # handler: no model run starts on a queued one
        loop.on(Keyframe, timer.wrap("store_keyframe", on_keyframe))
        if config.requests == "latest":
            loop.on(WindowRequest, offer)
            loop.on_idle(run_waiting)
            loop.on_end(run_rest)
        else:  # every request in order (a lossless replay: the single-process run's map)
            loop.on(WindowRequest, timer.wrap("reconstruct_window", lambda request: saved(step.on_request(request))))
        try:
            loop.run()
        finally:
            loop.counters.update(step.counters)
            for key, value in step.summary().items():
                report.set(key, value)
            report.set("stages", timer.summary())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("reconstruction", body, argv)


if __name__ == "__main__":
    sys.exit(main())
