"""accelerate/disable on built models: attachment as data, unchanged state dict, plan in Prediction metadata."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from spark3r_stream.errors import ConfigError
from spark3r_stream.models import build_model, predict, reduction_targets_of
from spark3r_stream.models.layers import Block, RotaryEmbedding2D, TokenLayout, grid_positions
from spark3r_stream.models.targets import ReductionTargets
from spark3r_stream.models.vggt import EncoderConfig
from spark3r_stream.spark3r import Spark3RConfig, accelerate, disable, is_accelerated
from spark3r_stream.spark3r.reducer import GlobalReducer

MODEL_TOL = 1e-5  # float32 through 4+4 blocks of width 48; a wrong merge moves outputs by O(0.1)


def tiny_model():
    return build_model(
        "vggt-tiny",
        random_weights=True,
        img_size=28,
        embed_dim=32,
        depth=2,
        num_heads=2,
        encoder=EncoderConfig(embed_dim=32, depth=1, num_heads=2),
        dpt_layers=(0, 1, 1, 1),
    )


def test_state_dict_keys_unchanged_and_reducers_are_plain_objects():
    model = tiny_model()
    keys = list(model.state_dict())
    accelerate(model)
    assert list(model.state_dict()) == keys
    targets = reduction_targets_of(model)
    reducers = [model.get_submodule(path).reducer for path in targets.global_attention]
    assert all(isinstance(r, GlobalReducer) and not isinstance(r, nn.Module) for r in reducers)
    assert [r.layer for r in reducers] == list(range(len(targets.global_attention)))
    assert all(block.attn.reducer is None for block in model.aggregator.frame_blocks)
    assert is_accelerated(model)
    disable(model)
    assert not is_accelerated(model) and not hasattr(model, "last_reduction_plan")
    assert all(model.get_submodule(path).reducer is None for path in targets.global_attention)


def test_plan_lands_in_prediction_metadata_and_follows_s():
    model = accelerate(tiny_model(), Spark3RConfig(r_q=2, r_kv=2))
    prediction = predict(model, torch.rand(6, 3, 28, 28))
    plan = prediction.metadata["reduction_plan"]
    json.dumps(plan)
    assert plan["num_frames"] == 6 and plan["tokens_per_frame"] == 4 + 5
    assert [(layer["r_q"], layer["r_kv"]) for layer in plan["layers"]] == [
        (2, 6),
        (2, 2),
    ]  # layer 1 sensitive (11-16 of 24 mapped)
    assert plan["layers"][0]["num_keys"] == 9 and plan["layers"][0]["num_queries"] < 54
    predict(model, torch.rand(3, 3, 28, 28))
    assert model.last_reduction_plan["num_frames"] == 3


def test_disable_restores_the_dense_outputs():
    model = tiny_model()
    images = torch.rand(5, 3, 28, 28)
    with torch.no_grad():
        dense = model(images)["pose_enc"]
        reduced = accelerate(model, Spark3RConfig(r_q=2, r_kv=2))(images)["pose_enc"]
        again = disable(model)(images)["pose_enc"]
    assert not torch.allclose(reduced, dense, atol=1e-3)
    assert torch.equal(again, dense)


def test_identical_frames_merge_reproduces_dense_model(fixture_vggt):
    # frames 1.. are identical; frame 0 (reference, own camera/register tokens) is protected. Groups of 5 give
    # every 2x2 offset a destination frame in each group, so every source has an identical destination.
    images = torch.rand(1, 3, 56, 70).expand(10, -1, -1, -1)
    try:
        with torch.no_grad():
            dense = fixture_vggt(images)
            config = Spark3RConfig(r_q=4, r_kv=1, layer_multiplier=1, group_size=5)
            merged = accelerate(fixture_vggt, config)(images)
        assert fixture_vggt.last_reduction_plan["layers"][0]["num_queries"] < 10 * 25 / 2
    finally:
        disable(fixture_vggt)
    for name in ("pose_enc", "depth", "world_points"):
        torch.testing.assert_close(merged[name], dense[name], atol=MODEL_TOL, rtol=MODEL_TOL)


def test_bad_targets_fail_with_the_path():
    model = tiny_model()
    missing = ReductionTargets(("aggregator.global_blocks.9.attn",), 5, 0, ())
    with pytest.raises(ConfigError, match="'aggregator.global_blocks.9.attn': no such module"):
        accelerate(model, targets=missing)
    not_attention = ReductionTargets(("aggregator.global_blocks.0.mlp",), 5, 0, ())
    with pytest.raises(ConfigError, match="is Mlp, expected the shared Attention"):
        accelerate(model, targets=not_attention)
    with pytest.raises(ConfigError, match=r"sensitive_layers \[7\]: out of range for 2 global layers"):
        accelerate(model, Spark3RConfig(sensitive_layers=(7,)))
    with pytest.raises(ConfigError, match="not built by build_model"):
        accelerate(nn.Linear(2, 2))


class OtherBackbone(nn.Module):
    """A backbone of another shape (no reference frame, 1 special token, other paths): the reduction is data-driven."""

    def __init__(self) -> None:
        super().__init__()
        rope = RotaryEmbedding2D(100.0)
        self.decoder = nn.ModuleList(Block(16, 2, qk_norm=True, rope=rope) for _ in range(4))

    def forward(self, tokens: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        B, N, _ = tokens.shape
        pos = grid_positions(B * layout.num_frames, *layout.grid_hw, layout.num_special).reshape(B, N, 2)
        for i, block in enumerate(self.decoder):
            tokens = block(tokens, pos=pos, layout=layout if i % 2 else None)
        return tokens


def test_any_backbone_declaring_targets_accelerates():
    model = OtherBackbone().eval()
    targets = ReductionTargets(("decoder.1.attn", "decoder.3.attn"), 1, None, (1,))
    layout = TokenLayout(num_frames=150, tokens_per_frame=5, num_special=1, grid_hw=(2, 2))
    tokens = torch.randn(1, 750, 16)
    with torch.no_grad():
        dense = model(tokens, layout)
        accelerate(model, targets=targets)
        reduced = model(tokens, layout)
    plan = model.last_reduction_plan
    assert plan["protected_frame"] is None
    assert [(layer["r_q"], layer["r_kv"]) for layer in plan["layers"]] == [(2, 12), (2, 4)]
    assert model.decoder[0].attn.reducer is None
    assert reduced.shape == dense.shape and not torch.allclose(reduced, dense)
