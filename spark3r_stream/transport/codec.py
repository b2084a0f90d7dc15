"""Encode/decode messages as `[topic, JSON header, *buffers]`, validating everything received. Never pickle.

Header (UTF-8 JSON, at most 64 KiB): `type`, `v`, `seq`, `t_sent`, `node`, `scalars` (every non-array field),
`arrays` (`[{name, dtype, shape}]`, one per buffer, in order). Buffers are the raw C-contiguous array memory.

Zero-copy rule: `encode` hands out the arrays themselves (no copy). Once a message is sent with `copy=False`,
libzmq reads that memory later from its I/O thread, so **never mutate an array after sending it** (allocate
a new one per message, or send with `track=True` and `tracker.wait()` before reuse). Decoded arrays are
read-only views on the received frames; copy before mutating.
"""

from __future__ import annotations

import json
import math
import time
import types
import typing
from collections.abc import Sequence
from typing import Any, Union

import numpy as np

from spark3r_stream.errors import DecodeError
from spark3r_stream.transport.messages import MESSAGE_TYPES, MessageType, message_type

MAX_HEADER_BYTES = 64 << 10
HEADER_KEYS = frozenset({"type", "v", "seq", "t_sent", "node", "scalars", "arrays"})

Buffer = bytes | memoryview | np.ndarray


def encode(msg: Any, seq: int, *, node: str = "", t_sent: float | None = None) -> list[Buffer]:
    """Message -> multipart frames `[topic, header, *arrays]`; arrays are the message's own memory (zero-copy).

    Raises ValueError/TypeError if the message does not fit its own schema (a sender bug, caught before sending).
    """
    mt = message_type(msg)
    scalars: dict[str, Any] = {}
    arrays_meta: list[dict[str, Any]] = []
    buffers: list[Buffer] = []
    for name, hint in mt.scalars.items():
        value = getattr(msg, name)
        problem = _scalar_problem(value, hint, name in mt.optional)
        if problem:
            raise TypeError(f"{mt.cls.__name__}.{name}: {problem}")
        scalars[name] = _to_json(value)
    for name, spec in mt.arrays.items():
        arr = getattr(msg, name)
        if arr is None:
            if name not in mt.optional:
                raise TypeError(f"{mt.cls.__name__}.{name} is required, got None")
            continue
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"{mt.cls.__name__}.{name}: expected numpy array, got {type(arr).__name__}")
        # Native byte order and C order, so the receiver can view the bytes directly (copies only if needed).
        if not (arr.flags.c_contiguous and arr.dtype.isnative):
            arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))
        problem = spec.problem(arr.dtype.name, arr.shape)
        if problem:
            raise ValueError(f"{mt.cls.__name__}.{name}: {problem[1]}")
        arrays_meta.append({"name": name, "dtype": arr.dtype.name, "shape": list(arr.shape)})
        buffers.append(arr)
    header = {
        "type": mt.topic,
        "v": mt.version,
        "seq": int(seq),
        "t_sent": time.time() if t_sent is None else float(t_sent),
        "node": node,
        "scalars": scalars,
        "arrays": arrays_meta,
    }
    header_bytes = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise ValueError(f"{mt.cls.__name__} header is {len(header_bytes)} bytes > {MAX_HEADER_BYTES}")
    return [mt.topic_bytes, header_bytes, *buffers]


