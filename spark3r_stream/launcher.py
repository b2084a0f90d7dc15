"""Runs a launch file (spark3r_stream.launch_files): every node its own process (own process group), endpoints and
params handed over, log lines prefixed and coloured per node, SIGINT/SIGTERM forwarded and waited with a timeout, a
respawn policy per node; or all steps in this process (`run_single_process`).

Node processes run `python -m spark3r_stream.nodes.<node> --config <out>/launch/<name>.yaml`; each writes
`<out>/nodes/<name>.json`; the launcher merges them into report.json.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from spark3r_stream.launch_files import (
    LaunchFile,
    ResolvedNode,
    load_launch_file,
    resolve,
)

log = logging.getLogger(__name__)

START_ORDER = ("fusion", "reconstruction", "keyframes", "capture")  # consumers first: nothing waits on a bind
POLL_S = 0.1  # child-process supervision period
COLORS = ("\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m", "\033[31m")
RESET = "\033[0m"
EXIT_CONFIG = 2  # a node's (and the launcher's) exit code for bad usage/config/input
# what a run writes into --out: a previous run's copies are removed first, so a run whose fusion never writes them
# is not reported with the old ones (its logs are rewritten by the new run)
RUN_OUTPUTS = (
    "report.json",
    "trajectory.tum",
    "trajectory_keyframes.tum",
    "groundtruth.tum",
    "map.ply",
    "recording.rrd",
)
RUN_OUTPUT_DIRS = ("nodes", "state")


def clear_previous_run(out: Path) -> list[str]:
    """Remove a previous run's outputs from `out` (only the names a run writes); returns what was removed."""
    removed = [name for name in RUN_OUTPUTS if (out / name).is_file()]
    for name in removed:
        (out / name).unlink()
    for name in RUN_OUTPUT_DIRS:
        if (out / name).is_dir():
            shutil.rmtree(out / name)
            removed.append(name + "/")
    return removed


class _Child:
    def __init__(self, node: ResolvedNode, config_path: Path, color: str, log_dir: Path) -> None:
        self.node = node
        self.config_path = config_path
        self.color = color
        self.log_path = log_dir / f"{node.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.exit_codes: list[int] = []
        self.restart_at: float | None = None
        self.done = False
        self.handled = False  # this process's exit was seen
        self.started_at: float | None = None
        self.exited_at: float | None = None
        self.respawn_s: list[float] = []  # from an exit seen to the respawned process's start
        self._threads: list[threading.Thread] = []


