"""π³ (Pi3): DINOv2 encoder, 36-layer alternating frame/global decoder, per-view point/confidence/camera heads.

Matches yyfz/Pi3@9fa3ddb pi3/models/pi3.py (reference_pi3.md); state-dict keys are the released `model.safetensors`
ones (no prefix, with the `image_mean`/`image_std` buffers), so the official checkpoint loads strictly. No view is
privileged: the outputs are permutation-equivariant in the view axis, poses are camera-to-world in π³'s own frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from spark3r_stream.errors import ConfigError
from spark3r_stream.models.heads import LinearPts3d, Pi3CameraHead, TransformerDecoder
from spark3r_stream.models.layers import Block, DinoVisionTransformer, RotaryEmbedding2D, TokenLayout, grid_positions
from spark3r_stream.models.targets import ReductionTargets, map_sensitive_layers

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True, kw_only=True)
class Pi3Config:
    img_size: int = 518
    patch_size: int = 14
    embed_dim: int = 1024  # encoder and decoder width (the decoder has no input projection)
    encoder_depth: int = 24
    encoder_num_heads: int = 16
    encoder_num_register_tokens: int = 4
    depth: int = 36  # decoder blocks; even = frame-wise, odd = global
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 5  # decoder registers, the same vectors for every view
    rope_freq: float = 100.0
    init_values: float = 0.01
    head_embed_dim: int = 1024
    head_depth: int = 5
    head_num_heads: int = 16
    point_out_dim: int = 1024  # point/conf decoder output width
    camera_dim: int = 512  # camera decoder output width = camera head width

    @property
    def num_global_layers(self) -> int:
        return self.depth // 2


def reduction_targets(cfg: Pi3Config) -> ReductionTargets:
    return ReductionTargets(
        global_attention=tuple(f"decoder.{i}.attn" for i in range(1, cfg.depth, 2)),
        special_tokens_per_frame=cfg.num_register_tokens,
        reference_frame=None,  # π³ has no reference view (reference_pi3.md §2.2)
        # Spark3R §IV-D: π³ global layers 11–16 of 18; other depths by relative depth
        sensitive_layers=map_sensitive_layers(range(11, 17), 18, cfg.num_global_layers),
    )


def config_from_official(cfg: dict) -> Pi3Config:
    """Translate π³'s constructor arguments to Pi3Config.

    Accepts the released constructor's kwargs (`{"pos_type": "rope100", "decoder_size": "large"}`, the only working
    combination) or the per-module arguments recorded by the reduced fixture (fixtures/pi3_tiny/config.json).
    """
    if "encoder" not in cfg:
        if cfg.get("pos_type", "rope100") != "rope100" or cfg.get("decoder_size", "large") != "large":
            raise ConfigError(f"official π³ config: only pos_type 'rope100' with decoder_size 'large' works, got {cfg}")
        return Pi3Config()
    enc, dec, point, cam = cfg["encoder"]["args"], cfg["decoder"], cfg["point_decoder"]["args"], cfg["camera_decoder"]
    if enc["embed_dim"] != dec["args"]["dim"]:
        raise ConfigError(f"official π³ config: encoder width {enc['embed_dim']} != decoder width {dec['args']['dim']}")
    return Pi3Config(
        img_size=enc["img_size"],
        patch_size=enc["patch_size"],
        embed_dim=enc["embed_dim"],
        encoder_depth=enc["depth"],
        encoder_num_heads=enc["num_heads"],
        encoder_num_register_tokens=enc["num_register_tokens"],
        depth=dec["dec_depth"],
        num_heads=dec["args"]["num_heads"],
        mlp_ratio=dec["args"]["mlp_ratio"],
        num_register_tokens=cfg["register_token"]["shape"][2],
        init_values=dec["args"]["init_values"],
        head_embed_dim=point["dec_embed_dim"],
        head_depth=point["depth"],
        head_num_heads=point["dec_num_heads"],
        point_out_dim=point["out_dim"],
        camera_dim=cam["args"]["out_dim"],
    )


class Pi3(nn.Module):
    def __init__(self, cfg: Pi3Config, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.config = cfg
        C = cfg.embed_dim
        self.patch_size = cfg.patch_size
        self.patch_start_idx = cfg.num_register_tokens
        self.encoder = DinoVisionTransformer(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            embed_dim=C,
            depth=cfg.encoder_depth,
            num_heads=cfg.encoder_num_heads,
            mlp_ratio=cfg.mlp_ratio,
            num_register_tokens=cfg.encoder_num_register_tokens,
            init_values=1.0,
            has_mask_token=False,
            **kw,
        )
        self.rope = RotaryEmbedding2D(cfg.rope_freq)
        self.decoder = nn.ModuleList(
            Block(
                C,
                cfg.num_heads,
                mlp_ratio=cfg.mlp_ratio,
                init_values=cfg.init_values,
                qk_norm=True,
                rope=self.rope,
                norm_eps=1e-6,
                **kw,
            )
            for _ in range(cfg.depth)
        )
        self.register_token = nn.Parameter(torch.zeros(1, 1, cfg.num_register_tokens, C, **kw))
        head_kw = dict(
            depth=cfg.head_depth, num_heads=cfg.head_num_heads, mlp_ratio=cfg.mlp_ratio, rope=self.rope, **kw
        )
        self.point_decoder = TransformerDecoder(2 * C, cfg.head_embed_dim, cfg.point_out_dim, **head_kw)
        self.point_head = LinearPts3d(cfg.patch_size, cfg.point_out_dim, 3, **kw)
        self.conf_decoder = TransformerDecoder(2 * C, cfg.head_embed_dim, cfg.point_out_dim, **head_kw)
        self.conf_head = LinearPts3d(cfg.patch_size, cfg.point_out_dim, 1, **kw)
        self.camera_decoder = TransformerDecoder(2 * C, cfg.head_embed_dim, cfg.camera_dim, **head_kw)
        self.camera_head = Pi3CameraHead(cfg.camera_dim, **kw)
        # persistent buffers: part of the released checkpoint
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN, device=device, dtype=dtype).view(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD, device=device, dtype=dtype).view(1, 3, 1, 1))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Per-view encoder: images [B, S, 3, H, W] in [0, 1] -> patch tokens [B, S, h*w, C] (cacheable per view)."""
        B, S = images.shape[:2]
        x = (images.reshape(B * S, *images.shape[2:]) - self.image_mean) / self.image_std
        tokens = self.encoder(x)
        return tokens.view(B, S, *tokens.shape[1:])

    def decode(self, patch_tokens: torch.Tensor, grid_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Alternating decoder: [B, S, h*w, C] -> (concat of the last two layers [B*S, P, 2C], positions [B*S, P, 2]).

        P = registers + h*w. Global layers see [B, S*P, C] with view-agnostic positions (no frame embedding).
        """
        B, S, _, C = patch_tokens.shape
        h, w = grid_hw
        R = self.patch_start_idx
        x = torch.cat([self.register_token[0].expand(B * S, R, C), patch_tokens.reshape(B * S, h * w, C)], dim=1)
        P = x.shape[1]
        pos = grid_positions(B * S, h, w, R, device=x.device)
        global_pos = pos.reshape(B, S * P, 2)
        layout = TokenLayout(num_frames=S, tokens_per_frame=P, num_special=R, grid_hw=(h, w))
        previous = x
        for i, block in enumerate(self.decoder):
            previous = x
            if i % 2 == 0:
                x = block(x.reshape(B * S, P, C), pos=pos)
            else:
                x = block(x.reshape(B, S * P, C), pos=global_pos, layout=layout)
        hidden = torch.cat([previous.reshape(B * S, P, C), x.reshape(B * S, P, C)], dim=-1)
        return hidden, pos

    def forward(
        self,
        images: torch.Tensor,
        *,
        patch_tokens: torch.Tensor | None = None,
        dense_frames: torch.Tensor | None = None,
        return_intermediates: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Official π³ outputs.

        Args:
            images: [S, 3, H, W] or [B, S, 3, H, W], RGB in [0, 1] (normalised inside); H, W multiples of 14.
            patch_tokens: cached `encode(images)` output [B, S, h*w, C].
            dense_frames: views whose points/conf are decoded (default all; returned as `dense_frames`); cameras are
                predicted for all views.
            return_intermediates: add `encoder_tokens` and `decoder_hidden` [B*S, P, 2C] (parity taps).

        Returns:
            points / local_points [B, S', H, W, 3] (world / camera frame, OpenCV), conf [B, S', H, W, 1] (logits),
            camera_poses [B, S, 4, 4] camera-to-world.
        """
        if images.dim() == 4:
            images = images.unsqueeze(0)
        B, S, _, H, W = images.shape
        h, w = H // self.patch_size, W // self.patch_size
        if patch_tokens is None:
            patch_tokens = self.encode(images)
        hidden, pos = self.decode(patch_tokens, (h, w))
        R = self.patch_start_idx
        with torch.autocast(device_type=images.device.type, enabled=False):
            hidden32 = hidden.float()
            camera_poses = self.camera_head(self.camera_decoder(hidden32, pos)[:, R:]).view(B, S, 4, 4)
            dense_hidden, dense_pos, dense_poses = hidden32, pos, camera_poses
            if dense_frames is not None:
                dense_hidden = hidden32.view(B, S, *hidden.shape[1:])[:, dense_frames].flatten(0, 1)
                dense_pos = pos.view(B, S, *pos.shape[1:])[:, dense_frames].flatten(0, 1)
                dense_poses = camera_poses[:, dense_frames]
            raw = self.point_head(self.point_decoder(dense_hidden, dense_pos)[:, R:], (H, W))
            conf = self.conf_head(self.conf_decoder(dense_hidden, dense_pos)[:, R:], (H, W))
            xy, z = raw.split([2, 1], dim=-1)
            z = torch.exp(z)  # the head predicts image-plane coordinates and log-depth
            local_points = torch.cat([xy * z, z], dim=-1).reshape(B, -1, H, W, 3)
            homogeneous = torch.cat([local_points, torch.ones_like(local_points[..., :1])], dim=-1)
            points = torch.einsum("bnij,bnhwj->bnhwi", dense_poses, homogeneous)[..., :3]
        out = {
            "points": points,
            "local_points": local_points,
            "conf": conf.reshape(B, -1, H, W, 1),
            "camera_poses": camera_poses,
        }
        if dense_frames is not None:
            out["dense_frames"] = dense_frames
        if return_intermediates:
            out["encoder_tokens"] = patch_tokens
            out["decoder_hidden"] = hidden
        return out
