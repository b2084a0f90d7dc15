"""An untrusted client, run as its own process (in the several-hosts test, from its own network namespace): it tries
a CURVE server with no CURVE, with a key pair of its own and with a wrong server key, and sends a forged
end-of-stream each time. Prints one JSON line: per attempt, the connection events it saw (raw pyzmq, not the
project's socket factory: an attacker does not use it).

    python tests/fault/curve_intruder.py ADDRESS SERVER_PUBLIC_KEY_FILE INTRUDER_SECRET_KEY_FILE [--deadline-s S]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from spark3r_stream.transport import EndOfStream, Heartbeat, encode

FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_AUTH)
MODES = ("plain", "stranger_key", "wrong_server_key")


def attempt(address: str, mode: str, server_public: bytes, own: tuple[bytes, bytes], deadline_s: float) -> dict:
    """Connect in `mode`, send forged control messages, and watch until the connection was refused (or accepted)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.linger = 0
    if mode != "plain":
        sock.curve_publickey, sock.curve_secretkey = own
        sock.curve_serverkey = server_public if mode == "stranger_key" else own[0]
    monitor = sock.get_monitor_socket()
    sock.connect(address)
    for seq, msg in enumerate((Heartbeat(node="keyframes", counters={}), EndOfStream(node="keyframes", num_sent=0))):
        try:
            sock.send_multipart(encode(msg, seq, node="keyframes"), flags=zmq.NOBLOCK)
        except zmq.Again:  # no connection took it (the handshake never succeeded): nothing queued
            pass
    events: dict[str, int] = {}
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if not monitor.poll(100):
            continue
        event = recv_monitor_message(monitor)["event"]
        name = zmq.Event(event).name
        events[name] = events.get(name, 0) + 1
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            break
        if events.get("CONNECTED") and (event in FAILED or event == zmq.EVENT_DISCONNECTED):
            break  # reached the server over the network and was refused in the handshake
    sock.disable_monitor()
    monitor.close(linger=0)
    sock.close(linger=0)
    ctx.term()
    return events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("address")
    parser.add_argument("server_public_key_file")
    parser.add_argument("intruder_secret_key_file")
    parser.add_argument("--deadline-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    server_public, _ = zmq.auth.load_certificate(args.server_public_key_file)
    own = zmq.auth.load_certificate(args.intruder_secret_key_file)
    result = {mode: attempt(args.address, mode, server_public, own, args.deadline_s) for mode in MODES}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
