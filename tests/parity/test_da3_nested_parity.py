"""DA3's metric/mono net and nested (metric) net against the official code (fixtures/da3_tiny_nested, stored compactly),
the rescaling on its own from the stored taps, and the released files' key layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from spark3r_stream.errors import CheckpointError
from spark3r_stream.models import build_model, predict
from spark3r_stream.models import da3 as da3_module
from spark3r_stream.models.checkpoint import load_state_dict_strict
from spark3r_stream.models.spec import ModelSpec
from tests.conftest import fixture_path
from tests.parity.compare import assert_close

METRIC_CASES = {"metric_s1": ("imgs_s1", {"export_feat_layers": (0, 3)}), "metric_s3": ("imgs_s3", {})}
NESTED_CASES = {
    "nested_s3": ("imgs_s3", {"export_feat_layers": (1, 4)}),
    "nested_s1": ("imgs_s1", {}),
    "nested_s3_posecond": ("imgs_s3", {"pose": True}),
}
METRIC_OF = {"nested_s3": "metric_s3", "nested_s1": "metric_s1", "nested_s3_posecond": "metric_s3"}
# the official nested forward returns no sky; our extra `sky` is checked against the metric case's
NOT_OFFICIAL = {"sky"}


def fixture_configs() -> tuple[da3_module.DA3MonoConfig, da3_module.DA3Config]:
    metric = da3_module.config_from_official(
        json.loads(fixture_path("da3_tiny_nested", "config.json").read_text())["metric"]
    )
    anyview = da3_module.config_from_official(json.loads(fixture_path("da3_tiny", "config.json").read_text()))
    return metric, anyview


def nested_state() -> dict[str, torch.Tensor]:
    """The original weights file's layout (HF DA3NESTED: model.da3.*, model.da3_metric.*) from the compact copy."""
    state = {f"model.da3.{k.removeprefix('model.')}": v for k, v in
             load_file(fixture_path("da3_tiny", "weights.safetensors")).items()}  # fmt: skip
    state.update(load_file(fixture_path("da3_tiny_nested", "metric_weights.safetensors")))
    return state


@pytest.fixture(scope="module")
def models():
    metric_cfg, anyview_cfg = fixture_configs()
    state = nested_state()
    metric = da3_module.build(metric_cfg).eval()
    # a standalone DA3METRIC file has the metric keys under `model.`
    metric_file = {f"model.{k.removeprefix('model.da3_metric.')}": v for k, v in state.items() if "da3_metric." in k}
    load_state_dict_strict(metric, metric_file, "da3_tiny_nested metric")
    nested = da3_module.build(da3_module.DA3NestedConfig(anyview=anyview_cfg, metric=metric_cfg)).eval()
    load_state_dict_strict(nested, state, "da3_tiny_nested")
    for model, name in ((metric, "da3-metric-custom"), (nested, "da3-nested-custom")):
        model.spec = ModelSpec(name, "da3", 70, None, da3_module.reduction_targets(model.config))
    return metric, nested


@pytest.fixture(scope="module")
def fixture_io():
    return load_file(fixture_path("da3_tiny", "inputs.safetensors")), load_file(
        fixture_path("da3_tiny_nested", "outputs.safetensors")
    )


def stored(outputs: dict, case: str) -> dict[str, torch.Tensor]:
    return {k[len(case) + 1 :]: v for k, v in outputs.items() if k.startswith(case + ".")}


@pytest.mark.parametrize("case", sorted(METRIC_CASES))
def test_metric_net_matches_every_stored_output(models, fixture_io, case):
    metric, _ = models
    inputs, outputs = fixture_io
    images, kwargs = METRIC_CASES[case]
    with torch.no_grad():
        out = metric(inputs[images], images_normalized=True, return_intermediates=True, **kwargs)
    C = metric.config.embed_dim
    ours = {"depth": out["depth"], "sky": out["sky"], "tap.head_raw.depth": out["depth_raw"]}
    ours.update({f"aux.{k}": v for k, v in out["aux"].items()})
    ours.update({f"tap.backbone_feat{i}.patch_tokens": f[..., C:] for i, (f, _) in enumerate(out["backbone_features"])})
    ours["tap.last_block_output_tokens"] = out["last_block_tokens"].reshape(-1, *stored(outputs, case)[
        "tap.last_block_output_tokens"].shape[1:])  # fmt: skip
    non_sky = out["sky"] < 0.3
    ours["tap.mono_sky_fill.non_sky_mask"] = non_sky
    ours["tap.mono_sky_fill.max_depth"] = out["depth"][~non_sky][:1]  # every sky pixel holds the fill value
    checked = 0
    for name, ref in stored(outputs, case).items():
        if name.endswith("cls_token") or name == "tap.sky_preactivation":
            continue  # not read by the head / the sky map is its ReLU, compared above
        assert_close(f"{case}.{name}", ours[name], ref)
        checked += 1
    assert checked >= 10
    assert out["intrinsics"].isnan().all() and "depth_metres" not in out


