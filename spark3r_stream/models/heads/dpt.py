"""DPT head: per-frame dense prediction (depth, points, confidence, or features) from four token layers.

Matches facebookresearch/vggt@44b3afb vggt/heads/dpt_head.py (reference_vggt.md §8); keys `projects`,
`resize_layers`, `scratch.*` as released.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def uv_grid(width: int, height: int, aspect_ratio: float, dtype, device) -> torch.Tensor:
    """Normalised (u, v) coordinates [height, width, 2], spanning the unit diagonal (reference_vggt.md §8.1)."""
    diag = (aspect_ratio**2 + 1.0) ** 0.5
    span_x, span_y = aspect_ratio / diag, 1.0 / diag
    xs = torch.linspace(-span_x * (width - 1) / width, span_x * (width - 1) / width, width, dtype=dtype, device=device)
    ys = torch.linspace(-span_y * (height - 1) / height, span_y * (height - 1) / height, height, dtype=dtype, device=device)
    uu, vv = torch.meshgrid(xs, ys, indexing="xy")
    return torch.stack([uu, vv], dim=-1)


def sincos_embed(dim: int, pos: torch.Tensor, omega_0: float = 100.0) -> torch.Tensor:
    """[M] positions -> [M, dim]: sines then cosines; frequencies in float64 as the official code (not on MPS)."""
    omega_dtype = torch.float32 if pos.device.type == "mps" else torch.float64
    omega = torch.arange(dim // 2, dtype=omega_dtype, device=pos.device) / (dim / 2.0)
    omega = 1.0 / omega_0**omega
    angles = pos.reshape(-1).to(omega_dtype)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def add_position_embedding(x: torch.Tensor, width_px: int, height_px: int, ratio: float = 0.1) -> torch.Tensor:
    """x [N, C, h, w] + ratio · (x-embedding ‖ y-embedding) of the feature grid."""
    h, w = x.shape[-2:]
    grid = uv_grid(w, h, width_px / height_px, x.dtype, x.device).reshape(-1, 2)
    half = x.shape[1] // 2
    embed = torch.cat([sincos_embed(half, grid[:, 0]), sincos_embed(half, grid[:, 1])], dim=-1)
    embed = (embed.view(h, w, -1) * ratio).permute(2, 0, 1).to(x.dtype)
    return x + embed[None]


def interpolate(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class ResidualConvUnit(nn.Module):
    def __init__(self, features: int, device=None, dtype=None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, device=device, dtype=dtype)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The official unit's first ReLU is in-place, so its skip adds the *rectified* input (reference_vggt.md §8).
        x = F.relu(x)
        return self.conv2(F.relu(self.conv1(x))) + x


class FeatureFusionBlock(nn.Module):
    def __init__(self, features: int, has_residual: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.resConfUnit1 = ResidualConvUnit(features, **kw) if has_residual else None  # official key
        self.resConfUnit2 = ResidualConvUnit(features, **kw)  # official key
        self.out_conv = nn.Conv2d(features, features, 1, **kw)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size: tuple[int, int] | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:  # official scale_factor=2, computed as int(2·h), int(2·w)
            size = (int(x.shape[-2] * 2), int(x.shape[-1] * 2))
        return self.out_conv(interpolate(x, size))


class Scratch(nn.Module):
    """Container that reproduces the official `scratch.*` key names."""

    def __init__(self, out_channels: Sequence[int], features: int, output_dim: int, feature_only: bool,
                 device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        for i, channels in enumerate(out_channels, 1):
            setattr(self, f"layer{i}_rn", nn.Conv2d(channels, features, 3, padding=1, bias=False, **kw))
        self.refinenet1 = FeatureFusionBlock(features, **kw)
        self.refinenet2 = FeatureFusionBlock(features, **kw)
        self.refinenet3 = FeatureFusionBlock(features, **kw)
        self.refinenet4 = FeatureFusionBlock(features, has_residual=False, **kw)
        if feature_only:
            self.output_conv1 = nn.Conv2d(features, features, 3, padding=1, **kw)
            self.output_conv2 = None
        else:
            self.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1, **kw)
            self.output_conv2 = nn.Sequential(
                nn.Conv2d(features // 2, 32, 3, padding=1, **kw), nn.ReLU(), nn.Conv2d(32, output_dim, 1, **kw)
            )


def activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "exp":
        return torch.exp(x)
    if activation == "inv_log":
        return torch.sign(x) * torch.expm1(torch.abs(x))
    if activation == "expp1":
        return 1 + torch.exp(x)
    if activation == "linear":
        return x
    if activation == "relu":
        return F.relu(x)
    raise ValueError(f"unknown activation {activation!r}")


class DPTHead(nn.Module):
    def __init__(
        self,
        dim_in: int,
        *,
        patch_size: int = 14,
        output_dim: int = 4,
        activation: str = "inv_log",
        conf_activation: str = "expp1",
        features: int = 256,
        out_channels: Sequence[int] = (256, 512, 1024, 1024),
        intermediate_layer_idx: Sequence[int] = (4, 11, 17, 23),
        pos_embed: bool = True,
        feature_only: bool = False,
        down_ratio: int = 1,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.patch_size = patch_size
        self.activation = activation
        self.conf_activation = conf_activation
        self.pos_embed = pos_embed
        self.feature_only = feature_only
        self.down_ratio = down_ratio
        self.intermediate_layer_idx = tuple(intermediate_layer_idx)
        self.norm = nn.LayerNorm(dim_in, **kw)
        self.projects = nn.ModuleList(nn.Conv2d(dim_in, c, 1, **kw) for c in out_channels)
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(out_channels[0], out_channels[0], 4, stride=4, **kw),
            nn.ConvTranspose2d(out_channels[1], out_channels[1], 2, stride=2, **kw),
            nn.Identity(),
            nn.Conv2d(out_channels[3], out_channels[3], 3, stride=2, padding=1, **kw),
        ])
        self.scratch = Scratch(out_channels, features, output_dim, feature_only, **kw)

    def forward(self, tokens: Sequence[torch.Tensor | None], image_hw: tuple[int, int], patch_start_idx: int,
                frames: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Dense prediction per frame.

        Args:
            tokens: layer outputs [B, S, P, C] indexed by layer (entries the head does not read may be None).
            image_hw: (H, W) of the network input.
            frames: optional long index of the frames to decode (the others are skipped: dense output is per frame).

        Returns:
            (value [B, S', H, W, O-1], conf [B, S', H, W]), or features [B, S', C', H', W'] if feature_only.
        """
        H, W = image_hw
        h, w = H // self.patch_size, W // self.patch_size
        levels = []
        for project, resize, layer in zip(self.projects, self.resize_layers, self.intermediate_layer_idx):
            x = tokens[layer][:, :, patch_start_idx:]
            if frames is not None:
                x = x[:, frames]
            B, S = x.shape[:2]
            x = self.norm(x.reshape(B * S, h * w, -1))
            x = project(x.transpose(1, 2).reshape(B * S, -1, h, w))
            if self.pos_embed:
                x = add_position_embedding(x, W, H)
            levels.append(resize(x))
        out = self._fuse(levels)
        out = interpolate(out, (int(h * self.patch_size / self.down_ratio), int(w * self.patch_size / self.down_ratio)))
        if self.pos_embed:
            out = add_position_embedding(out, W, H)
        if self.feature_only:
            return out.view(B, S, *out.shape[1:])
        out = self.scratch.output_conv2(out)
        out = out.permute(0, 2, 3, 1).view(B, S, *out.shape[2:], out.shape[1])
        return activate(out[..., :-1], self.activation), activate(out[..., -1], self.conf_activation)

    def _fuse(self, levels: list[torch.Tensor]) -> torch.Tensor:
        s = self.scratch
        l1, l2, l3, l4 = (getattr(s, f"layer{i}_rn")(x) for i, x in enumerate(levels, 1))
        out = s.refinenet4(l4, size=l3.shape[2:])
        out = s.refinenet3(out, l3, size=l2.shape[2:])
        out = s.refinenet2(out, l2, size=l1.shape[2:])
        out = s.refinenet1(out, l1)
        return s.output_conv1(out)
