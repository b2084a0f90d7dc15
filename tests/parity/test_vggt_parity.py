"""VGGT against the official code's outputs (fixtures/vggt_tiny) and the full-size key manifest."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from spark3r_stream.models import build_model, load_weights, model_from_official_config, predict
from spark3r_stream.models.pose_encoding import (
    extri_intri_to_pose_encoding,
    pose_encoding_to_extri_intri,
)
from tests.conftest import fixture_path

# Fixture README: float32-vs-float64 gaps ≤ 1.4e-6·max|value|; 1e-4 is ~100× that, far below any real bug (O(1)).
ATOL = RTOL = 1e-4
CASES = ("multi", "single", "portrait", "batch2")


@pytest.fixture(scope="module")
def tiny_vggt():
    cfg = json.loads(fixture_path("vggt_tiny", "config.json").read_text())["config"]
    model = model_from_official_config("vggt", cfg)
    load_weights(model, fixture_path("vggt_tiny", "weights.safetensors"))
    return model


@pytest.fixture(scope="module")
def fixture_io():
    return (
        load_file(fixture_path("vggt_tiny", "inputs.safetensors")),
        load_file(fixture_path("vggt_tiny", "outputs.safetensors")),
    )


def assert_close(name: str, ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} vs {tuple(ref.shape)}"
    err = (ours - ref).abs()
    bad = err > ATOL + RTOL * ref.abs()
    assert not bad.any(), f"{name}: {int(bad.sum())} elements off, max |Δ| {err.max().item():.3e}"


def our_outputs(model, images: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(images, return_all_layers=True)
        dino = model.aggregator.patch_embed
        H, W = images.shape[-2:]
        flat = images.reshape(-1, *images.shape[-3:])
        patch_tokens = model.aggregator.encode(flat[None])[0]
        pos = dino.interpolate_pos_encoding(H // 14, W // 14, H, W)
    extrinsic, intrinsic = pose_encoding_to_extri_intri(out["pose_enc"], (H, W))
    ours = {k: out[k] for k in ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf")}
    ours.update({f"pose_enc_list.{i}": t for i, t in enumerate(out["pose_enc_list"])})
    ours.update({f"aggregator_tokens.{i}": t for i, t in enumerate(out["aggregator_tokens"])})
    ours.update(extrinsic=extrinsic, intrinsic=intrinsic, dino_patch_tokens=patch_tokens, dino_pos_embed_interp=pos)
    return ours


@pytest.mark.parametrize("case", CASES)
def test_every_stored_output_matches(tiny_vggt, fixture_io, case):
    inputs, outputs = fixture_io
    ours = our_outputs(tiny_vggt, inputs[case])
    stored = {k[len(case) + 1 :]: v for k, v in outputs.items() if k.startswith(case + ".")}
    assert len(stored) >= 14
    for name, ref in stored.items():
        assert_close(f"{case}.{name}", ours[name], ref)


def test_only_head_layers_are_kept(tiny_vggt, fixture_io):
    inputs, outputs = fixture_io
    with torch.no_grad():
        tokens, _ = tiny_vggt.aggregator(inputs["multi"][None], keep_layers={3})
    assert [t is not None for t in tokens] == [False, False, False, True]
    assert_close("kept layer 3", tokens[3], outputs["multi.aggregator_tokens.3"])


def test_predict_matches_official_camera_conversion(tiny_vggt, fixture_io):
    inputs, outputs = fixture_io
    prediction = predict(tiny_vggt, inputs["multi"])
    cam_from_world = torch.from_numpy(prediction.cam_from_world[:, :3]).float()
    assert_close("extrinsic", cam_from_world, outputs["multi.extrinsic"][0])
    assert_close("intrinsic", torch.from_numpy(prediction.intrinsics).float(), outputs["multi.intrinsic"][0])
    assert prediction.depth.shape == (3, 56, 70)
    assert prediction.world_points.shape == (3, 56, 70, 3)
    assert prediction.points_conf.min() >= 1.0


def test_dense_frames_decode_only_the_requested_frames(tiny_vggt, fixture_io):
    inputs, outputs = fixture_io
    prediction = predict(tiny_vggt, inputs["multi"], dense_frames=torch.tensor([2]))
    assert prediction.depth.shape == (1, 56, 70)
    assert_close("depth of frame 2", torch.from_numpy(prediction.depth), outputs["multi.depth"][0, 2:3, ..., 0])
    assert prediction.world_from_cam.shape == (3, 4, 4)


def test_cached_patch_tokens_give_the_same_result(tiny_vggt, fixture_io):
    inputs, outputs = fixture_io
    images = inputs["multi"]
    with torch.no_grad():
        cached = tiny_vggt.aggregator.encode(images[None])
    prediction = predict(tiny_vggt, images, patch_tokens=cached)
    assert_close("depth", torch.from_numpy(prediction.depth), outputs["multi.depth"][0, ..., 0])


def test_pose_encoding_round_trip(fixture_io):
    _, outputs = fixture_io
    pose_enc = outputs["multi.pose_enc"]
    extrinsic, intrinsic = pose_encoding_to_extri_intri(pose_enc, (56, 70))
    back = extri_intri_to_pose_encoding(extrinsic, intrinsic, (56, 70))
    # the quaternion is recovered up to scale and sign; compare the rotation it encodes
    again, _ = pose_encoding_to_extri_intri(back, (56, 70))
    assert_close("extrinsic round trip", again, extrinsic)
    assert_close("fov round trip", back[..., 7:], pose_enc[..., 7:])


def test_vggt_1b_manifest_on_meta():
    manifest = json.loads(fixture_path("vggt_1b_manifest.json").read_text())
    model = build_model("vggt-1b", device="meta")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == manifest["state_dict"]
    assert len(ours) == 1797
    assert sum(p.numel() for p in model.parameters()) == 1_256_537_516
    assert all(p.is_meta for p in model.parameters())


def test_vggt_1b_without_track_head():
    manifest = json.loads(fixture_path("vggt_1b_manifest.json").read_text())
    model = build_model("vggt-1b", device="meta", enable_track=False)
    assert len(model.state_dict()) == manifest["num_tensors_without_track_head"]
    assert sum(p.numel() for p in model.parameters()) == manifest["total_params_without_track_head"]
