"""Endpoints: local defaults, explicit remote binds, ipc path limits, config errors, CURVE over tcp."""

from __future__ import annotations

import ast
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from spark3r_stream.errors import ConfigError
from spark3r_stream.transport import (
    EDGES,
    NODE_EDGES,
    CurveConfig,
    Frame,
    NodeLoop,
    generate_curve_keys,
    make_endpoint,
    node_endpoints,
    parse_endpoints,
)

TRANSPORT = pathlib.Path(__file__).resolve().parents[3] / "spark3r_stream" / "transport"


def test_defaults_are_local(ipc_dir):
    for edge, defaults in EDGES.items():
        assert make_endpoint(edge, "in", run_dir=ipc_dir).address == f"ipc://{ipc_dir}/{edge}"
        tcp = make_endpoint(edge, "out", transport="tcp")
        assert tcp.address == f"tcp://127.0.0.1:{defaults.tcp_port}"
        assert tcp.kind == defaults.kind and tcp.topics == defaults.topics


def test_receiver_binds_point_to_point_edges_and_publisher_binds_fanout(ipc_dir):
    assert make_endpoint("frames", "in", run_dir=ipc_dir).bind is True
    assert make_endpoint("frames", "out", run_dir=ipc_dir).bind is False
    assert make_endpoint("map", "out", run_dir=ipc_dir).bind is True
    assert make_endpoint("map", "in", run_dir=ipc_dir).bind is False


@pytest.mark.parametrize("address", ["tcp://*:5551", "tcp://0.0.0.0:5551", "tcp://192.168.1.20:5551", "tcp://eth0:1"])
def test_binding_beyond_loopback_needs_the_explicit_flag(address):
    with pytest.raises(ConfigError, match=r"endpoint 'keyframes' \(in\): binding .* set allow_remote_bind: true"):
        make_endpoint("keyframes", "in", address=address)
    with pytest.raises(ConfigError, match=r"reaches beyond this machine without CURVE.*allow_insecure_remote: true"):
        make_endpoint("keyframes", "in", address=address, allow_remote_bind=True)
    insecure = {"allow_insecure_remote": True}  # plain text beyond loopback: explicit (tests/fault/test_curve.py)
    assert make_endpoint("keyframes", "in", address=address, allow_remote_bind=True, **insecure).address == address
    assert make_endpoint("keyframes", "out", address=address.replace("*", "10.0.0.2"), **insecure).bind is False


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:5551", "tcp://localhost:5551", "tcp://[::1]:5551"])
def test_loopback_binds_need_no_flag(address):
    assert make_endpoint("keyframes", "in", address=address).bind


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"address": "udp://127.0.0.1:1"}, "must start with ipc://, tcp:// or inproc://"),
        ({"address": "ipc:///tmp/" + "x" * 120}, "ipc path .* bytes > 107"),
        ({"address": "tcp://127.0.0.1"}, "must be tcp://HOST:PORT"),
        ({"kind": "bestEffort"}, r"kind must be one of \['lossless', 'latest', 'fanout'\]"),
        ({"hwm": 0}, "hwm must be >= 1"),
        ({"hwn": 3}, "unknown key.*'hwn' \\(did you mean 'hwm'\\?\\)"),
    ],
)
def test_bad_endpoint_config_is_named(fields, match):
    with pytest.raises(ConfigError, match=match):
        make_endpoint("frames", "in", transport="tcp", **fields)


def test_unknown_edge_and_node():
    with pytest.raises(ConfigError, match="edge 'pose' is not one of"):
        make_endpoint("pose", "in")
    with pytest.raises(ConfigError, match="node 'viewer' is not one of"):
        node_endpoints("viewer", run_dir="/tmp/x")


