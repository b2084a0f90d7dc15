"""DA3 against the official code's outputs (fixtures/da3_tiny, da3_tiny_giant): every stored tensor of every case."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from spark3r_stream.errors import CheckpointError
from spark3r_stream.models import build_model, load_weights, model_from_official_config, predict
from spark3r_stream.models.da3 import SHARED_TENSOR_ALIASES, reference_first_order, select_reference_view
from spark3r_stream.models.layers import Attention, TokenLayout
from spark3r_stream.models.registry import reduction_targets_of
from tests.conftest import fixture_path
from tests.parity.compare import assert_close

FIXTURES = ("da3_tiny", "da3_tiny_giant")
# README: the RANSAC ray-pose run is informational (torch-RNG dependent), not a parity target.
INFORMATIONAL_CASES = {"s3_raypose_seed0"}
# da3_tiny_giant `s1small_gs` (infer_gs=True): the GS head + GaussianAdapter outputs
GAUSSIAN_FIELDS = ("means", "scales", "rotations", "harmonics", "opacities")
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def build_tiny(fixture: str):
    cfg = json.loads(fixture_path(fixture, "config.json").read_text())
    model = model_from_official_config("da3", cfg)
    load_weights(model, fixture_path(fixture, "weights.safetensors"))
    return model, cfg


@pytest.fixture(scope="module", params=FIXTURES)
def tiny(request):
    model, cfg = build_tiny(request.param)
    inputs = load_file(fixture_path(request.param, "inputs.safetensors"))
    outputs = load_file(fixture_path(request.param, "outputs.safetensors"))
    return request.param, model, cfg, inputs, outputs


def case_call(cfg: dict, inputs: dict, case: str) -> tuple[torch.Tensor, dict]:
    spec = cfg["cases"][case]
    kwargs = {}
    for key, value in spec["kwargs"].items():
        if key in ("extrinsics", "intrinsics"):
            kwargs[key] = inputs[value]
        elif key == "export_feat_layers":
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return inputs[spec["input"]], kwargs


def our_outputs(model, images: torch.Tensor, kwargs: dict) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(images, images_normalized=True, return_intermediates=True, **kwargs)
    ours = {k: out[k] for k in ("depth", "depth_conf", "extrinsics", "intrinsics")}
    ours.update({f"aux.{k}": v for k, v in out["aux"].items()})
    ours.update({
        "tap.ref_view_index": out["ref_view_index"],
        "tap.last_block_output_tokens": out["last_block_tokens"],
        "tap.head_raw.ray": out["ray"],
        "tap.head_raw.ray_conf": out["ray_conf"],
        "tap.cam_dec.pose_enc": out["pose_enc"],
        "tap.cam_enc.cam_token": out["cam_tokens"],
    })  # fmt: skip
    for k, (features, camera_token) in enumerate(out["backbone_features"]):
        ours[f"tap.backbone_feat{k}.patch_tokens"] = features
        ours[f"tap.backbone_feat{k}.camera_token"] = camera_token
    if "gaussians" in out:
        ours.update({f"gaussians.{name}": getattr(out["gaussians"], name) for name in GAUSSIAN_FIELDS})
    return ours


def test_every_case_and_stored_tensor_matches(tiny):
    fixture, model, cfg, inputs, outputs = tiny
    cases = [c for c in cfg["cases"] if c not in INFORMATIONAL_CASES]
    assert len(cases) == (4 if fixture == "da3_tiny" else 5)
    compared = 0
    for case in cases:
        images, kwargs = case_call(cfg, inputs, case)
        ours = our_outputs(model, images, kwargs)
        stored = {k[len(case) + 1 :]: v for k, v in outputs.items() if k.startswith(case + ".")}
        assert stored, case
        for name, ref in stored.items():
            assert_close(f"{fixture}.{case}.{name}", ours.get(name), ref)
            compared += 1
    assert compared == (47 if fixture == "da3_tiny" else 38)  # every stored tensor, the 5 Gaussian ones included


def test_reference_view_index_and_restored_order(tiny):
    fixture, model, cfg, inputs, outputs = tiny
    expected = 1 if fixture == "da3_tiny" else 2  # fixture READMEs
    assert outputs["s3.tap.ref_view_index"].tolist() == [expected]
    with torch.no_grad():
        out = model(inputs["imgs_s3"], images_normalized=True, return_intermediates=True)
    assert out["ref_view_index"].tolist() == [expected]
    assert_close("depth in input order", out["depth"], outputs["s3.depth"])


def test_gaussians_match_and_the_gs_keys_load_strictly():
    model, _ = build_tiny("da3_tiny_giant")
    state = load_file(fixture_path("da3_tiny_giant", "weights.safetensors"))
    gs_keys = {k.removeprefix("model.") for k in state if k.startswith("model.gs_head.")}
    assert gs_keys and gs_keys <= set(model.state_dict())  # strict load (build_tiny) consumed them
    assert not any(k.startswith("gs_adapter.") for k in model.state_dict())  # parameter-free, as released
    outputs = load_file(fixture_path("da3_tiny_giant", "outputs.safetensors"))
    images = load_file(fixture_path("da3_tiny_giant", "inputs.safetensors"))["imgs_s1_small"]
    with torch.no_grad():
        out = model(images, images_normalized=True, infer_gs=True)
    for name in GAUSSIAN_FIELDS:
        assert_close(name, getattr(out["gaussians"], name), outputs[f"s1small_gs.gaussians.{name}"])
    assert_close("depth beside the Gaussians", out["depth"], outputs["s1small_gs.depth"])
    # decoding one view of two gives exactly that view's Gaussians of the full run (per-view head and adapter)
    pair = torch.cat([images, images.flip(-1)], dim=1)
    with torch.no_grad():
        full = model(pair, images_normalized=True, infer_gs=True)["gaussians"]
        second = model(pair, images_normalized=True, infer_gs=True, dense_frames=torch.tensor([1]))["gaussians"]
    num = 42 * 56
    assert full.means.shape == (1, 2 * num, 3) and second.means.shape == (1, num, 3)
    for name in GAUSSIAN_FIELDS:
        assert_close(f"view 1 {name}", getattr(second, name), getattr(full, name)[:, num:])
    no_gs, _ = build_tiny("da3_tiny")
    with pytest.raises(ValueError, match="no Gaussian head"):
        no_gs(images, images_normalized=True, infer_gs=True)


def test_unit_range_input_matches_normalised_input():
    model, _ = build_tiny("da3_tiny")
    inputs = load_file(fixture_path("da3_tiny", "inputs.safetensors"))
    outputs = load_file(fixture_path("da3_tiny", "outputs.safetensors"))
    with torch.no_grad():
        out = model(inputs["imgs_s3"] * IMAGENET_STD + IMAGENET_MEAN, ref_view_strategy="first")
    for key in ("depth", "depth_conf", "extrinsics", "intrinsics"):
        assert_close(key, out[key], outputs[f"s3_first.{key}"])


def test_shared_aux_layernorm_loads_from_the_single_stored_copy(tmp_path):
    model, _ = build_tiny("da3_tiny")
    scratch = model.head.scratch
    assert all(level[2] is scratch.output_conv2_aux[0][2] for level in scratch.output_conv2_aux)
    state = load_file(fixture_path("da3_tiny", "weights.safetensors"))
    for alias in SHARED_TENSOR_ALIASES:
        assert f"model.{alias}" not in state  # stored once, as in the released files
    torch.testing.assert_close(
        scratch.output_conv2_aux[3][2].weight, state["model.head.scratch.output_conv2_aux.0.2.weight"]
    )
    # a file storing the aliases with different values is refused
    bad = dict(state)
    bad["model.head.scratch.output_conv2_aux.3.2.weight"] = state["model.head.scratch.output_conv2_aux.0.2.weight"] + 1
    save_file(bad, tmp_path / "differ.safetensors")
    with pytest.raises(CheckpointError, match=r"output_conv2_aux\.3\.2\.weight and .*aux\.0\.2\.weight are one shared"):
        load_weights(model, tmp_path / "differ.safetensors")
    # without the stored copy the strict loader names every missing alias
    del state["model.head.scratch.output_conv2_aux.0.2.weight"]
    save_file(state, tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match=r"4 missing keys \(head\.scratch\.output_conv2_aux\.0\.2\.weight \[32\]"):
        load_weights(model, tmp_path / "missing.safetensors")


def test_reference_view_strategies_by_hand():
    cls = torch.tensor([[[1.0, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0, 3]]])
    assert select_reference_view(cls, "first").tolist() == [0]
    assert select_reference_view(cls, "middle").tolist() == [2]
    # rows of F Fᵀ − I: view 0 spans [0, 0.994] (the widest), view 3 only [0, 0]
    assert select_reference_view(cls, "saddle_sim_range").tolist() == [0]
    assert select_reference_view(cls, "saddle_balanced").shape == (1,)
    assert reference_first_order(torch.tensor([2, 0, 3]), 4).tolist() == [[2, 0, 1, 3], [0, 1, 2, 3], [3, 0, 1, 2]]


def test_saddle_balanced_picks_the_most_balanced_view():
    # similarity / norm / variance of view 1 sit mid-range, the others at the extremes
    cls = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [2.0, 1.0, 0.5, 0.0], [0.0, 0.0, 4.0, 4.0]]])
    unit = cls / cls.norm(dim=-1, keepdim=True)
    sim = ((unit @ unit[0].T) - torch.eye(3)).sum(-1) / 2
    metrics = [sim, cls.norm(dim=-1), unit.var(dim=-1)]
    score = sum(((m - m.min()) / (m.max() - m.min() + 1e-8) - 0.5).abs() for m in metrics)
    assert select_reference_view(cls, "saddle_balanced").tolist() == [int(score.argmin())]


@pytest.mark.parametrize(("preset", "num_global", "sensitive"), [
    ("da3-small", 4, (1, 2, 3)), ("da3-base", 4, (1, 2, 3)), ("da3-large", 8, (2, 3, 4, 5, 6)),
    ("da3-giant", 14, tuple(range(3, 13))),
])  # fmt: skip
def test_reduction_targets_resolve_to_global_attention(preset, num_global, sensitive):
    model = build_model(preset, device="meta")
    targets = reduction_targets_of(model)
    alt = model.config.alt_start
    assert targets.global_attention == tuple(
        f"backbone.pretrained.blocks.{i}.attn" for i in range(alt, model.config.depth) if i % 2 == 1
    )
    assert len(targets.global_attention) == num_global
    assert all(isinstance(model.get_submodule(p), Attention) for p in targets.global_attention)
    assert targets.special_tokens_per_frame == 1 and targets.reference_frame == 0
    # giant: Spark3R §IV-D layers 3–12 of 14; the others: the giant schedule mapped by relative depth
    assert targets.sensitive_layers == sensitive


def test_reducer_plug_point_gets_the_layout_and_dense_reducer_is_exact():
    model, cfg = build_tiny("da3_tiny")
    inputs = load_file(fixture_path("da3_tiny", "inputs.safetensors"))
    outputs = load_file(fixture_path("da3_tiny", "outputs.safetensors"))
    layouts = []

    def dense(attn, x, pos, layout):
        layouts.append(layout)
        q, k, v = attn.project_qkv(x, pos)
        return attn.project_out(torch.nn.functional.scaled_dot_product_attention(q, k, v))

    targets = reduction_targets_of(model)
    for path in targets.global_attention:
        model.get_submodule(path).reducer = dense
    with torch.no_grad():
        out = model(inputs["imgs_s3"], images_normalized=True)
    assert layouts == [TokenLayout(num_frames=3, tokens_per_frame=21, num_special=1, grid_hw=(4, 5))] * 4
    assert_close("depth via reducer", out["depth"], outputs["s3.depth"])


def test_predict_follows_the_official_outputs():
    model, _ = build_tiny("da3_tiny")
    inputs = load_file(fixture_path("da3_tiny", "inputs.safetensors"))
    outputs = load_file(fixture_path("da3_tiny", "outputs.safetensors"))
    images = (inputs["imgs_s3"] * IMAGENET_STD + IMAGENET_MEAN)[0]
    prediction = predict(model, images)
    assert prediction.world_from_cam.shape == (3, 4, 4) and prediction.intrinsics.shape == (3, 3, 3)
    assert prediction.depth.shape == prediction.depth_conf.shape == (3, 56, 70)
    assert prediction.world_points.shape == (3, 56, 70, 3)
    cam_from_world = np.tile(np.eye(4), (3, 1, 1))
    cam_from_world[:, :3] = outputs["s3.extrinsics"][0].double().numpy()
    np.testing.assert_allclose(prediction.world_from_cam, np.linalg.inv(cam_from_world), atol=1e-4)
    np.testing.assert_allclose(prediction.intrinsics, outputs["s3.intrinsics"][0].double(), rtol=1e-4)
    np.testing.assert_allclose(prediction.depth, outputs["s3.depth"][0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(prediction.depth_conf, outputs["s3.depth_conf"][0], rtol=1e-4, atol=1e-4)
    # rigid-motion consistency: world points mapped back by cam_from_world project onto their own pixels and depth
    cam = (
        np.einsum("sij,shwj->shwi", cam_from_world[:, :3, :3], prediction.world_points)
        + cam_from_world[:, None, None, :3, 3]
    )
    np.testing.assert_allclose(cam[..., 2], prediction.depth, rtol=1e-4, atol=1e-4)
    K = prediction.intrinsics
    u = K[:, None, None, 0, 0] * cam[..., 0] / cam[..., 2] + K[:, None, None, 0, 2]
    np.testing.assert_allclose(u, np.broadcast_to(np.arange(70.0), u.shape), atol=1e-3)


def test_predict_dense_subset_keeps_cameras_for_all_views():
    model, _ = build_tiny("da3_tiny")
    inputs = load_file(fixture_path("da3_tiny", "inputs.safetensors"))
    outputs = load_file(fixture_path("da3_tiny", "outputs.safetensors"))
    images = (inputs["imgs_s3"] * IMAGENET_STD + IMAGENET_MEAN)[0]
    prediction = predict(model, images, dense_frames=torch.tensor([2]))
    assert prediction.depth.shape == (1, 56, 70) and prediction.world_from_cam.shape == (3, 4, 4)
    np.testing.assert_allclose(prediction.depth[0], outputs["s3.depth"][0, 2], rtol=1e-4, atol=1e-4)
