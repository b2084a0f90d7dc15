"""Logical edges of the pipeline (frames, keyframes, results, map) -> ZeroMQ addresses, delivery kinds, CURVE keys.

Defaults are local only: `ipc://` in a short directory under /tmp, or `tcp://127.0.0.1:<port>`. Binding any other
address (`tcp://*:5551`, `tcp://0.0.0.0:…`, a LAN address) needs `allow_remote_bind=True`, written in the launch
file. A tcp endpoint that reaches beyond this machine (bind or connect) carries CURVE keys: encryption, the server
authenticated by its public key, and every client by a ZAP allow-list of public keys (`curve.allowed_clients`,
sockets.py); plain text there needs an explicit `allow_insecure_remote=True` and is logged as INSECURE.

Who binds: the receiver of a lossless or latest edge (one consumer, any number of producers, fan-in), the
sender of a fanout edge (one publisher, any number of subscribers). Either side may start first.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from spark3r_stream.errors import ConfigError

log = logging.getLogger(__name__)

Kind = Literal["lossless", "latest", "fanout"]
Direction = Literal["in", "out"]
KINDS: tuple[str, ...] = ("lossless", "latest", "fanout")
IPC_MAX_PATH = 107  # AF_UNIX sun_path limit (108 bytes including the NUL)
LATEST_HWM = 2  # latest-wins edges: at most this many frames wait at the sender (a live camera never blocks)
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True)
class EdgeDefaults:
    """What a logical edge carries and how, unless the launch file says otherwise."""

    kind: str
    topics: tuple[str, ...]
    hwm: int
    tcp_port: int


#: The pipeline's edges. `frames` is lossless for replay; a live camera's launch file sets kind: latest.
#: `frame_records` goes from keyframes straight to fusion (every frame's time, keyframe id and ground truth, no
#: image, ~0.5 kB each), so fusion gets them wherever it runs and the reconstruction host never sees them.
EDGES: dict[str, EdgeDefaults] = {
    "frames": EdgeDefaults(kind="lossless", topics=("frame",), hwm=8, tcp_port=5550),
    "keyframes": EdgeDefaults(kind="lossless", topics=("keyframe", "window_request"), hwm=32, tcp_port=5551),
    "results": EdgeDefaults(kind="lossless", topics=("window_result",), hwm=4, tcp_port=5552),
    "map": EdgeDefaults(kind="fanout", topics=("map_update",), hwm=64, tcp_port=5553),
    "frame_records": EdgeDefaults(kind="lossless", topics=("frame_record",), hwm=1000, tcp_port=5554),
}

#: Which node reads and writes which edge (capture -> keyframes -> reconstruction -> fusion -> viewers).
NODE_EDGES: dict[str, dict[str, tuple[str, ...]]] = {
    "capture": {"in": (), "out": ("frames",)},
    "keyframes": {"in": ("frames",), "out": ("keyframes", "frame_records")},
    "reconstruction": {"in": ("keyframes",), "out": ("results",)},
    "fusion": {"in": ("results", "frame_records"), "out": ("map",)},
}


@dataclass(frozen=True, kw_only=True)
class CurveConfig:
    """CURVE security for one edge. The binding side is the CURVE server.

    `secret_key_file`: this node's certificate `<name>.key_secret` (`spark3r keys generate DIR --name NAME`); it
    must not be readable by other users (mode 0600).
    `server_public_key`: connecting side only: the binder's public key, z85 text or a path to its `.key` file.
    `allowed_clients`: binding side only, required there: a directory of the public keys (`*.key`) allowed to
    connect; a ZAP handler refuses every other key pair (and every plain-text peer) in the handshake.
    """

    secret_key_file: str
    server_public_key: str | None = None
    allowed_clients: str | None = None


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """One socket of a node: the edge it serves, direction, address, delivery kind, bind or connect."""

    edge: str
    direction: Direction
    address: str
    kind: Kind
    topics: tuple[str, ...]
    hwm: int
    bind: bool
    upstreams: int = 1  # "in" only: end-of-stream messages to wait for (one per producer)
    # "in" only: the node names allowed to end this input and keep its sequence accounting (a launch file fills
    # in its producers); None accepts any name (library use). Data from other names is dropped too.
    upstream_nodes: tuple[str, ...] | None = None
    allow_remote_bind: bool = False
    allow_insecure_remote: bool = False  # a tcp endpoint beyond loopback without CURVE: plain text, anyone gets in
    curve: CurveConfig | None = None

    def __post_init__(self) -> None:
        where = f"endpoint {self.edge!r} ({self.direction})"
        if self.direction not in ("in", "out"):
            raise ConfigError(f"{where}: direction must be 'in' or 'out', got {self.direction!r}")
        if self.kind not in KINDS:
            raise ConfigError(f"{where}: kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.hwm < 1:
            raise ConfigError(f"{where}: hwm must be >= 1, got {self.hwm}")
        if self.upstreams < 1:
            raise ConfigError(f"{where}: upstreams must be >= 1, got {self.upstreams}")
        check_address(self.address, bind=self.bind, allow_remote_bind=self.allow_remote_bind, where=where)
        if self.curve is not None:
            if self.bind and not self.curve.allowed_clients:
                raise ConfigError(
                    f"{where}: CURVE on a bound socket needs curve.allowed_clients, a directory of the public keys "
                    "allowed in (without it any key pair gets in); `spark3r keys generate DIR` makes key pairs"
                )
            if not self.bind and self.curve.allowed_clients:
                raise ConfigError(
                    f"{where}: curve.allowed_clients is for the binding side (the CURVE server); this endpoint "
                    "connects: give it curve.server_public_key"
                )
            if self.bind and is_remote_tcp(self.address):
                log.info("%s binds %s beyond loopback (CURVE, clients from an allow-list)", where, self.address)
        elif is_remote_tcp(self.address):
            if not self.allow_insecure_remote:
                raise ConfigError(
                    f"{where}: {self.address} reaches beyond this machine without CURVE: anyone on the network "
                    "could read or inject messages; give the edge curve keys (`spark3r keys generate DIR`, then "
                    "curve: {secret_key_file: ..., allowed_clients: DIR} where it binds and {secret_key_file: ..., "
                    "server_public_key: ...} where it connects) or, on a trusted network only, set "
                    "allow_insecure_remote: true"
                )
            log.warning(
                "INSECURE: %s uses %s in plain text without authentication (allow_insecure_remote): anyone who "
                "can reach it can read or inject messages",
                where,
                self.address,
            )


def check_address(address: str, *, bind: bool, allow_remote_bind: bool = False, where: str = "endpoint") -> None:
    """Raise ConfigError for a malformed address, a too-long ipc path, or a non-loopback bind without the flag."""
    scheme, sep, rest = address.partition("://")
    if not sep or scheme not in ("ipc", "tcp", "inproc"):
        raise ConfigError(f"{where}: address {address!r} must start with ipc://, tcp:// or inproc://")
    if scheme == "ipc":
        if len(rest.encode()) > IPC_MAX_PATH:
            raise ConfigError(
                f"{where}: ipc path {rest!r} is {len(rest.encode())} bytes > {IPC_MAX_PATH} (AF_UNIX limit); "
                "use a short directory such as /tmp/s3r-<run>"
            )
        return
    if scheme != "tcp":
        return
    match = re.fullmatch(r"(\[[^\]]+\]|[^:]+):(\d+|\*)", rest)
    if not match:
        raise ConfigError(f"{where}: tcp address {address!r} must be tcp://HOST:PORT")
    host = match.group(1).strip("[]")
    if bind and not allow_remote_bind and not is_loopback(host):
        raise ConfigError(
            f"{where}: binding {address!r} would listen beyond this machine; set allow_remote_bind: true "
            "in the launch file (and give the edge CURVE keys) if that is intended"
        )


def is_remote_tcp(address: str) -> bool:
    """Whether a (valid) tcp address binds or connects beyond loopback; ipc and inproc never do."""
    scheme, _, rest = address.partition("://")
    if scheme != "tcp":
        return False
    return not is_loopback(rest.rpartition(":")[0].strip("[]"))


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # '*', interface names, host names
        return False


def default_run_dir(run_id: str | None = None) -> Path:
    """A short directory for ipc sockets: /tmp/s3r-<run_id> (created, mode 0700); a fresh one if run_id is None."""
    base = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
    if run_id is None:
        return Path(tempfile.mkdtemp(prefix="s3r-", dir=base))
    path = Path(base) / f"s3r-{run_id}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def default_address(edge: str, *, transport: str = "ipc", run_dir: str | Path | None = None) -> str:
    """The default address of a logical edge: ipc://<run_dir>/<edge> or tcp://127.0.0.1:<port>."""
    defaults = _edge_defaults(edge)
    if transport == "tcp":
        return f"tcp://127.0.0.1:{defaults.tcp_port}"
    if transport != "ipc":
        raise ConfigError(f"edge {edge!r}: transport must be 'ipc' or 'tcp', got {transport!r}")
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir()
    return f"ipc://{run_dir}/{edge}"


