"""The one pre-norm transformer block (`norm1/attn/ls1/norm2/mlp/ls2`) shared by encoders, aggregators and heads."""

from __future__ import annotations

import torch
from torch import nn

from spark3r_stream.models.layers.attention import Attention, TokenLayout
from spark3r_stream.models.layers.mlp import MLP_LAYERS
from spark3r_stream.models.layers.rope import RotaryEmbedding2D


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values), device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        init_values: float | None = None,
        qk_norm: bool = False,
        rope: RotaryEmbedding2D | None = None,
        norm_eps: float = 1e-5,
        ffn_layer: str = "mlp",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps, **kw)
        self.attn = Attention(
            dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, qk_norm=qk_norm, norm_eps=1e-5, rope=rope, **kw
        )  # q/k-norm eps is 1e-5 in every family
        self.ls1 = LayerScale(dim, init_values, **kw) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps, **kw)
        self.mlp = MLP_LAYERS[ffn_layer](dim, int(dim * mlp_ratio), bias=ffn_bias, **kw)
        self.ls2 = LayerScale(dim, init_values, **kw) if init_values else nn.Identity()

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor | None = None, layout: TokenLayout | None = None
    ) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), pos=pos, layout=layout))
        return x + self.ls2(self.mlp(self.norm2(x)))
