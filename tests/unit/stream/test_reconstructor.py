"""WindowReconstructor: exact encoder cache across re-runs, dense decoding only where geometry is needed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spark3r_stream.errors import ConfigError, InputError
from spark3r_stream.models import load_weights, model_from_official_config, predict
from spark3r_stream.stream.reconstructor import ReconstructionConfig, WindowReconstructor
from tests.conftest import fixture_path

TOL = 1e-5  # same float32 kernels on the same inputs; only the batching of the encoder differs
BF16_DEPTH_TOL = 0.05  # bf16 keeps 8 mantissa bits (~0.4 % per value); a 4-block backbone stays within a few per cent


@pytest.fixture(scope="module")
def model():
    cfg = json.loads(fixture_path("vggt_tiny", "config.json").read_text())["config"]
    return load_weights(model_from_official_config("vggt", cfg), fixture_path("vggt_tiny", "weights.safetensors"))


def keyframes(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (28, 42, 3), dtype=np.uint8) for _ in range(n)]


def test_cached_rerun_equals_an_uncached_run(model):
    cached = WindowReconstructor(model, ReconstructionConfig(refresh_budget=10))
    images = keyframes(4)
    for k, image in enumerate(images):
        cached.add_keyframe(k, image)
    cached.run(0, (0, 1, 2))
    grown = cached.run(0, (0, 1, 2, 3))
    assert cached.stats == {"encoder_cache_hits": 3, "encoder_cache_misses": 4}
    stacked = torch.stack([torch.from_numpy(i).permute(2, 0, 1).float() / 255 for i in images])
    reference = predict(model, stacked)
    assert np.abs(grown.world_from_cam - reference.world_from_cam).max() < TOL
    assert np.abs(grown.depth - reference.depth).max() < TOL


def test_cached_first_frame_block_follows_the_reference_frame(model):
    """A keyframe that becomes the window's frame 0 (a new window starting on an overlap keyframe) gets the
    reference frame's special tokens: its cached frame block 0 output is recomputed, the run still equals an uncached one."""
    cached = WindowReconstructor(model, ReconstructionConfig(refresh_budget=10))
    images = keyframes(4)
    for k, image in enumerate(images):
        cached.add_keyframe(k, image)
    cached.run(0, (0, 1, 2))
    assert [cached.first_block[k][0] for k in (0, 1, 2)] == [True, False, False]
    moved = cached.run(1, (1, 2, 3))
    assert [cached.first_block[k][0] for k in (1, 2, 3)] == [True, False, False]
    stacked = torch.stack([torch.from_numpy(i).permute(2, 0, 1).float() / 255 for i in images[1:]])
    reference = predict(model, stacked)
    assert np.abs(moved.world_from_cam - reference.world_from_cam).max() < TOL
    assert np.abs(moved.depth - reference.depth).max() < TOL


def test_dense_heads_run_on_new_keyframes_plus_the_refresh_budget(model):
    reconstructor = WindowReconstructor(model, ReconstructionConfig(refresh_budget=1))
    for k, image in enumerate(keyframes(6)):
        reconstructor.add_keyframe(k, image)
    first = reconstructor.run(0, (0, 1, 2))
    assert first.dense_keyframe_ids == (0, 1, 2)
    second = reconstructor.run(0, (0, 1, 2, 3, 4))
    assert second.dense_keyframe_ids == (0, 3, 4)  # new 3, 4 and the stalest old one
    assert second.depth.shape == (3, 28, 42)
    assert second.world_from_cam.shape == (5, 4, 4)
    third = reconstructor.run(0, (0, 1, 2, 3, 4, 5))
    assert third.dense_keyframe_ids == (1, 5)


def test_memory_is_bounded_by_the_window(model):
    reconstructor = WindowReconstructor(model, ReconstructionConfig())
    for k, image in enumerate(keyframes(5)):
        reconstructor.add_keyframe(k, image)
    reconstructor.run(0, (0, 1, 2, 3, 4))
    reconstructor.forget({3, 4})
    assert set(reconstructor.images) == set(reconstructor.encoded) == set(reconstructor.first_block) == {3, 4}
    with pytest.raises(KeyError, match=r"keyframes \[0\] were never received"):
        reconstructor.run(1, (0, 3))


def test_an_oversized_keyframe_or_a_full_store_is_refused_before_storing(model):
    reconstructor = WindowReconstructor(model, ReconstructionConfig(max_stored_keyframes=2))
    with pytest.raises(InputError, match=r"image 1000000x8 has 8000000 pixels > max_keyframe_pixels") as info:
        reconstructor.add_keyframe(0, np.zeros((1_000_000, 8, 3), np.uint8))
    assert info.value.reason == "bad_image" and not reconstructor.images
    for keyframe_id in (1, 2):
        reconstructor.add_keyframe(keyframe_id, np.zeros((28, 42, 3), np.uint8))
    reconstructor.add_keyframe(2, np.zeros((28, 42, 3), np.uint8))  # the same id again replaces it
    with pytest.raises(InputError, match="2 keyframes stored already") as info:
        reconstructor.add_keyframe(3, np.zeros((28, 42, 3), np.uint8))
    assert info.value.reason == "store_full" and sorted(reconstructor.images) == [1, 2]


def test_cpu_bf16_is_opt_in_and_needs_a_bf16_cpu(model, monkeypatch):
    import spark3r_stream.stream.reconstructor as reconstructor_module

    assert not WindowReconstructor(model, ReconstructionConfig()).cpu_bf16  # float32 by default
    monkeypatch.setattr(reconstructor_module, "cpu_has_bf16", lambda: False)
    assert not WindowReconstructor(model, ReconstructionConfig(cpu_bf16=True)).cpu_bf16
    monkeypatch.setattr(reconstructor_module, "cpu_has_bf16", lambda: True)
    runs = {}
    for cpu_bf16 in (False, True):
        reconstructor = WindowReconstructor(model, ReconstructionConfig(cpu_bf16=cpu_bf16))
        for k, image in enumerate(keyframes(3)):
            reconstructor.add_keyframe(k, image)
        runs[cpu_bf16] = reconstructor.run(0, (0, 1, 2))
    assert runs[True].world_from_cam.dtype == np.float64 and runs[True].depth.dtype == np.float32
    assert not np.array_equal(runs[True].depth, runs[False].depth)  # the backbone did run in bf16
    assert np.abs(runs[True].depth - runs[False].depth).max() < BF16_DEPTH_TOL * np.abs(runs[False].depth).max()


def test_from_config_keeps_freed_memory_for_reuse(monkeypatch):
    import spark3r_stream.stream.reconstructor as reconstructor_module

    kept = []
    monkeypatch.setattr(reconstructor_module, "keep_freed_memory", lambda max_bytes: kept.append(max_bytes) or True)
    WindowReconstructor.from_config(ReconstructionConfig(model="vggt-tiny", random_weights=True))
    WindowReconstructor.from_config(ReconstructionConfig(model="vggt-tiny", random_weights=True, malloc_keep_mb=0))
    assert kept == [1024 << 20]  # 0 leaves glibc's defaults
    with pytest.raises(ConfigError, match="malloc_keep_mb: expected int in \\[0, 2047\\], got 4096"):
        ReconstructionConfig(malloc_keep_mb=4096)
