"""VGGT's track head: a DPT feature extractor plus an iterative CoTracker-style point tracker.

Matches facebookresearch/vggt@44b3afb vggt/heads/track_head.py and vggt/heads/track_modules/ (the algorithm as
written down in research/reference_vggt_track.md); keys and shapes are the official ones, so VGGT-1B checkpoints
load strictly. Query points are pixels (x = column, y = row) in frame 0; tracks come back in the same convention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from spark3r_stream.models.heads.dpt import DPTHead
from spark3r_stream.models.layers import Mlp, sdpa

MAX_SCALE = 518  # official `max_scale`: the raw flow is appended divided by this


def multi_head_attention(attn: nn.MultiheadAttention, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """`nn.MultiheadAttention(q, kv, kv)` (batch_first, no mask, eval) through the project's one SDPA kernel."""
    B, Lq, C = q.shape
    heads = attn.num_heads
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attn.in_proj_bias.chunk(3)

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(B, t.shape[1], heads, C // heads).transpose(1, 2)

    out = sdpa(split(F.linear(q, w_q, b_q)), split(F.linear(kv, w_k, b_k)), split(F.linear(kv, w_v, b_v)))
    return attn.out_proj(out.transpose(1, 2).reshape(B, Lq, C))


class AttnBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.norm1 = nn.LayerNorm(dim, **kw)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True, **kw)
        self.norm2 = nn.LayerNorm(dim, **kw)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # official quirk: the residual starts from the *normalised* input
        y = self.norm1(x)
        y = y + multi_head_attention(self.attn, y, y)
        return y + self.mlp(self.norm2(y))


class CrossAttnBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.norm1 = nn.LayerNorm(dim, **kw)
        self.norm_context = nn.LayerNorm(dim, **kw)
        self.norm2 = nn.LayerNorm(dim, **kw)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True, **kw)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), **kw)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)  # same normalised-residual quirk as AttnBlock
        y = y + multi_head_attention(self.cross_attn, y, self.norm_context(context))
        return y + self.mlp(self.norm2(y))


class EfficientUpdateFormer(nn.Module):
    """Time attention per track, then space attention through learned virtual tracks (point ↔ virtual)."""

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
        self.virual_tracks = nn.Parameter(torch.zeros(1, num_virtual_tracks, 1, hidden_size, **kw))  # official key
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, N, S, D] -> [B, N, S, output_dim]."""
        tokens = self.input_transform(self.input_norm(x))
        init = tokens
        B, N, S, Hd = tokens.shape
        tokens = torch.cat([tokens, self.virual_tracks.expand(B, -1, S, -1)], dim=1)
        M = tokens.shape[1]
        for time_block, v2p, virtual_block, p2v in zip(
            self.time_blocks,
            self.space_virtual2point_blocks,
            self.space_virtual_blocks,
            self.space_point2virtual_blocks,
            strict=True,
        ):
            tokens = time_block(tokens.reshape(B * M, S, Hd)).view(B, M, S, Hd)
            space = tokens.permute(0, 2, 1, 3).reshape(B * S, M, Hd)
            points, virtual = space[:, :N], space[:, N:]
            virtual = virtual_block(v2p(virtual, points))
            points = p2v(points, virtual)
            tokens = torch.cat([points, virtual], dim=1).view(B, S, M, Hd).permute(0, 2, 1, 3)
        return self.flow_head(self.output_norm(tokens[:, :N] + init))


def sample_bilinear(maps: torch.Tensor, xy: torch.Tensor, padding_mode: str) -> torch.Tensor:
    """Bilinear samples of maps [M, C, h, w] at pixel points xy [M, K, 2] (x, y; align_corners=True) -> [M, K, C]."""
    h, w = maps.shape[-2:]
    scale = xy.new_tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)])
    grid = (xy * scale - 1.0)[:, :, None]
    out = F.grid_sample(maps, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)
    return out[..., 0].transpose(1, 2)


def flow_embedding(flow: torch.Tensor, dim: int) -> torch.Tensor:
    """[..., 2] flow in feature pixels -> [..., dim + 4]: interleaved sin/cos of x then y on a *linear* frequency
    ramp k·1000/(dim/2), then flow/518 twice (reference_vggt_track.md §3.3); float32 like the official code."""
    half = dim // 2
    freqs = torch.arange(0, half, 2, dtype=torch.float32, device=flow.device) * (1000.0 / half)
    parts = []
    for axis in (0, 1):
        angles = flow[..., axis : axis + 1].float() * freqs
        parts.append(torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2))
    scaled = flow.float() / MAX_SCALE
    return torch.cat([*parts, scaled, scaled], dim=-1).to(flow.dtype)


def sincos_grid_embedding(dim: int, h: int, w: int, device=None) -> torch.Tensor:
    """2-D sin/cos table [dim, h, w] on integer grid positions: first half encodes the column, second the row;
    each half is [sin(p·ω_k), cos(p·ω_k)], ω_k = 10000^(−k/(dim/4)), computed in float64 (official)."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64, device=device) / quarter)

    def embed(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1).double() * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    table = torch.cat([embed(cols), embed(rows)], dim=1).float()
    return table.view(h, w, dim).permute(2, 0, 1)


