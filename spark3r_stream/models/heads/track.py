"""VGGT's track head: a DPT feature extractor plus a CoTracker-style predictor, built with the official key layout.

The module tree (keys and shapes of facebookresearch/vggt@44b3afb vggt/heads/track_head.py) is complete, so official
checkpoints load strictly. The feature extractor runs; the iterative point tracker is not implemented (the pipeline
never tracks query points) and says so when asked.
"""

from __future__ import annotations

import torch
from torch import nn

from spark3r_stream.models.heads.dpt import DPTHead
from spark3r_stream.models.layers import Mlp


class AttnBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=True, eps=1e-6, **kw)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True, **kw)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=True, eps=1e-6, **kw)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), **kw)


class CrossAttnBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, **kw)
        self.norm_context = nn.LayerNorm(dim, eps=1e-6, **kw)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, **kw)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True, **kw)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), **kw)


class EfficientUpdateFormer(nn.Module):
    def __init__(
        self,
        depth: int,
        input_dim: int,
        hidden_size: int,
        output_dim: int,
        num_heads: int = 8,
        num_virtual_tracks: int = 64,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.virual_tracks = nn.Parameter(torch.zeros(1, num_virtual_tracks, 1, hidden_size, **kw))  # official typo
        self.input_norm = nn.LayerNorm(input_dim, **kw)
        self.input_transform = nn.Linear(input_dim, hidden_size, **kw)
        self.output_norm = nn.LayerNorm(hidden_size, **kw)
        self.flow_head = nn.Linear(hidden_size, output_dim, **kw)
        self.time_blocks = nn.ModuleList(AttnBlock(hidden_size, num_heads, **kw) for _ in range(depth))
        self.space_virtual_blocks = nn.ModuleList(AttnBlock(hidden_size, num_heads, **kw) for _ in range(depth))
        self.space_point2virtual_blocks = nn.ModuleList(
            CrossAttnBlock(hidden_size, num_heads, **kw) for _ in range(depth)
        )
        self.space_virtual2point_blocks = nn.ModuleList(
            CrossAttnBlock(hidden_size, num_heads, **kw) for _ in range(depth)
        )


class TrackerPredictor(nn.Module):
    def __init__(
        self,
        latent_dim: int = 128,
        corr_levels: int = 7,
        corr_radius: int = 4,
        hidden_size: int = 384,
        depth: int = 6,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        transformer_dim = 3 * latent_dim + 4
        self.query_ref_token = nn.Parameter(torch.zeros(1, 2, transformer_dim, **kw))
        self.corr_mlp = Mlp(corr_levels * (2 * corr_radius + 1) ** 2, hidden_size, latent_dim, **kw)
        self.updateformer = EfficientUpdateFormer(depth, transformer_dim, hidden_size, latent_dim + 2, **kw)
        self.fmap_norm = nn.LayerNorm(latent_dim, **kw)
        self.ffeat_norm = nn.LayerNorm(latent_dim, **kw)
        self.ffeat_updater = nn.Sequential(nn.Linear(latent_dim, latent_dim, **kw), nn.GELU())
        self.vis_predictor = nn.Sequential(nn.Linear(latent_dim, 1, **kw))
        self.conf_predictor = nn.Sequential(nn.Linear(latent_dim, 1, **kw))


class TrackHead(nn.Module):
    def __init__(self, dim_in: int, patch_size: int = 14, features: int = 128, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.feature_extractor = DPTHead(
            dim_in, patch_size=patch_size, features=features, feature_only=True, down_ratio=2, pos_embed=False, **kw
        )
        self.tracker = TrackerPredictor(latent_dim=features, **kw)

    def features(self, tokens, image_hw: tuple[int, int], patch_start_idx: int) -> torch.Tensor:
        """Track features [B, S, 128, H/2, W/2]."""
        return self.feature_extractor(tokens, image_hw, patch_start_idx)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(
            "VGGT point tracking (query_points) is not implemented in spark3r-stream; the track head's weights load "
            "and `TrackHead.features` runs, but the iterative tracker does not"
        )
