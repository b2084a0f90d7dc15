"""Only trusted peers get in: CURVE with a ZAP allow-list on real ZeroMQ sockets (plain, stranger and wrong-server-key
clients refused in the handshake, the authorised one served), key files and their modes, `spark3r keys generate`,
and launch files that reach beyond loopback only with CURVE or an explicit, loudly logged opt-out."""

from __future__ import annotations

import logging
import re
import socket
from pathlib import Path

import numpy as np
import pytest
import yaml
import zmq

from spark3r_stream.cli import main as spark3r_main
from spark3r_stream.errors import ConfigError
from spark3r_stream.launch_files import LAUNCH_DIR, load_launch_file, node_config_from, resolve, run_node_overrides
from spark3r_stream.transport import Frame, NodeLoop, make_endpoint
from spark3r_stream.transport import sockets as transport_sockets
from spark3r_stream.transport.endpoints import generate_curve_keys, is_remote_tcp, load_allowed_keys, load_curve_keys
from tests.fault.curve_intruder import MODES, attempt

pytestmark = pytest.mark.fault

INTRUDER_DEADLINE_S = 20.0  # one refused handshake on loopback takes milliseconds; the bound only guards a hang
MAX_POLLS = 300  # 100 ms polls: 30 s to receive a message on loopback, far above what it takes


def free_tcp_address() -> str:
    with socket.socket() as probe:  # closed synchronously, unlike a zmq socket
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def frame(source_id: str) -> Frame:
    return Frame(frame_seq=0, t_capture=0.0, image=np.zeros((4, 4, 3), np.uint8), source_id=source_id)


@pytest.fixture
def keys(tmp_path) -> dict[str, Path]:
    """A server key pair, an allowed client (its public key alone in `allowed/`) and a stranger."""
    _, server_secret = generate_curve_keys(tmp_path, "server")
    _, client_secret = generate_curve_keys(tmp_path / "allowed", "client")
    _, stranger_secret = generate_curve_keys(tmp_path / "strangers", "stranger")
    return {
        "server_public": tmp_path / "server.key",
        "server_secret": server_secret,
        "allowed": tmp_path / "allowed",
        "client_secret": client_secret,
        "stranger_secret": stranger_secret,
    }


def test_plain_stranger_and_wrong_server_key_clients_get_nothing_in_the_authorised_one_does(keys):
    address = free_tcp_address()
    curve = {"secret_key_file": str(keys["server_secret"]), "allowed_clients": str(keys["allowed"])}
    server_ep = make_endpoint("frames", "in", address=address, curve=curve)
    got: list[Frame] = []
    with NodeLoop("server", [server_ep], handle_signals=False, linger_ms=0) as server:
        server.on(Frame, got.append)
        # Each intruder is its own context (as another process would be) and sends a heartbeat and a forged
        # end-of-stream from "keyframes"; `attempt` returns once the server refused its handshake.
        server_public, _ = load_curve_keys(keys["server_public"])
        stranger = load_curve_keys(keys["stranger_secret"])
        events = {mode: attempt(address, mode, server_public, stranger, INTRUDER_DEADLINE_S) for mode in MODES}
        for mode, seen in events.items():
            assert seen.get("CONNECTED") == 1 and "HANDSHAKE_SUCCEEDED" not in seen, (mode, seen)
        assert "HANDSHAKE_FAILED_AUTH" in events["stranger_key"]  # refused by the allow-list (ZAP 400)
        assert server.counters["rejected.frames"] == 1  # only the stranger's key reached the allow-list
        client_ep = make_endpoint(
            "frames",
            "out",
            address=address,
            curve={"secret_key_file": str(keys["client_secret"]), "server_public_key": str(keys["server_public"])},
        )
        with NodeLoop("keyframes", [client_ep], handle_signals=False, linger_ms=0) as client:
            client.send(frame("authorised"))
            client.end_stream()
            server.run(max_polls=MAX_POLLS)  # ends with the authorised client's end-of-stream, not the forged ones
            assert server.is_finished
    assert [f.source_id for f in got] == ["authorised"]
    assert server.counters["recv.frame"] == 1 and server.counters["recv.end_of_stream"] == 1
    assert not {k: v for k, v in server.counters.items() if k.startswith(("dropped.", "lost.", "from_unknown.")) and v}
    assert transport_sockets._ZAP == {}  # the ZAP handler stopped with the last CURVE server socket


