"""ZeroMQ sockets for one endpoint: the socket type and options of its delivery kind, CURVE, bind or connect.

CURVE (RFC 26 CurveZMQ, authenticated by ZAP, RFC 27): a bound CURVE socket is a server with its own key pair and a
ZAP domain of its own (`<node>/<edge>`); one ZAP handler per ZeroMQ context (pyzmq's ThreadAuthenticator, started
before the socket binds, so that no handshake ever runs without it) accepts a client only if its public key is in
that endpoint's allow-list (`curve.allowed_clients`). A stranger's key pair, a plain-text peer and a client that
expects another server key all fail the handshake: none of their messages reaches the socket. Refused handshakes are
counted (`rejected.<edge>`) and logged. Delivery kinds and what NodeLoop does with the sockets: node_loop.py.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any

import zmq

from spark3r_stream.errors import ConfigError
from spark3r_stream.transport.endpoints import Endpoint, load_allowed_keys, server_public_key

log = logging.getLogger(__name__)

PEER_EVENTS = zmq.EVENT_CONNECTED | zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED  # what a lossless output watches


def open_socket(
    context: zmq.Context, ep: Endpoint, *, linger_ms: int, node: str, counters: Counter[str] | None = None
) -> tuple[zmq.Socket, zmq.Socket | None]:
    """The bound or connected socket of `ep` and, for a lossless output, its monitor socket (connection events, so
    that a normal close can wait for the receivers). ConfigError naming the node and address if it cannot.
    A CURVE server socket holds a place in its context's ZAP handler until `release_authentication`; refused
    handshakes are counted in `counters` (`rejected.<edge>`)."""
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
        try:
            apply_curve(sock, ep, node=node, counters=counters)
        except BaseException:
            sock.close(linger=0)
            raise
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
        release_authentication(context, [sock])
        sock.close(linger=0)
        verb = "bind" if ep.bind else "connect"
        raise ConfigError(f"node {node!r} cannot {verb} {ep.address} (edge {ep.edge!r}): {exc}") from None
    return sock, monitor


def apply_curve(sock: zmq.Socket, ep: Endpoint, *, node: str = "node", counters: Counter[str] | None = None) -> None:
    """CURVE keys on `sock`: the server side binds with its key pair and admits only the public keys of
    `curve.allowed_clients` (ZAP); a client also needs the server's public key."""
    from spark3r_stream.transport.endpoints import load_curve_keys

    assert ep.curve is not None
    where = f"node {node!r} endpoint {ep.edge!r} ({ep.direction})"
    try:
        public, secret = load_curve_keys(ep.curve.secret_key_file)
        if secret is None:
            raise ConfigError(f"{ep.curve.secret_key_file} holds no secret key (use <name>.key_secret)")
        allowed = load_allowed_keys(ep.curve.allowed_clients) if ep.bind and ep.curve.allowed_clients else None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    if ep.bind:
        assert allowed is not None  # Endpoint refuses a CURVE bind without allowed_clients
        domain = _register_allow_list(sock.context, sock, _AllowList(f"{node}/{ep.edge}", ep.edge, allowed, counters))
        sock.zap_domain = domain.encode()
        # fail closed: without an answering ZAP handler (e.g. while the node shuts down) libzmq would otherwise
        # complete a CURVE handshake unauthenticated (libzmq >= 4.3; the handler above is the primary check)
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        sock.curve_server = True
    else:
        if not ep.curve.server_public_key:
            raise ConfigError(f"endpoint {ep.edge!r}: connecting with CURVE needs curve.server_public_key")
        sock.curve_serverkey = server_public_key(ep.curve.server_public_key)


class _AllowList:
    """ZAP credentials provider of one CURVE server socket: its allowed client keys; counts and logs refusals."""

    def __init__(self, domain: str, edge: str, keys: frozenset[bytes], counters: Counter[str] | None) -> None:
        self.domain = domain
        self.edge = edge
        self.keys = keys
        self.counters = counters if counters is not None else Counter()
        self._logged: set[bytes] = set()

    def callback(self, domain: str, client_key: bytes) -> bool:  # runs in the ZAP thread
        if client_key in self.keys:
            return True
        self.counters[f"rejected.{self.edge}"] += 1  # from the ZAP thread: a count, read only for reports
        if client_key not in self._logged and len(self._logged) < 100:  # once per key; bounded against floods
            self._logged.add(client_key)
            log.warning("%s: refused a CURVE client whose key is not allowed (%s)", domain, client_key.decode())
        return False


class _Zap:
    """The ZAP handler of one context and the allow-lists (one per CURVE server socket) it answers for."""

    def __init__(self, context: zmq.Context) -> None:
        from zmq.auth.thread import ThreadAuthenticator

        self.context = context
        self.authenticator = ThreadAuthenticator(context, log=logging.getLogger("zmq.auth"))
        self.authenticator.start()  # binds inproc://zeromq.zap.01 before returning
        self.sockets: dict[zmq.Socket, str] = {}


_ZAP: dict[int, _Zap] = {}  # id(context) -> its handler (at most one per context: one inproc ZAP endpoint)
_ZAP_LOCK = threading.Lock()


def _register_allow_list(context: zmq.Context, sock: zmq.Socket, allow: _AllowList) -> str:
    """Serve `allow` for `sock` from the context's ZAP handler (started here if needed); return its ZAP domain."""
    with _ZAP_LOCK:
        zap = _ZAP.get(id(context))
        if zap is None or zap.context is not context:
            try:
                zap = _ZAP[id(context)] = _Zap(context)
            except zmq.ZMQError as exc:  # another ZAP handler already serves this context
                raise ConfigError(f"ZAP domain {allow.domain}: cannot start the CURVE authenticator: {exc}") from None
        taken = zap.authenticator.credentials_providers
        domain = next(d for n in range(len(taken) + 1) if (d := allow.domain + (f"#{n}" if n else "")) not in taken)
        zap.authenticator.configure_curve_callback(domain=domain, credentials_provider=allow)
        zap.sockets[sock] = domain
        return domain


def release_authentication(context: zmq.Context | None, sockets: Any) -> None:
    """Forget the allow-lists of `sockets`; stop the context's ZAP handler when no CURVE server socket is left.
    Call before the context is destroyed (its socket would be closed under the handler's thread). A handshake
    after this point is refused (ZAP_ENFORCE_DOMAIN, set on every CURVE server socket)."""
    if context is None:
        return
    with _ZAP_LOCK:
        zap = _ZAP.get(id(context))
        if zap is None or zap.context is not context:
            return
        for sock in list(sockets):
            domain = zap.sockets.pop(sock, None)
            if domain is not None:
                zap.authenticator.credentials_providers.pop(domain, None)
        if not zap.sockets:
            zap.authenticator.stop()
            del _ZAP[id(context)]
