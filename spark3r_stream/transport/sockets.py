"""ZeroMQ sockets for one endpoint: the socket type and options of its delivery kind, CURVE, bind or connect.

Delivery kinds and what NodeLoop does with the sockets: node_loop.py.
"""

from __future__ import annotations

import zmq

from spark3r_stream.errors import ConfigError
from spark3r_stream.transport.endpoints import Endpoint, server_public_key

PEER_EVENTS = zmq.EVENT_CONNECTED | zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED  # what a lossless output watches


def open_socket(
    context: zmq.Context, ep: Endpoint, *, linger_ms: int, node: str
) -> tuple[zmq.Socket, zmq.Socket | None]:
    """The bound or connected socket of `ep` and, for a lossless output, its monitor socket (connection events, so
    that a normal close can wait for the receivers). ConfigError naming the node and address if it cannot."""
    if ep.kind == "fanout":
        sock_type = zmq.XPUB if ep.direction == "out" else zmq.SUB
    else:
        sock_type = zmq.PUSH if ep.direction == "out" else zmq.PULL
    sock = context.socket(sock_type)
    sock.setsockopt(zmq.LINGER, linger_ms)
    if ep.direction == "out":
        sock.setsockopt(zmq.SNDHWM, ep.hwm)
    else:
        sock.setsockopt(zmq.RCVHWM, ep.hwm)
    if sock_type == zmq.XPUB:
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription, so every late joiner triggers a snapshot
        sock.setsockopt(zmq.XPUB_NODROP, 1)  # full queue -> EAGAIN: the drop is counted here, not silent
    if sock_type == zmq.SUB:
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    if ep.address.startswith("tcp://"):
        sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)  # ZMTP pings: a dead tcp peer is noticed within seconds
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
    if ep.curve is not None:
        apply_curve(sock, ep)
    # attached before bind/connect, so that no connection event is missed
    monitor = sock.get_monitor_socket(PEER_EVENTS) if ep.direction == "out" and ep.kind == "lossless" else None
    try:
        if ep.bind:
            sock.bind(ep.address)
        else:
            sock.connect(ep.address)
    except zmq.ZMQError as exc:
        if monitor is not None:
            sock.disable_monitor()
            monitor.close(linger=0)
        sock.close(linger=0)
        verb = "bind" if ep.bind else "connect"
        raise ConfigError(f"node {node!r} cannot {verb} {ep.address} (edge {ep.edge!r}): {exc}") from None
    return sock, monitor


def apply_curve(sock: zmq.Socket, ep: Endpoint) -> None:
    """CURVE keys on `sock`: the server side binds with its key pair; a client also needs the server's public key."""
    from spark3r_stream.transport.endpoints import load_curve_keys

    assert ep.curve is not None
    public, secret = load_curve_keys(ep.curve.secret_key_file)
    if secret is None:
        raise ConfigError(f"endpoint {ep.edge!r}: {ep.curve.secret_key_file} holds no secret key")
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    if ep.bind:
        sock.curve_server = True
    else:
        if not ep.curve.server_public_key:
            raise ConfigError(f"endpoint {ep.edge!r}: connecting with CURVE needs curve.server_public_key")
        sock.curve_serverkey = server_public_key(ep.curve.server_public_key)