@pytest.mark.parametrize("case", sorted(NESTED_CASES))
def test_nested_net_matches_every_stored_output(models, fixture_io, case):
    _, nested = models
    inputs, outputs = fixture_io
    images, kwargs = NESTED_CASES[case]
    if kwargs.pop("pose", False):
        kwargs = {"extrinsics": inputs["extrinsics_w2c_s3"], "intrinsics": inputs["intrinsics_s3"]}
    taps: dict = {}
    with torch.no_grad():
        out = nested(inputs[images], images_normalized=True, taps=taps, **kwargs)
    ours = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
    ours.update({f"aux.{k}": v for k, v in out["aux"].items()})
    ours.update({f"tap.{k}": v.reshape(1) if v.dim() == 0 else v for k, v in taps.items()})
    ours["is_metric"] = torch.tensor([out["is_metric"]])
    ours["scale_factor"] = torch.tensor([out["scale_factor"]], dtype=torch.float64)
    refs = stored(outputs, case)
    # masks and counts first: one flipped pixel moves the scale by ~1e-4 (fixture README)
    for name in ("tap.align.non_sky_mask", "tap.align.mask", "tap.align.num_pixels", "is_metric"):
        assert_close(f"{case}.{name}", ours[name], refs[name])
    for name, ref in refs.items():
        if name == "tap.da3.ref_view_index":
            continue  # the any-view branch's selection: covered by test_da3_parity
        assert_close(f"{case}.{name}", ours[name], ref)
    assert_close(f"{case}.sky", out["sky"], outputs[f"{METRIC_OF[case]}.sky"])
    assert len(refs) >= 16


@pytest.mark.parametrize("case", sorted(NESTED_CASES))
def test_rescaling_alone_from_the_stored_taps(fixture_io, case):
    """The step only float32 reproduces (median-confidence decision), fed the official branch outputs."""
    _, outputs = fixture_io
    refs = stored(outputs, case)
    anyview = {k: refs[f"tap.da3.{k}"] for k in ("depth", "depth_conf", "extrinsics", "intrinsics")}
    metric = METRIC_OF[case]
    taps: dict = {}
    out = da3_module.nested_metric_alignment(anyview, outputs[f"{metric}.depth"], outputs[f"{metric}.sky"], taps=taps)
    assert torch.equal(taps["align.mask"], refs["tap.align.mask"])
    assert int(taps["align.num_pixels"]) == int(refs["tap.align.num_pixels"])
    assert out["scale_factor"] == pytest.approx(float(refs["scale_factor"]), rel=1e-6)
    for name in ("depth", "depth_conf", "extrinsics", "intrinsics"):
        assert_close(f"{case}.{name}", out[name], refs[name])
    assert_close(f"{case}.median_conf", taps["align.median_conf"].reshape(1), refs["tap.align.median_conf"])
    assert_close(
        f"{case}.max_depth", taps["nested_sky_fill.max_depth"].reshape(1), refs["tap.nested_sky_fill.max_depth"]
    )


def test_quantile_is_torchs_below_its_limit_and_deterministic_above_the_official_subsampling():
    generator = torch.Generator().manual_seed(0)
    for n in (1, 2, 9722, 2243):
        values = torch.rand(n, generator=generator)
        for q in (0.5, 0.99):
            assert da3_module.quantile(values, q) == torch.quantile(values, q)
    big = torch.rand(150_000, generator=generator)  # the official code would draw a random 100k subset here
    assert da3_module.quantile(big, 0.99) == torch.quantile(big, 0.99)
    assert da3_module.quantile(big, 0.99) == da3_module.quantile(big.flip(0), 0.99)


def test_too_little_non_sky_is_refused(fixture_io):
    _, outputs = fixture_io
    refs = stored(outputs, "nested_s1")
    anyview = {k: refs[f"tap.da3.{k}"] for k in ("depth", "depth_conf", "extrinsics", "intrinsics")}
    all_sky = torch.ones_like(outputs["metric_s1.sky"])
    with pytest.raises(ValueError, match="only 0 non-sky pixels"):
        da3_module.nested_metric_alignment(anyview, outputs["metric_s1.depth"], all_sky)


