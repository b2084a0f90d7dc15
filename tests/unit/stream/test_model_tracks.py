"""The model's tracks for the back end (issue 17): when they are on, what the reconstructor sends, and that fusion's
refinement gets them in the source's pixels next to the optical-flow tracks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spark3r_stream.errors import ConfigError
from spark3r_stream.models.checkpoint import read_state_dict
from spark3r_stream.models.registry import build_model, get_preset, packaged_weights_path
from spark3r_stream.sources.factory import open_source
from spark3r_stream.stream import backend as backend_module
from spark3r_stream.stream.backend import BackendConfig
from spark3r_stream.stream.global_map import GlobalMap, GlobalMapConfig
from spark3r_stream.stream.keyframes import KeyframeSelectorConfig, resize_for_model
from spark3r_stream.stream.model_tracks import TrackQueryConfig, tracks_enabled, window_observations
from spark3r_stream.stream.pipeline import FusionStep, KeyframesConfig, KeyframeStep, ReconstructionStep
from spark3r_stream.stream.reconstructor import ReconstructionConfig, WindowReconstructor
from spark3r_stream.stream.tracks import TrackObservations
from spark3r_stream.stream.windows import WindowSchedulerConfig
from spark3r_stream.transport import FrameRecord, Keyframe, WindowRequest, WindowResult, decode, encode

# vggt-tiny's sizes with a small track head (the official head needs 7 pyramid levels, i.e. 256+ px inputs)
SMALL_TRACK_HEAD = {
    "enable_track": True,
    "track_features": 16,
    "track_hidden_size": 32,
    "track_depth": 2,
    "track_corr_levels": 4,
    "track_corr_radius": 2,
    "track_out_channels": (8, 12, 16, 20),
    "track_layers": (0, 1, 2, 3),
}
# random track-head weights give visibility and confidence near 0.5: keep every observation to test the plumbing
KEEP_ALL = TrackQueryConfig(max_points=48, num_frames=4, min_visibility=0.0, min_confidence=0.0)


@pytest.fixture(scope="module")
def tracking_model():
    """vggt-tiny's trained backbone and heads with a random (seeded) track head."""
    model = build_model("vggt-tiny", random_weights=True, **SMALL_TRACK_HEAD)
    state = read_state_dict(packaged_weights_path(get_preset("vggt-tiny")))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and missing and all(k.startswith("track_head.") for k in missing)
    return model


def test_auto_is_off_for_vggt_tiny_and_for_random_track_heads(tracking_model):
    tiny = build_model("vggt-tiny")  # the shipped weights: no track head at all
    assert tiny.track_head is None and tiny.spec.weights is not None
    assert not tracks_enabled(tiny, "auto") and not tracks_enabled(tiny, "off")
    with pytest.raises(ConfigError, match="'on' needs a model with a track head, and 'vggt-tiny' has none"):
        tracks_enabled(tiny, "on")
    assert tracking_model.spec.weights is None  # built with random_weights: its track head was never trained
    assert not tracks_enabled(tracking_model, "auto") and tracks_enabled(tracking_model, "on")
    assert not tracks_enabled(tracking_model, "off")
    reconstructor = WindowReconstructor(tiny, ReconstructionConfig())  # the default demo: tracks "auto"
    assert not reconstructor.sends_tracks


