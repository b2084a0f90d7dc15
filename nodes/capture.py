"""Capture node: a frame source (camera, video, folder, TUM, EuRoC, 7-Scenes, synthetic) -> frames.

Params are the source spec of `spark3r_stream.sources.open_source` (`type`, `path`, `start`, `stop`, `stride`,
`rate` and the kind's own options). Replay edges are lossless (backpressure); a live camera's launch file makes
the frames edge `latest` (stale frames dropped on purpose and counted by the receiver). Starts without torch.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from spark3r_stream.nodes import NodeContext, node_loop, run_main

log = logging.getLogger("nodes.capture")


def body(ctx: NodeContext) -> int:
    # imported here, after run_main took over SIGINT/SIGTERM: a stop during a slow import still exits cleanly
    from spark3r_stream.errors import ConfigError, SourceError, Spark3RError
    from spark3r_stream.sources import open_source

    report = ctx.report()
    with node_loop(ctx, report) as loop:
        try:
            source = open_source(ctx.params)
        except Spark3RError as exc:
            loop.stop("bad input")
            loop.end_stream()  # downstream learns at once that nothing will come
            if isinstance(exc, ConfigError):
                raise ConfigError(f"{ctx.source}: {ctx.key}: {exc}") from None
            raise
        report.set("source", source.info)
        if hasattr(source, "stop_when"):  # a live camera waits for frames: let it see a signal while it waits
            source.stop_when = lambda: loop.is_stopping
        log.info("%s: %s (%s frames)", ctx.name, source.source_id, source.info.get("num_frames") or "live")
        try:
            loop.run(source)
        except Spark3RError as exc:  # the source failed mid-run (camera lost, unreadable file): a run failure
            log.error("%s: %s; %d frames were sent", ctx.name, exc, loop.counters["sent.frame"])
            report.set("error", str(exc))
            return 1
        finally:
            report.set("source_counters", dict(source.counters))
            source.close()
        if not loop.counters["sent.frame"] and not loop.is_stopping:  # issue 15: nothing read is not a success
            skipped = {k: v for k, v in source.counters.items() if v and k != "frames"}
            raise SourceError(f"source {source.source_id}: yielded no frame" + (f" ({skipped})" if skipped else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("capture", body, argv)


if __name__ == "__main__":
    sys.exit(main())
