"""Launch files: YAML that describes a pipeline run (nodes, edges, params), loaded, validated and resolved into each
node's config (params, endpoints, out dir, run id). The launcher runs the result; `spark3r run-node` and
`--single-process` use the same resolution.

A launch file (YAML; `preset:` names a base such as configs/pipeline.yaml) holds:

    description: what it runs
    transport: ipc | tcp          # default addresses of the edges (ipc://<run dir>/<edge>, tcp://127.0.0.1:<port>)
    shutdown_timeout_s: 10        # Ctrl-C: the finish after capture stops, then SIGINT, SIGTERM, SIGKILL apart
    vars: {gpu_host: 127.0.0.1}   # `${name}` in any string below; `--set vars.gpu_host=10.0.0.5`
    allow_insecure_remote: false  # true: every endpoint may reach beyond loopback without CURVE (trusted LAN only)
    edges: {frames: {kind: latest}}                  # both ends of an edge
    nodes:
      capture:                     # process name (log prefix); `node:` picks the node kind, default = the name
        params: {type: synth, frames: 120}           # the node's own settings (validated by the node)
        endpoints: {frames: {hwm: 4}}                # this end of an edge only
        respawn: never | on-failure | always
        max_restarts: 3
        required: true             # its failure stops the pipeline (exit code non-zero)
        remote: false              # true: not started here; run it elsewhere with `spark3r run-node NAME`

`--set capture.path=/data/seq` sets `nodes.capture.params.path`; `--set capture.respawn=always` a node field;
`--set vars.x=...`, `--set transport=tcp` the top level.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from spark3r_stream.config import apply_overrides, load_config, load_yaml, package_dir, to_dict
from spark3r_stream.errors import ConfigError, SourceError
from spark3r_stream.input_size import DEFAULT_MODEL
from spark3r_stream.transport.endpoints import NODE_EDGES, default_run_dir, make_endpoint

LAUNCH_DIR = package_dir("launch")  # the repository's launch/, installed as spark3r_stream.launch
NODE_KINDS: tuple[str, ...] = tuple(NODE_EDGES)  # capture, keyframes, reconstruction, fusion (spark3r_stream.nodes.*)


@dataclass(frozen=True, kw_only=True)
class NodeEntry:
    """One process of a launch file."""

    node: Literal["capture", "keyframes", "reconstruction", "fusion"] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    respawn: Literal["never", "on-failure", "always"] = "never"
    max_restarts: int = 3
    restart_delay_s: float = 1.0
    required: bool = True
    remote: bool = False
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from spark3r_stream.config import check_field

        check_field(self, "max_restarts", self.max_restarts >= 0, "int >= 0")
        check_field(self, "restart_delay_s", self.restart_delay_s >= 0, "float >= 0")


@dataclass(frozen=True, kw_only=True)
class LaunchFile:
    description: str = ""
    transport: Literal["ipc", "tcp"] = "ipc"
    shutdown_timeout_s: float = 10.0
    vars: dict[str, str] = field(default_factory=dict)
    allow_insecure_remote: bool = False  # default of every endpoint's flag (endpoints.py): plain text beyond loopback
    edges: dict[str, dict[str, Any]] = field(default_factory=dict)
    nodes: dict[str, NodeEntry] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from spark3r_stream.config import check_field

        check_field(self, "shutdown_timeout_s", self.shutdown_timeout_s > 0, "float > 0")
        check_field(self, "nodes", bool(self.nodes), "at least one node")


@dataclass(frozen=True)
class ResolvedNode:
    """What one node process gets: its kind, params, endpoints (plain dicts), the out dir and the run id."""

    name: str
    entry: NodeEntry
    kind: str
    config: dict[str, Any]  # the YAML handed to `python -m spark3r_stream.nodes.<kind> --config`


def find_launch_file(name: str | Path) -> Path:
    """A path as given, or a name in launch/ (`demo`, `demo.yaml`)."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (LAUNCH_DIR / path.name, LAUNCH_DIR / f"{path.name}.yaml"):
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.stem for p in LAUNCH_DIR.glob("*.yaml")))
    raise ConfigError(f"launch file {name}: not found (launch files in {LAUNCH_DIR}: {known})")