def test_allow_list_follows_the_directory_and_an_empty_one_is_refused(keys, tmp_path):
    assert load_allowed_keys(keys["allowed"]) == {load_curve_keys(keys["allowed"] / "client.key")[0]}
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"CURVE allow-list .*empty: holds no public key \(\*\.key\), so it would"):
        load_allowed_keys(tmp_path / "empty")
    with pytest.raises(ConfigError, match=r"allow-list .*server.key: not a directory"):
        load_allowed_keys(keys["server_public"])
    address = free_tcp_address()
    curve = {"secret_key_file": str(keys["server_secret"]), "allowed_clients": str(tmp_path / "empty")}
    with pytest.raises(ConfigError, match=r"node 'fusion' endpoint 'frames' \(in\): CURVE allow-list"):
        with NodeLoop("fusion", [make_endpoint("frames", "in", address=address, curve=curve)], handle_signals=False):
            pass
    assert transport_sockets._ZAP == {}


def test_curve_endpoint_config_errors_name_what_to_do(keys):
    address = free_tcp_address()
    with pytest.raises(ConfigError, match=r"'frames' \(in\): CURVE on a bound socket needs curve.allowed_clients"):
        make_endpoint("frames", "in", address=address, curve={"secret_key_file": str(keys["server_secret"])})
    client = {"secret_key_file": str(keys["client_secret"]), "allowed_clients": str(keys["allowed"])}
    with pytest.raises(ConfigError, match=r"'frames' \(out\): curve.allowed_clients is for the binding side"):
        make_endpoint("frames", "out", address=address, curve=client)


def test_secret_key_readable_by_others_is_refused_and_generated_modes_are_tight(keys):
    assert keys["server_secret"].stat().st_mode & 0o777 == 0o600
    assert keys["server_public"].stat().st_mode & 0o777 == 0o644  # public: readable, never writable by others
    keys["server_secret"].chmod(0o644)
    with pytest.raises(ConfigError, match=r"server.key_secret: holds a secret key but is readable by other users "):
        load_curve_keys(keys["server_secret"])
    assert load_curve_keys(keys["server_public"])[1] is None  # a public key file may be world-readable


@pytest.mark.parametrize(
    "address", ["tcp://0.0.0.0:5552", "tcp://10.0.0.5:5552", "tcp://gpu-host:5552", "tcp://*:5552"]
)
def test_plain_text_beyond_loopback_needs_allow_insecure_remote_and_says_so_loudly(address, caplog):
    bind = "*" in address or "0.0.0.0" in address
    fields = {"address": address, "allow_remote_bind": True} if bind else {"address": address}
    direction = "in" if bind else "out"
    with pytest.raises(ConfigError, match=r"reaches beyond this machine without CURVE.*allow_insecure_remote: true"):
        make_endpoint("results", direction, **fields)
    with caplog.at_level(logging.WARNING, logger="spark3r_stream.transport.endpoints"):
        make_endpoint("results", direction, allow_insecure_remote=True, **fields)
    assert re.search(
        rf"INSECURE: endpoint 'results' \({direction}\) uses {re.escape(address)} in plain text", caplog.text
    )