def test_predict_gives_metres(models, fixture_io):
    metric, nested = models
    inputs, outputs = fixture_io
    images = (
        inputs["imgs_s3"][0] * torch.tensor([0.229, 0.224, 0.225])[:, None, None]
        + torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    )  # back to [0, 1], what predict takes
    prediction = predict(nested, images)
    assert prediction.metadata["is_metric"] == 1
    assert prediction.metadata["scale_factor"] == pytest.approx(float(outputs["nested_s3.scale_factor"]), rel=1e-4)
    np.testing.assert_allclose(prediction.depth, outputs["nested_s3.depth"][0].numpy(), rtol=1e-4, atol=1e-4)
    cam_from_world = prediction.cam_from_world[:, :3]
    np.testing.assert_allclose(cam_from_world, outputs["nested_s3.extrinsics"][0].double().numpy(), atol=1e-4)
    assert prediction.sky.dtype == bool and prediction.sky.mean() == pytest.approx(0.173, abs=1e-3)
    with pytest.raises(ValueError, match="'da3-metric-custom' gives depth in metres only from the focal length"):
        predict(metric, images)
    K = outputs["nested_s3.intrinsics"][0]
    mono = predict(metric, images, intrinsics=K)
    focal = ((K[:, 0, 0] + K[:, 1, 1]) / 2).numpy()
    expected = outputs["metric_s3.depth"][0].numpy() * focal[:, None, None] / 300
    np.testing.assert_allclose(mono.depth, expected, rtol=1e-4, atol=1e-4)
    assert mono.world_points.shape == (3, 56, 70, 3) and mono.depth_conf is None
    np.testing.assert_array_equal(mono.world_from_cam, np.tile(np.eye(4), (3, 1, 1)))
    with pytest.raises(ValueError, match="predicts its own cameras"):
        predict(nested, images, intrinsics=K)


def test_dense_frames_keep_the_statistics_of_all_views(models, fixture_io):
    _, nested = models
    inputs, outputs = fixture_io
    with torch.no_grad():
        out = nested(inputs["imgs_s3"], images_normalized=True, dense_frames=torch.tensor([2]))
    assert_close("depth of view 2", out["depth"], outputs["nested_s3.depth"][:, 2:3])
    assert out["extrinsics"].shape == (1, 3, 3, 4)


@pytest.mark.parametrize("preset", ["da3-metric-large", "da3-mono-large", "da3-nested-giant-large"])
def test_released_file_layout_loads_strictly(preset):
    """The released key layout (manifest: `model.` / `model.da3.` / `model.da3_metric.` prefixes, the nested file's
    Gaussian-head keys `model.da3.gs_head.*`, the shared aux norm stored once) loads into the preset on meta."""
    manifest = json.loads(fixture_path(f"{preset.replace('-', '_')}_manifest.json").read_text())
    absent = set(manifest["keys_absent_from_safetensors_file_due_to_sharing"])
    state = {k: torch.empty(shape, device="meta") for k, shape in manifest["state_dict"].items() if k not in absent}
    if preset == "da3-nested-giant-large":
        assert sum(k.startswith("model.da3.gs_head.") for k in state) > 0
        assert {k.split(".")[1] for k in state} == {"da3", "da3_metric"}
    model = build_model(preset, device="meta")
    load_state_dict_strict(model, state, f"{preset} layout")
    del state[next(iter(state))]
    with pytest.raises(CheckpointError, match="1 missing keys"):
        load_state_dict_strict(build_model(preset, device="meta"), state, f"{preset} layout")


def test_nested_targets_are_the_any_view_branch_like_da3_giant():
    nested = build_model("da3-nested-giant-large", device="meta").spec.reduction_targets
    giant = build_model("da3-giant", device="meta").spec.reduction_targets
    assert nested.global_attention == tuple(f"da3.{p}" for p in giant.global_attention)
    assert (nested.sensitive_layers, nested.reference_frame) == (giant.sensitive_layers, giant.reference_frame)


def test_metric_launch_file_runs_the_nested_preset_with_given_weights(tmp_path):
    from spark3r_stream.config import from_dict
    from spark3r_stream.launch_files import load_launch_file, resolve
    from spark3r_stream.stream.global_map import GlobalMapConfig
    from spark3r_stream.stream.reconstructor import ReconstructionConfig

    spec, source = load_launch_file(
        "replay_tum_da3_metric", ["capture.path=/d", "reconstruction.weights=/w.safetensors"]
    )
    params = {node.kind: node.config["params"] for node in resolve(spec, source, tmp_path, "t")}
    config = from_dict(ReconstructionConfig, params["reconstruction"])
    assert (config.model, config.weights) == ("da3-nested-giant-large", "/w.safetensors") and config.spark3r
    assert from_dict(GlobalMapConfig, params["fusion"]["map"]).min_confidence > 1.0  # sky: confidence exactly 1


def test_window_reconstructor_gets_metres_from_the_nested_net(models):
    from spark3r_stream.spark3r import accelerate, disable
    from spark3r_stream.stream.reconstructor import ReconstructionConfig, WindowReconstructor

    _, nested = models
    accelerate(nested)
    try:
        reconstructor = WindowReconstructor(nested, ReconstructionConfig(refresh_budget=1))
        rng = np.random.default_rng(5)
        for k in range(4):
            reconstructor.add_keyframe(k, rng.integers(0, 256, (56, 70, 3), dtype=np.uint8))
        out = reconstructor.run(1, (0, 1, 2, 3))
    finally:
        disable(nested)
    assert out.depth.shape == (4, 56, 70) and np.isfinite(out.depth).all() and (out.depth > 0).all()
    assert [layer["path"] for layer in out.plan["layers"]][0].startswith("da3.backbone.pretrained.blocks.")
