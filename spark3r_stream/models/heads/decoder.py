"""π³'s per-view heads: a small transformer decoder over one view's tokens, and the pixel-shuffle linear head.

Matches yyfz/Pi3@9fa3ddb pi3/models/layers/transformer_head.py (`TransformerDecoder`, `LinearPts3d`;
reference_pi3.md §2.4–2.5); keys `projects`, `blocks.N`, `linear_out`, `proj` as released.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spark3r_stream.models.layers import Block, RotaryEmbedding2D


class TransformerDecoder(nn.Module):
    """Linear in -> `depth` frame-wise RoPE blocks (no q/k-norm, no LayerScale, LN eps 1e-6) -> linear out."""

    def __init__(
        self,
        in_dim: int,
        embed_dim: int,
        out_dim: int,
        *,
        depth: int = 5,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        rope: RotaryEmbedding2D | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.projects = nn.Linear(in_dim, embed_dim, **kw)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, norm_eps=1e-6, rope=rope, **kw) for _ in range(depth)
        )
        self.linear_out = nn.Linear(embed_dim, out_dim, **kw)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x [N, P, in_dim], pos long [N, P, 2] -> [N, P, out_dim]; attention stays within each of the N views."""
        x = self.projects(x)
        for block in self.blocks:
            x = block(x, pos=pos)
        return self.linear_out(x)


class LinearPts3d(nn.Module):
    """One linear layer per patch token to a patch_size² block of `output_dim`-channel pixels (pixel shuffle)."""

    def __init__(self, patch_size: int, embed_dim: int, output_dim: int, device=None, dtype=None) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(embed_dim, output_dim * patch_size**2, device=device, dtype=dtype)

    def forward(self, tokens: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
        """tokens [N, h*w, C] (patches only) -> [N, H, W, output_dim]."""
        H, W = image_hw
        N = tokens.shape[0]
        x = self.proj(tokens).transpose(1, 2).reshape(N, -1, H // self.patch_size, W // self.patch_size)
        return F.pixel_shuffle(x, self.patch_size).permute(0, 2, 3, 1)
