"""DPT heads: per-frame dense prediction (depth, points, confidence, or features) from four token layers.

`DPTHead` matches facebookresearch/vggt@44b3afb vggt/heads/dpt_head.py (reference_vggt.md §8); keys `projects`,
`resize_layers`, `scratch.*` as released. Configured with `rectified_skip=False, token_norm=False, image_merger=True,
conf_activation="sigmoid"` it is DA3's Gaussian head `GSDPT` (ByteDance-Seed/Depth-Anything-3@2c21ea8 model/gsdpt.py).
`DualDPTHead`, beside it, is DA3's two-branch head (model/dualdpt.py, reference_da3.md §5.1) built from the same blocks.
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
    ys = torch.linspace(
        -span_y * (height - 1) / height, span_y * (height - 1) / height, height, dtype=dtype, device=device
    )
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
    def __init__(self, features: int, rectified_skip: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.rectified_skip = rectified_skip
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, device=device, dtype=dtype)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # VGGT's first ReLU is in-place, so its skip adds the *rectified* input (reference_vggt.md §8);
        # DA3's is not, so its skip adds the raw input (reference_da3.md §5.1).
        y = F.relu(x)
        return self.conv2(F.relu(self.conv1(y))) + (y if self.rectified_skip else x)


class FeatureFusionBlock(nn.Module):
    def __init__(
        self, features: int, has_residual: bool = True, rectified_skip: bool = True, device=None, dtype=None
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        rcu_kw = {"rectified_skip": rectified_skip, **kw}
        self.resConfUnit1 = ResidualConvUnit(features, **rcu_kw) if has_residual else None  # official key
        self.resConfUnit2 = ResidualConvUnit(features, **rcu_kw)  # official key
        self.out_conv = nn.Conv2d(features, features, 1, **kw)

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor | None = None, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:  # official scale_factor=2, computed as int(2·h), int(2·w)
            size = (int(x.shape[-2] * 2), int(x.shape[-1] * 2))
        return self.out_conv(interpolate(x, size))


class Scratch(nn.Module):
    """Container that reproduces the official `scratch.*` key names."""

    def __init__(
        self,
        out_channels: Sequence[int],
        features: int,
        output_dim: int,
        feature_only: bool,
        rectified_skip: bool = True,
        sky_head: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        for i, channels in enumerate(out_channels, 1):
            setattr(self, f"layer{i}_rn", nn.Conv2d(channels, features, 3, padding=1, bias=False, **kw))
        fuse_kw = {"rectified_skip": rectified_skip, **kw}
        self.refinenet1 = FeatureFusionBlock(features, **fuse_kw)
        self.refinenet2 = FeatureFusionBlock(features, **fuse_kw)
        self.refinenet3 = FeatureFusionBlock(features, **fuse_kw)
        self.refinenet4 = FeatureFusionBlock(features, has_residual=False, **fuse_kw)
        if feature_only:
            self.output_conv1 = nn.Conv2d(features, features, 3, padding=1, **kw)
            self.output_conv2 = None
        else:
            self.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1, **kw)
            self.output_conv2 = nn.Sequential(
                nn.Conv2d(features // 2, 32, 3, padding=1, **kw), nn.ReLU(), nn.Conv2d(32, output_dim, 1, **kw)
            )
        if sky_head:  # DA3 DPT (metric/mono nets): a one-channel sky map beside the depth (official key)
            self.sky_output_conv2 = nn.Sequential(
                nn.Conv2d(features // 2, 32, 3, padding=1, **kw), nn.ReLU(), nn.Conv2d(32, 1, 1, **kw)
            )


def resize_layers(out_channels: Sequence[int], device=None, dtype=None) -> nn.ModuleList:
    """Per-level resampling of the projected token grids: ×4, ×2, ×1, ×½ (official `resize_layers`)."""
    kw = {"device": device, "dtype": dtype}
    return nn.ModuleList(
        [
            nn.ConvTranspose2d(out_channels[0], out_channels[0], 4, stride=4, **kw),
            nn.ConvTranspose2d(out_channels[1], out_channels[1], 2, stride=2, **kw),
            nn.Identity(),
            nn.Conv2d(out_channels[3], out_channels[3], 3, stride=2, padding=1, **kw),
        ]
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
    if activation == "sigmoid":
        return torch.sigmoid(x)
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
        rectified_skip: bool = True,
        token_norm: bool = True,
        image_merger: bool = False,
        sky_head: bool = False,
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
        self.norm = nn.LayerNorm(dim_in, **kw) if token_norm else nn.Identity()  # GSDPT: norm_type "idt"
        self.projects = nn.ModuleList(nn.Conv2d(dim_in, c, 1, **kw) for c in out_channels)
        self.resize_layers = resize_layers(out_channels, **kw)
        self.scratch = Scratch(
            out_channels, features, output_dim, feature_only, rectified_skip=rectified_skip, sky_head=sky_head, **kw
        )
        # DA3 GSDPT: 3 convs, each followed by a GELU, on the network's (normalised) input images; added to the
        # upsampled map before its UV embedding (official key)
        self.images_merger = (
            nn.Sequential(
                nn.Conv2d(3, features // 8, 3, padding=1, **kw),
                nn.GELU(),
                nn.Conv2d(features // 8, features // 4, 3, padding=1, **kw),
                nn.GELU(),
                nn.Conv2d(features // 4, features // 2, 3, padding=1, **kw),
                nn.GELU(),
            )
            if image_merger
            else None
        )

    def forward(
        self,
        tokens: Sequence[torch.Tensor | None],
        image_hw: tuple[int, int],
        patch_start_idx: int,
        frames: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Dense prediction per frame.

        Args:
            tokens: layer outputs [B, S, P, C] indexed by layer (entries the head does not read may be None).
            image_hw: (H, W) of the network input.
            frames: optional long index of the frames to decode (the others are skipped: dense output is per frame).
            images: the network's input images [B, S', 3, H, W] (the frames decoded); needed with the images merger.

        Returns:
            (value [B, S', H, W, O-1], conf [B, S', H, W]), or features [B, S', C', H', W'] if feature_only.
        """
        out = self.output_features(tokens, image_hw, patch_start_idx, frames=frames, images=images)
        if self.feature_only:
            return out
        B, S = out.shape[:2]
        out = self.scratch.output_conv2(out.flatten(0, 1))
        out = out.permute(0, 2, 3, 1).view(B, S, *out.shape[2:], out.shape[1])
        return activate(out[..., :-1], self.activation), activate(out[..., -1], self.conf_activation)

    def output_features(
        self,
        tokens: Sequence[torch.Tensor | None],
        image_hw: tuple[int, int],
        patch_start_idx: int,
        frames: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The map `scratch.output_conv2` (and a sky head) reads: [B, S', C', H', W'] (same arguments as forward)."""
        if (images is None) != (self.images_merger is None):
            raise ValueError("DPT head: pass images exactly when the head has an images merger (DA3 GSDPT)")
        H, W = image_hw
        h, w = H // self.patch_size, W // self.patch_size
        levels = []
        for project, resize, layer in zip(self.projects, self.resize_layers, self.intermediate_layer_idx, strict=True):
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
        if images is not None:
            out = out + self.images_merger(images.reshape(B * S, *images.shape[2:]))
        if self.pos_embed:
            out = add_position_embedding(out, W, H)
        return out.view(B, S, *out.shape[1:])

    def _fuse(self, levels: list[torch.Tensor]) -> torch.Tensor:
        s = self.scratch
        return s.output_conv1(fuse(s, [getattr(s, f"layer{i}_rn")(x) for i, x in enumerate(levels, 1)]))


def fuse(scratch: nn.Module, lateral: list[torch.Tensor], suffix: str = "") -> torch.Tensor:
    """Coarse-to-fine fusion of the four `layer{k}_rn` maps through `refinenet{4..1}{suffix}`; ends at 2× level 1."""
    l1, l2, l3, l4 = lateral
    out = getattr(scratch, f"refinenet4{suffix}")(l4, size=l3.shape[2:])
    out = getattr(scratch, f"refinenet3{suffix}")(out, l3, size=l2.shape[2:])
    out = getattr(scratch, f"refinenet2{suffix}")(out, l2, size=l1.shape[2:])
    return getattr(scratch, f"refinenet1{suffix}")(out, l1)


class Permute(nn.Module):
    """A parameter-free dims permutation, so official Sequential indices (and keys) line up."""

    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class DualDPTHead(nn.Module):
    """DA3's DualDPT: depth + confidence at image resolution, ray map (6 ch) + confidence at 8× the patch grid.

    The aux ("ray") branch has its own `refinenet*_aux` chain on the same lateral maps and a pyramid of
    `output_conv{1,2}_aux.{level}` heads; inference reads only the finest level. The four
    `output_conv2_aux.{level}.2` LayerNorms are one module, as in the official code (see `SHARED_TENSOR_ALIASES`
    in models/da3.py for loading the released files, which store it once).
    """

    def __init__(
        self,
        dim_in: int,
        *,
        patch_size: int = 14,
        output_dim: int = 2,
        aux_output_dim: int = 7,
        features: int = 256,
        out_channels: Sequence[int] = (256, 512, 1024, 1024),
        aux_levels: int = 4,
        aux_conv_num: int = 5,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.patch_size = patch_size
        self.norm = nn.LayerNorm(dim_in, **kw)
        self.projects = nn.ModuleList(nn.Conv2d(dim_in, c, 1, **kw) for c in out_channels)
        self.resize_layers = resize_layers(out_channels, **kw)
        s = self.scratch = Scratch(out_channels, features, output_dim, False, rectified_skip=False, **kw)
        for i in range(1, 5):
            setattr(
                s, f"refinenet{i}_aux", FeatureFusionBlock(features, has_residual=i < 4, rectified_skip=False, **kw)
            )
        half = features // 2
        s.output_conv1_aux = nn.ModuleList(
            nn.Sequential(
                *(
                    nn.Conv2d(features if j % 2 == 0 else half, half if j % 2 == 0 else features, 3, padding=1, **kw)
                    for j in range(aux_conv_num)
                )
            )
            for _ in range(aux_levels)
        )
        shared_norm = nn.LayerNorm(32, **kw)  # official: one instance unpacked into every level
        s.output_conv2_aux = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(half, 32, 3, padding=1, **kw),
                Permute(0, 2, 3, 1),
                shared_norm,
                Permute(0, 3, 1, 2),
                nn.ReLU(),
                nn.Conv2d(32, aux_output_dim, 1, **kw),
            )
            for _ in range(aux_levels)
        )

    def forward(self, features: Sequence[torch.Tensor], image_hw: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Args: features: four [B, S, h*w, C] patch-token maps (no special tokens). Returns the four maps, per frame:
        depth [B, S, H, W], depth_conf [B, S, H, W], ray [B, S, 8h, 8w, 6], ray_conf [B, S, 8h, 8w]."""
        H, W = image_hw
        h, w = H // self.patch_size, W // self.patch_size
        B, S = features[0].shape[:2]
        s = self.scratch
        lateral = []
        for i, (x, project, resize) in enumerate(zip(features, self.projects, self.resize_layers, strict=True), 1):
            x = self.norm(x.reshape(B * S, h * w, -1))
            x = add_position_embedding(project(x.transpose(1, 2).reshape(B * S, -1, h, w)), W, H)
            lateral.append(getattr(s, f"layer{i}_rn")(resize(x)))
        main = interpolate(s.output_conv1(fuse(s, lateral)), (H, W))
        main = s.output_conv2(add_position_embedding(main, W, H))
        aux = s.output_conv1_aux[-1](fuse(s, lateral, suffix="_aux"))  # finest pyramid level only
        aux = s.output_conv2_aux[-1](add_position_embedding(aux, W, H))
        aux = aux.permute(0, 2, 3, 1).reshape(B, S, *aux.shape[2:], aux.shape[1])
        main = main.reshape(B, S, *main.shape[1:])
        return {
            "depth": activate(main[:, :, 0], "exp"),
            "depth_conf": activate(main[:, :, 1], "expp1"),
            "ray": aux[..., :-1],
            "ray_conf": activate(aux[..., -1], "expp1"),
        }
