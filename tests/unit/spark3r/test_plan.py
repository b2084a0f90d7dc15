"""Spark3R factors (paper §3.5 table), layer-adaptive schedule, config validation and presets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spark3r_stream.config import CONFIGS_DIR
from spark3r_stream.errors import ConfigError
from spark3r_stream.models.targets import ReductionTargets
from spark3r_stream.spark3r import Spark3RConfig, load_config_file, make_plan, paper_r_kv, paper_r_q
from tests.unit.spark3r.conftest import make_layout

VGGT_TARGETS = ReductionTargets(
    global_attention=tuple(f"aggregator.global_blocks.{i}.attn" for i in range(24)),
    special_tokens_per_frame=5,
    reference_frame=0,
    sensitive_layers=tuple(range(11, 17)),
)

# spark3r_paper.md §3.5: S -> (r_Q, r_KV high-sensitivity, r_KV low-sensitivity, KV frames kept high, low)
PAPER_TABLE = {
    46: (1, 1, 3, 46, 16),
    100: (1, 1, 3, 100, 34),
    256: (2, 7, 21, 37, 13),
    264: (2, 7, 21, 38, 13),
    500: (3, 13, 39, 39, 13),
    512: (4, 13, 39, 40, 14),
    623: (4, 16, 48, 39, 13),
    1000: (4, 25, 75, 40, 14),
}


@pytest.mark.parametrize("num_frames", sorted(PAPER_TABLE))
def test_factors_match_the_paper_table(num_frames):
    r_q, r_kv_high, r_kv_low, kept_high, kept_low = PAPER_TABLE[num_frames]
    plan = make_plan(make_layout(num_frames, grid_hw=(2, 2), num_special=5), VGGT_TARGETS, Spark3RConfig())
    assert (paper_r_q(num_frames), paper_r_kv(num_frames)) == (r_q, r_kv_high)
    assert (plan.r_q, plan.r_kv) == (r_q, r_kv_high)
    for layer in plan.layers:
        expected = (r_kv_high, kept_high) if 11 <= layer.layer <= 16 else (r_kv_low, kept_low)
        assert (layer.r_kv, len(layer.kept_frames)) == expected, layer.layer
        assert layer.sensitive == (11 <= layer.layer <= 16)
        assert layer.num_keys == len(layer.kept_frames) * 9


def test_forced_factors_and_overrides():
    config = Spark3RConfig(r_q=2, r_kv=4, layer_multiplier=2, r_kv_overrides={3: 256})
    plan = make_plan(make_layout(30), VGGT_TARGETS, config)
    assert plan.layers[3].r_kv == 256 and plan.layers[3].kept_frames == (0,)
    assert plan.layers[11].r_kv == 4 and plan.layers[0].r_kv == 8
    assert all(layer.r_q == 2 for layer in plan.layers)


def test_query_count_follows_groups_regions_and_protection():
    # 4x4 grid, 2x2 regions: 4 destinations + 12 sources per frame, 2 specials; G = 5 frames, frame 0 protected
    layout = make_layout(10)
    plan = make_plan(layout, VGGT_TARGETS, Spark3RConfig(r_q=2, group_size=5))
    # group 0: 90 tokens, wants 45 merged, has 4*12 = 48 sources; group 1: 90 tokens, 45 of 60 sources
    assert plan.layers[0].num_queries == 180 - 45 - 45
    capped = make_plan(layout, VGGT_TARGETS, Spark3RConfig(r_q=4, group_size=5))
    assert capped.layers[0].num_queries == 180 - 48 - 60  # every source merged: 2x2 regions cap r_Q near 4
    assert make_plan(layout, VGGT_TARGETS, Spark3RConfig(r_q=8)).region_size == (4, 2)


def test_keep_special_kv_adds_the_specials_of_pruned_frames():
    plan = make_plan(make_layout(10), VGGT_TARGETS, Spark3RConfig(r_kv=4, kv_special_tokens="keep"))
    assert plan.layers[11].kept_frames == (0, 4, 8)
    assert plan.layers[11].num_keys == 3 * 18 + 7 * 2


def test_plan_is_json_serialisable_and_reports_flops():
    plan = make_plan(make_layout(200), VGGT_TARGETS, Spark3RConfig())
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["r_q"] == 2 and data["r_kv"] == 5 and len(data["layers"]) == 24
    layer = plan.layers[0]
    assert layer.attention_flop_fraction == pytest.approx(layer.num_queries * layer.num_keys / layer.num_tokens**2)
    assert 0 < data["attention_flop_fraction"] < 1 / 5


def test_dense_config_is_dense():
    assert make_plan(make_layout(700), VGGT_TARGETS, Spark3RConfig(r_q=1, r_kv=1, layer_multiplier=1)).is_dense
    assert not make_plan(make_layout(700), VGGT_TARGETS, Spark3RConfig()).is_dense


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"r_q": 0}, "r_q: expected null or int >= 1, got 0"),
        ({"group_size": 0}, "group_size: expected int >= 1, got 0"),
        ({"similarity": "keys"}, "similarity: expected 'query' or 'input'"),
        ({"kv_special_tokens": "all"}, "kv_special_tokens: expected 'drop' or 'keep'"),
        ({"region_size": (2, 0)}, "region_size: expected null or \\[rows >= 1, cols >= 1\\]"),
        ({"r_kv_overrides": {1: 0}}, "r_kv_overrides: expected a mapping"),
    ],
)
def test_bad_config_values_name_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        Spark3RConfig(**fields)


def test_sensitive_layers_from_list_and_probe_file(tmp_path: Path):
    plan = make_plan(make_layout(200), VGGT_TARGETS, Spark3RConfig(sensitive_layers=(0, 1)))
    assert [layer.layer for layer in plan.layers if layer.sensitive] == [0, 1]
    schedule = tmp_path / "schedule.json"
    schedule.write_text(
        json.dumps({"format": "spark3r-schedule", "version": 1, "num_layers": 24, "sensitive_layers": [5, 7]})
    )
    plan = make_plan(make_layout(200), VGGT_TARGETS, Spark3RConfig(sensitive_layers=(0,), probe_file=str(schedule)))
    assert [layer.layer for layer in plan.layers if layer.sensitive] == [5, 7]
    with pytest.raises(ConfigError, match="out of range for 24 global layers"):
        make_plan(make_layout(200), VGGT_TARGETS, Spark3RConfig(sensitive_layers=(24,)))
    schedule.write_text(json.dumps({"format": "spark3r-schedule", "num_layers": 4, "sensitive_layers": [1]}))
    with pytest.raises(ConfigError, match="measured on 4 global layers, this model has 24"):
        make_plan(make_layout(200), VGGT_TARGETS, Spark3RConfig(probe_file=str(schedule)))
    schedule.write_text("{}")
    with pytest.raises(ConfigError, match="not a spark3r-schedule file"):
        make_plan(make_layout(200), VGGT_TARGETS, Spark3RConfig(probe_file=str(schedule)))


PRESET_FILES = sorted((CONFIGS_DIR / "spark3r").glob("*.yaml"))


def test_presets_exist():
    assert {p.stem for p in PRESET_FILES} >= {"paper", "dense", "kv-only", "q-only"}


@pytest.mark.parametrize("path", PRESET_FILES, ids=lambda p: p.stem)
def test_every_preset_loads(path: Path):
    config = load_config_file(path)
    plan = make_plan(make_layout(1000), VGGT_TARGETS, config)
    if path.stem == "dense":
        assert plan.is_dense
    if path.stem == "kv-only":
        assert plan.r_q == 1 and plan.r_kv == 25
    if path.stem == "q-only":
        assert plan.r_q == 4 and all(layer.r_kv == 1 for layer in plan.layers)
    if path.stem == "paper":
        assert config == Spark3RConfig()


def test_preset_unknown_key_suggests_the_field(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("group_sise: 4\n")
    with pytest.raises(ConfigError, match="group_size"):
        load_config_file(bad)
    assert load_config_file(CONFIGS_DIR / "spark3r" / "paper.yaml", ["r_q=2"]).r_q == 2