def test_auto_is_on_for_a_track_head_loaded_from_a_checkpoint(tracking_model, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "with_track_head.safetensors"
    save_file({k: v.contiguous() for k, v in tracking_model.state_dict().items()}, str(path))
    loaded = build_model("vggt-tiny", weights=path, **SMALL_TRACK_HEAD)  # strict: the file has every track_head key
    assert tracks_enabled(loaded, "auto")
    assert WindowReconstructor(loaded, ReconstructionConfig()).sends_tracks


def test_model_pixels_map_back_to_the_source_pixels_they_came_from():
    """A blob at a known source pixel, resized and cropped as keyframes are: its model-pixel centroid maps back."""
    source_hw, model_hw, centre = (480, 640), (112, 112), np.array([401.0, 187.0])
    rows, cols = np.mgrid[: source_hw[0], : source_hw[1]]
    blob = np.exp(-((cols - centre[0]) ** 2 + (rows - centre[1]) ** 2) / (2 * 25.0**2))
    image = np.repeat((blob * 255).round().astype(np.uint8)[..., None], 3, axis=2)
    small = resize_for_model(image, model_hw)[..., 0].astype(np.float64)
    weights = np.where(small > 20, small, 0)
    m_rows, m_cols = np.mgrid[: model_hw[0], : model_hw[1]]
    model_uv = np.array([(weights * m_cols).sum(), (weights * m_rows).sum()]) / weights.sum()
    result = _result_with_tracks(np.array([5]), np.array([3]), model_uv[None].astype(np.float32), model_hw)
    observed = window_observations(result, 5, source_hw, model_hw)
    assert observed.track_ids.tolist() == [-4]  # the model tracks' own id space (optical flow: >= 0)
    # within 0.25 source px; dropping OpenCV's half-pixel centre convention would be off by 1.6 px here, one scale
    # for both axes (149 / 640 is not 112 / 480) by 0.9 px
    np.testing.assert_allclose(observed.uv[0], centre, atol=0.25)
    assert window_observations(result, 6, source_hw, model_hw) is None


def test_tracks_reach_the_window_result_and_the_back_end_refines_with_them(tracking_model, monkeypatch):
    source = open_source({"type": "synth", "seed": 2, "frames": 40, "height": 120, "width": 160})
    keyframes = KeyframeStep(
        KeyframesConfig(
            selector=KeyframeSelectorConfig(model_hw=(112, 112)),
            windows=WindowSchedulerConfig(stride=4, max_window=8, overlap=4),
        )
    )
    config = ReconstructionConfig(model="vggt-tiny", tracks="on", track_query=KEEP_ALL)
    reconstruction = ReconstructionStep(WindowReconstructor(tracking_model, config))
    fusion = FusionStep(GlobalMap(GlobalMapConfig()), None, BackendConfig(loop_closure=False))
    refined: list[list] = []
    calls: list[tuple] = []
    real_refine = backend_module.refine_window

    def spy(world_from_cam, intrinsics, observations, *args):
        refined.append(observations)
        calls.append((world_from_cam, intrinsics, observations, *args))
        return real_refine(world_from_cam, intrinsics, observations, *args)

    monkeypatch.setattr(backend_module, "refine_window", spy)
    results: list[WindowResult] = []
    source_hw = {}
    messages = [m for frame in source for m in keyframes.on_frame(frame)] + [keyframes.on_end()]
    for message in messages:
        if isinstance(message, FrameRecord):
            fusion.on_frame_record(message)
        elif isinstance(message, Keyframe):
            source_hw[message.keyframe_id] = message.source_hw
            reconstruction.on_keyframe(message)
            fusion.on_keyframe(message)
        elif isinstance(message, WindowRequest):
            result = reconstruction.on_request(message)
            result, _ = decode([bytes(memoryview(f).cast("B")) for f in encode(result, 0)])  # as fusion gets it
            results.append(result)
            fusion.on_result(result)
    assert len(results) >= 2 and set(source_hw.values()) == {(120, 160)}
    stats = reconstruction.summary()["model_tracks"]
    assert stats["enabled"] and stats["runs"] == len(results) and stats["failures"] == 0
    assert stats["observations"] == sum(len(r.track_ids) for r in results)
    for result in results:
        assert result.timings["track_ms"] > 0
        tracked = result.keyframe_ids[-KEEP_ALL.num_frames :]
        assert set(result.track_keyframe_ids.tolist()) == set(tracked)  # newest keyframes only, all kept here
        num_points = result.track_ids.max() + 1
        assert 8 <= num_points <= KEEP_ALL.max_points
        # every query point in the query keyframe; elsewhere every one that stays inside the image (thresholds 0)
        assert (result.track_keyframe_ids == result.keyframe_ids[-1]).sum() == num_points
        assert num_points * 2 < len(result.track_ids) <= num_points * len(tracked)
        assert ((result.track_uv >= 0) & (result.track_uv <= 111)).all()
    # fusion's refinement saw them: per keyframe its optical-flow tracks (ids >= 0) plus the model's (< 0), the latter
    # at the result's model pixels moved to the source's (resized to 112 x 149, 18 pixels cropped on the left)
    assert refined and len(refined) == len(fusion.backend.refinements)
    last, result = refined[-1], results[-1]
    newest = result.keyframe_ids[-1]
    with_model = [o for o in last if (o.track_ids < 0).any()]
    assert len(with_model) == min(KEEP_ALL.num_frames, len(last))
    assert all((o.track_ids >= 0).any() for o in last)  # the optical-flow tracks are still there
    mine = result.track_keyframe_ids == newest
    expected = (result.track_uv[mine] + [18, 0] + 0.5) / [149 / 160, 112 / 120] - 0.5  # 112 x 149, cropped
    got = last[-1]
    np.testing.assert_allclose(got.uv[got.track_ids < 0], expected, atol=1e-4)
    np.testing.assert_array_equal(got.track_ids[got.track_ids < 0], -1 - result.track_ids[mine])
    # and the bundle adjustment counted them: the same call without the model's observations has fewer
    world_from_cam, intrinsics, observations, depths, *rest = calls[-1]
    flow = [TrackObservations(o.track_ids[o.track_ids >= 0], o.uv[o.track_ids >= 0]) for o in observations]
    flow_depths = [d[o.track_ids >= 0] for d, o in zip(depths, observations, strict=True)]
    flow_only = real_refine(world_from_cam, intrinsics, flow, flow_depths, *rest)
    run = fusion.backend.refinements[-1]
    assert run["observations"] > flow_only.num_observations > 0


def test_a_track_head_failure_is_counted_and_the_window_still_goes_out(tracking_model, monkeypatch):
    from spark3r_stream.stream import reconstructor as reconstructor_module

    def broken(*args, **kwargs):
        raise RuntimeError("pyramid level of size 0")

    monkeypatch.setattr(reconstructor_module, "track_window", broken)
    reconstructor = WindowReconstructor(tracking_model, ReconstructionConfig(tracks="on"))
    rng = np.random.default_rng(0)
    for k in range(3):
        reconstructor.add_keyframe(k, rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))
    output = reconstructor.run(0, (0, 1, 2))
    assert output.track_uv is None and output.world_from_cam.shape == (3, 4, 4)
    assert reconstructor.track_stats["failures"] == 1 and reconstructor.track_stats["runs"] == 0


