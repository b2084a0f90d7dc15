"""The strict loader: formats, prefixes, and one clear message for every kind of wrong file."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from spark3r_stream.errors import CheckpointError
from spark3r_stream.models import build_model, load_weights
from tests.conftest import fixture_path


@pytest.fixture(scope="module")
def reference_state():
    return load_file(fixture_path("vggt_tiny", "weights.safetensors"))


def tiny_model():
    import json

    from spark3r_stream.models import model_from_official_config

    cfg = json.loads(fixture_path("vggt_tiny", "config.json").read_text())["config"]
    return model_from_official_config("vggt", cfg)


def test_pt_with_prefix_and_training_wrapper_loads(tmp_path, reference_state):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {f"module.{k}": v for k, v in reference_state.items()}, "epoch": 3}, path)
    model = load_weights(tiny_model(), path)
    key = "aggregator.camera_token"
    assert torch.equal(model.state_dict()[key], reference_state[key])


def test_model_prefix_in_safetensors_loads(tmp_path, reference_state):
    path = tmp_path / "prefixed.safetensors"
    save_file({f"model.{k}": v.contiguous() for k, v in reference_state.items()}, str(path))
    load_weights(tiny_model(), path)


def test_missing_unexpected_and_mis_shaped_keys_are_listed(tmp_path, reference_state):
    state = dict(reference_state)
    del state["depth_head.norm.weight"]
    state["extra.weight"] = torch.zeros(2)
    state["camera_head.embed_pose.bias"] = torch.zeros(7)
    path = tmp_path / "wrong.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(CheckpointError) as info:
        load_weights(tiny_model(), path)
    message = str(info.value)
    assert "wrong.safetensors does not fit the model" in message
    assert "1 missing keys (depth_head.norm.weight [96])" in message
    assert "1 unexpected (extra.weight [2])" in message
    assert "camera_head.embed_pose.bias: model [96] vs file [7]" in message


def test_truncated_and_foreign_files_are_rejected(tmp_path):
    good = fixture_path("vggt_tiny", "weights.safetensors").read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated.safetensors: not a readable safetensors file"):
        load_weights(tiny_model(), truncated)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pt: not a readable PyTorch checkpoint"):
        load_weights(tiny_model(), text)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(CheckpointError, match="tensor.pt: expected a dict of tensors, got Tensor"):
        load_weights(tiny_model(), tensor)
    with pytest.raises(CheckpointError, match="nothing.safetensors: no such file"):
        load_weights(tiny_model(), tmp_path / "nothing.safetensors")


def test_pickled_objects_are_never_executed(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Payload()}, path)
    with pytest.raises(CheckpointError, match="evil.pt: not a readable PyTorch checkpoint"):
        load_weights(tiny_model(), path)


def test_track_head_hint_for_files_without_it(tmp_path):
    model = build_model("vggt-1b", device="meta", enable_track=False)
    state = {k: torch.zeros(v.shape) for k, v in model.state_dict().items() if k.startswith("camera_head.")}
    assert state
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="missing keys"):
        load_weights(build_model("vggt-1b", device="meta"), path)