def make_endpoint(edge: str, direction: Direction, **overrides: Any) -> Endpoint:
    """An Endpoint for `edge` with the defaults of EDGES; any field can be overridden (`address`, `kind`, ...).

    Extra keys: `transport` ('ipc'|'tcp') and `run_dir` choose the default address when `address` is not given.
    """
    defaults = _edge_defaults(edge)
    overrides = dict(overrides)
    transport = overrides.pop("transport", "ipc")
    run_dir = overrides.pop("run_dir", None)
    kind = overrides.get("kind", defaults.kind)
    curve = overrides.get("curve")
    if isinstance(curve, Mapping):
        overrides["curve"] = _from_mapping(CurveConfig, curve, f"endpoint {edge!r} curve")
    fields = {
        "edge": edge,
        "direction": direction,
        "kind": kind,
        "topics": defaults.topics,
        "hwm": LATEST_HWM if kind == "latest" else defaults.hwm,
        "bind": (direction == "out") if kind == "fanout" else (direction == "in"),
    }
    fields.update(overrides)
    if "address" not in fields:
        fields["address"] = default_address(edge, transport=transport, run_dir=run_dir)
    fields["topics"] = tuple(fields["topics"])
    if fields.get("upstream_nodes") is not None:
        fields["upstream_nodes"] = tuple(str(name) for name in fields["upstream_nodes"])
    return _from_mapping(Endpoint, fields, f"endpoint {edge!r}")


