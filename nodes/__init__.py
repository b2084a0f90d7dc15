"""The pipeline's processes (capture, keyframes, reconstruction, fusion): thin mains over the library.

Every node runs as `python -m spark3r_stream.nodes.<name> --config FILE [--set param=value ...] [--out DIR]`, where FILE is the
node config the launcher writes (`<out>/launch/<name>.yaml`) or a launch file (the node is picked from it, as
`spark3r run-node` does). What they share lives here: argument parsing, logging, the node report, stage timers.
No torch is imported here (capture and keyframes start without it).
"""

from __future__ import annotations

import argparse
import logging
import resource
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from spark3r_stream.errors import Spark3RError

T = TypeVar("T")
_early_signal: list[str] = []  # a SIGINT/SIGTERM that arrived before the node's NodeLoop took over the signals


def _on_early_signal(signum: int, frame: Any) -> None:
    _early_signal.append(signal.Signals(signum).name)


def _catch_early_signals() -> None:
    """Until the node's NodeLoop takes over: the launcher may stop the pipeline while a node is still starting (its
    heavy imports, torch or rerun, happen in its body), and that node must then exit cleanly, not die of
    KeyboardInterrupt. Installed by run_main, so importing this package changes no signal handler."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_early_signal)
        signal.signal(signal.SIGTERM, _on_early_signal)
        for notice in (signal.SIGUSR1, signal.SIGUSR2):  # the launcher's respawn notices (NodeLoop) must not kill it
            signal.signal(notice, signal.SIG_IGN)


NODES = ("capture", "keyframes", "reconstruction", "fusion")
DRAIN_TIMEOUT_S = 3600.0  # normal end: wait at most this long for receivers to take the rest of the stream
LINGER_STOP_MS = 500  # after SIGINT/SIGTERM (or an error): the consumers are stopping too
RECONNECT_GRACE_S = 1.0  # an ended sender waits this long after its receiver left, for a respawn notice (SIGUSR1)
RESTART_ENV = "SPARK3R_RESTART"  # set by the launcher on a respawn: how many times this node was restarted
log = logging.getLogger("nodes")


@dataclass(frozen=True)
class NodeContext:
    """A node's resolved config: params (plain data), endpoints, out dir, run id, and where the params came from."""

    name: str
    params: dict[str, Any]
    endpoints: list[dict[str, Any]]
    out: Path
    run_id: str
    source: str

    key: str = "params"  # dotted path of `params` inside `source` (nodes.<name>.params in a launch file)

    def config(self, cls: type[T], key: str | None = None, data: Any = None) -> T:
        """Config dataclass `cls` from params (or params[key]); errors name the launch file and the full key path:
        `launch/demo.yaml: nodes.keyframes.params.selector.max_interval: expected int >= min_interval, got 0`."""
        from spark3r_stream.config import ConfigValueError, from_dict

        if data is None:
            data = self.params if key is None else (self.params.get(key) or {})
        try:
            return from_dict(cls, data)
        except ConfigValueError as exc:
            path = (*self.key.split("."), *([key] if key else []), *exc.path)
            raise ConfigValueError(path, exc.problem, self.source) from None

    def report(self, path: Path | None = None) -> Any:
        """The node's RunReport, written to `path` (default <out>/nodes/<name>.json) by NodeLoop on exit (even on
        failure)."""
        from spark3r_stream.report import RunReport

        path = path or self.out / "nodes" / f"{self.name}.json"
        report = RunReport(f"node {self.name}", path, with_machine=False)
        report.set("run_id", self.run_id)
        report.set("params", self.params)
        return report


def parse_args(kind: str, argv: Sequence[str] | None) -> NodeContext:
    """Parse `--config FILE [--name NAME] [--set k=v ...] [--out DIR]`, set up logging; ConfigError if bad."""
    from spark3r_stream.launch_files import node_config_from

    parser = argparse.ArgumentParser(prog=f"python -m spark3r_stream.nodes.{kind}")
    parser.add_argument("--config", required=True, help="node config (<out>/launch/NAME.yaml) or a launch file")
    parser.add_argument("--name", default=kind, help="the node's name in a launch file (default: the node kind)")
    parser.add_argument("--set", action="append", default=[], metavar="PARAM=VALUE", help="override a param")
    parser.add_argument("--out", help="output folder (default: the config's)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    config = node_config_from(args.config, args.name, [f"{args.name}.{s}" for s in args.set], out=args.out)
    return NodeContext(
        name=config.get("name", args.name),
        params=dict(config.get("params") or {}),
        endpoints=list(config["endpoints"]),
        out=Path(config["out"]),
        run_id=str(config.get("run_id", "")),
        source=str(config.get("source", args.config)),
        key=str(config.get("key", "params")),
    )


def run_main(kind: str, body: Callable[[NodeContext], int], argv: Sequence[str] | None) -> int:
    """Run a node body: exit 0 ok, 1 run failure, 2 bad config/input (a Spark3RError, printed as one line)."""
    _catch_early_signals()
    try:
        ctx = parse_args(kind, argv)
    except Spark3RError as exc:
        logging.basicConfig(level=logging.INFO)
        log.error("%s: %s", kind, exc)
        return 2
    try:
        return body(ctx)
    except Spark3RError as exc:
        log.error("%s: %s", ctx.name, exc)
        return 2
    except Exception:
        log.exception("%s: failed", ctx.name)
        return 1
    finally:
        _ignore_stop_signals()


def _ignore_stop_signals() -> None:
    """The node is done and exits: a stop signal now (the launcher's next stage) changes nothing, but Python restores
    the default, killing, handler while it shuts down, and the node would end as killed by it."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def restart_count() -> int:
    """How many times the launcher has respawned this node (0 on its first start): a restarted node reloads its
    persisted state and counts its lossless inputs from the first message it sees."""
    import os

    value = os.environ.get(RESTART_ENV, "0")
    return int(value) if value.isdigit() else 0


@contextmanager
def node_loop(ctx: NodeContext, report: Any) -> Iterator[Any]:
    """The node's NodeLoop: endpoints from the config, the node report, and a signal that came in during start-up.

    A normal end waits (up to DRAIN_TIMEOUT_S) until the receivers of the lossless outputs have taken everything
    (NodeLoop's close); after SIGINT/SIGTERM closing waits at most LINGER_STOP_MS.
    """
    from spark3r_stream.transport import NodeLoop

    with NodeLoop(
        ctx.name,
        ctx.endpoints,
        report=report,
        linger_ms=LINGER_STOP_MS,
        drain_timeout_s=DRAIN_TIMEOUT_S,
        is_restart=restart_count() > 0,
        reconnect_grace_s=RECONNECT_GRACE_S,
    ) as loop:
        if _early_signal:
            loop.stop(_early_signal[0])
        try:
            yield loop
        finally:
            report.set("max_rss_mb", round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
