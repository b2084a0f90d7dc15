"""Encode/decode messages as `[topic, JSON header, *buffers]`, validating everything received. Never pickle.

Header (UTF-8 JSON, at most 64 KiB): `type`, `v`, `seq`, `t_sent`, `node`, `scalars` (every non-array field),
`arrays` (`[{name, dtype, shape}]`, one per buffer, in order). Buffers are the raw C-contiguous array memory.

No input crashes `decode`: JSON nesting is bounded (MAX_JSON_DEPTH), numbers are bounded in digits before Python
converts them (MAX_NUMBER_CHARS; NaN/Infinity are refused), every int fits an int64, every field's type and range
(messages.ScalarSpec) is checked, and the arrays declared finite (a source's poses and intrinsics) hold no NaN/inf: an
optional one that does is cleared to None and named in `header["cleared"]`, a required one drops the message.

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
from spark3r_stream.transport.messages import (
    INT64_MAX,
    INT64_MIN,
    MAX_NAME_LEN,
    MESSAGE_TYPES,
    MessageType,
    ScalarSpec,
    message_type,
)

MAX_HEADER_BYTES = 64 << 10
HEADER_KEYS = frozenset({"type", "v", "seq", "t_sent", "node", "scalars", "arrays"})
# optional: the sender's incarnation (NodeLoop: start time in µs), so a receiver tells a restarted sender, whose seq
# starts again at 0, from a replay of messages it has already seen (issue 15, at-least-once delivery)
OPTIONAL_HEADER_KEYS = frozenset({"epoch"})
MAX_JSON_DEPTH = 16  # real headers nest 4 deep (header > scalars > plan > list); 30,000 `[` overflowed the parser
MAX_NUMBER_CHARS = 40  # an int64 has 20 characters, a float64 repr at most 24; "1" * 4301 made int() raise

Buffer = bytes | memoryview | np.ndarray


def encode(
    msg: Any, seq: int, *, node: str = "", t_sent: float | None = None, epoch: int | None = None
) -> list[Buffer]:
    """Message -> multipart frames `[topic, header, *arrays]`; arrays are the message's own memory (zero-copy).

    Raises ValueError/TypeError if the message does not fit its own schema (a sender bug, caught before sending).
    """
    mt = message_type(msg)
    scalars: dict[str, Any] = {}
    arrays_meta: list[dict[str, Any]] = []
    buffers: list[Buffer] = []
    for name, hint in mt.scalars.items():
        value = getattr(msg, name)
        problem = _scalar_problem(value, hint, name in mt.optional, mt.limits.get(name))
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
    if epoch is not None:
        header["epoch"] = int(epoch)
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
    header = _parse_header(bytes(header_view))
    if not isinstance(header, dict):
        raise DecodeError("bad_header", f"header is a JSON {type(header).__name__}, not an object")
    if not HEADER_KEYS <= set(header) <= HEADER_KEYS | OPTIONAL_HEADER_KEYS:
        missing, extra = sorted(HEADER_KEYS - set(header)), sorted(set(header) - HEADER_KEYS - OPTIONAL_HEADER_KEYS)
        raise DecodeError("bad_header", f"header keys: missing {missing}, unexpected {extra}")
    type_name = header["type"]
    mt = MESSAGE_TYPES.get(type_name) if isinstance(type_name, str) else None
    if mt is None:
        raise DecodeError("unknown_type", f"type {type_name!r} is not one of {sorted(MESSAGE_TYPES)}")
    if topic != mt.topic_bytes:
        raise DecodeError("topic_mismatch", f"topic {topic[:40]!r} but header type {mt.topic!r}")
    version = header["v"]
    if not _is_int(version) or version not in mt.reads | {mt.version}:  # an int first: a list is unhashable
        readable = ", ".join(f"v{v}" for v in sorted(mt.reads | {mt.version}))
        raise DecodeError(
            "version_mismatch", f"{mt.topic!r} message has version {str(version)[:40]}; this build reads {readable}"
        )
    for key, kind in (("seq", int), ("t_sent", (int, float)), ("node", str), ("scalars", dict), ("arrays", list)):
        if not isinstance(header[key], kind) or isinstance(header[key], bool):
            raise DecodeError("bad_header", f"header {key} is {type(header[key]).__name__}")
    epoch = header.get("epoch", 0)
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch <= INT64_MAX:
        raise DecodeError("bad_header", f"header epoch {str(epoch)[:40]} is not an int in 0..{INT64_MAX}")
    if not 0 <= header["seq"] <= INT64_MAX:
        raise DecodeError("bad_header", f"header seq {header['seq']} is outside 0..{INT64_MAX}")
    if not math.isfinite(header["t_sent"]):
        raise DecodeError("bad_header", f"header t_sent {header['t_sent']} is not finite")
    if len(header["node"]) > MAX_NAME_LEN:
        raise DecodeError("bad_header", f"header node name has {len(header['node'])} characters > {MAX_NAME_LEN}")
    fields = _decode_scalars(mt, header["scalars"])
    arrays, cleared = _decode_arrays(mt, header["arrays"], frames[2:])
    fields.update(arrays)
    newer = sorted(name for name, value in fields.items() if value is not None and mt.since.get(name, 0) > version)
    if newer:  # an older version's message never had these (null is the same as absent)
        raise DecodeError("extra_field", f"{mt.topic} v{version}: {newer} only exist from v{mt.since[newer[0]]}")
    try:
        msg = mt.cls(**fields)
    except (TypeError, ValueError) as exc:  # cross-field invariants (__post_init__)
        raise DecodeError("inconsistent", f"{mt.topic}: {exc}") from None
    if cleared:
        header["cleared"] = cleared
    return msg, header


def _parse_header(data: bytes) -> Any:
    """JSON with bounded nesting and number sizes; DecodeError for anything else (never RecursionError,
    ValueError from int(), or a float that overflowed to inf)."""
    try:
        header = json.loads(data, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecodeError("bad_header", f"header is not JSON: {str(exc)[:120]}") from None
    except RecursionError:
        raise DecodeError("too_deep", f"header nests deeper than the parser allows (limit {MAX_JSON_DEPTH})") from None
    depth = _json_depth(header)
    if depth > MAX_JSON_DEPTH:
        raise DecodeError("too_deep", f"header nests {depth} levels > {MAX_JSON_DEPTH}")
    return header


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise DecodeError("bad_number", f"integer of {len(text)} digits > {MAX_NUMBER_CHARS} characters")
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise DecodeError("bad_number", f"integer {text} does not fit int64")
    return value


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise DecodeError("bad_number", f"number of {len(text)} characters > {MAX_NUMBER_CHARS}")
    value = float(text)
    if not math.isfinite(value):
        raise DecodeError("bad_number", f"number {text} overflows float64")
    return value


def _parse_constant(text: str) -> float:
    raise DecodeError("bad_number", f"{text} is not a finite number")


def _json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), level by level, stopping one level past MAX_JSON_DEPTH."""
    depth, level = 0, [value]
    while True:
        containers = [v for v in level if isinstance(v, (dict, list))]
        if not containers or depth > MAX_JSON_DEPTH:
            return depth
        depth += 1
        level = [v for item in containers for v in (item.values() if isinstance(item, dict) else item)]
        level = [v for v in level if isinstance(v, (dict, list))] if depth else level
    return depth