def _result_with_tracks(keyframe_ids, track_ids, track_uv, model_hw) -> WindowResult:
    k = len(set(keyframe_ids.tolist()))
    ids = tuple(sorted(set(keyframe_ids.tolist())))
    return WindowResult(
        window_id=0, keyframe_ids=ids, world_from_cam=np.tile(np.eye(4), (k, 1, 1)),
        intrinsics=np.tile(np.eye(3), (k, 1, 1)), dense_keyframe_ids=(), depth=np.zeros((0, *model_hw), np.float32),
        depth_conf=np.zeros((0, *model_hw), np.float32), timings={}, plan={}, model="test",
        track_keyframe_ids=keyframe_ids.astype(np.int64), track_ids=track_ids.astype(np.int64), track_uv=track_uv,
    )  # fmt: skip


torch.set_num_threads(1)


def test_yaml_on_and_off_read_as_the_modes_and_anything_else_is_refused():
    import yaml

    from spark3r_stream.config import from_dict

    for text, mode in (("on", "on"), ("off", "off"), ("auto", "auto"), ("true", "on"), ("'off'", "off")):
        config = from_dict(ReconstructionConfig, yaml.safe_load(f"tracks: {text}"), source="t.yaml")
        assert config.tracks == mode, text
    with pytest.raises(ConfigError, match="t.yaml: tracks: expected one of 'auto', 'on', 'off' or bool, got 'maybe'"):
        from_dict(ReconstructionConfig, {"tracks": "maybe"}, source="t.yaml")
    with pytest.raises(ConfigError, match="track_query.num_frames: expected int >= 2, got 1"):
        from_dict(ReconstructionConfig, {"track_query": {"num_frames": 1}}, source="t.yaml")


def test_with_spark3r_the_result_keeps_the_window_runs_reduction_plan(tracking_model):
    from spark3r_stream.spark3r import Spark3RConfig, accelerate, disable

    accelerate(tracking_model, Spark3RConfig())
    try:
        reconstructor = WindowReconstructor(tracking_model, ReconstructionConfig(tracks="on", track_query=KEEP_ALL))
        rng = np.random.default_rng(1)
        for k in range(12):
            reconstructor.add_keyframe(k, rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))
        output = reconstructor.run(0, tuple(range(12)))
    finally:
        disable(tracking_model)
    assert output.plan["num_frames"] == 12  # not the track call's 4 frames, which ran after it
    assert set(output.track_keyframe_ids.tolist()) == {8, 9, 10, 11}