def translate_overrides(overrides: Sequence[str], node_names: Sequence[str]) -> list[str]:
    """`capture.path=x` -> `nodes.capture.params.path=x`; node fields and top-level keys pass through."""
    node_fields = {f.name for f in dataclasses.fields(NodeEntry)}
    top_fields = {f.name for f in dataclasses.fields(LaunchFile)}
    out = []
    for text in overrides:
        key, sep, value = text.partition("=")
        parts = key.strip().split(".")
        if not sep:
            raise ConfigError(f"override {text!r}: expected node.param=value (e.g. capture.path=/data/seq)")
        if parts[0] in node_names and len(parts) > 1:
            inner = parts[1:] if parts[1] in node_fields else ["params", *parts[1:]]
            parts = ["nodes", parts[0], *inner]
        elif parts[0] not in top_fields:
            raise ConfigError(
                f"override {text!r}: {parts[0]!r} is neither a node ({', '.join(node_names)}) nor one of "
                f"{', '.join(sorted(top_fields))}"
            )
        out.append(".".join(parts) + "=" + value)
    return out


def load_launch_file(path: str | Path, overrides: Sequence[str] = ()) -> tuple[LaunchFile, Path]:
    """Parse and validate a launch file (with its `preset:` chain) and `--set` overrides."""
    path = find_launch_file(path)
    raw = load_yaml(path)  # ConfigError naming the file and line for invalid YAML
    names = list(raw.get("nodes") or {}) if isinstance(raw.get("nodes"), dict) else []
    names = names or list(NODE_KINDS)
    spec = load_config(LaunchFile, path, translate_overrides(overrides, names))
    for name, entry in spec.nodes.items():
        kind = entry.node or name
        if kind not in NODE_KINDS:
            raise ConfigError(f"{path}: nodes.{name}: no node kind {kind!r}; set node: one of {', '.join(NODE_KINDS)}")
        for edge in entry.endpoints:
            if edge not in NODE_EDGES[kind]["in"] + NODE_EDGES[kind]["out"]:
                edges = ", ".join(NODE_EDGES[kind]["in"] + NODE_EDGES[kind]["out"])
                raise ConfigError(f"{path}: nodes.{name}.endpoints.{edge}: node {kind!r} has no such edge ({edges})")
    for edge in spec.edges:
        if edge not in {e for k in NODE_KINDS for d in ("in", "out") for e in NODE_EDGES[k][d]}:
            raise ConfigError(f"{path}: edges.{edge}: unknown edge")
    return spec, path