def _decode_scalars(mt: MessageType, scalars: dict[str, Any]) -> dict[str, Any]:
    got, want = set(scalars), set(mt.scalars)
    if want - got - mt.optional:
        raise DecodeError("missing_field", f"{mt.topic}: missing {sorted(want - got - mt.optional)}")
    if got - want:
        raise DecodeError("extra_field", f"{mt.topic}: unexpected {sorted(got - want)}")
    fields = {}
    for name, value in scalars.items():
        hint = mt.scalars[name]
        problem = _scalar_problem(value, hint, name in mt.optional, mt.limits.get(name), from_json=True)
        if problem:
            raise DecodeError("bad_field", f"{mt.topic}.{name}: {problem}")
        if isinstance(value, list):
            value = tuple(value)
        elif hint is float and isinstance(value, int):
            value = float(value)
        fields[name] = value
    return fields


def _decode_arrays(
    mt: MessageType, metas: list[Any], buffers: Sequence[Any]
) -> tuple[dict[str, np.ndarray | None], list[str]]:
    """The arrays, and the names of optional finite arrays cleared to None because they held NaN/inf."""
    if len(metas) != len(buffers):
        raise DecodeError("truncated", f"{mt.topic}: header lists {len(metas)} arrays, got {len(buffers)} buffers")
    arrays: dict[str, np.ndarray | None] = {}
    cleared: list[str] = []
    for meta, buf in zip(metas, buffers, strict=True):
        if not (isinstance(meta, dict) and set(meta) == {"name", "dtype", "shape"}):
            raise DecodeError("bad_header", f"{mt.topic}: array entry {str(meta)[:80]} is not {{name, dtype, shape}}")
        name, dtype, shape = meta["name"], meta["dtype"], meta["shape"]
        if not isinstance(name, str):
            raise DecodeError("bad_header", f"{mt.topic}: array name {str(name)[:40]} is not a string")
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
        if spec.is_finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
            if name not in mt.optional:
                raise DecodeError("non_finite", f"{mt.topic}.{name}: NaN or inf in {dtype}{shape}")
            cleared.append(name)  # e.g. a ground-truth pose: the frame is still good, the pose is not
            arrays[name] = None
            continue
        arrays[name] = arr
    missing = set(mt.arrays) - set(arrays) - mt.optional
    if missing:
        raise DecodeError("missing_field", f"{mt.topic}: missing arrays {sorted(missing)}")
    return arrays, cleared


