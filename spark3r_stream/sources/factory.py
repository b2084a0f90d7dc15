"""open_source(spec): "camera:0", "video:/p.mp4", "folder:/dir", "tum:/dir", "euroc:/dir", "7scenes:/dir",
"synth:seed=3,frames=60", a dict from a launch file, or a plain path whose format is detected."""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from spark3r_stream.errors import ConfigError, SourceError
from spark3r_stream.sources.base import IMAGE_SUFFIXES, FrameSource, SourceOptions
from spark3r_stream.sources.camera import VIDEO_SUFFIXES, CameraSource, VideoSource
from spark3r_stream.sources.euroc import EurocSource
from spark3r_stream.sources.folder import FolderSource
from spark3r_stream.sources.seven_scenes import COLOR_RE, SevenScenesSource
from spark3r_stream.sources.synthetic import SyntheticSource
from spark3r_stream.sources.tum import TumSource

#: kind -> constructor(target, options, **kwargs); one explicit table.
SOURCES: dict[str, Callable[..., FrameSource]] = {
    "camera": CameraSource,
    "video": VideoSource,
    "folder": FolderSource,
    "tum": TumSource,
    "euroc": EurocSource,
    "7scenes": SevenScenesSource,
    "synth": SyntheticSource,
}
ALIASES = {"seven_scenes": "7scenes", "synthetic": "synth", "images": "folder"}


def detect_format(path: str | Path) -> str:
    """The source kind of a plain path (video file, EuRoC, TUM, 7-Scenes or image folder); SourceError if none."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"source {path}: does not exist")
    if path.is_file():
        if path.suffix.lower() in VIDEO_SUFFIXES:
            return "video"
        if path.suffix.lower() in IMAGE_SUFFIXES:
            raise SourceError(f"source {path}: is a single image; give the folder that holds the sequence")
        raise SourceError(f"source {path}: unknown format (video suffixes: {', '.join(VIDEO_SUFFIXES)})")
    if (path / "mav0").is_dir() or path.name == "mav0":
        return "euroc"
    if (path / "rgb.txt").is_file():
        return "tum"
    names = [p.name for p in path.iterdir()]
    if any(COLOR_RE.match(n) for n in names):
        return "7scenes"
    if any(Path(n).suffix.lower() in IMAGE_SUFFIXES for n in names):
        return "folder"
    raise SourceError(
        f"source {path}: unknown format: no mav0/ (EuRoC), rgb.txt (TUM), frame-*.color.png (7-Scenes) or images"
    )


def parse_spec(spec: str) -> tuple[str, Any, dict[str, Any]]:
    """(kind, target, kwargs) of a source string."""
    kind, sep, rest = spec.partition(":")
    kind = ALIASES.get(kind, kind)
    if sep and kind in SOURCES and not rest.startswith("//"):
        if kind == "synth":
            return kind, None, _parse_kv(rest, spec)
        if kind == "camera":
            return kind, int(rest) if rest.isdigit() else rest, {}
        return kind, rest, {}
    if spec.isdigit():
        return "camera", int(spec), {}
    if "://" in spec:  # rtsp://, http(s)://: a network camera or stream
        return "camera", spec, {}
    return detect_format(spec), spec, {}


def open_source(spec: str | Mapping[str, Any], **options: Any) -> FrameSource:
    """Open a frame source. `options`: SourceOptions fields (start, stop, stride, rate, source_id) and the kind's
    own keywords (fps, intrinsics, gt, undistort, seed, frames, height, width, ...)."""
    kind, target, source_options, kwargs = check_source(spec, **options)
    factory = SOURCES[kind]
    if kind == "synth":
        return factory(source_options, **kwargs)
    return factory(target, source_options, **kwargs)


def check_source(spec: str | Mapping[str, Any], **options: Any) -> tuple[str, Any, SourceOptions, dict[str, Any]]:
    """Validate a source spec without opening anything (the launcher checks capture params before any process
    starts): ConfigError for an unknown kind, an unknown option (nearest name) or an option of the wrong type.
    Returns (kind, target, SourceOptions, the kind's keywords)."""
    if isinstance(spec, Mapping):
        data = dict(spec)
        kind = data.pop("type", data.pop("kind", None))
        # a synthetic source has no file: its `path` is the camera path kind (handheld, orbit, forward, loop)
        is_synth = ALIASES.get(kind, kind) == "synth"
        target = None if is_synth else data.pop("path", data.pop("device", None))
        if kind is None:
            if target is None:
                raise ConfigError(f"source {dict(spec)}: needs 'type' or 'path'")
            kind, target, kwargs = parse_spec(str(target))
        else:
            kind, kwargs = ALIASES.get(kind, kind), {}
        kwargs.update(data)
    else:
        kind, target, kwargs = parse_spec(str(spec))
    kwargs.update(options)
    if kind not in SOURCES:
        raise ConfigError(f"source type {kind!r}: unknown; expected one of {', '.join(SOURCES)}")
    opt_names = SourceOptions.field_names()
    options_given = {k: kwargs.pop(k) for k in list(kwargs) if k in opt_names}
    _check_types(SourceOptions, options_given, "source")
    source_options = SourceOptions(**options_given)
    _check_kwargs(kind, kwargs)
    _check_types(SOURCES[kind], kwargs, f"source {kind!r}")
    if kind != "synth" and (target is None or target == ""):
        raise ConfigError(f"source type {kind!r}: needs a path or device")
    return kind, target, source_options, kwargs


def _check_kwargs(kind: str, kwargs: dict[str, Any]) -> None:
    params = inspect.signature(SOURCES[kind]).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    allowed = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY} | SourceOptions.field_names()
    for key in kwargs:
        if key not in allowed:
            near = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; expected one of {', '.join(sorted(allowed))}"
            raise ConfigError(f"source {kind!r}: unknown option {key!r}{hint}")


def _check_types(target: Any, kwargs: Mapping[str, Any], where: str) -> None:
    """ConfigError naming the option when a value does not fit the plain type (int, float, str, bool, or one of
    them | None) annotated on `target`'s keyword; other annotations are left to `target` itself."""
    func = target.__init__ if isinstance(target, type) else target
    try:
        hints = typing.get_type_hints(func)
    except (NameError, TypeError):  # an annotation this module cannot resolve: the constructor checks its values
        return
    for key, value in kwargs.items():
        allowed = _plain_types(hints.get(key))
        if allowed is None or (value is None and type(None) in allowed):
            continue
        is_ok = any(
            isinstance(value, t) and not (isinstance(value, bool) and t in (int, float))
            for t in allowed
            if t is not type(None)
        ) or (float in allowed and isinstance(value, int) and not isinstance(value, bool))
        if not is_ok:
            names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise ConfigError(f"{where} option {key!r}: expected {names}, got {value!r}")


def _plain_types(hint: Any) -> tuple[type, ...] | None:
    if hint in (int, float, str, bool):
        return (hint,)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if all(a in (int, float, str, bool, type(None)) for a in args):
            return args
    return None


def _parse_kv(text: str, spec: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"source {spec!r}: expected key=value items, got {item!r}")
        out[key.strip()] = _number(value.strip())
    return out


def _number(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value
