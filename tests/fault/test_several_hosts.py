"""Several hosts, for real: launch/remote_reconstruction.yaml across network namespaces made here (`ip netns`), CURVE
on. `here` runs the launcher (capture, keyframes, fusion), `gpu` runs `spark3r run-node reconstruction`, linked by a
veth pair; `stranger`, linked to `here` (which routes on to `gpu`), holds a key pair nobody allowed and tries both
servers. The run must complete with nothing lost, and the stranger get nothing in.

Needs root and `ip netns` (CI runs as root): without them this test fails, it never skips.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from spark3r_stream.transport.endpoints import generate_curve_keys
from tests.integration.conftest import REPO

pytestmark = [pytest.mark.fault, pytest.mark.integration]

DEADLINE_S = 180  # the whole run (40 frames, node start-up with torch imports) on 2 shared cores
FRAMES = 40
HERE_GPU = ("10.231.1.1", "10.231.1.2")  # veth pair here <-> gpu (test-only addresses inside the namespaces)
HERE_STRANGER = ("10.231.2.1", "10.231.2.2")  # veth pair here <-> stranger


def ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        pytest.fail(
            f"`ip {' '.join(args)}` failed ({result.returncode}): {result.stderr.strip()}; this test needs root "
            "and iproute2 network namespaces (ip netns)"
        )


@pytest.fixture
def hosts():
    """Three namespaces {role: name}: here <-> gpu and here <-> stranger veth pairs, `here` forwarding between them."""
    if shutil.which("ip") is None:
        pytest.fail("the several-hosts test needs iproute2 (`ip`) and root for `ip netns add`; it never skips")
    tag = uuid.uuid4().hex[:6]
    names = {role: f"s3r-{role}-{tag}" for role in ("here", "gpu", "stranger")}
    made = []
    try:
        for name in names.values():
            ip("netns", "add", name)
            made.append(name)
            ip("-n", name, "link", "set", "lo", "up")
        for peer, (here_addr, peer_addr), subnet in (
            ("gpu", HERE_GPU, "10.231.2.0/24"),
            ("stranger", HERE_STRANGER, "10.231.1.0/24"),
        ):
            link = f"to-{peer[:3]}"
            ip("-n", names["here"], "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", names[peer])
            ip("-n", names["here"], "addr", "add", f"{here_addr}/24", "dev", link)
            ip("-n", names["here"], "link", "set", link, "up")
            ip("-n", names[peer], "addr", "add", f"{peer_addr}/24", "dev", "eth0")
            ip("-n", names[peer], "link", "set", "eth0", "up")
            ip("-n", names[peer], "route", "add", subnet, "via", here_addr)  # the other link, through `here`
        forward = "open('/proc/sys/net/ipv4/ip_forward', 'w').write('1')"  # per namespace; no sysctl binary needed
        ip("netns", "exec", names["here"], sys.executable, "-c", forward)
        yield names
    finally:
        for name in made:  # processes left in a namespace (a launcher's node after a failure) end with it
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, timeout=30).stdout
            for pid in pids.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def in_namespace(name: str, *command: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        ["ip", "netns", "exec", name, *command], cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )


def finish(proc: subprocess.Popen, log: Path, what: str) -> int:
    try:
        return proc.wait(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
        raise AssertionError(f"{what} still running after {DEADLINE_S} s:\n{log.read_text()[-3000:]}") from None


def test_remote_launch_file_across_namespaces_with_curve(hosts, tmp_path):
    keys, stranger_keys = tmp_path / "keys", tmp_path / "stranger"
    for name in ("here", "gpu"):
        generate_curve_keys(keys, name)
    _, stranger_secret = generate_curve_keys(stranger_keys, "stranger")
    here_out, gpu_out = tmp_path / "here", tmp_path / "gpu"
    common = [f"vars.here_host={HERE_GPU[0]}", f"vars.gpu_host={HERE_GPU[1]}", f"vars.keys={keys}"]
    sets = [arg for s in common for arg in ("--set", s)]
    cli = [sys.executable, "-m", "spark3r_stream.cli"]
    logs = {role: tmp_path / f"{role}.log" for role in ("gpu", "here", "stranger_fusion", "stranger_reconstruction")}
    procs = []
    try:
        gpu = in_namespace(
            hosts["gpu"],
            *cli,
            "run-node",
            "reconstruction",
            "--config",
            "launch/remote_reconstruction.yaml",
            *sets,
            "--set",
            "random_weights=true",
            "--out",
            str(gpu_out),
            log=logs["gpu"],
        )
        procs.append(gpu)
        here = in_namespace(
            hosts["here"],
            *cli,
            "launch",
            "launch/remote_reconstruction.yaml",
            *sets,
            "--set",
            f"capture.frames={FRAMES}",
            "--set",
            "capture.rate=0",
            "--out",
            str(here_out),
            log=logs["here"],
        )
        procs.append(here)
        intruder = [sys.executable, "tests/fault/curve_intruder.py"]
        strangers = {
            target: in_namespace(
                hosts["stranger"],
                *intruder,
                address,
                str(keys / f"{server}.key"),
                str(stranger_secret),
                log=logs[f"stranger_{target}"],
            )
            for target, address, server in (
                ("fusion", f"tcp://{HERE_STRANGER[0]}:5552", "here"),
                ("reconstruction", f"tcp://{HERE_GPU[1]}:5551", "gpu"),  # routed through `here`
            )
        }
        procs += strangers.values()
        here_code = finish(here, logs["here"], "the launcher")
        gpu_code = finish(gpu, logs["gpu"], "run-node reconstruction")
        attempts = {}
        for target, proc in strangers.items():
            assert finish(proc, logs[f"stranger_{target}"], "the intruder") == 0, logs[f"stranger_{target}"].read_text()
            attempts[target] = json.loads(logs[f"stranger_{target}"].read_text().strip().splitlines()[-1])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)

    assert here_code == 0 and gpu_code == 0, logs["here"].read_text()[-3000:] + logs["gpu"].read_text()[-3000:]
    # The stranger reached both servers over the network (CONNECTED) and was refused every time.
    for target, by_mode in attempts.items():
        for mode, events in by_mode.items():
            assert events.get("CONNECTED", 0) >= 1, f"{target} {mode}: never reached the server: {events}"
            assert "HANDSHAKE_SUCCEEDED" not in events, f"{target} {mode}: handshake accepted: {events}"
    report = json.loads((here_out / "report.json").read_text())
    reconstruction = json.loads((gpu_out / "nodes" / "reconstruction.json").read_text())
    fusion_counters = report["transport"]["counters"]
    recon_counters = reconstruction["transport"]["counters"]
    # Only the stranger's own key pair reaches the ZAP allow-list (the others fail earlier in the handshake).
    assert fusion_counters.get("rejected.results", 0) >= 1, fusion_counters
    assert recon_counters.get("rejected.keyframes", 0) >= 1, recon_counters
    for counters in (fusion_counters, recon_counters):  # nothing of the stranger's was decoded or dropped
        assert not {k: v for k, v in counters.items() if k.startswith(("dropped.", "from_unknown.", "lost.")) and v}
    accounting = report["pipeline"]["accounting"]
    assert report["status"] == "ok" and accounting["frames_captured"] == FRAMES, report["pipeline"]
    assert accounting["all_frames_accounted"], accounting
    assert recon_counters["recv.keyframe"] == accounting["keyframes_sent"] > 0
    assert recon_counters.get("lost.keyframes", 0) == 0
    assert fusion_counters["recv.window_result"] == recon_counters["sent.window_result"] > 0
    rows = [line for line in (here_out / "trajectory.tum").read_text().splitlines() if not line.startswith("#")]
    assert len(rows) == FRAMES  # every captured frame posed