def node_endpoints(
    node: str, *, transport: str = "ipc", run_dir: str | Path | None = None, **per_edge: Mapping[str, Any]
) -> list[Endpoint]:
    """The default endpoints of one pipeline node (NODE_EDGES), with optional per-edge overrides."""
    if node not in NODE_EDGES:
        raise ConfigError(f"node {node!r} is not one of {sorted(NODE_EDGES)}")
    if transport == "ipc" and run_dir is None:
        raise ConfigError(f"node {node!r}: ipc endpoints need the run directory shared by all nodes (run_dir)")
    out = []
    for direction in ("in", "out"):
        for edge in NODE_EDGES[node][direction]:
            extra = dict(per_edge.get(edge, {}))
            extra.setdefault("transport", transport)
            extra.setdefault("run_dir", run_dir)
            out.append(make_endpoint(edge, direction, **extra))  # type: ignore[arg-type]
    return out


def parse_endpoints(spec: Any) -> list[Endpoint]:
    """Endpoints from a launch-file structure: a list of Endpoint/dicts, or {edge: {direction: ..., ...}}."""
    if isinstance(spec, Mapping):
        items = []
        for edge, value in spec.items():
            if isinstance(value, Endpoint):
                items.append(value)
            elif isinstance(value, Mapping):
                items.append({"edge": edge, **value})
            else:
                raise ConfigError(f"endpoint {edge!r}: expected a mapping, got {type(value).__name__}")
        spec = items
    out = []
    for item in spec:
        if isinstance(item, Endpoint):
            out.append(item)
        elif isinstance(item, Mapping):
            fields = dict(item)
            edge, direction = fields.pop("edge", None), fields.pop("direction", None)
            if edge is None or direction is None:
                raise ConfigError(f"endpoint {dict(item)}: needs 'edge' and 'direction'")
            out.append(make_endpoint(edge, direction, **fields))
        else:
            raise ConfigError(f"endpoint {item!r}: expected a mapping or Endpoint")
    seen = set()
    for ep in out:
        if (ep.edge, ep.direction) in seen:
            raise ConfigError(f"endpoint {ep.edge!r} ({ep.direction}) given twice")
        seen.add((ep.edge, ep.direction))
    return out


