"""Config loading: types, nested paths, unknown keys with suggestions, presets, overrides, exact error text."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Literal

import pytest
import yaml

from spark3r_stream.config import apply_overrides, check_field, from_dict, load_config, load_yaml, to_dict
from spark3r_stream.errors import ConfigError
from spark3r_stream.stream.alignment import AlignmentConfig
from spark3r_stream.stream.global_map import GlobalMapConfig
from spark3r_stream.stream.keyframes import KeyframeSelectorConfig
from spark3r_stream.stream.windows import WindowSchedulerConfig
from spark3r_stream.viz.rerun_logger import RerunConfig


class Color(str, Enum):  # noqa: UP042 - the loader must take the (str, Enum) form users write
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True, kw_only=True)
class SparkConfig:
    group_size: int = 20
    similarity: Literal["query", "input"] = "query"

    def __post_init__(self):
        check_field(self, "group_size", self.group_size >= 1, "int >= 1")


@dataclass(frozen=True, kw_only=True)
class ReconConfig:
    spark3r: SparkConfig = field(default_factory=SparkConfig)
    weights: Path | None = None
    image_hw: tuple[int, int] = (294, 518)
    factors: tuple[float, ...] = (1.0,)
    tags: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    color: Color = Color.RED
    rate: float = 1.0
    enabled: bool = True


@dataclass(frozen=True, kw_only=True)
class Nodes:
    reconstruction: ReconConfig = field(default_factory=ReconConfig)


@dataclass(frozen=True, kw_only=True)
class LaunchConfig:
    name: str
    nodes: Nodes = field(default_factory=Nodes)


def _error(cls, data, source="launch/demo.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        from_dict(cls, data, source=source)
    return str(info.value)


def test_nested_values_are_converted():
    cfg = from_dict(
        LaunchConfig,
        {
            "name": "demo",
            "nodes": {
                "reconstruction": {
                    "spark3r": {"group_size": 4},
                    "weights": "/data/w.pt",
                    "image_hw": [28, 42],
                    "factors": [1, 2.5],
                    "tags": ["a"],
                    "timings": {"x": 1},
                    "color": "blue",
                    "rate": 3,
                }
            },
        },
    )
    recon = cfg.nodes.reconstruction
    assert recon.spark3r.group_size == 4
    assert recon.weights == Path("/data/w.pt")
    assert recon.image_hw == (28, 42)
    assert recon.factors == (1.0, 2.5) and isinstance(recon.factors[0], float)
    assert recon.timings == {"x": 1.0}
    assert recon.color is Color.BLUE
    assert recon.rate == 3.0 and isinstance(recon.rate, float)


def test_range_error_names_file_and_dotted_path():
    message = _error(LaunchConfig, {"name": "d", "nodes": {"reconstruction": {"spark3r": {"group_size": 0}}}})
    assert message == "launch/demo.yaml: nodes.reconstruction.spark3r.group_size: expected int >= 1, got 0"


def test_direct_construction_reports_the_field():
    with pytest.raises(ConfigError, match=r"^group_size: expected int >= 1, got -2$"):
        SparkConfig(group_size=-2)


def test_unknown_key_suggests_nearest_name():
    message = _error(LaunchConfig, {"name": "d", "nodes": {"reconstruction": {"spark3r": {"gruop_size": 3}}}})
    assert message == (
        "launch/demo.yaml: nodes.reconstruction.spark3r.gruop_size: unknown key for SparkConfig; "
        "did you mean 'group_size'?"
    )


def test_unknown_key_without_close_match_lists_valid_keys():
    message = _error(SparkConfig, {"zzz": 1}, source="x.yaml")
    assert message == "x.yaml: zzz: unknown key for SparkConfig; valid keys: group_size, similarity"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"rate": "fast"}, "r.yaml: rate: expected float, got 'fast'"),
        ({"rate": True}, "r.yaml: rate: expected float, got True"),
        ({"enabled": "yes please"}, "r.yaml: enabled: expected bool (true/false), got 'yes please'"),
        ({"image_hw": [1, 2, 3]}, "r.yaml: image_hw: expected tuple[int, int] (2 items), got [1, 2, 3]"),
        ({"image_hw": [1, "b"]}, "r.yaml: image_hw.1: expected int, got 'b'"),
        ({"image_hw": 5}, "r.yaml: image_hw: expected tuple[int, int] (a list), got 5"),
        ({"tags": [1]}, "r.yaml: tags.0: expected str, got 1"),
        ({"timings": {"a": "b"}}, "r.yaml: timings.a: expected float, got 'b'"),
        ({"weights": 3}, "r.yaml: weights: expected Path or null, got 3"),
        ({"color": "green"}, "r.yaml: color: expected one of 'red', 'blue', got 'green'"),
        ({"spark3r": 7}, "r.yaml: spark3r: expected a mapping of SparkConfig fields, got 7"),
        (
            {"spark3r": {"similarity": "querry"}},
            "r.yaml: spark3r.similarity: expected one of 'query', 'input', got 'querry'; did you mean 'query'?",
        ),
    ],
)
def test_type_errors_have_exact_text(data, expected):
    assert _error(ReconConfig, data, source="r.yaml") == expected


def test_missing_required_key():
    assert _error(LaunchConfig, {}, source="l.yaml") == "l.yaml: name: missing required key for LaunchConfig"


def test_to_dict_round_trip():
    cfg = from_dict(LaunchConfig, {"name": "d", "nodes": {"reconstruction": {"weights": "/w", "color": "blue"}}})
    data = to_dict(cfg)
    assert data["nodes"]["reconstruction"]["image_hw"] == [294, 518]
    assert data["nodes"]["reconstruction"]["weights"] == "/w"
    assert data["nodes"]["reconstruction"]["color"] == "blue"
    assert from_dict(LaunchConfig, data) == cfg


def test_preset_chain_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\nnodes:\n  reconstruction:\n    rate: 2.0\n    tags: [x]\n")
    (tmp_path / "mid.yaml").write_text("preset: base\nnodes:\n  reconstruction:\n    spark3r: {group_size: 5}\n")
    top = tmp_path / "top.yaml"
    top.write_text("preset: mid.yaml\nname: top\n")
    cfg = load_config(LaunchConfig, top, ["nodes.reconstruction.rate=4", "nodes.reconstruction.enabled=false"])
    recon = cfg.nodes.reconstruction
    assert cfg.name == "top"
    assert recon.spark3r.group_size == 5  # from mid
    assert recon.tags == ["x"]  # from base
    assert recon.rate == 4.0 and recon.enabled is False  # from --set


def test_override_error_names_the_override(tmp_path):
    top = tmp_path / "top.yaml"
    top.write_text("name: t\n")
    with pytest.raises(ConfigError) as info:
        load_config(LaunchConfig, top, ["nodes.reconstruction.spark3r.group_size=0"])
    assert str(info.value) == (
        "--set nodes.reconstruction.spark3r.group_size=0: nodes.reconstruction.spark3r.group_size: "
        "expected int >= 1, got 0"
    )


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"config .*nope.yaml: file not found$"):
        load_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML \(line 2, column 1\)"):
        load_yaml(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level, got list"):
        load_yaml(listed)
    python_tag = tmp_path / "tag.yaml"
    python_tag.write_text("a: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_yaml(python_tag)


def test_missing_and_circular_presets(tmp_path):
    missing = tmp_path / "m.yaml"
    missing.write_text("preset: no-such-preset\n")
    with pytest.raises(ConfigError, match=r"preset 'no-such-preset': no such file next to it or in configs/"):
        load_config(LaunchConfig, missing)
    (tmp_path / "a.yaml").write_text("preset: b\n")
    (tmp_path / "b.yaml").write_text("preset: a\n")
    with pytest.raises(ConfigError, match="preset chain is circular"):
        load_config(LaunchConfig, tmp_path / "a.yaml")


@pytest.mark.parametrize(
    "config_cls",
    [KeyframeSelectorConfig, WindowSchedulerConfig, AlignmentConfig, GlobalMapConfig, RerunConfig],
    ids=lambda cls: cls.__name__,
)
def test_library_configs_round_trip_through_yaml(config_cls, tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(to_dict(config_cls())))
    assert load_config(config_cls, path) == config_cls()


def test_nested_library_config_error_path():
    with pytest.raises(ConfigError) as info:
        load_config(GlobalMapConfig, None, ["alignment.trim_k=0.5"])
    assert str(info.value) == "--set alignment.trim_k=0.5: alignment.trim_k: expected float >= huber_k, got 0.5"


def test_apply_overrides_parses_yaml_scalars_and_rejects_malformed():
    data = apply_overrides({"a": {"b": 1}}, ["a.c=[1, 2]", "d=null", "a.b=hello"])
    assert data == {"a": {"b": "hello", "c": [1, 2]}, "d": None}
    with pytest.raises(ConfigError, match=r"override 'novalue': expected key.path=value"):
        apply_overrides({}, ["novalue"])
    with pytest.raises(ConfigError, match=r"override 'a.b.c=1': a.b is 1, not a mapping"):
        apply_overrides({"a": {"b": 1}}, ["a.b.c=1"])