def test_keys_generate_writes_pairs_and_refuses_files_and_existing_keys(tmp_path, capsys):
    target = tmp_path / "keys"
    assert spark3r_main(["keys", "generate", str(target), "--name", "here", "--name", "gpu"]) == 0
    assert sorted(p.name for p in target.iterdir()) == ["gpu.key", "gpu.key_secret", "here.key", "here.key_secret"]
    for name in ("here", "gpu"):
        assert (target / f"{name}.key_secret").stat().st_mode & 0o777 == 0o600
        assert (target / f"{name}.key").stat().st_mode & 0o777 == 0o644
        public, secret = load_curve_keys(target / f"{name}.key_secret")
        assert load_curve_keys(target / f"{name}.key") == (public, None) and secret is not None
        assert zmq.utils.z85.decode(public) != zmq.utils.z85.decode(secret)
    old = (target / "gpu.key").read_text()
    capsys.readouterr()
    assert spark3r_main(["keys", "generate", str(target), "--name", "new", "--name", "gpu"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"spark3r keys: keys .*gpu.key and .*gpu.key_secret: already exist; --force replaces them", err)
    assert not (target / "new.key").exists()  # every name checked before the first file is written
    assert spark3r_main(["keys", "generate", str(target), "--name", "gpu", "--force"]) == 0
    assert (target / "gpu.key").read_text() != old
    assert spark3r_main(["keys", "generate", str(target)]) == 0 and (target / "node.key_secret").is_file()
    (tmp_path / "file").write_text("x")
    capsys.readouterr()
    assert spark3r_main(["keys", "generate", str(tmp_path / "file")]) == 2
    assert re.search(r"keys directory .*file: is a file; give a directory", capsys.readouterr().err)
    assert spark3r_main(["keys", "generate", str(target), "--name", "../up"]) == 2


@pytest.mark.parametrize("path", sorted(LAUNCH_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_launch_file_reaches_other_hosts_only_with_curve(path, tmp_path):
    raw = yaml.safe_load(path.read_text())
    hosts = [k for k in raw.get("vars") or {} if k.endswith("_host")]
    overrides = [f"vars.{name}=10.0.0.{i + 5}" for i, name in enumerate(hosts)]  # every host var: another machine
    spec, source = load_launch_file(path, overrides)
    remote = [
        (node.name, ep)
        for node in resolve(spec, source, tmp_path, "t")
        for ep in node.config["endpoints"]
        if is_remote_tcp(ep["address"])
    ]
    for name, ep in remote:
        assert ep.get("curve") and not ep.get("allow_insecure_remote"), (name, ep)
    if path.name == "remote_reconstruction.yaml":  # the remote file really crosses hosts on both of its edges
        assert {(name, ep["edge"]) for name, ep in remote} == {
            ("keyframes", "keyframes"),
            ("reconstruction", "keyframes"),
            ("reconstruction", "results"),
            ("fusion", "results"),
        }


def test_remote_reconstruction_run_node_takes_vars_and_the_launcher_checks_keys_first(tmp_path, monkeypatch):
    config = node_config_from(
        "launch/remote_reconstruction.yaml",
        "reconstruction",
        run_node_overrides("reconstruction", ["vars.here_host=10.0.0.5", "vars.keys=/k", "device=cpu"]),
        out=tmp_path,
    )
    results = next(ep for ep in config["endpoints"] if ep["edge"] == "results")
    assert results["address"] == "tcp://10.0.0.5:5552" and results["curve"]["secret_key_file"] == "/k/gpu.key_secret"
    assert config["params"]["device"] == "cpu" and "vars" not in config["params"]

    from spark3r_stream.launcher import Launcher

    monkeypatch.chdir(tmp_path)  # the launch file's default key directory `keys` is relative: none here
    spec, source = load_launch_file(LAUNCH_DIR / "remote_reconstruction.yaml")
    with pytest.raises(
        ConfigError,
        match=r"nodes.keyframes: endpoint 'keyframes' \(out\): CURVE key file "
        r"keys/here.key_secret: does not exist; `spark3r keys generate",
    ):
        Launcher(spec, source, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before any process or file


def test_launch_file_level_opt_out_reaches_every_endpoint(tmp_path):
    text = (
        "transport: tcp\nvars: {gpu_host: 10.0.0.7}\nnodes:\n  keyframes:\n"
        "    endpoints: {keyframes: {address: 'tcp://${gpu_host}:5551'}}\n"
    )
    path = tmp_path / "plain.yaml"
    path.write_text(text)
    spec, source = load_launch_file(path)
    with pytest.raises(ConfigError, match=r"nodes.keyframes.endpoints.keyframes: .* without CURVE"):
        resolve(spec, source, tmp_path, "t")
    spec, source = load_launch_file(path, ["allow_insecure_remote=true"])
    (node,) = resolve(spec, source, tmp_path, "t")
    assert next(e for e in node.config["endpoints"] if e["edge"] == "keyframes")["allow_insecure_remote"] is True


def test_two_curve_servers_in_one_context_keep_their_own_allow_lists(keys, tmp_path):
    """One ZAP handler per context serves every CURVE server socket in it, each with its own allow-list (even under
    the same node and edge name); it stops with the last of them."""
    _, other_secret = generate_curve_keys(tmp_path / "other_allowed", "other")
    server_public, _ = load_curve_keys(keys["server_public"])
    client, other = load_curve_keys(keys["client_secret"]), load_curve_keys(other_secret)
    context = zmq.Context()
    opened = []
    try:
        for allowed in (keys["allowed"], tmp_path / "other_allowed"):
            curve = {"secret_key_file": str(keys["server_secret"]), "allowed_clients": str(allowed)}
            ep = make_endpoint("frames", "in", address=free_tcp_address(), curve=curve)
            sock, _ = transport_sockets.open_socket(context, ep, linger_ms=0, node="fusion")
            opened.append((ep.address, sock))
        (first, first_sock), (second, second_sock) = opened

        def handshake(address: str, keys_: tuple[bytes, bytes]) -> dict:
            return attempt(address, "stranger_key", server_public, keys_, INTRUDER_DEADLINE_S)

        assert "HANDSHAKE_SUCCEEDED" in handshake(first, client)
        assert "HANDSHAKE_FAILED_AUTH" in handshake(second, client)
        assert "HANDSHAKE_FAILED_AUTH" in handshake(first, other)
        transport_sockets.release_authentication(context, [first_sock])
        first_sock.close(linger=0)
        assert "HANDSHAKE_SUCCEEDED" in handshake(second, other)  # its allow-list outlives the first socket's
        assert "HANDSHAKE_FAILED_AUTH" in handshake(second, client)
        transport_sockets.release_authentication(context, [second_sock])
        assert transport_sockets._ZAP == {}
    finally:
        for _, sock in opened:
            transport_sockets.release_authentication(context, [sock])
            sock.close(linger=0)
        context.term()