def _scalar_problem(
    value: Any, hint: Any, optional: bool, limits: ScalarSpec | None = None, *, from_json: bool = False
) -> str | None:
    """Why `value` does not fit the scalar type `hint` and its range (None if it fits). JSON lists stand for tuples."""
    problem = _type_problem(value, hint, optional, from_json=from_json)
    if problem is None and value is not None and limits is not None:
        problem = limits.problem(value)
    return problem


def _type_problem(value: Any, hint: Any, optional: bool, *, from_json: bool = False) -> str | None:
    if value is None:
        return None if optional else "is required, got null"
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        problems = [_type_problem(value, arg, False, from_json=from_json) for arg in typing.get_args(hint)]
        return None if any(p is None for p in problems) else f"expected {hint}, got {type(value).__name__}"
    if hint is bool:
        return None if isinstance(value, bool) else f"expected bool, got {type(value).__name__}"
    if hint is int:
        if not _is_int(value):
            return f"expected int, got {type(value).__name__}"
        return None if INT64_MIN <= value <= INT64_MAX else f"expected an int64, got {value}"
    if hint is float:
        if _is_int(value) or isinstance(value, (float, np.floating)):
            return None if math.isfinite(value) else f"expected finite float, got {value}"
        return f"expected float, got {type(value).__name__}"
    if hint is str:
        return None if isinstance(value, str) else f"expected str, got {type(value).__name__}"
    if origin is tuple:
        if not isinstance(value, list if from_json else tuple):
            return f"expected a sequence of ints, got {type(value).__name__}"
        if not all(_is_int(v) for v in value):
            return "expected only ints"
        return None if all(INT64_MIN <= v <= INT64_MAX for v in value) else "expected only int64 values"
    if origin is dict:
        key_t, value_t = typing.get_args(hint)
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return f"expected an object with string keys, got {type(value).__name__}"
        if value_t is float:
            bad = [k for k, v in value.items() if _type_problem(v, float, False) is not None]
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
