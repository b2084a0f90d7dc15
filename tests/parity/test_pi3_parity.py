"""π³ against the official code's outputs (fixtures/pi3_tiny): every stored tensor, strict loading, equivariance."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from spark3r_stream.errors import CheckpointError
from spark3r_stream.models import build_model, load_weights, model_from_official_config, predict
from spark3r_stream.models.layers import Attention, TokenLayout
from spark3r_stream.models.outputs import fit_intrinsics
from spark3r_stream.models.registry import reduction_targets_of
from tests.conftest import fixture_path
from tests.parity.compare import assert_close

CASES = ("imgs_s3", "imgs_s1", "imgs_s3_perm201")
STORED_PER_CASE = 7  # 4 forward outputs + 3 taps (fixture README)


@pytest.fixture(scope="module")
def tiny_pi3():
    cfg = json.loads(fixture_path("pi3_tiny", "config.json").read_text())
    model = model_from_official_config("pi3", cfg)
    load_weights(model, fixture_path("pi3_tiny", "weights.safetensors"))
    return model


@pytest.fixture(scope="module")
def fixture_io():
    return (
        load_file(fixture_path("pi3_tiny", "inputs.safetensors")),
        load_file(fixture_path("pi3_tiny", "outputs.safetensors")),
    )


def our_outputs(model, images: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(images, return_intermediates=True)
    C = model.config.embed_dim
    hidden = out.pop("decoder_hidden")
    out["encoder_x_norm_patchtokens"] = out.pop("encoder_tokens")[0]
    out["decoder_concat_hidden"] = hidden
    out["decoder_last_layer_tokens"] = hidden[..., C:].reshape(images.shape[0], -1, C)  # last block is global
    return out


@pytest.mark.parametrize("case", CASES)
def test_every_stored_output_matches(tiny_pi3, fixture_io, case):
    inputs, outputs = fixture_io
    ours = our_outputs(tiny_pi3, inputs[case])
    stored = {k[len(case) + 1 :]: v for k, v in outputs.items() if k.startswith(case + ".")}
    assert len(stored) == STORED_PER_CASE
    for name, ref in stored.items():
        assert_close(f"{case}.{name}", ours[name], ref)


def test_permutation_equivariance(tiny_pi3, fixture_io):
    inputs, _ = fixture_io
    perm = [2, 0, 1]
    assert torch.equal(inputs["imgs_s3_perm201"], inputs["imgs_s3"][:, perm])
    with torch.no_grad():
        base = tiny_pi3(inputs["imgs_s3"])
        permuted = tiny_pi3(inputs["imgs_s3_perm201"])
    for key in ("points", "local_points", "conf", "camera_poses"):
        assert_close(f"permuted {key}", permuted[key], base[key][:, perm])


def test_rotations_are_proper(tiny_pi3, fixture_io):
    inputs, _ = fixture_io
    with torch.no_grad():
        poses = tiny_pi3(inputs["imgs_s3"])["camera_poses"][0]
    rotation = poses[:, :3, :3]
    assert torch.allclose(rotation @ rotation.transpose(1, 2), torch.eye(3).expand(3, 3, 3), atol=1e-5)
    assert torch.allclose(torch.det(rotation), torch.ones(3), atol=1e-5)
    assert torch.equal(poses[:, 3], torch.tensor([0.0, 0, 0, 1]).expand(3, 4))


def test_cached_encoder_and_dense_subset_match_full(tiny_pi3, fixture_io):
    inputs, outputs = fixture_io
    images = inputs["imgs_s3"]
    with torch.no_grad():
        tokens = tiny_pi3.encode(images)
        out = tiny_pi3(images, patch_tokens=tokens, dense_frames=torch.tensor([0, 2]))
    assert_close("camera_poses", out["camera_poses"], outputs["imgs_s3.camera_poses"])
    for key in ("points", "local_points", "conf"):
        assert_close(key, out[key], outputs[f"imgs_s3.{key}"][:, [0, 2]])


def test_strict_load_names_a_missing_key(tmp_path):
    state = load_file(fixture_path("pi3_tiny", "weights.safetensors"))
    del state["image_mean"]
    path = tmp_path / "bad.safetensors"
    save_file(state, path)
    cfg = json.loads(fixture_path("pi3_tiny", "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"1 missing keys \(image_mean \[1, 3, 1, 1\]\)"):
        load_weights(model_from_official_config("pi3", cfg), path)


def test_reduction_targets_resolve_to_global_attention():
    model = build_model("pi3", device="meta")
    targets = reduction_targets_of(model)
    assert targets.global_attention == tuple(f"decoder.{i}.attn" for i in range(1, 36, 2))
    assert all(isinstance(model.get_submodule(p), Attention) for p in targets.global_attention)
    assert targets.special_tokens_per_frame == 5
    assert targets.reference_frame is None
    assert targets.sensitive_layers == tuple(range(11, 17))


class RecordingDenseReducer:
    """A reducer that keeps every token (dense maths) and records the layouts it is handed."""

    def __init__(self) -> None:
        self.layouts: list[TokenLayout] = []

    def __call__(self, attn, x, pos, layout):
        self.layouts.append(layout)
        q, k, v = attn.project_qkv(x, pos)
        return attn.project_out(torch.nn.functional.scaled_dot_product_attention(q, k, v))


def test_reducer_plug_point_gets_the_layout_and_dense_reducer_is_exact(tiny_pi3, fixture_io):
    inputs, outputs = fixture_io
    targets = reduction_targets_of(tiny_pi3)
    assert len(targets.global_attention) == 2
    reducer = RecordingDenseReducer()
    try:
        for path in targets.global_attention:
            tiny_pi3.get_submodule(path).reducer = reducer
        with torch.no_grad():
            out = tiny_pi3(inputs["imgs_s3"])
    finally:
        for path in targets.global_attention:
            tiny_pi3.get_submodule(path).reducer = None
    assert reducer.layouts == [TokenLayout(num_frames=3, tokens_per_frame=25, num_special=5, grid_hw=(4, 5))] * 2
    assert_close("points via reducer", out["points"], outputs["imgs_s3.points"])


def test_predict_follows_the_official_outputs(tiny_pi3, fixture_io):
    inputs, outputs = fixture_io
    prediction = predict(tiny_pi3, inputs["imgs_s3"][0])
    assert prediction.world_from_cam.shape == (3, 4, 4) and prediction.world_from_cam.dtype == np.float64
    assert prediction.intrinsics.shape == (3, 3, 3)
    assert prediction.depth.shape == prediction.depth_conf.shape == (3, 56, 70)
    assert prediction.world_points.shape == (3, 56, 70, 3)
    np.testing.assert_allclose(prediction.world_from_cam, outputs["imgs_s3.camera_poses"][0].double(), atol=1e-4)
    np.testing.assert_allclose(prediction.world_points, outputs["imgs_s3.points"][0], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(prediction.depth, outputs["imgs_s3.local_points"][0, ..., 2], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(prediction.depth_conf, torch.sigmoid(outputs["imgs_s3.conf"][0, ..., 0]), atol=1e-5)
    # camera-to-world: world points are the camera's local points moved by world_from_cam (rigid motion per view)
    local = outputs["imgs_s3.local_points"][0].double().numpy()
    moved = np.einsum("sij,shwj->shwi", prediction.world_from_cam[:, :3, :3], local)
    moved += prediction.world_from_cam[:, None, None, :3, 3]
    np.testing.assert_allclose(prediction.world_points, moved, atol=1e-3, rtol=1e-4)


def test_predict_dense_subset_keeps_cameras_for_all_views(tiny_pi3, fixture_io):
    inputs, outputs = fixture_io
    prediction = predict(tiny_pi3, inputs["imgs_s3"][0], dense_frames=torch.tensor([1]))
    assert prediction.depth.shape == (1, 56, 70)
    assert prediction.world_from_cam.shape == (3, 4, 4) and prediction.intrinsics.shape == (3, 3, 3)
    np.testing.assert_allclose(prediction.world_points[0], outputs["imgs_s3.points"][0, 1], atol=1e-4, rtol=1e-4)


def test_fit_intrinsics_recovers_a_pinhole_camera():
    K = np.array([[60.0, 0, 34.5], [0, 58.0, 27.0], [0, 0, 1]])
    H, W = 56, 70
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    z = 1.0 + np.random.default_rng(0).random((H, W))
    points = np.stack([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z], axis=-1)[None]
    np.testing.assert_allclose(fit_intrinsics(points)[0], K, atol=1e-9)
