"""DINOv2 ViT encoder with register tokens: the per-frame image encoder of VGGT, π³ and DA3.

Matches facebookresearch/dinov2 `DinoVisionTransformer` as vendored by facebookresearch/vggt@44b3afb
(vggt/layers/vision_transformer.py), including the antialiased bicubic resize of the position embedding.
DA3's variant (ByteDance-Seed/Depth-Anything-3@2c21ea8 model/dinov2/vision_transformer.py) is configured by
`alt_start`/`qknorm_start`/`rope_start` (camera token, q/k-norm and RoPE in the later blocks) and `final_norm_eps`;
the alternating multi-view loop that uses them lives with the family (models/da3.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from spark3r_stream.models.layers.block import Block
from spark3r_stream.models.layers.rope import RotaryEmbedding2D


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, device=None, dtype=None) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> [N, h*w, C] (row-major grid)."""
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoVisionTransformer(nn.Module):
    def __init__(
        self,
        *,
        img_size: int = 518,
        patch_size: int = 14,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 4,
        init_values: float | None = 1.0,
        ffn_layer: str = "mlp",
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        interpolate_antialias: bool = True,
        interpolate_offset: float = 0.0,
        has_mask_token: bool = True,
        norm_eps: float = 1e-6,
        final_norm_eps: float | None = None,
        alt_start: int = -1,
        qknorm_start: int = -1,
        rope_start: int = -1,
        rope_freq: float = 100.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = interpolate_offset
        grid = img_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **kw))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim, **kw))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim, **kw)) if num_register_tokens else None
        )
        # official key; used only for masked training, never at inference (π³ deletes it)
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim, **kw)) if has_mask_token else None
        # DA3: [1, 2, C] camera tokens (reference view, other views) that replace cls from block `alt_start` on
        self.camera_token = nn.Parameter(torch.zeros(1, 2, embed_dim, **kw)) if alt_start >= 0 else None
        self.alt_start = alt_start
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim, **kw)
        self.rope = RotaryEmbedding2D(rope_freq) if rope_start >= 0 else None
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                proj_bias=proj_bias,
                ffn_bias=ffn_bias,
                init_values=init_values,
                norm_eps=norm_eps,
                ffn_layer=ffn_layer,
                qk_norm=0 <= qknorm_start <= i,
                rope=self.rope if 0 <= rope_start <= i else None,
                **kw,
            )
            for i in range(depth)
        )
        # DA3 builds its final norm with the LayerNorm default eps 1e-5 while its blocks use 1e-6
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps if final_norm_eps is None else final_norm_eps, **kw)

    def interpolate_pos_encoding(self, h: int, w: int, height_px: int, width_px: int) -> torch.Tensor:
        """Position embedding for an h×w patch grid: [1, 1 + h*w, C] (row 0 is the cls token's)."""
        num_stored = self.pos_embed.shape[1] - 1
        # official shortcut: stored table as-is only for a square image with the stored grid size
        if h * w == num_stored and height_px == width_px:
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        side = int(math.sqrt(num_stored))
        grid = pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        if self.interpolate_offset:
            scale = ((h + self.interpolate_offset) / side, (w + self.interpolate_offset) / side)
            grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=self.interpolate_antialias)
        else:
            grid = F.interpolate(grid, size=(h, w), mode="bicubic", antialias=self.interpolate_antialias)
        grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)
        return torch.cat([pos_embed[:, :1], grid], dim=1).to(self.pos_embed.dtype)

    def prepare_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] normalised -> [N, 1 + R + h*w, C]: cls, registers (no position), patches."""
        N, _, H, W = images.shape
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(N, -1, -1), x], dim=1)
        x = x + self.interpolate_pos_encoding(H // self.patch_size, W // self.patch_size, H, W)
        if self.register_tokens is not None:
            x = torch.cat([x[:, :1], self.register_tokens.expand(N, -1, -1), x[:, 1:]], dim=1)
        return x

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.num_register_tokens

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Final-normed patch tokens (`x_norm_patchtokens`): [N, h*w, C]."""
        x = self.prepare_tokens(images)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, self.num_prefix_tokens :]
