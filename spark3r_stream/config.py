"""Frozen config dataclasses <-> YAML: `yaml.safe_load` only, a `preset:` base file, `--set a.b=c` overrides.

Defaults live only on the dataclasses; a YAML file holds overrides. Every error names the file (or the `--set`
override), the dotted key path and what was expected, e.g.
`launch/demo.yaml: nodes.reconstruction.spark3r.group_size: expected int >= 1, got 0`.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import importlib.resources
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from spark3r_stream.errors import ConfigError

__all__ = [
    "CONFIGS_DIR",
    "ConfigValueError",
    "apply_overrides",
    "check_field",
    "from_dict",
    "load_config",
    "load_yaml",
    "to_dict",
]

T = TypeVar("T")


def package_dir(name: str) -> Path:
    """A data folder of the package: the repository's top-level `launch/` or `configs/`, installed (and mapped in an
    editable install) as `spark3r_stream.<name>`."""
    return Path(str(importlib.resources.files(f"spark3r_stream.{name}")))


# configs/, where a `preset: NAME` is looked up when it is not a path next to the file.
CONFIGS_DIR = package_dir("configs")
PRESET_KEY = "preset"
_MAX_PRESET_DEPTH = 8  # presets may chain; deeper than this is a cycle or a mistake


class ConfigValueError(ConfigError):
    """A config value is invalid; `path` is its dotted key path (without the source), `problem` what is wrong.

    Raised by `__post_init__` range checks (via `check_field`) with a one-element path; `from_dict` prefixes the
    enclosing keys and the source file as it unwinds.
    """

    def __init__(self, path: Sequence[str], problem: str, source: str | None = None):
        self.path = tuple(path)
        self.problem = problem
        self.source = source
        super().__init__(self._format())

    def _format(self) -> str:
        where = ".".join(self.path)
        parts = [part for part in (self.source, where) if part]
        return ": ".join([*parts, self.problem])

    def within(self, key: str) -> ConfigValueError:
        """The same error one level deeper in the tree (key prepended to the path)."""
        return ConfigValueError((key, *self.path), self.problem, self.source)

    def at(self, source: str) -> ConfigValueError:
        """The same error attributed to `source` (a file name or a `--set` override)."""
        return ConfigValueError(self.path, self.problem, source)


def _show(value: Any) -> str:
    """A value as the error message shows it: strings quoted, everything else as YAML would print it."""
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)) and len(value) > 8:
        return f"a list of {len(value)} items"
    return str(value)


def check_field(cfg: Any, field: str, is_ok: bool, expected: str) -> None:
    """Range check for `__post_init__`: raise `<field>: expected <expected>, got <value>` unless `is_ok`."""
    if not is_ok:
        raise ConfigValueError((field,), f"expected {expected}, got {_show(getattr(cfg, field))}")


# ---------------------------------------------------------------------------------------------------------------------
# dict -> dataclass


def from_dict(cls: type[T], data: Mapping[str, Any] | None, *, source: str | os.PathLike = "<config>") -> T:
    """Build the (nested) config dataclass `cls` from plain data, validating every key and value.

    Unknown keys are rejected with the nearest valid name, wrong types with the dotted key path, missing
    required keys by name; `__post_init__` range checks are reported with their full path.

    Raises:
        ConfigError: `<source>: <dotted.path>: <what is wrong>`.
    """
    try:
        return _build_dataclass(cls, {} if data is None else data)
    except ConfigValueError as error:
        raise error.at(str(source)) from None


def _build_dataclass(cls: type, data: Any) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigValueError((), f"expected a mapping of {cls.__name__} fields, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str) or key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(sorted(fields)) or 'none'}"
            raise ConfigValueError((str(key),), f"unknown key for {cls.__name__}; {hint}")
        try:
            kwargs[key] = _convert(hints[key], value)
        except ConfigValueError as error:
            raise error.within(key) from None
    missing = [
        name
        for name, field in fields.items()
        if name not in kwargs and field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        raise ConfigValueError((missing[0],), f"missing required key for {cls.__name__}")
    return cls(**kwargs)  # a ConfigValueError from __post_init__ already carries the field name


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(_show(arg) for arg in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(hint))
    if origin is not None:
        args = ", ".join("..." if arg is Ellipsis else _type_name(arg) for arg in typing.get_args(hint))
        return f"{origin.__name__}[{args}]"
    return getattr(hint, "__name__", str(hint))


def _convert(hint: Any, value: Any) -> Any:
    """Check `value` against the type hint and convert it (lists to tuples, str to Path/Enum, mappings to configs)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value)
            except ConfigValueError as error:
                if error.path:  # the value had the right shape but a nested part is wrong: report that part
                    raise
        raise ConfigValueError((), f"expected {_type_name(hint)}, got {_show(value)}")
    if origin is Literal:
        if value in args and not (isinstance(value, bool) and not any(isinstance(arg, bool) for arg in args)):
            return value
        close = difflib.get_close_matches(str(value), [str(arg) for arg in args], n=1)
        hint_text = f"; did you mean {close[0]!r}?" if close and isinstance(value, str) else ""
        raise ConfigValueError((), f"expected {_type_name(hint)}, got {_show(value)}{hint_text}")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        return _build_dataclass(hint, value)
    if origin is tuple or hint is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigValueError((), f"expected {_type_name(hint)} (a list), got {_show(value)}")
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            item_hint = args[0] if args else Any
            return tuple(_convert_item(item_hint, index, item) for index, item in enumerate(value))
        if len(value) != len(args):
            raise ConfigValueError((), f"expected {_type_name(hint)} ({len(args)} items), got {_show(value)}")
        return tuple(_convert_item(arg, index, item) for index, (arg, item) in enumerate(zip(args, value, strict=True)))
    if origin is list or hint is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigValueError((), f"expected {_type_name(hint)}, got {_show(value)}")
        item_hint = args[0] if args else Any
        return [_convert_item(item_hint, index, item) for index, item in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigValueError((), f"expected {_type_name(hint)}, got {_show(value)}")
        key_hint, value_hint = args if args else (Any, Any)
        out = {}
        for key, item in value.items():
            converted_key = _convert_item(key_hint, str(key), key)
            out[converted_key] = _convert_item(value_hint, str(key), item)
        return out
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        if isinstance(value, hint):
            return value
        choices = [member.value for member in hint]
        if value in choices:
            return hint(value)
        raise ConfigValueError(
            (), f"expected one of {', '.join(_show(choice) for choice in choices)}, got {_show(value)}"
        )
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigValueError((), f"expected bool (true/false), got {_show(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigValueError((), f"expected int, got {_show(value)}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigValueError((), f"expected float, got {_show(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigValueError((), f"expected str, got {_show(value)}")
    if hint is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigValueError((), f"expected a path (str), got {_show(value)}")
    raise ConfigValueError((), f"unsupported config field type {_type_name(hint)}")  # a defect in the dataclass


def _convert_item(hint: Any, key: int | str, value: Any) -> Any:
    try:
        return _convert(hint, value)
    except ConfigValueError as error:
        raise error.within(str(key)) from None


# ---------------------------------------------------------------------------------------------------------------------
# dataclass -> dict


def to_dict(cfg: Any) -> Any:
    """Plain YAML/JSON-ready data of a config: dataclasses to dicts, tuples to lists, Paths to str, Enums to values.

    `from_dict(type(cfg), to_dict(cfg)) == cfg` for every config (tested).
    """
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {field.name: to_dict(getattr(cfg, field.name)) for field in dataclasses.fields(cfg) if field.init}
    if isinstance(cfg, enum.Enum):
        return cfg.value
    if isinstance(cfg, Path):
        return str(cfg)
    if isinstance(cfg, Mapping):
        return {key: to_dict(value) for key, value in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(value) for value in cfg]
    return cfg


# ---------------------------------------------------------------------------------------------------------------------
# files, presets, overrides


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read one YAML mapping with `yaml.safe_load` (no Python tags); an empty file is an empty mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config {path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"config {path}: invalid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _resolve_preset(name: Any, referrer: Path) -> Path:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"config {referrer}: {PRESET_KEY}: expected a file name in configs/, got {_show(name)}")
    candidates = []
    for base in (referrer.parent, CONFIGS_DIR):
        for suffix in ("", ".yaml", ".yml"):
            candidates.append(base / f"{name}{suffix}")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    known = sorted(str(p.relative_to(CONFIGS_DIR).with_suffix("")) for p in CONFIGS_DIR.rglob("*.y*ml"))
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; presets in {CONFIGS_DIR}: {', '.join(known) or 'none'}"
    raise ConfigError(f"config {referrer}: {PRESET_KEY} {name!r}: no such file next to it or in configs/{hint}")


def _load_with_presets(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML file merged over its `preset:` base (recursively); the file's own keys win."""
    resolved = path.resolve()
    if resolved in chain or len(chain) >= _MAX_PRESET_DEPTH:
        names = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"config {chain[0]}: {PRESET_KEY} chain is circular or too deep: {names}")
    data = load_yaml(path)
    if PRESET_KEY not in data:
        return data
    base = _load_with_presets(_resolve_preset(data.pop(PRESET_KEY), path), (*chain, resolved))
    return _deep_merge(base, data)


def _deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    keys = key.strip().split(".")
    if not sep or not all(part.strip() for part in keys):
        raise ConfigError(f"override {text!r}: expected key.path=value (e.g. capture.path=/data/seq)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # not YAML-parsable (e.g. an unbalanced bracket): the literal text, typed-checked like any value
    return [part.strip() for part in keys], value


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """`--set a.b=c` overrides on plain data; values are parsed as YAML scalars (`3`, `true`, `null`, `[1, 2]`)."""
    out = _deep_merge({}, data)
    for text in overrides:
        keys, value = _parse_override(text)
        node = out
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                where = ".".join(keys[: depth + 1])
                raise ConfigError(f"override {text!r}: {where} is {_show(child)}, not a mapping")
            else:
                child = node[key] = dict(child)
            node = child
        node[keys[-1]] = value
    return out


def load_config(
    cls: type[T],
    path: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
) -> T:
    """Load config `cls` from a YAML file (with its `preset:` chain) and `--set` overrides over the defaults.

    A top-level `preset: NAME` names a base YAML file, looked up next to the file, then in `configs/` (`.yaml`
    optional); the file's own keys override the base's. A config class with its own `preset` field (a model
    preset name) keeps the key as data instead.

    Raises:
        ConfigError: naming the file or the `--set` override, the key path and what was expected.
    """
    source = str(path) if path is not None else "<defaults>"
    data: dict[str, Any] = {}
    if path is not None:
        has_preset_field = PRESET_KEY in {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
        data = load_yaml(path) if has_preset_field else _load_with_presets(Path(path))
    data = apply_overrides(data, overrides)
    try:
        return from_dict(cls, data, source=source)
    except ConfigValueError as error:
        culprit = _override_for(error.path, overrides)
        raise error.at(f"--set {culprit}" if culprit else source) from None


def _override_for(path: Sequence[str], overrides: Sequence[str]) -> str | None:
    """The last override that set this key path or one of its ancestors (it decided the bad value)."""
    for text in reversed(overrides):
        keys, _ = _parse_override(text)
        if tuple(path[: len(keys)]) == tuple(keys) or tuple(keys[: len(path)]) == tuple(path):
            return text
    return None
