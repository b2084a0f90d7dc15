"""Spark3R on π³ and DA3: factors 1 reproduce the official fixtures; reduced factors run on the declared layers."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from spark3r_stream.models import load_weights, model_from_official_config
from spark3r_stream.spark3r.accelerate import accelerate, disable
from spark3r_stream.spark3r.plan import Spark3RConfig
from tests.conftest import fixture_path
from tests.parity.compare import assert_close

DENSE = Spark3RConfig(r_q=1, r_kv=1, layer_multiplier=1)


def tiny(family: str, fixture: str):
    model = model_from_official_config(family, json.loads(fixture_path(fixture, "config.json").read_text()))
    load_weights(model, fixture_path(fixture, "weights.safetensors"))
    return (
        model,
        load_file(fixture_path(fixture, "inputs.safetensors")),
        load_file(fixture_path(fixture, "outputs.safetensors")),
    )


def test_pi3_factors_one_equal_dense_and_stay_permutation_equivariant():
    model, inputs, outputs = tiny("pi3", "pi3_tiny")
    keys = set(model.state_dict())
    accelerate(model, DENSE)
    assert set(model.state_dict()) == keys
    with torch.no_grad():
        base = model(inputs["imgs_s3"])
        permuted = model(inputs["imgs_s3_perm201"])
    assert len(model.last_reduction_plan["layers"]) == 2
    for key in ("points", "local_points", "conf", "camera_poses"):
        assert_close(f"spark3r x1 {key}", base[key], outputs[f"imgs_s3.{key}"])
        assert_close(f"spark3r x1 permuted {key}", permuted[key], base[key][:, [2, 0, 1]])
    disable(model)


def test_da3_factors_one_equal_dense_on_both_fixtures():
    for fixture in ("da3_tiny", "da3_tiny_giant"):
        model, inputs, outputs = tiny("da3", fixture)
        accelerate(model, DENSE)
        with torch.no_grad():
            out = model(inputs["imgs_s3"], images_normalized=True)
        assert len(model.last_reduction_plan["layers"]) == 4
        for key in ("depth", "depth_conf", "extrinsics", "intrinsics"):
            assert_close(f"{fixture} spark3r x1 {key}", out[key], outputs[f"s3.{key}"])


def test_reduced_factors_run_on_both_backbones():
    for family, fixture, kwargs in (("pi3", "pi3_tiny", {}), ("da3", "da3_tiny", {"images_normalized": True})):
        model, inputs, _ = tiny(family, fixture)
        images = inputs["imgs_s3"].repeat(1, 4, 1, 1, 1)  # 12 views
        with torch.no_grad():
            dense = model(images, **kwargs)
            reduced = accelerate(model, Spark3RConfig(r_q=2, r_kv=2, group_size=4))(images, **kwargs)
        key = "camera_poses" if family == "pi3" else "extrinsics"
        assert reduced[key].shape == dense[key].shape
        assert torch.isfinite(reduced[key]).all()
        assert all(
            layer["num_keys"] < 12 * (25 if family == "pi3" else 21) for layer in model.last_reduction_plan["layers"]
        )