def test_node_endpoints_cover_the_pipeline(ipc_dir):
    for node, edges in NODE_EDGES.items():
        eps = node_endpoints(node, run_dir=ipc_dir)
        assert [(e.edge, e.direction) for e in eps] == [(e, "in") for e in edges["in"]] + [
            (e, "out") for e in edges["out"]
        ]
    with pytest.raises(ConfigError, match="ipc endpoints need the run directory"):
        node_endpoints("fusion")
    over = node_endpoints("capture", run_dir=ipc_dir, frames={"kind": "latest"})
    assert over[0].kind == "latest"


def test_parse_endpoints_from_launch_file_mapping(ipc_dir):
    eps = parse_endpoints(
        {"frames": {"direction": "in", "run_dir": ipc_dir, "kind": "latest"}, "keyframes": {"direction": "out"}}
    )
    assert [(e.edge, e.kind) for e in eps] == [("frames", "latest"), ("keyframes", "lossless")]
    with pytest.raises(ConfigError, match=r"endpoint 'frames' \(in\) given twice"):
        parse_endpoints([{"edge": "frames", "direction": "in", "transport": "tcp"}] * 2)


def test_curve_encrypted_edge_over_tcp(ctx, tmp_path):
    server_pub, server_secret = generate_curve_keys(tmp_path, "server")
    _, client_secret = generate_curve_keys(tmp_path / "allowed", "client")
    _, stranger_secret = generate_curve_keys(tmp_path, "stranger")
    assert oct(server_secret.stat().st_mode & 0o777) == "0o600"
    with socket.socket() as probe:  # a free port (closed synchronously, unlike a zmq socket)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    allowed = str(tmp_path / "allowed")
    inp = make_endpoint(
        "frames", "in", address=address, curve={"secret_key_file": str(server_secret), "allowed_clients": allowed}
    )
    out = make_endpoint(
        "frames",
        "out",
        address=address,
        curve=CurveConfig(secret_key_file=str(client_secret), server_public_key=str(server_pub)),
    )
    got = []
    with NodeLoop("server", [inp], context=ctx, handle_signals=False) as server:
        server.on(Frame, got.append)
        with NodeLoop("client", [out], context=ctx, handle_signals=False) as client:
            client.send(Frame(frame_seq=0, t_capture=0.0, image=np.zeros((4, 4, 3), np.uint8), source_id="cam"))
            for _ in range(100):
                if got:
                    break
                server.poll_once(100)
        assert [f.frame_seq for f in got] == [0]
        # A client holding a wrong server key cannot talk to the server (the handshake fails).
        wrong = make_endpoint(
            "frames",
            "out",
            address=address,
            curve=CurveConfig(secret_key_file=str(stranger_secret), server_public_key=str(client_secret)),
        )
        with NodeLoop("intruder", [wrong], context=ctx, handle_signals=False, linger_ms=0) as intruder:
            intruder.send(Frame(frame_seq=1, t_capture=0.0, image=np.zeros((4, 4, 3), np.uint8), source_id="x"))
            for _ in range(5):
                server.poll_once(100)
        assert [f.frame_seq for f in got] == [0]


def test_curve_without_server_key_on_connect_is_a_config_error(ctx, tmp_path):
    _, secret = generate_curve_keys(tmp_path, "client")
    out = make_endpoint("frames", "out", transport="tcp", curve={"secret_key_file": str(secret)})
    with pytest.raises(ConfigError, match="needs curve.server_public_key"):
        with NodeLoop("client", [out], context=ctx, handle_signals=False):
            pass


def test_transport_imports_only_numpy_zmq_stdlib_and_errors():
    allowed_third_party = {"numpy", "zmq"}
    for path in TRANSPORT.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top == "spark3r_stream":
                    assert name.startswith(("spark3r_stream.transport", "spark3r_stream.errors")), (path.name, name)
                else:
                    assert top in allowed_third_party or top in sys.stdlib_module_names, (path.name, name)


def test_transport_and_sources_load_without_torch():
    code = (
        "import sys, spark3r_stream.transport, spark3r_stream.sources; "
        "bad = [m for m in ('torch', 'rerun') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
