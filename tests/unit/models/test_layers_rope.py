"""Shared layers: the cached 2-D RoPE reproduces the official rotate-half form bit for bit; row projections."""

from __future__ import annotations

import pytest
import torch

from spark3r_stream.models.layers import Attention, RotaryEmbedding2D, grid_positions


def official_rope(rope: RotaryEmbedding2D, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """facebookresearch/vggt@44b3afb vggt/layers/rope.py, written out: per axis cos[pos] * x + rotate_half(x) * sin."""
    cos, sin = rope._cos_sin(x.shape[-1] // 2, int(positions.max()) + 1, x.device, x.dtype)
    out = []
    for axis, part in enumerate(x.chunk(2, dim=-1)):
        c, s = cos[positions[..., axis]].unsqueeze(1), sin[positions[..., axis]].unsqueeze(1)
        out.append(part * c + rope._rotate_half(part) * s)
    return torch.cat(out, dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [12, 16, 64])
def test_cached_rope_is_bit_exact_with_the_official_form(dtype, head_dim):
    rope = RotaryEmbedding2D(100.0)
    positions = grid_positions(6, 4, 5, 5).reshape(2, -1, 2)
    x = torch.randn(2, 3, positions.shape[1], head_dim).to(dtype)
    expected = official_rope(rope, x, positions)
    assert torch.equal(rope(x, positions), expected)
    assert torch.equal(rope(x, positions), expected)  # second call: from the cache
    token_major = rope(x.transpose(1, 2).contiguous(), positions, token_major=True)
    assert torch.equal(token_major.transpose(1, 2), expected)
    owned = x.clone()
    assert torch.equal(rope(owned, positions, inplace=True), expected)
    assert torch.equal(owned, expected)  # rotated in place


def test_rope_cache_is_keyed_by_content_and_bounded():
    rope = RotaryEmbedding2D(100.0)
    positions = grid_positions(2, 3, 3, 1).reshape(1, -1, 2).clone()
    x = torch.randn(1, 2, positions.shape[1], 8)
    rope(x, positions)
    positions[0, 3] = torch.tensor([7, 2])  # same tensor, same shape, new content: must not reuse the table
    assert torch.equal(rope(x, positions), official_rope(rope, x, positions))
    for frames in range(1, 2 * RotaryEmbedding2D.CACHE_SIZE):
        rope(x[:, :, :1].expand(-1, -1, frames, -1), positions[:, :1].expand(-1, frames, -1))
    assert len(rope._tables) == RotaryEmbedding2D.CACHE_SIZE


def test_row_projections_equal_the_head_split_ones():
    torch.manual_seed(0)
    attn = Attention(16, 2, qk_norm=True, rope=RotaryEmbedding2D(100.0)).eval()
    positions = grid_positions(3, 2, 2, 1).reshape(1, -1, 2)
    x = torch.randn(1, positions.shape[1], 16)
    with torch.no_grad():
        q, k, v = attn.project_qkv(x, positions)
        rows = attn.project_rows(x, positions, "qkv")
        k_rows, v_rows = attn.project_rows(x, positions, "kv")
    for head_split, token_major in zip((q, k, v, k, v), (*rows, k_rows, v_rows), strict=True):
        torch.testing.assert_close(token_major.transpose(1, 2), head_split, atol=1e-6, rtol=1e-6)
