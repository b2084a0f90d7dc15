"""Launcher and node failures: bad launch files, a missing input, a camera that does not open, a killed node,
Ctrl-C. Each names the culprit, the other nodes shut down cleanly, and outputs already produced are kept."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from spark3r_stream.errors import ConfigError
from spark3r_stream.launch_files import load_launch_file
from tests.integration.conftest import RANDOM, LauncherProcess, read_report, spark3r

pytestmark = pytest.mark.fault


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nodes:\n  capture:\n    respwn: always\n", r"bad.yaml: nodes.capture.respwn: unknown key.*'respawn'"),
        ("nodes:\n  capture:\n    respawn: sometimes\n", r"nodes.capture.respawn: expected one of .*'on-failure'"),
        ("nodes:\n  capture:\n    max_restarts: -1\n", r"nodes.capture.max_restarts: expected int >= 0, got -1"),
        ("shutdown_timeout: 3\nnodes: {capture: {}}\n", r"shutdown_timeout: unknown key.*'shutdown_timeout_s'"),
        ("nodes:\n  camera: {}\n", r"nodes.camera: no node kind 'camera'"),
        (
            "nodes:\n  capture:\n    endpoints: {results: {}}\n",
            r"nodes.capture.endpoints.results: node 'capture' has no",
        ),
        ("nodes: [capture\n", r"invalid YAML \(line 2"),
    ],
)
def test_bad_launch_file_names_file_key_and_expectation(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=expected):
        load_launch_file(write(tmp_path, text))


def test_bad_override_is_reported_as_such(tmp_path):
    with pytest.raises(ConfigError, match=r"--set nodes.capture.respawn=maybe.*expected one of"):
        load_launch_file("demo", ["capture.respawn=maybe"])
    with pytest.raises(ConfigError, match=r"override 'nowhere.x=1': 'nowhere' is neither a node"):
        load_launch_file("demo", ["nowhere.x=1"])


def test_non_loopback_bind_must_be_explicit(tmp_path):
    from spark3r_stream.launcher import Launcher

    path = write(
        tmp_path, "transport: tcp\nnodes:\n  fusion:\n    endpoints: {results: {address: 'tcp://0.0.0.0:5552'}}\n"
    )
    spec, source = load_launch_file(path)
    with pytest.raises(ConfigError, match=r"nodes.fusion.endpoints.results: .*allow_remote_bind"):
        Launcher(spec, source, tmp_path / "out")


def test_a_double_ctrl_c_hurries_the_finish_even_before_it_began(tmp_path, monkeypatch):
    """Both SIGINTs can arrive before the launcher's loop has begun the finish: the second must still mean "stop
    the nodes now" (a flag the finish reads), not SIGKILL, which would lose fusion's outputs; only a third kills."""
    from spark3r_stream.launcher import Launcher

    launcher = Launcher(*load_launch_file("demo"), tmp_path / "out")
    killed = []
    monkeypatch.setattr(launcher, "_signal_all", lambda signum, children=None: killed.append(signum))
    launcher._on_signal(signal.SIGINT, None)
    assert launcher._pending_signal == "SIGINT" and not launcher._hurry
    launcher._on_signal(signal.SIGINT, None)
    assert launcher._hurry and not killed
    launcher._finish_over = True
    launcher._on_signal(signal.SIGINT, None)
    assert killed == [signal.SIGKILL]


def test_bad_node_param_stops_the_run_naming_file_and_key(tmp_path):
    out = tmp_path / "out"
    result = spark3r("launch", "demo", "--out", str(out), "--set", "keyframes.selector.parallax=0.1", "--set", RANDOM)
    assert result.returncode == 2
    assert re.search(
        r"launch/demo.yaml: nodes.keyframes.params.selector.parallax: unknown key.*'parallax_threshold'", result.stdout
    ), result.stdout[-3000:]
    assert "[keyframes] launcher: exited with code 2" in result.stdout


