"""WindowReconstructor with the π³ and DA3 backbones (fixture configs, random-valued weights): one growing window each;
their launch files (launch/replay_tum_pi3.yaml, _da3.yaml) name the family and its official input size.

Shapes, finiteness and conventions only; quality needs the official weights.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from spark3r_stream.config import from_dict
from spark3r_stream.launch_files import load_launch_file, resolve
from spark3r_stream.models import load_weights, model_from_official_config, reduction_targets_of
from spark3r_stream.models.preprocess import da3_target_size, pi3_target_size
from spark3r_stream.models.registry import get_preset
from spark3r_stream.spark3r import accelerate
from spark3r_stream.stream.keyframes import KeyframeSelector, KeyframeSelectorConfig
from spark3r_stream.stream.reconstructor import ReconstructionConfig, WindowReconstructor
from tests.conftest import fixture_path

FIXTURES = {"pi3": "pi3_tiny", "da3": "da3_tiny"}
HEIGHT, WIDTH = 28, 42  # 2x3 patches of 14 px
POSE_TOL = 1e-4  # float32 rotations: orthonormality


def build(family: str):
    cfg = json.loads(fixture_path(FIXTURES[family], "config.json").read_text())
    model = model_from_official_config(family, cfg)
    load_weights(model, fixture_path(FIXTURES[family], "weights.safetensors"))
    return accelerate(model)


@pytest.mark.parametrize("family", sorted(FIXTURES))
def test_one_growing_window_runs(family):
    reconstructor = WindowReconstructor(build(family), ReconstructionConfig(refresh_budget=1))
    rng = np.random.default_rng(5)
    for k in range(5):
        reconstructor.add_keyframe(k, rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))
    reconstructor.run(3, (0, 1, 2))
    out = reconstructor.run(3, (0, 1, 2, 3, 4))  # S = 5: DA3 selects and reorders a reference view

    assert (out.window_id, out.keyframe_ids, out.model) == (3, (0, 1, 2, 3, 4), f"{family}-custom")
    assert out.dense_keyframe_ids == (0, 3, 4)  # new 3, 4 and the stalest old one
    assert out.world_from_cam.shape == (5, 4, 4) and np.isfinite(out.world_from_cam).all()
    rotations = out.world_from_cam[:, :3, :3]
    assert np.abs(rotations @ rotations.transpose(0, 2, 1) - np.eye(3)).max() < POSE_TOL
    assert np.abs(out.world_from_cam[:, 3] - [0, 0, 0, 1]).max() == 0
    assert out.intrinsics.shape == (5, 3, 3) and np.isfinite(out.intrinsics).all()
    assert (out.intrinsics[:, 0, 0] > 0).all() and (out.intrinsics[:, 1, 1] > 0).all()
    assert out.depth.shape == out.depth_conf.shape == (3, HEIGHT, WIDTH)
    assert out.depth.dtype == out.depth_conf.dtype == np.float32
    assert np.isfinite(out.depth).all() and (out.depth > 0).all()  # both families: depth = exp(.)
    assert np.isfinite(out.depth_conf).all()
    model = reconstructor.model
    assert out.plan["num_frames"] == 5
    assert [layer["path"] for layer in out.plan["layers"]] == list(reduction_targets_of(model).global_attention)
    assert any(layer["num_keys"] < layer["num_tokens"] for layer in out.plan["layers"])  # Spark3R pruned K/V
    assert reconstructor.stats == {"encoder_cache_hits": 0, "encoder_cache_misses": 0}  # cache: VGGT only


TUM_WH = (640, 480)  # TUM RGB-D / 7-Scenes frames
LAUNCH_FILES = {"replay_tum_pi3": "pi3", "replay_tum_da3": "da3"}


@pytest.mark.parametrize("name", sorted(LAUNCH_FILES))
def test_launch_file_feeds_keyframes_at_the_official_input_size(name, tmp_path):
    spec, source = load_launch_file(name, ["capture.path=/data/seq", "reconstruction.weights=/data/model.safetensors"])
    params = {node.kind: node.config["params"] for node in resolve(spec, source, tmp_path, "t")}
    config = from_dict(ReconstructionConfig, params["reconstruction"])
    preset = get_preset(config.model)
    assert preset.family == LAUNCH_FILES[name] and config.weights == "/data/model.safetensors" and config.spark3r
    selector = KeyframeSelector(from_dict(KeyframeSelectorConfig, params["keyframes"]["selector"]))
    if preset.family == "pi3":
        width, height = pi3_target_size(*TUM_WH)
    else:
        width, height = da3_target_size(*TUM_WH, process_res=preset.input_size)
    frame = np.random.default_rng(0).integers(0, 256, (TUM_WH[1], TUM_WH[0], 3), dtype=np.uint8)
    keyframe = selector.offer(0, 0.0, frame)  # the first frame is a keyframe, sized by the model's preset
    assert keyframe.image.shape[:2] == (height, width)