def _substitute(value: Any, variables: Mapping[str, str], where: str) -> Any:
    if isinstance(value, str):

        def repl(match: re.Match[str]) -> str:
            if match.group(1) not in variables:
                raise ConfigError(f"{where}: ${{{match.group(1)}}} is not defined in vars ({', '.join(variables)})")
            return str(variables[match.group(1)])

        return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", repl, value)
    if isinstance(value, Mapping):
        return {k: _substitute(v, variables, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_substitute(v, variables, where) for v in value]
    return value


def resolve(spec: LaunchFile, source: Path, out: Path, run_id: str) -> list[ResolvedNode]:
    """Every node's config: params, endpoints (edge defaults <- launch `edges` <- node `endpoints`), out, run id."""
    _check_capture_params(spec, source)  # before the run directory exists: a bad param leaves nothing behind
    run_dir = default_run_dir(run_id) if spec.transport == "ipc" else None
    producers = {  # edge -> the launch file's nodes that send on it: the only names that may end it downstream
        edge: [n for n, e in spec.nodes.items() if edge in NODE_EDGES[e.node or n]["out"]]
        for edge in {e for kind in NODE_KINDS for e in NODE_EDGES[kind]["in"]}
    }
    resolved = []
    for name, entry in spec.nodes.items():
        kind = entry.node or name
        where = f"{source}: nodes.{name}"
        endpoints = []
        for direction in ("in", "out"):
            for edge in NODE_EDGES[kind][direction]:
                fields = {**spec.edges.get(edge, {}), **entry.endpoints.get(edge, {})}
                fields = _substitute(fields, spec.vars, f"{where}.endpoints.{edge}")
                fields.setdefault("transport", spec.transport)
                if spec.allow_insecure_remote:
                    fields.setdefault("allow_insecure_remote", True)
                if direction == "in" and producers[edge]:
                    fields.setdefault("upstream_nodes", producers[edge])
                if run_dir is not None:
                    fields.setdefault("run_dir", str(run_dir))
                try:
                    ep = make_endpoint(edge, direction, **fields)  # validates kind, hwm, address, remote binds
                except ConfigError as exc:
                    raise ConfigError(f"{where}.endpoints.{edge}: {exc}") from None
                endpoints.append({k: v for k, v in to_dict(ep).items() if v is not None})
        config = {
            "name": name,
            "node": kind,
            "run_id": run_id,
            "out": str(out),
            "source": str(source),
            "key": f"nodes.{name}.params",
            "params": _substitute(entry.params, spec.vars, f"{where}.params"),
            "endpoints": endpoints,
        }
        resolved.append(ResolvedNode(name, entry, kind, config))
    _size_keyframes_for_the_model(resolved)
    return resolved


def _check_capture_params(spec: LaunchFile, source: Path) -> None:
    """A capture node's params name a source kind and its options: check them here, so that `--set capture.bogus=1`
    or `capture.frames=abc` stops the run with one line before any process starts."""
    from spark3r_stream.sources.factory import check_source

    for name, entry in spec.nodes.items():
        if (entry.node or name) != "capture" or entry.remote:
            continue
        try:
            check_source(_substitute(entry.params, spec.vars, f"{source}: nodes.{name}.params"))
        except SourceError:
            continue  # a missing or unreadable input is the capture node's to report (other nodes then end cleanly)
        except ConfigError as exc:
            raise ConfigError(f"{source}: nodes.{name}.params: {exc}") from None


def _size_keyframes_for_the_model(nodes: list[ResolvedNode]) -> None:
    """Keyframes are sized for the reconstruction node's model (its preset knows the input size) unless the launch
    file gives `selector.model_hw` or `selector.model` itself."""
    model = next((n.config["params"].get("model") for n in nodes if n.kind == "reconstruction"), None)
    for node in nodes:
        if node.kind != "keyframes":
            continue
        params = node.config["params"]
        selector = params.get("selector") if isinstance(params.get("selector"), dict) else {}
        if selector.get("model_hw") is None and selector.get("model") is None:
            params["selector"] = {**selector, "model": model or DEFAULT_MODEL}


def run_node_overrides(name: str, overrides: Sequence[str]) -> list[str]:
    """`spark3r run-node NAME --set X=V`: a param of node NAME (`model=...` -> `NAME.model=...`), except keys that
    already name NAME or a top-level launch-file field (`vars.gpu_host=...`, `transport=tcp`), kept as given."""
    top_fields = {f.name for f in dataclasses.fields(LaunchFile)}
    return [o if o.split(".", 1)[0].split("=", 1)[0] in top_fields | {name} else f"{name}.{o}" for o in overrides]


def node_config_from(
    path: str | Path, name: str, overrides: Sequence[str] = (), out: str | Path | None = None, run_id: str | None = None
) -> dict[str, Any]:
    """One node's config for `spark3r run-node NAME --config FILE`: FILE is a launch file (the node is picked and
    resolved exactly as the launcher would) or a node config the launcher wrote (`<out>/launch/<name>.yaml`)."""
    path = Path(path)
    data = load_yaml(path) if path.is_file() else None  # one-line ConfigError for invalid YAML or a Python tag
    if isinstance(data, dict) and "nodes" not in data and "endpoints" in data:
        node_overrides = [o.split(".", 1)[1] if o.startswith(f"{name}.") else o for o in overrides]
        config = apply_overrides({"params": data.get("params", {})}, [f"params.{o}" for o in node_overrides])
        return {**data, "params": config["params"], **({"out": str(out)} if out else {})}
    spec, source = load_launch_file(path, overrides)
    if name not in spec.nodes:
        raise ConfigError(f"{source}: no node {name!r} (nodes: {', '.join(spec.nodes)})")
    target = Path(out) if out is not None else Path("runs") / name
    rid = run_id or os.environ.get("SPARK3R_RUN_ID") or f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    nodes = resolve(spec, source, target.resolve(), rid)
    return next(n.config for n in nodes if n.name == name)