def test_missing_input_path_is_named_and_other_nodes_end_cleanly(tmp_path):
    out = tmp_path / "out"
    result = spark3r(
        "launch", "replay_tum", "--out", str(out), "--set", "capture.path=/no/such/sequence", "--set", RANDOM
    )
    assert result.returncode == 2
    assert "source /no/such/sequence: does not exist" in result.stdout
    nodes = read_report(out)["pipeline"]["nodes"]
    assert nodes["capture"]["exit_codes"] == [2]
    assert all(nodes[n]["exit_codes"] == [0] for n in ("keyframes", "reconstruction", "fusion")), nodes
    assert read_report(out)["status"] == "failed"


def test_camera_that_does_not_open_is_named(tmp_path):
    out = tmp_path / "out"
    result = spark3r("launch", "live_camera", "--out", str(out), "--set", "capture.path=57", "--set", RANDOM)
    assert result.returncode == 2
    assert "camera 57 did not open" in result.stdout
    assert read_report(out)["pipeline"]["nodes"]["capture"]["restarts"] == 0  # exit 2 (bad input) is not respawned


def test_killed_node_fails_the_run_and_fusion_keeps_its_outputs(tmp_path):
    out = tmp_path / "out"
    run = LauncherProcess("demo", "--out", str(out), "--set", "capture.frames=40", "--set", RANDOM)
    try:
        pid = int(re.search(r"pid (\d+)", run.wait_for("[reconstruction] launcher: started")).group(1))
        run.wait_for("global_map: window 0:")  # fusion has placed a window
        os.kill(pid, signal.SIGKILL)
        code = run.finish()
    finally:
        run.kill()
    assert code == 1, run.output[-3000:]
    assert f"[reconstruction] launcher: exited with code {-signal.SIGKILL}" in run.output
    report = read_report(out)
    assert report["pipeline"]["nodes"]["fusion"]["exit_codes"] == [0]
    assert report["windows"]["count"] >= 1
    assert (out / "trajectory.tum").is_file() and (out / "recording.rrd").is_file()


def test_killed_node_is_respawned(tmp_path):
    """Respawn restarts the node; what its dead queue held is gone (lossless needs a live receiver), so the run is
    then ended with Ctrl-C and every output is still written."""
    out = tmp_path / "out"
    run = LauncherProcess(
        "demo",
        "--out",
        str(out),
        "--set",
        "capture.frames=40",
        "--set",
        RANDOM,
        "--set",
        "reconstruction.respawn=on-failure",
        "--set",
        "reconstruction.restart_delay_s=0",
    )
    try:
        pid = int(re.search(r"pid (\d+)", run.wait_for("[reconstruction] launcher: started")).group(1))
        run.wait_for("reconstruction: window 0")
        os.kill(pid, signal.SIGKILL)
        run.wait_for("[reconstruction] launcher: respawn 1/3")
        run.wait_for("[reconstruction] launcher: started")
        run.proc.send_signal(signal.SIGINT)
        code = run.finish()
    finally:
        run.kill()
    assert code == 130, run.output[-3000:]
    nodes = read_report(out)["pipeline"]["nodes"]
    assert nodes["reconstruction"]["restarts"] == 1
    assert nodes["reconstruction"]["exit_codes"][0] == -signal.SIGKILL
    assert (out / "recording.rrd").is_file()


def test_second_sigint_stops_every_node_and_fusion_writes_its_outputs(tmp_path):
    """The first Ctrl-C stops capture and lets the rest finish (a backlog of ~10 window runs here); the second
    stops them now."""
    out = tmp_path / "out"
    run = LauncherProcess("demo", "--out", str(out), "--set", "capture.frames=150", "--set", RANDOM)
    try:
        run.wait_for("reconstruction: window 1")
        run.proc.send_signal(signal.SIGINT)
        run.wait_for("the other nodes finish what it sent")
        run.proc.send_signal(signal.SIGINT)
        code = run.finish()
    finally:
        run.kill()
    assert code == 130, run.output[-3000:]
    report = read_report(out)
    assert report["status"] == "interrupted"
    codes = {name: n["exit_codes"] for name, n in report["pipeline"]["nodes"].items()}
    assert all(c == [0] for c in codes.values()), codes
    for name in ("trajectory.tum", "trajectory_keyframes.tum", "map.ply", "recording.rrd", "groundtruth.tum"):
        assert (out / name).is_file(), name
    assert "keyframes never posed" in " ".join(report["pipeline"]["problems"])  # stopped before the backlog ran
