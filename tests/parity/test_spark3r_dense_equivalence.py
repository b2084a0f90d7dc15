"""Spark3R with every factor 1 (r_Q = r_KV = l = 1) computes the dense model: fixture model and full-size VGGT-1B."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from spark3r_stream.models import build_model, load_weights, model_from_official_config
from spark3r_stream.spark3r import Spark3RConfig, accelerate, disable
from tests.conftest import fixture_path

DENSE = Spark3RConfig(r_q=1, r_kv=1, layer_multiplier=1)
# Factors 1 run the same projection, kernel and output ops as dense: anything above float32 rounding is a bug.
TIGHT = 1e-6
PARITY_ATOL = 1e-4  # tests/parity/test_vggt_parity.py: official-fixture tolerance
OUTPUTS = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf")


@pytest.fixture(scope="module")
def fixture_model():
    cfg = json.loads(fixture_path("vggt_tiny", "config.json").read_text())["config"]
    model = model_from_official_config("vggt", cfg)
    load_weights(model, fixture_path("vggt_tiny", "weights.safetensors"))
    return model


def run_both(model, images: torch.Tensor) -> tuple[dict, dict]:
    with torch.no_grad():
        disable(model)
        dense = model(images, return_all_layers=True)
        accelerate(model, DENSE)
        reduced = model(images, return_all_layers=True)
    return dense, reduced


@pytest.mark.parametrize("case", ["multi", "single", "portrait", "batch2"])
def test_fixture_model_factors_one_equal_dense_and_official(fixture_model, case):
    inputs = load_file(fixture_path("vggt_tiny", "inputs.safetensors"))
    outputs = load_file(fixture_path("vggt_tiny", "outputs.safetensors"))
    dense, reduced = run_both(fixture_model, inputs[case])
    plan = fixture_model.last_reduction_plan
    assert len(plan["layers"]) == 4 and all(layer["r_q"] == layer["r_kv"] == 1 for layer in plan["layers"])
    for name in OUTPUTS:
        torch.testing.assert_close(reduced[name], dense[name], atol=TIGHT, rtol=TIGHT)
        torch.testing.assert_close(reduced[name], outputs[f"{case}.{name}"], atol=PARITY_ATOL, rtol=PARITY_ATOL)
    for i, (ours, ref) in enumerate(zip(reduced["aggregator_tokens"], dense["aggregator_tokens"], strict=True)):
        torch.testing.assert_close(ours, ref, atol=TIGHT, rtol=TIGHT, msg=f"aggregator layer {i}")


def test_full_size_vggt_1b_factors_one_equal_dense():
    torch.manual_seed(0)
    model = build_model("vggt-1b", random_weights=True, enable_track=False)
    images = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        dense = model(images)
        accelerate(model, DENSE)
        reduced = model(images)
        assert len(model.last_reduction_plan["layers"]) == 24
        accelerate(model)  # paper defaults at S = 2: r_KV = 3 in the 18 insensitive layers, so outputs move
        paper = model(images)
    assert [layer["r_kv"] for layer in model.last_reduction_plan["layers"]].count(3) == 18
    for name in OUTPUTS:
        torch.testing.assert_close(reduced[name], dense[name], atol=TIGHT, rtol=TIGHT)
    assert not torch.allclose(paper["pose_enc"], dense["pose_enc"], atol=1e-4)
