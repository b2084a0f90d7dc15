"""The pipeline's message types: one frozen dataclass per type, its topic, schema version and array specs.

A message is data only. `codec.py` turns it into `[topic, JSON header, *buffers]` and back; the specs below are
what `decode` checks a received message against. Any field change bumps the type's version.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Union

import numpy as np

#: dtypes that may ever travel; an ArraySpec narrows this per field.
DTYPE_WHITELIST = frozenset({"uint8", "uint16", "int32", "int64", "float16", "float32", "float64", "bool"})
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1  # every int on the wire fits an int64 (counters, numpy ids)
MAX_NAME_LEN = 128  # node names: they become dict keys and log text on the receiver


@dataclass(frozen=True)
class ArraySpec:
    """What an array field may hold: allowed dtypes, shape (None = any size on that axis), a byte limit."""

    dtype: str | tuple[str, ...]
    shape: tuple[int | None, ...]
    max_bytes: int = 64 << 20
    is_finite: bool = False  # every value must be finite (poses, intrinsics, pixels: NaN/inf there is never data)

    @property
    def dtypes(self) -> tuple[str, ...]:
        return (self.dtype,) if isinstance(self.dtype, str) else tuple(self.dtype)

    def __post_init__(self) -> None:
        unknown = set(self.dtypes) - DTYPE_WHITELIST
        assert not unknown, f"ArraySpec dtypes {sorted(unknown)} are outside DTYPE_WHITELIST"

    def problem(self, dtype: str, shape: tuple[int, ...]) -> tuple[str, str] | None:
        """(reason, detail) if an array of this dtype and shape does not fit the spec, else None."""
        if dtype not in self.dtypes:
            return "bad_dtype", f"dtype {dtype} not in {list(self.dtypes)}"
        if len(shape) != len(self.shape) or any(
            want is not None and got != want for got, want in zip(shape, self.shape, strict=True)
        ):
            want = "[" + ", ".join("*" if s is None else str(s) for s in self.shape) + "]"
            return "bad_shape", f"shape {list(shape)} does not match {want}"
        if any(s < 0 for s in shape):
            return "bad_shape", f"negative size in shape {list(shape)}"
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize  # Python ints: a hostile shape cannot overflow
        if nbytes > self.max_bytes:
            return "too_large", f"{nbytes} bytes > max_bytes {self.max_bytes}"
        return None


@dataclass(frozen=True)
class ScalarSpec:
    """Range of a scalar field beyond its type (`Annotated[int, ScalarSpec(min=0)]`): `min`/`max` bound an int or
    float, or each item of a tuple of ints; `length` fixes a tuple's length; `max_len` bounds a str or tuple.
    Every int is also bounded to int64 (INT64_MIN..INT64_MAX) whether or not a spec says more."""

    min: float | None = None
    max: float | None = None
    length: int | None = None
    max_len: int | None = None

    def problem(self, value: Any) -> str | None:
        """Why a value that already has the right type is out of range (None if it is in range)."""
        if isinstance(value, (str, tuple, list)):
            if self.max_len is not None and len(value) > self.max_len:
                return f"has {len(value)} items/characters > {self.max_len}"
            if self.length is not None and len(value) != self.length:
                return f"has {len(value)} items, expected {self.length}"
            items = value if isinstance(value, (tuple, list)) else ()
        else:
            items = (value,)
        for item in items:
            if self.min is not None and item < self.min:
                return f"expected >= {self.min:g}, got {item}"
            if self.max is not None and item > self.max:
                return f"expected <= {self.max:g}, got {item}"
        return None


# Shared scalar annotations: ids and counts are never negative; node names are short.
ID = Annotated[int, ScalarSpec(min=0)]
IDS_T = Annotated[tuple[int, ...], ScalarSpec(min=0)]
COUNT = Annotated[int, ScalarSpec(min=0)]
NODE_NAME = Annotated[str, ScalarSpec(max_len=MAX_NAME_LEN)]
IMAGE_HW = Annotated[tuple[int, ...], ScalarSpec(min=1, max=1 << 20, length=2)]

# Shared array annotations (shape letters: K keyframes, H x W image, N points). A source's poses and
# intrinsics must be finite; a model's outputs (POSES, INTRINSICS_K) are not checked: vggt-tiny has produced
# non-finite intrinsics for a demo window, and dropping the window would lose its poses too.
RGB8 = Annotated[np.ndarray, ArraySpec(dtype="uint8", shape=(None, None, 3), max_bytes=32 << 20)]
POSE = Annotated[np.ndarray, ArraySpec(dtype="float64", shape=(4, 4), max_bytes=128, is_finite=True)]
INTRINSICS = Annotated[np.ndarray, ArraySpec(dtype=("float32", "float64"), shape=(3, 3), max_bytes=72, is_finite=True)]
POSES = Annotated[np.ndarray, ArraySpec(dtype="float64", shape=(None, 4, 4), max_bytes=16 << 20)]
INTRINSICS_K = Annotated[np.ndarray, ArraySpec(dtype=("float32", "float64"), shape=(None, 3, 3), max_bytes=8 << 20)]
DEPTHS = Annotated[np.ndarray, ArraySpec(dtype="float32", shape=(None, None, None), max_bytes=512 << 20)]
POINTS = Annotated[np.ndarray, ArraySpec(dtype="float32", shape=(None, 3), max_bytes=256 << 20)]
COLORS = Annotated[np.ndarray, ArraySpec(dtype="uint8", shape=(None, 3), max_bytes=64 << 20)]
IDS = Annotated[np.ndarray, ArraySpec(dtype=("int32", "int64"), shape=(None,), max_bytes=64 << 20)]
PIXELS = Annotated[np.ndarray, ArraySpec(dtype="float32", shape=(None, 2), max_bytes=16 << 20)]
# a window's model tracks, one entry per observation: 1M observations at most (256 points x 4,000 keyframes)
OBSERVATION_IDS = Annotated[np.ndarray, ArraySpec(dtype=("int32", "int64"), shape=(None,), max_bytes=8 << 20)]
OBSERVATION_UV = Annotated[np.ndarray, ArraySpec(dtype="float32", shape=(None, 2), max_bytes=8 << 20)]

#: JSON-able free structure allowed only where the brief asks for it (the reduction plan).
JsonDict = dict[str, Any]


@dataclass(frozen=True)
class MessageType:
    """Registry entry: the class, its topic (also the header's `type`), version and field layout."""

    cls: type
    topic: str
    version: int
    scalars: dict[str, Any]  # field name -> type hint (int, float, str, bool, tuple[int, ...], dict[...], | None)
    arrays: dict[str, ArraySpec]
    optional: frozenset[str]  # fields that may be None / absent (they have a default)
    limits: dict[str, ScalarSpec] = dataclasses.field(default_factory=dict)  # scalar ranges (ScalarSpec)
    # older versions this build still decodes, and the fields each later version added (`since`): an older message
    # is decoded without them (they are optional), and one that carries a field its version did not have is refused
    reads: frozenset[int] = frozenset()
    since: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def topic_bytes(self) -> bytes:
        return self.topic.encode()


#: topic -> MessageType, in declaration order. Tests iterate over it.
MESSAGE_TYPES: dict[str, MessageType] = {}


def message(topic: str, *, version: int, reads: tuple[int, ...] = ()):
    """Register a frozen message dataclass under `topic` with schema `version`; `reads` lists older versions that
    still decode. A field added in version n says so with `dataclasses.field(default=None, metadata=since(n))`."""

    def register(cls: type) -> type:
        assert dataclasses.is_dataclass(cls), f"{cls.__name__} must be a dataclass"
        assert topic not in MESSAGE_TYPES, f"topic {topic!r} registered twice"
        hints = typing.get_type_hints(cls, include_extras=True)
        scalars: dict[str, Any] = {}
        arrays: dict[str, ArraySpec] = {}
        limits: dict[str, ScalarSpec] = {}
        optional = set()
        since: dict[str, int] = {}
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if "since" in f.metadata:
                since[f.name] = f.metadata["since"]
            inner, is_optional = _strip_optional(hint)
            if is_optional:
                optional.add(f.name)
            spec = _array_spec(inner)
            if spec is not None:
                arrays[f.name] = spec
            elif typing.get_origin(inner) is Annotated:
                scalars[f.name] = inner.__origin__
                for meta in inner.__metadata__:
                    if isinstance(meta, ScalarSpec):
                        limits[f.name] = meta
            else:
                scalars[f.name] = inner
        assert all(v < version for v in reads), f"{topic}: reads {reads} must be older than version {version}"
        assert all(reads and min(reads) < n <= version and name in optional for name, n in since.items()), (
            f"{topic}: a field added after the oldest version read must be optional and at most version {version}"
        )
        MESSAGE_TYPES[topic] = MessageType(
            cls, topic, version, scalars, arrays, frozenset(optional), limits, frozenset(reads), since
        )
        cls.TOPIC = topic
        cls.VERSION = version
        return cls

    return register


def since(version: int) -> dict[str, int]:
    """Field metadata: the field was added in schema `version` (older messages are read without it)."""
    return {"since": version}


def message_type(msg_or_cls: Any) -> MessageType:
    """The registry entry of a message instance or class; KeyError if it is not a registered message."""
    cls = msg_or_cls if isinstance(msg_or_cls, type) else type(msg_or_cls)
    topic = getattr(cls, "TOPIC", None)
    if topic is None or MESSAGE_TYPES.get(topic, None) is None or MESSAGE_TYPES[topic].cls is not cls:
        raise KeyError(f"{cls.__name__} is not a registered message type")
    return MESSAGE_TYPES[topic]


def _strip_optional(hint: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) < len(typing.get_args(hint)):
            return functools.reduce(operator.or_, args), True
    return hint, False


def _array_spec(hint: Any) -> ArraySpec | None:
    if typing.get_origin(hint) is Annotated:
        for meta in hint.__metadata__:
            if isinstance(meta, ArraySpec):
                return meta
    return None


def _check_tracks(keyframe_ids, track_keyframe_ids, track_ids, track_uv) -> None:
    given = [a is not None for a in (track_keyframe_ids, track_ids, track_uv)]
    if any(given) and not all(given):
        raise ValueError("track_keyframe_ids, track_ids and track_uv come together (one entry per observation)")
    if not all(given):
        return
    _check_len("track_ids", track_ids, len(track_keyframe_ids), "track_keyframe_ids")
    _check_len("track_uv", track_uv, len(track_keyframe_ids), "track_keyframe_ids")
    unknown = np.setdiff1d(track_keyframe_ids, np.asarray(keyframe_ids, np.int64))
    if len(unknown):
        raise ValueError(f"track_keyframe_ids {unknown[:5].tolist()} are not in keyframe_ids")
    if len(track_ids) and track_ids.min() < 0:
        raise ValueError(f"track_ids has a negative id {int(track_ids.min())}")
    if not np.isfinite(track_uv).all():
        raise ValueError("track_uv holds NaN or inf (the sender keeps only finite, visible points)")


def _check_len(name: str, arr: np.ndarray | None, n: int, what: str) -> None:
    if arr is not None and (arr.ndim == 0 or arr.shape[0] != n):
        raise ValueError(f"{name} has {arr.shape[0] if arr.ndim else 0} entries but there are {n} {what}")


# ----------------------------------------------------------------------------------------------------------------
# The message types. Poses are camera-to-world (`world_from_cam`, OpenCV camera), metres; times are seconds.


@message("frame", version=1)
@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Frame:
    """One captured frame; ground-truth pose and intrinsics ride along when a dataset has them."""

    frame_seq: ID
    t_capture: float
    image: RGB8
    source_id: str
    world_from_cam: POSE | None = None
    intrinsics: INTRINSICS | None = None


@message("frame_record", version=1)
@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class FrameRecord:
    """One input frame as the keyframes node saw it, without its image: for fusion's every-frame trajectory and
    ground truth. `keyframe_id` is None when the frame did not become a keyframe; `gt_world_from_cam` is the
    source's ground-truth camera-to-world pose, None when it has none."""

    frame_seq: ID
    t_capture: float
    keyframe_id: ID | None = None
    gt_world_from_cam: POSE | None = None


@message("keyframe", version=2, reads=(1,))
@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Keyframe:
    """A keyframe at model resolution, sent once; receivers keep their own store.

    With it (v2), the feature tracks it sees at the source's resolution (stream/tracks.py): `track_ids[i]` at pixel
    `track_uv[i]` (x, y) of the `source_hw` image, and the source's intrinsics in those pixels when it has them."""

    keyframe_id: ID
    frame_seq: ID
    t_capture: float
    image: RGB8
    track_ids: IDS | None = dataclasses.field(default=None, metadata=since(2))
    track_uv: PIXELS | None = dataclasses.field(default=None, metadata=since(2))
    source_hw: IMAGE_HW | None = dataclasses.field(default=None, metadata=since(2))
    source_intrinsics: INTRINSICS | None = dataclasses.field(default=None, metadata=since(2))

    def __post_init__(self) -> None:
        if (self.track_ids is None) != (self.track_uv is None):
            raise ValueError("track_ids and track_uv come together (one pixel per track id)")
        if self.track_ids is not None:
            _check_len("track_uv", self.track_uv, self.track_ids.shape[0], "track_ids")


@message("window_request", version=1)
@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class WindowRequest:
    """Reconstruct these keyframes (already sent as Keyframe messages) as one window."""

    window_id: ID
    keyframe_ids: IDS_T


@message("window_result", version=2, reads=(1,))
@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class WindowResult:
    """One backbone run: a pose per keyframe (window frame), dense depth only for `dense_keyframe_ids`.

    Shapes: world_from_cam [K, 4, 4], intrinsics [K, 3, 3] with K = len(keyframe_ids);
    depth and depth_conf [K', H, W] with K' = len(dense_keyframe_ids), each a subset of keyframe_ids.
    v2: the model's own tracks when it has a track head (ReconstructionConfig.tracks), one entry per observation
    [M]: track `track_ids[i]` is at pixel `track_uv[i]` (x, y; model-input pixels, the size of `depth`'s frames,
    (0, 0) the centre of the top-left pixel) of keyframe `track_keyframe_ids[i]`; only visible, confident points.
    """

    window_id: ID
    keyframe_ids: IDS_T
    world_from_cam: POSES
    intrinsics: INTRINSICS_K
    dense_keyframe_ids: IDS_T
    depth: DEPTHS
    depth_conf: DEPTHS
    timings: dict[str, float]
    plan: JsonDict | str
    model: str
    track_keyframe_ids: OBSERVATION_IDS | None = dataclasses.field(default=None, metadata=since(2))
    track_ids: OBSERVATION_IDS | None = dataclasses.field(default=None, metadata=since(2))
    track_uv: OBSERVATION_UV | None = dataclasses.field(default=None, metadata=since(2))

    def __post_init__(self) -> None:
        k = len(self.keyframe_ids)
        _check_len("world_from_cam", self.world_from_cam, k, "keyframe_ids")
        _check_len("intrinsics", self.intrinsics, k, "keyframe_ids")
        _check_len("depth", self.depth, len(self.dense_keyframe_ids), "dense_keyframe_ids")
        if self.depth_conf.shape != self.depth.shape:
            raise ValueError(f"depth_conf shape {self.depth_conf.shape} differs from depth shape {self.depth.shape}")
        missing = set(self.dense_keyframe_ids) - set(self.keyframe_ids)
        if missing:
            raise ValueError(f"dense_keyframe_ids {sorted(missing)} are not in keyframe_ids")
        _check_tracks(self.keyframe_ids, self.track_keyframe_ids, self.track_ids, self.track_uv)


@message("map_update", version=1)
@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class MapUpdate:
    """Global poses of keyframes (they move when a window is re-solved) and optionally new world points.

    `is_snapshot` marks the full current state, re-published for late subscribers (see node_loop.py).
    Shapes: world_from_cam [K, 4, 4]; points [N, 3] world frame, colors [N, 3], point_keyframe_ids [N].
    """

    keyframe_ids: IDS_T
    world_from_cam: POSES
    is_snapshot: bool = False
    points: POINTS | None = None
    colors: COLORS | None = None
    point_keyframe_ids: IDS | None = None

    def __post_init__(self) -> None:
        _check_len("world_from_cam", self.world_from_cam, len(self.keyframe_ids), "keyframe_ids")
        if self.points is None and (self.colors is not None or self.point_keyframe_ids is not None):
            raise ValueError("colors/point_keyframe_ids given without points")
        if self.points is not None:
            _check_len("colors", self.colors, self.points.shape[0], "points")
            _check_len("point_keyframe_ids", self.point_keyframe_ids, self.points.shape[0], "points")


@message("heartbeat", version=1)
@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Heartbeat:
    """Liveness and progress of a node: its counters at the time of sending."""

    node: NODE_NAME
    counters: dict[str, float]


@message("end_of_stream", version=1)
@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class EndOfStream:
    """`node` has sent its last message on this edge; `num_sent` data messages went before it (the proof count)."""

    node: NODE_NAME
    num_sent: COUNT


#: Control messages: handled by NodeLoop itself, not counted as data, never dropped by latest-wins.
CONTROL_TYPES = (Heartbeat, EndOfStream)