class Launcher:
    """Starts the nodes of a resolved launch file and supervises them until they all ended (or a signal)."""

    def __init__(
        self,
        spec: LaunchFile,
        source: Path,
        out: str | Path,
        *,
        run_id: str | None = None,
        color: bool | None = None,
        stream: Any = None,
    ) -> None:
        self.spec = spec
        self.source = source
        self.out = Path(out).resolve()
        self.run_id = run_id or f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self.stream = stream if stream is not None else sys.stdout
        self.color = color if color is not None else (self.stream.isatty() and "NO_COLOR" not in os.environ)
        self.nodes = resolve(spec, source, self.out, self.run_id)
        check_local_keys(self.nodes, source)
        self.children: list[_Child] = []
        self.stop_reason: str | None = None
        self.started_at = time.time()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ process handling
    def _command(self, child: _Child) -> list[str]:
        return [sys.executable, "-m", f"spark3r_stream.nodes.{child.node.kind}", "--config", str(child.config_path)]

    def _start(self, child: _Child) -> None:
        env = {**os.environ, **child.node.entry.env, "SPARK3R_RUN_ID": self.run_id, "PYTHONUNBUFFERED": "1"}
        env["SPARK3R_RESTART"] = str(child.restarts)  # a respawned node reloads its state (nodes.restart_count)
        child.started_at = time.monotonic()
        if child.exited_at is not None:
            child.respawn_s.append(round(child.started_at - child.exited_at, 3))
        child.proc = subprocess.Popen(  # the launcher's working directory: relative paths mean what the user meant
            self._command(child),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # own process group: a terminal's Ctrl-C reaches the launcher only
        )
        child.restart_at = None
        child.handled = False
        thread = threading.Thread(target=self._pump, args=(child, child.proc), daemon=True)
        thread.start()
        child._threads.append(thread)
        self._say(child, f"started (pid {child.proc.pid})")

    def _pump(self, child: _Child, proc: subprocess.Popen[bytes]) -> None:
        """Copy a child's output line by line, prefixed (and coloured) with its name, to the console and its log."""
        assert proc.stdout is not None
        with open(child.log_path, "ab") as log_file:
            for raw in iter(proc.stdout.readline, b""):
                log_file.write(raw)
                log_file.flush()
                self._emit(child, raw.decode(errors="replace").rstrip("\n"))

    def _emit(self, child: _Child, line: str) -> None:
        prefix = f"[{child.node.name}]"
        if self.color:
            prefix = f"{child.color}{prefix}{RESET}"
        with self._lock:
            self.stream.write(f"{prefix} {line}\n")
            self.stream.flush()

    def _say(self, child: _Child, text: str) -> None:
        self._emit(child, f"launcher: {text}")

    def _signal_all(self, signum: int, children: Sequence[_Child] | None = None) -> None:
        for child in self.children if children is None else children:
            if child.proc is not None and child.proc.poll() is None:
                try:
                    os.killpg(child.proc.pid, signum)
                except ProcessLookupError:
                    pass

    def _alive(self) -> list[_Child]:
        return [c for c in self.children if c.proc is not None and c.proc.poll() is None]

    def shutdown(self, reason: str) -> None:
        """After SIGINT/SIGTERM, capture stops first and the rest finish what it sent (`_finish_captured`); then
        SIGINT to every node, wait; SIGTERM, wait; SIGKILL (ROS-launch style escalation)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            log.info("launcher: stopping all nodes (%s)", reason)
        for child in self.children:
            child.restart_at = None
        if self._shut_down:  # once: a second SIGINT means "stop waiting" to a node (NodeLoop), not "stop"
            return
        self._shut_down = True
        if reason in ("SIGINT", "SIGTERM"):
            self._finish_captured()
        self._finish_over = True
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            if not self._alive():
                return
            if signum != signal.SIGINT:
                names = ", ".join(c.node.name for c in self._alive())
                log.warning("launcher: %s still running after %.0f s; sending %s", names, self._timeout, signum.name)
            if signum == signal.SIGINT and self._stopped_first:
                # capture has had its SIGINT: a second signal (SIGTERM: no KeyboardInterrupt) ends its wait to
                # deliver the end-of-stream (NodeLoop)
                self._signal_all(signal.SIGTERM, self._stopped_first)
                self._signal_all(signum, [c for c in self.children if c not in self._stopped_first])
            else:
                self._signal_all(signum)
            deadline = time.monotonic() + self._timeout
            while self._alive() and time.monotonic() < deadline:
                try:
                    self._alive()[0].proc.wait(timeout=POLL_S)  # type: ignore[union-attr]
                except subprocess.TimeoutExpired:
                    pass

    def _finish_captured(self) -> None:
        """Stop the capture nodes only: each ends its stream, and every other node ends by the end-of-stream once it
        has handled what was captured (keyframes posed, frames in trajectory.tum: a stopped run keeps everything it
        captured). Bounded by the shutdown timeout; a second SIGINT skips the wait."""
        captures = [c for c in self.children if c.node.kind == "capture"]
        if not captures or any(c.node.entry.remote for c in captures):
            return  # a remote capture is not ours to stop: every node gets the signal at once
        self._stopped_first = [c for c in captures if c in self._alive()]
        self._signal_all(signal.SIGINT, self._stopped_first)
        log.info("launcher: capture stopped; the other nodes finish what it sent (Ctrl-C again: stop them now)")
        deadline = time.monotonic() + self._timeout
        while self._alive() and time.monotonic() < deadline and not self._hurry:
            try:
                self._alive()[0].proc.wait(timeout=POLL_S)  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                pass

    @property
    def _timeout(self) -> float:
        return self.spec.shutdown_timeout_s

    def _on_exit(self, child: _Child, code: int) -> None:
        child.exit_codes.append(code)
        child.handled = True
        child.exited_at = time.monotonic()
        entry = child.node.entry
        self._say(child, f"exited with code {code}")
        failed = code != 0
        wants = entry.respawn == "always" or (entry.respawn == "on-failure" and failed)
        if self.stop_reason is None and wants and code != EXIT_CONFIG and child.restarts < entry.max_restarts:
            child.restarts += 1
            delay = entry.restart_delay_s * 2 ** (child.restarts - 1)  # doubling backoff
            child.restart_at = time.monotonic() + delay
            self._say(child, f"respawn {child.restarts}/{entry.max_restarts} in {delay:.1f} s")
            self._notify_upstreams(child, signal.SIGUSR1)
            return
        if code == 0 and child.restarts:
            self._notify_upstreams(child, signal.SIGUSR2)  # the respawned node is done: its producers may end
        child.done = True
        if failed and entry.required and self.stop_reason is None:
            self.shutdown(f"required node {child.node.name!r} failed with code {code}")

    def _notify_upstreams(self, child: _Child, signum: int) -> None:
        """SIGUSR1 to the running producers of a node about to be respawned: an ended sender then keeps its replay
        buffer until the new process connects (NodeLoop's respawn notice), instead of taking the dead one's
        disconnect for a normal end; SIGUSR2 once the respawned node has ended normally."""
        producers = {
            name
            for ep in child.node.config["endpoints"]
            if ep["direction"] == "in"
            for name in ep.get("upstream_nodes") or ()
        }
        for other in self.children:
            if other.node.name in producers and other.proc is not None and other.proc.poll() is None:
                try:
                    os.kill(other.proc.pid, signum)
                except ProcessLookupError:
                    pass

    def _supervise_once(self) -> None:
        for child in self.children:
            if child.done or child.proc is None:
                continue
            if not child.handled and child.proc.poll() is not None:
                self._on_exit(child, child.proc.returncode)
            if child.restart_at is not None and time.monotonic() >= child.restart_at:
                self._start(child)

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        """Run until every node ended; returns 0, 1 (a node failed), 2 (a node rejected its config or input),
        130/143 after SIGINT/SIGTERM."""
        self.out.mkdir(parents=True, exist_ok=True)
        if removed := clear_previous_run(self.out):
            log.info("launcher: removed the previous run's %s from %s", ", ".join(removed), self.out)
        config_dir, log_dir = self.out / "launch", self.out / "logs"
        config_dir.mkdir(exist_ok=True)
        log_dir.mkdir(exist_ok=True)
        order = sorted(self.nodes, key=lambda n: START_ORDER.index(n.kind))
        for i, node in enumerate(order):
            path = config_dir / f"{node.name}.yaml"
            path.write_text(yaml.safe_dump(node.config, sort_keys=False))
            child = _Child(node, path, COLORS[i % len(COLORS)], log_dir)
            self.children.append(child)
            if node.entry.remote:
                addresses = ", ".join(e["address"] for e in node.config["endpoints"])
                self._say(
                    child,
                    f"remote: start it there with `spark3r run-node {node.name} --config {self.source}` ({addresses})",
                )
                child.done = True
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for child in self.children:
                if not child.done:
                    self._start(child)
            while not all(c.done for c in self.children):
                self._supervise_once()
                if self._pending_signal:
                    self.shutdown(self._pending_signal)
                    self._pending_signal = None
                    break
                alive = self._alive()
                if alive:
                    try:
                        alive[0].proc.wait(timeout=POLL_S)  # type: ignore[union-attr]
                    except subprocess.TimeoutExpired:
                        pass
        finally:
            self.shutdown(self.stop_reason or "finished")
            for child in self.children:
                if child.proc is not None and not child.handled:
                    child.exit_codes.append(child.proc.wait())
                    child.handled = True
                    self._say(child, f"exited with code {child.exit_codes[-1]}")
                for thread in child._threads:
                    thread.join(timeout=5)
            for signum, handler in old.items():
                signal.signal(signum, handler)
        codes = [c.exit_codes[-1] for c in self.children if c.exit_codes]
        if self.stop_reason in ("SIGINT", "SIGTERM"):
            # a node still starting when the launcher forwarded the signal ends by it: stopped, not failed
            codes = [0 if code in (-signal.SIGINT, -signal.SIGTERM) else code for code in codes]
        status = EXIT_CONFIG if EXIT_CONFIG in codes else (1 if any(codes) else 0)
        if status == 0 and self.stop_reason in ("SIGINT", "SIGTERM"):
            status = 130 if self.stop_reason == "SIGINT" else 143
        status = self.write_report(status)
        self._remove_run_dirs()
        return status

    def _remove_run_dirs(self) -> None:
        """The ipc socket directories of this run (/tmp/s3r-<run id>): every node here has ended, so nothing in them
        is in use; a run, failed or not, leaves none behind."""
        dirs = {
            Path(ep["address"][len("ipc://") :]).parent
            for node in self.nodes
            for ep in node.config["endpoints"]
            if ep["address"].startswith("ipc://")
        }
        for path in dirs:
            if path.name.startswith("s3r-"):
                shutil.rmtree(path, ignore_errors=True)

    _pending_signal: str | None = None
    _shut_down = False
    _hurry = False  # a second Ctrl-C: the nodes stop now instead of finishing what capture sent
    _finish_over = False  # that finish has ended (or was never started): a further Ctrl-C kills
    _stopped_first: Sequence[_Child] = ()  # the capture nodes that got their SIGINT first

    def _on_signal(self, signum: int, frame: Any) -> None:
        if not (self._pending_signal or self.stop_reason):
            self._pending_signal = signal.Signals(signum).name
        elif signum == signal.SIGINT and not self._finish_over:
            # a flag, not an action: the finish may not have started yet (the first signal is still pending)
            self._hurry = True
        elif signum == signal.SIGINT:  # stop waiting for a clean exit
            self._signal_all(signal.SIGKILL)

    # ------------------------------------------------------------------ report
    def write_report(self, status: int) -> int:
        """Merge the nodes' reports into <out>/report.json (fusion's results stay; the pipeline section is added);
        returns the run's exit code: `status`, or 1 for a run that would have ended 0 but lost or never posed
        something (status `degraded`, `pipeline.problems` names what)."""
        path = self.out / "report.json"
        report: dict[str, Any] = {}
        if path.is_file():
            try:
                report = json.loads(path.read_text())
            except ValueError:
                report = {}
        nodes = {}
        for child in self.children:
            node_report = self.out / "nodes" / f"{child.node.name}.json"
            if not node_report.is_file() and child.node.kind == "fusion":
                node_report = path  # fusion's report is report.json itself
            data = json.loads(node_report.read_text()) if node_report.is_file() else None
            if data is not None and node_report == path:
                data = {"status": data.get("status"), "transport": data.get("transport")}
            nodes[child.node.name] = {
                "kind": child.node.kind,
                "exit_codes": child.exit_codes,
                "restarts": child.restarts,
                "respawn_s": child.respawn_s,
                "remote": child.node.entry.remote,
                "report": data,
            }
        wall_s = time.time() - self.started_at
        report["pipeline"] = {
            "launch_file": str(self.source),
            "run_id": self.run_id,
            "exit_code": status,
            "stop_reason": self.stop_reason,
            "wall_s": round(wall_s, 3),
            "nodes": nodes,
            "accounting": frame_accounting(nodes, report, self.stop_reason),
        }
        problems = run_problems(report["pipeline"]["accounting"])
        if problems:
            report["pipeline"]["problems"] = problems
            for problem in problems:
                log.log(logging.ERROR if status == 0 else logging.WARNING, "launcher: %s", problem)
        if problems and status == 0:
            status = report["pipeline"]["exit_code"] = 1
        frames = report["pipeline"]["accounting"].get("frames_captured")
        if frames:
            report["pipeline"]["frames_per_s"] = round(frames / wall_s, 3)
        if problems and report["pipeline"]["exit_code"] == 1 and not any(codes_of(nodes)):
            report["status"] = "degraded"  # every node ended well, but the books say something is missing
        elif status in (1, EXIT_CONFIG):
            report["status"] = "failed"
        elif status in (130, 143):
            report["status"] = "interrupted"
        else:
            report.setdefault("status", "ok")
        recording = (report.get("outputs") or {}).get("recording")
        if status in (1, EXIT_CONFIG) and not (report.get("windows") or {}).get("count") and recording:
            # a failed run that reconstructed nothing: its recording holds only the config, not worth a file
            Path(recording).unlink(missing_ok=True)
            report["outputs"].pop("recording")
            report["pipeline"]["removed"] = [f"{recording} (failed run, no window reconstructed)"]
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(report, indent=2, default=str))
        tmp.replace(path)
        return status


def codes_of(nodes: Mapping[str, Mapping[str, Any]]) -> list[int]:
    """The last exit code of every node that ran here (a signal's negative code included)."""
    return [entry["exit_codes"][-1] for entry in nodes.values() if entry.get("exit_codes")]


def check_local_keys(nodes: Sequence[ResolvedNode], source: Path) -> None:
    """ConfigError before any process starts if a node started here names a CURVE key file or allow-list that is
    missing or unsafe (remote nodes check theirs on their host)."""
    from spark3r_stream.errors import ConfigError
    from spark3r_stream.transport.endpoints import check_curve_files, parse_endpoints

    for node in nodes:
        if node.entry.remote:
            continue
        for ep in parse_endpoints(node.config["endpoints"]):
            try:
                check_curve_files(ep)
            except ConfigError as exc:
                raise ConfigError(f"{source}: nodes.{node.name}: {exc}") from None


def frame_accounting(
    nodes: Mapping[str, Mapping[str, Any]],
    fusion_report: Mapping[str, Any] | None = None,
    stop_reason: str | None = None,
) -> dict[str, Any]:
    """Where every captured frame went, from the node reports: sent, received, lost on the way, keyframe or not.

    Issue 15: captured = received + stale + lost + dropped + unprocessed at stop, always. `frames_dropped` are frames
    the keyframes node refused (malformed, beyond its size limits); `frames_unprocessed_at_stop` those taken off the
    socket but not handled after a stop plus those still in flight (sent by capture, never received) when a signal
    stopped the run; without a signal, frames in flight are `frames_unaccounted` (never expected, a problem).
    `fusion_report` (report.json) adds what was posed: `keyframes_posed`, `frames_posed` (lines of trajectory.tum).
    """

    def transport(kind: str) -> dict[str, Any]:
        for entry in nodes.values():
            if entry["kind"] == kind and entry.get("report"):
                return entry["report"].get("transport", {})
        return {}

    def counters(kind: str) -> dict[str, float]:
        return transport(kind).get("counters", {})

    capture, keyframes, recon, fusion = (counters(k) for k in ("capture", "keyframes", "reconstruction", "fusion"))
    out: dict[str, Any] = {
        "frames_captured": capture.get("sent.frame"),
        "frames_unsent": capture.get("dropped.unsent", 0) if capture else None,
        "frames_received": keyframes.get("recv.frame"),
        "frames_stale_dropped": keyframes.get("dropped.stale", 0) if keyframes else None,
        "frames_lost": keyframes.get("lost.frames", 0) if keyframes else None,
        "keyframes_sent": keyframes.get("sent.keyframe"),
        "keyframes_received": recon.get("recv.keyframe"),
        "keyframes_lost": recon.get("lost.keyframes", 0) if recon else None,
        "window_requests": keyframes.get("sent.window_request"),
        "window_results_sent": recon.get("sent.window_result"),
        "window_results_received": fusion.get("recv.window_result"),
        "results_lost": fusion.get("lost.results", 0) if fusion else None,
        "frame_records_sent": keyframes.get("sent.frame_record"),
        "frame_records_received": fusion.get("recv.frame_record"),
        "frame_records_lost": fusion.get("lost.frame_records", 0) if fusion else None,
        "malformed_dropped": {
            name: {k: v for k, v in counters(entry["kind"]).items() if k.startswith("dropped.")}
            for name, entry in nodes.items()
        },
    }
    not_dropped = ("dropped.stale", "dropped.stopping", "dropped.unsent", "dropped.duplicate", "dropped.unknown_sender")
    frames_dropped = sum(v for k, v in keyframes.items() if k.startswith("dropped.") and k not in not_dropped)
    stopping = keyframes.get("dropped.stopping", 0)
    if capture:
        in_flight = (out["frames_captured"] or 0) - sum(
            (out["frames_received"] or 0, out["frames_stale_dropped"] or 0, out["frames_lost"] or 0)
        )
        in_flight -= frames_dropped + stopping
        was_stopped = stop_reason in ("SIGINT", "SIGTERM")
        out["frames_captured"] = out["frames_captured"] or 0
        out["frames_dropped"] = frames_dropped
        out["frames_unprocessed_at_stop"] = stopping + (in_flight if was_stopped else 0)
        out["frames_unaccounted"] = 0 if was_stopped else in_flight
    if fusion_report is not None and capture:
        posed = (fusion_report.get("keyframes") or {}).get("posed")
        logged = (fusion_report.get("frames") or {}).get("logged")
        out["keyframes_posed"] = posed
        out["frames_posed"] = (logged or 0) if posed else 0  # trajectory.tum: every logged frame once one is posed
        out["keyframes_resent"] = keyframes.get("resent.keyframe", 0)
    sel = (nodes.get("keyframes", {}).get("report") or {}).get("frames", {})
    if sel:
        out["frames_by_outcome"] = sel
    captured, received = out["frames_captured"], out["frames_received"]
    out["all_frames_accounted"] = bool(
        captured is not None
        and received is not None
        and captured
        == received
        + (out["frames_stale_dropped"] or 0)
        + out.get("frames_dropped", 0)
        + out.get("frames_unprocessed_at_stop", 0)
        and not out["frames_lost"]
        and not out["keyframes_lost"]
        and not out["results_lost"]
        and not out["frame_records_lost"]
    )
    return out


def run_problems(acc: Mapping[str, Any]) -> list[str]:
    """What a run lost or never posed, one line each, from its accounting (empty: nothing missing)."""
    problems = []
    if acc.get("frames_captured") == 0:
        problems.append("no frame was captured")
    for key in ("frames_lost", "keyframes_lost", "results_lost", "frame_records_lost"):
        if acc.get(key):
            problems.append(f"{acc[key]} {key.removesuffix('_lost').replace('_', ' ')} lost on the way")
    if acc.get("frames_unaccounted"):
        problems.append(f"{acc['frames_unaccounted']} captured frames neither received nor dropped (unaccounted)")
    if "keyframes_posed" in acc and acc["keyframes_posed"] is None:
        problems.append("fusion wrote no results (it did not end normally): no keyframe or frame posed")
    sent, posed = acc.get("keyframes_sent") or 0, acc.get("keyframes_posed")
    if posed is not None and posed < sent:
        problems.append(f"{sent - posed} of {sent} keyframes never posed")
    captured, in_trajectory = acc.get("frames_captured"), acc.get("frames_posed")
    expected = (captured or 0) - (acc.get("frames_unprocessed_at_stop") or 0) - (acc.get("frames_dropped") or 0)
    expected -= acc.get("frames_stale_dropped") or 0
    if in_trajectory is not None and captured and in_trajectory < expected:
        problems.append(f"{expected - in_trajectory} of {expected} received frames not in trajectory.tum")
    return problems


def launch(path: str | Path, out: str | Path, overrides: Sequence[str] = (), **kwargs: Any) -> int:
    """Load, validate and run a launch file; returns the exit code."""
    spec, source = load_launch_file(path, overrides)
    return Launcher(spec, source, out, **kwargs).run()


def run_single_process(path: str | Path, out: str | Path, overrides: Sequence[str] = ()) -> int:
    """The launch file's pipeline in this one process (stream.pipeline.Pipeline): same steps, no transport.

    Exit 0 ok, 2 bad config or input (one line, as the launcher), 1 a failure mid-run (outputs still written)."""
    from spark3r_stream.report import RunReport
    from spark3r_stream.sources import open_source
    from spark3r_stream.stream.pipeline import Pipeline

    spec, source = load_launch_file(path, overrides)
    out = Path(out).resolve()
    params = {node.kind: node.config.get("params") or {} for node in resolve(spec, source, out, "single-process")}
    pipeline = Pipeline.from_params(params, out, str(source))
    if pipeline.fusion.viewer is not None:
        pipeline.fusion.viewer.log_run_config(yaml.safe_dump(params, sort_keys=False))
    frames = open_source(params["capture"])
    report = RunReport("pipeline (single process)", out / "report.json")
    report.set("source", frames.info)
    status, error, code = "ok", None, 0
    try:
        pipeline.run(frames, out, report)
        if not report.data.get("pipeline", {}).get("frames"):  # as the capture node: nothing read is not a success
            skipped = {k: v for k, v in frames.counters.items() if v and k != "frames"}
            error = f"source {frames.source_id}: yielded no frame" + (f" ({skipped})" if skipped else "")
            log.error("%s", error)
            status, code = "failed", 2
    except KeyboardInterrupt:
        status, code = "stopped", 130
    except Exception as exc:  # noqa: BLE001 - the outputs are written by run(); the report says why it stopped
        log.exception("single-process run failed")
        status, error, code = "failed", f"{type(exc).__name__}: {exc}", 1
    finally:
        report.set("source_counters", dict(frames.counters))
        frames.close()
        report.finish(status, error=error)
        report.write()
    return code


def summarize_run(out: str | Path) -> str:
    """A few lines for the console: where the outputs are, frames accounted for, throughput, ATE."""
    out = Path(out)
    path = out / "report.json"
    if not path.is_file():
        return f"no report in {out} (see {out / 'logs'})"
    report = json.loads(path.read_text())
    pipeline = report.get("pipeline", {})
    acc = pipeline.get("accounting", {})
    if pipeline.get("mode") == "single-process":
        frames = (report.get("selection") or {}).get("frames") or {}
        acc = {"frames_captured": pipeline.get("frames"), "frames_received": pipeline.get("frames"), "frames_lost": 0,
               "frames_stale_dropped": 0, "all_frames_accounted": True, "keyframes_sent": frames.get("keyframes"),
               "window_results_received": (report.get("windows") or {}).get("count")}  # fmt: skip
    lines = [f"outputs in {out.resolve()}/ (status {report.get('status')}, exit code {pipeline.get('exit_code')})"]
    for name, file in sorted((report.get("outputs") or {}).items()):
        lines.append(f"  {name}: {file}")
    lines.append(
        f"frames: {acc.get('frames_captured')} captured, {acc.get('frames_received')} received, "
        f"{acc.get('frames_lost')} lost, {acc.get('frames_stale_dropped')} dropped as stale; "
        f"all accounted for: {acc.get('all_frames_accounted')}"
    )
    lines.append(
        f"keyframes {acc.get('keyframes_sent')}, windows {acc.get('window_results_received')}, "
        f"wall {pipeline.get('wall_s')} s, {pipeline.get('frames_per_s')} frames/s end to end"
    )
    ate = (report.get("trajectory") or {}).get("all_frames") or {}
    if ate.get("ate_rmse_m") is not None:
        lines.append(
            f"ATE (Sim(3)-aligned, every frame) vs ground truth: {ate['ate_rmse_m']:.4f} m RMSE "
            f"({100 * ate.get('ate_over_extent', float('nan')):.1f} % of the trajectory extent)"
        )
    if ate.get("ate_constant_baseline_m") is not None:
        lines.append(
            f"  a constant trajectory (every camera at the mean ground-truth position) scores "
            f"{ate['ate_constant_baseline_m']:.4f} m: the reconstruction's ATE is "
            f"{ate['ate_rmse_m'] / max(ate['ate_constant_baseline_m'], 1e-12):.2f}x that"
        )
    return "\n".join(lines)


__all__ = ["Launcher", "frame_accounting", "launch", "run_single_process", "summarize_run"]
