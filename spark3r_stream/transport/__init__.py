"""Messages, codec and ZeroMQ sockets between the pipeline's processes (imports only numpy, zmq and the stdlib)."""

from spark3r_stream.transport.codec import decode, encode
from spark3r_stream.transport.endpoints import (
    EDGES,
    NODE_EDGES,
    CurveConfig,
    Endpoint,
    default_address,
    default_run_dir,
    generate_curve_keys,
    make_endpoint,
    node_endpoints,
    parse_endpoints,
)
from spark3r_stream.transport.messages import (
    MESSAGE_TYPES,
    ArraySpec,
    EndOfStream,
    Frame,
    FrameRecord,
    Heartbeat,
    Keyframe,
    MapUpdate,
    WindowRequest,
    WindowResult,
)
from spark3r_stream.transport.node_loop import NodeLoop

__all__ = [
    "EDGES",
    "MESSAGE_TYPES",
    "NODE_EDGES",
    "ArraySpec",
    "CurveConfig",
    "EndOfStream",
    "Endpoint",
    "Frame",
    "FrameRecord",
    "Heartbeat",
    "Keyframe",
    "MapUpdate",
    "NodeLoop",
    "WindowRequest",
    "WindowResult",
    "decode",
    "default_address",
    "default_run_dir",
    "encode",
    "generate_curve_keys",
    "make_endpoint",
    "node_endpoints",
    "parse_endpoints",
]
