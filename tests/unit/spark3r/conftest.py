"""Small global-attention layers and token layouts for the Spark3R unit tests."""

from __future__ import annotations

import json

import pytest
import torch

from spark3r_stream.models import load_weights, model_from_official_config
from spark3r_stream.models.layers import Attention, RotaryEmbedding2D, TokenLayout, grid_positions
from spark3r_stream.models.targets import ReductionTargets
from tests.conftest import fixture_path


def make_layout(num_frames: int, grid_hw=(4, 4), num_special: int = 2) -> TokenLayout:
    h, w = grid_hw
    return TokenLayout(
        num_frames=num_frames, tokens_per_frame=num_special + h * w, num_special=num_special, grid_hw=grid_hw
    )


def make_attention(dim: int = 16, num_heads: int = 2) -> Attention:
    torch.manual_seed(0)
    return Attention(dim, num_heads, qk_norm=True, rope=RotaryEmbedding2D(100.0)).eval()


def global_positions(layout: TokenLayout, batch: int = 1) -> torch.Tensor:
    h, w = layout.grid_hw
    pos = grid_positions(batch * layout.num_frames, h, w, layout.num_special)
    return pos.reshape(batch, layout.num_frames * layout.tokens_per_frame, 2)


def single_layer_targets(reference_frame: int | None = 0, num_special: int = 2) -> ReductionTargets:
    return ReductionTargets(
        global_attention=("attn",),
        special_tokens_per_frame=num_special,
        reference_frame=reference_frame,
        sensitive_layers=(0,),
    )


@pytest.fixture(scope="session")
def fixture_vggt():
    """The official-code VGGT parity fixture (width 48, 4+4 blocks, 5x5 patches at 70 px)."""
    cfg = json.loads(fixture_path("vggt_tiny", "config.json").read_text())["config"]
    model = model_from_official_config("vggt", cfg)
    load_weights(model, fixture_path("vggt_tiny", "weights.safetensors"))
    return model