def decode(frames: Sequence[Any]) -> tuple[Any, dict[str, Any]]:
    """Multipart frames (bytes, memoryview or zmq.Frame) -> (message, header); arrays are read-only views.

    Raises DecodeError(reason, detail) for anything malformed; `reason` is the drop-counter tag.
    """
    if len(frames) < 2:
        raise DecodeError("truncated", f"{len(frames)} frame(s), need at least topic and header")
    topic = _as_bytes(frames[0])
    header_view = _as_view(frames[1])
    if header_view.nbytes > MAX_HEADER_BYTES:
        raise DecodeError("header_too_large", f"header is {header_view.nbytes} bytes > {MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(header_view))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecodeError("bad_header", f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise DecodeError("bad_header", f"header is a JSON {type(header).__name__}, not an object")
    if set(header) != HEADER_KEYS:
        missing, extra = sorted(HEADER_KEYS - set(header)), sorted(set(header) - HEADER_KEYS)
        raise DecodeError("bad_header", f"header keys: missing {missing}, unexpected {extra}")
    type_name = header["type"]
    mt = MESSAGE_TYPES.get(type_name) if isinstance(type_name, str) else None
    if mt is None:
        raise DecodeError("unknown_type", f"type {type_name!r} is not one of {sorted(MESSAGE_TYPES)}")
    if topic != mt.topic_bytes:
        raise DecodeError("topic_mismatch", f"topic {topic[:40]!r} but header type {mt.topic!r}")
    if header["v"] != mt.version or isinstance(header["v"], bool):
        raise DecodeError(
            "version_mismatch", f"{mt.topic!r} message has version {header['v']!r}; this build reads v{mt.version}"
        )
    for key, kind in (("seq", int), ("t_sent", (int, float)), ("node", str), ("scalars", dict), ("arrays", list)):
        if not isinstance(header[key], kind) or isinstance(header[key], bool):
            raise DecodeError("bad_header", f"header {key} is {type(header[key]).__name__}")
    fields = _decode_scalars(mt, header["scalars"])
    fields.update(_decode_arrays(mt, header["arrays"], frames[2:]))
    try:
        msg = mt.cls(**fields)
    except (TypeError, ValueError) as exc:  # cross-field invariants (__post_init__)
        raise DecodeError("inconsistent", f"{mt.topic}: {exc}") from None
    return msg, header


def _decode_scalars(mt: MessageType, scalars: dict[str, Any]) -> dict[str, Any]:
    got, want = set(scalars), set(mt.scalars)
    if want - got - mt.optional:
        raise DecodeError("missing_field", f"{mt.topic}: missing {sorted(want - got - mt.optional)}")
    if got - want:
        raise DecodeError("extra_field", f"{mt.topic}: unexpected {sorted(got - want)}")
    fields = {}
    for name, value in scalars.items():
        hint = mt.scalars[name]
        problem = _scalar_problem(value, hint, name in mt.optional, from_json=True)
        if problem:
            raise DecodeError("bad_field", f"{mt.topic}.{name}: {problem}")
        if isinstance(value, list):
            value = tuple(value)
        elif hint is float and isinstance(value, int):
            value = float(value)
        fields[name] = value
    return fields


def _decode_arrays(mt: MessageType, metas: list[Any], buffers: Sequence[Any]) -> dict[str, np.ndarray]:
    if len(metas) != len(buffers):
        raise DecodeError("truncated", f"{mt.topic}: header lists {len(metas)} arrays, got {len(buffers)} buffers")
    arrays: dict[str, np.ndarray] = {}
    for meta, buf in zip(metas, buffers, strict=True):
        if not (isinstance(meta, dict) and set(meta) == {"name", "dtype", "shape"}):
            raise DecodeError("bad_header", f"{mt.topic}: array entry {str(meta)[:80]} is not {{name, dtype, shape}}")
        name, dtype, shape = meta["name"], meta["dtype"], meta["shape"]
        if name not in mt.arrays:
            raise DecodeError("extra_field", f"{mt.topic}: unexpected array {str(name)[:40]!r}")
        if name in arrays:
            raise DecodeError("bad_header", f"{mt.topic}: array {name!r} listed twice")
        if not (isinstance(shape, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in shape)):
            raise DecodeError("bad_shape", f"{mt.topic}.{name}: shape {str(shape)[:80]} is not a list of ints")
        spec = mt.arrays[name]
        problem = spec.problem(dtype, tuple(shape)) if isinstance(dtype, str) else ("bad_dtype", f"dtype {dtype!r}")
        if problem:
            raise DecodeError(problem[0], f"{mt.topic}.{name}: {problem[1]}")
        view = _as_view(buf)
        expected = math.prod(shape) * np.dtype(dtype).itemsize
        if view.nbytes != expected:
            raise DecodeError(
                "truncated", f"{mt.topic}.{name}: buffer has {view.nbytes} bytes, {dtype}{shape} needs {expected}"
            )
        arr = np.frombuffer(view, dtype=dtype).reshape(shape)
        arr.flags.writeable = False
        arrays[name] = arr
    missing = set(mt.arrays) - set(arrays) - mt.optional
    if missing:
        raise DecodeError("missing_field", f"{mt.topic}: missing arrays {sorted(missing)}")
    return arrays


def _scalar_problem(value: Any, hint: Any, optional: bool, *, from_json: bool = False) -> str | None:
    """Why `value` does not fit the scalar type `hint` (None if it fits). JSON lists stand for tuples."""
    if value is None:
        return None if optional else "is required, got null"
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        problems = [_scalar_problem(value, arg, False, from_json=from_json) for arg in typing.get_args(hint)]
        return None if any(p is None for p in problems) else f"expected {hint}, got {type(value).__name__}"
    if hint is bool:
        return None if isinstance(value, bool) else f"expected bool, got {type(value).__name__}"
    if hint is int:
        return None if _is_int(value) else f"expected int, got {type(value).__name__}"
    if hint is float:
        if _is_int(value) or isinstance(value, (float, np.floating)):
            return None if math.isfinite(value) else f"expected finite float, got {value}"
        return f"expected float, got {type(value).__name__}"
    if hint is str:
        return None if isinstance(value, str) else f"expected str, got {type(value).__name__}"
    if origin is tuple:
        if not isinstance(value, list if from_json else tuple):
            return f"expected a sequence of ints, got {type(value).__name__}"
        return None if all(_is_int(v) for v in value) else "expected only ints"
    if origin is dict:
        key_t, value_t = typing.get_args(hint)
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return f"expected an object with string keys, got {type(value).__name__}"
        if value_t is float:
            bad = [k for k, v in value.items() if _scalar_problem(v, float, False) is not None]
            return f"non-numeric values for {bad[:5]}" if bad else None
        return None  # dict[str, Any]: JSON-able by construction on receive; json.dumps checks on send
    raise AssertionError(f"unsupported scalar type hint {hint!r}")


def _to_json(value: Any) -> Any:
    """numpy scalars -> Python numbers, tuples -> lists (json.dumps rejects numpy types)."""
    if isinstance(value, (tuple, list)):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _as_view(frame: Any) -> memoryview:
    if isinstance(frame, memoryview):
        return frame.cast("B") if frame.format != "B" or frame.ndim != 1 else frame
    buf = getattr(frame, "buffer", None)  # zmq.Frame
    if buf is not None:
        return buf.cast("B") if buf.format != "B" or buf.ndim != 1 else buf
    if isinstance(frame, np.ndarray):
        return memoryview(np.ascontiguousarray(frame)).cast("B")
    return memoryview(frame)


def _as_bytes(frame: Any) -> bytes:
    return bytes(_as_view(frame))