class TrackerPredictor(nn.Module):
    """Official `BaseTrackerPredictor` (key `tracker`): correlation pyramid + update transformer, `iters` times."""

    def __init__(
        self,
        latent_dim: int = 128,
        corr_levels: int = 7,
        corr_radius: int = 4,
        hidden_size: int = 384,
        depth: int = 6,
        stride: int = 2,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.latent_dim = latent_dim
        self.corr_levels = corr_levels
        self.corr_radius = corr_radius
        self.stride = stride
        transformer_dim = 3 * latent_dim + 4
        self.transformer_dim = transformer_dim
        self.query_ref_token = nn.Parameter(torch.zeros(1, 2, transformer_dim, **kw))
        self.corr_mlp = Mlp(corr_levels * (2 * corr_radius + 1) ** 2, hidden_size, latent_dim, **kw)
        self.updateformer = EfficientUpdateFormer(depth, transformer_dim, hidden_size, latent_dim + 2, **kw)
        self.fmap_norm = nn.LayerNorm(latent_dim, **kw)
        self.ffeat_norm = nn.GroupNorm(1, latent_dim, **kw)
        self.ffeat_updater = nn.Sequential(nn.Linear(latent_dim, latent_dim, **kw), nn.GELU())
        self.vis_predictor = nn.Sequential(nn.Linear(latent_dim, 1, **kw))
        self.conf_predictor = nn.Sequential(nn.Linear(latent_dim, 1, **kw))

    def _window_offsets(self, device, dtype) -> torch.Tensor:
        """[(2r+1)², 2] offsets added to (x, y); element a·(2r+1)+b is (a − r, b − r): x varies slowest
        (official quirk, reference_vggt_track.md §3.2)."""
        r = self.corr_radius
        steps = torch.arange(-r, r + 1, device=device, dtype=dtype)
        a, b = torch.meshgrid(steps, steps, indexing="ij")
        return torch.stack([a, b], dim=-1).reshape(-1, 2)

    def _correlations(self, pyramid: list[torch.Tensor], feats: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Windowed correlations [B, S, N, L·(2r+1)²] of the per-frame track features with each pyramid level.

        Bilinear sampling is linear, so sampling <feat, level> at a point equals <feat, level sampled at that point>
        (zero padding included): we sample the C-channel maps at the N·(2r+1)² window points instead of building the
        official [N, h, w] correlation volume first. Same numbers up to float rounding, far less memory.
        """
        B, S, N, C = feats.shape
        offsets = self._window_offsets(coords.device, coords.dtype)
        K = offsets.shape[0]
        per_level = []
        for level, fmap in enumerate(pyramid):
            points = coords.reshape(B * S, N, 1, 2) / 2**level + offsets
            sampled = sample_bilinear(fmap, points.reshape(B * S, N * K, 2), "zeros").view(B, S, N, K, C)
            per_level.append(torch.einsum("bsnkc,bsnc->bsnk", sampled, feats) / math.sqrt(C))
        return torch.cat(per_level, dim=-1)

    def forward(
        self, query_points: torch.Tensor, fmaps: torch.Tensor, iters: int = 4, taps: dict | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Args:
            query_points: [B, N, 2] pixels (x, y) in frame 0 of the network input.
            fmaps: feature-extractor maps [B, S, C, H/stride, W/stride].
            taps: a dict to receive the intermediates the parity fixture stores (debugging).

        Returns:
            (tracks per iteration [B, S, N, 2] in input pixels, vis [B, S, N], conf [B, S, N]) as probabilities.
        """
        B, S, C, h, w = fmaps.shape
        N = query_points.shape[1]
        fmaps = self.fmap_norm(fmaps.permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)
        query = query_points / self.stride  # feature pixel j is centred on input pixel stride·j (no half-pixel shift)
        coords = query[:, None].expand(B, S, N, 2).clone()
        feats = sample_bilinear(fmaps[:, 0], query, "border")[:, None].expand(B, S, N, C)
        pyramid = [fmaps.reshape(B * S, C, h, w)]
        for _ in range(1, self.corr_levels):
            pyramid.append(F.avg_pool2d(pyramid[-1], 2, stride=2))
        pos_table = sincos_grid_embedding(self.transformer_dim, h, w, device=fmaps.device).to(fmaps.dtype)
        pos_embed = sample_bilinear(pos_table[None].expand(B, -1, -1, -1), query, "border")  # [B, N, D]
        if taps is not None:
            taps["track_pos_embed"] = pos_table[None]
        ref_token = torch.cat(
            [self.query_ref_token[:, :1], self.query_ref_token[:, 1:].expand(1, S - 1, -1)], dim=1
        )  # [1, S, D]: slot 0 for frame 0, slot 1 for the others
        tracks = []
        for i in range(iters):
            coords = coords.detach()
            corr = self._correlations(pyramid, feats, coords).permute(0, 2, 1, 3).reshape(B * N, S, -1)
            corr_feats = self.corr_mlp(corr)
            flow = (coords - coords[:, :1]).permute(0, 2, 1, 3).reshape(B * N, S, 2)
            track_feats = feats.permute(0, 2, 1, 3).reshape(B * N, S, C)
            x = torch.cat([flow_embedding(flow, C), corr_feats, track_feats], dim=-1)
            x = x.view(B, N, S, -1) + pos_embed[:, :, None] + ref_token[:, None]
            delta = self.updateformer(x)
            if taps is not None:
                taps[f"track_corr.{i}"], taps[f"track_updateformer_in.{i}"] = corr, x
                taps[f"track_updateformer_out.{i}"] = delta
            coords = coords + delta[..., :2].permute(0, 2, 1, 3)
            coords[:, 0] = query
            feat_update = self.ffeat_updater(self.ffeat_norm(delta[..., 2:].reshape(B * N * S, C)))
            feats = feats + feat_update.view(B, N, S, C).permute(0, 2, 1, 3)
            tracks.append(coords * self.stride)
        vis = torch.sigmoid(self.vis_predictor(feats)[..., 0])
        conf = torch.sigmoid(self.conf_predictor(feats)[..., 0])
        return tracks, vis, conf


class TrackHead(nn.Module):
    def __init__(
        self,
        dim_in: int,
        patch_size: int = 14,
        features: int = 128,
        *,
        iters: int = 4,
        stride: int = 2,
        corr_levels: int = 7,
        corr_radius: int = 4,
        hidden_size: int = 384,
        depth: int = 6,
        out_channels: tuple[int, ...] = (256, 512, 1024, 1024),
        intermediate_layer_idx: tuple[int, ...] = (4, 11, 17, 23),
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.iters = iters
        self.feature_extractor = DPTHead(
            dim_in, patch_size=patch_size, features=features, out_channels=out_channels,
            intermediate_layer_idx=intermediate_layer_idx, feature_only=True, down_ratio=stride, pos_embed=False, **kw,
        )  # fmt: skip
        self.tracker = TrackerPredictor(
            latent_dim=features, corr_levels=corr_levels, corr_radius=corr_radius, hidden_size=hidden_size,
            depth=depth, stride=stride, **kw,
        )  # fmt: skip

    def features(self, tokens, image_hw: tuple[int, int], patch_start_idx: int) -> torch.Tensor:
        """Track features [B, S, C, H/2, W/2] (official `track_head.feature_extractor`, before the tracker's norm)."""
        return self.feature_extractor(tokens, image_hw, patch_start_idx)

    def forward(
        self,
        tokens,
        image_hw: tuple[int, int],
        patch_start_idx: int,
        query_points: torch.Tensor,
        iters: int | None = None,
        taps: dict | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Track `query_points` [B, N, 2] (pixels in frame 0) through all frames: (per-iteration tracks [B, S, N, 2],
        vis [B, S, N], conf [B, S, N])."""
        fmaps = self.features(tokens, image_hw, patch_start_idx)
        if taps is not None:
            taps["track_fmaps"] = fmaps
        return self.tracker(query_points, fmaps, iters or self.iters, taps=taps)