def generate_curve_keys(
    key_dir: str | Path, name: str, *, force: bool = False, check_only: bool = False
) -> tuple[Path, Path]:
    """Write a CURVE key pair: `<name>.key` (public, mode 0644) and `<name>.key_secret` (mode 0600 from its creation,
    never readable by others in between); return both paths. ConfigError if `key_dir` is a file, `name` is not a
    plain file name, or either file exists (unless `force`); `check_only`: those checks, nothing written."""
    import zmq

    key_dir = Path(key_dir)
    if key_dir.exists() and not key_dir.is_dir():
        raise ConfigError(f"keys directory {key_dir}: is a file; give a directory (it is created if missing)")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise ConfigError(f"key name {name!r}: expected letters, digits, '_', '.', '-' (a file name, no '/')")
    public_path, secret_path = key_dir / f"{name}.key", key_dir / f"{name}.key_secret"
    existing = [str(p) for p in (public_path, secret_path) if p.exists() or p.is_symlink()]
    if existing and not force:
        raise ConfigError(
            f"keys {' and '.join(existing)}: already exist; --force replaces them (peers that allow the old public "
            "key must then be given the new one)"
        )
    if check_only:
        return public_path, secret_path
    key_dir.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.curve_keypair()
    header = f"#   ZeroMQ CURVE {{}} certificate {name!r}, made by `spark3r keys generate`\nmetadata\ncurve\n"
    public_text = header.format("public") + f'    public-key = "{public.decode()}"\n'
    secret_text = (
        header.format("**secret**") + f'    public-key = "{public.decode()}"\n    secret-key = "{secret.decode()}"\n'
    )
    for path, text, mode in ((secret_path, secret_text, 0o600), (public_path, public_text, 0o644)):
        if path.exists() or path.is_symlink():
            path.unlink()  # --force: a fresh file, so O_EXCL below never follows a planted link
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(path, mode)  # the umask may have narrowed the public file's mode
    return public_path, secret_path


def load_curve_keys(path: str | Path) -> tuple[bytes, bytes | None]:
    """(public, secret) z85 keys from a certificate file; secret is None for a public-only `.key` file. A file that
    holds a secret key and is readable by group or others is refused (like ssh does)."""
    import zmq.auth

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"CURVE key file {path}: does not exist")
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError) as exc:
        raise ConfigError(f"CURVE key file {path}: {exc}") from None
    if len(public) != 40 or (secret is not None and len(secret) != 40):
        raise ConfigError(f"CURVE key file {path}: keys must be 40 characters of z85 text")
    mode = path.stat().st_mode & 0o777
    if secret is not None and mode & 0o077:
        raise ConfigError(
            f"CURVE key file {path}: holds a secret key but is readable by other users (mode {mode:04o}); "
            f"chmod 600 {path}"
        )
    return public, secret


def load_allowed_keys(directory: str | Path) -> frozenset[bytes]:
    """The z85 public keys of every `*.key` file in `directory` (a CURVE server's allow-list). ConfigError if it is
    not a directory, a file in it is not a key, or it allows nobody."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(
            f"CURVE allow-list {directory}: not a directory (curve.allowed_clients names a directory of the public "
            "keys, `*.key`, allowed to connect)"
        )
    keys = frozenset(load_curve_keys(path)[0] for path in sorted(directory.glob("*.key")))
    if not keys:
        raise ConfigError(
            f"CURVE allow-list {directory}: holds no public key (*.key), so it would let nobody in; copy the "
            "clients' <name>.key files there"
        )
    return keys


def check_curve_files(ep: Endpoint) -> None:
    """ConfigError now (before any process starts) if a CURVE key file or allow-list of `ep` is missing or bad."""
    if ep.curve is None:
        return
    where = f"endpoint {ep.edge!r} ({ep.direction})"
    try:
        if load_curve_keys(ep.curve.secret_key_file)[1] is None:
            raise ConfigError(f"{ep.curve.secret_key_file} holds no secret key (use <name>.key_secret)")
        if ep.curve.server_public_key:
            server_public_key(ep.curve.server_public_key)
        if ep.curve.allowed_clients:
            load_allowed_keys(ep.curve.allowed_clients)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}; `spark3r keys generate DIR --name NAME` makes key pairs") from None


def server_public_key(value: str) -> bytes:
    """The server's public key from z85 text (40 chars) or a certificate file path."""
    if len(value) == 40 and not os.path.exists(value):
        return value.encode()
    return load_curve_keys(value)[0]


def _edge_defaults(edge: str) -> EdgeDefaults:
    if edge not in EDGES:
        raise ConfigError(f"edge {edge!r} is not one of {sorted(EDGES)}")
    return EDGES[edge]


def _from_mapping(cls: type, data: Mapping[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        import difflib

        hints = {k: difflib.get_close_matches(k, names, n=1) for k in unknown}
        detail = ", ".join(f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in hints.items())
        raise ConfigError(f"{where}: unknown key(s) {detail}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
