"""VGGT: DINOv2 encoder, alternating frame/global attention aggregator, camera head and DPT heads.

Matches facebookresearch/vggt@44b3afb vggt/models/{vggt,aggregator}.py (reference_vggt.md); state-dict keys
are the official ones, so VGGT-1B checkpoints load strictly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from spark3r_stream.errors import ConfigError
from spark3r_stream.models.heads import CameraHead, DPTHead, TrackHead
from spark3r_stream.models.layers import Block, DinoVisionTransformer, RotaryEmbedding2D, TokenLayout, grid_positions
from spark3r_stream.models.targets import ReductionTargets, map_sensitive_layers

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True, kw_only=True)
class EncoderConfig:
    """DINOv2 ViT with registers (VGGT-1B: ViT-L/14, 4 registers)."""

    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    ffn_layer: str = "mlp"


@dataclass(frozen=True, kw_only=True)
class VGGTConfig:
    img_size: int = 518
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24  # frame/global block pairs
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    qk_norm: bool = True
    rope_freq: float = 100.0
    global_rope: bool = True  # official VGGT: True; False leaves global attention position-free (vggt-tiny)
    init_values: float = 0.01
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    camera_trunk_depth: int = 4
    camera_num_heads: int = 16
    camera_iterations: int = 4
    dpt_features: int = 256
    dpt_out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    dpt_layers: tuple[int, int, int, int] = (4, 11, 17, 23)
    enable_camera: bool = True
    enable_depth: bool = True
    enable_point: bool = True
    enable_track: bool = True
    # track head (official TrackHead defaults; its feature extractor is a DPT with its own channels and layers)
    track_features: int = 128
    track_iters: int = 4
    track_stride: int = 2
    track_corr_levels: int = 7
    track_corr_radius: int = 4
    track_hidden_size: int = 384
    track_depth: int = 6  # update-transformer depth (time and space)
    track_out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    track_layers: tuple[int, int, int, int] = (4, 11, 17, 23)

    @property
    def num_special_tokens(self) -> int:
        return 1 + self.num_register_tokens  # camera + registers


def reduction_targets(cfg: VGGTConfig) -> ReductionTargets:
    return ReductionTargets(
        global_attention=tuple(f"aggregator.global_blocks.{i}.attn" for i in range(cfg.depth)),
        special_tokens_per_frame=cfg.num_special_tokens,
        reference_frame=0,  # frame 0 has its own camera/register tokens and defines the world frame
        sensitive_layers=map_sensitive_layers(range(11, 17), 24, cfg.depth),  # Spark3R §IV-D, VGGT 11–16 of 24
    )


def config_from_official(cfg: dict) -> VGGTConfig:
    """Translate the official VGGT constructor arguments (fixtures' config.json["config"]) to VGGTConfig."""
    top, agg, enc, cam, dpt = cfg["vggt"], cfg["aggregator"], cfg["patch_embed"], cfg["camera_head"], cfg["depth_head"]
    if agg["aa_order"] != ["frame", "global"] or agg["aa_block_size"] != 1:
        raise ConfigError(
            f"official VGGT config: only aa_order [frame, global] with block size 1 is supported, got {agg}"
        )
    return VGGTConfig(
        img_size=top["img_size"],
        patch_size=top["patch_size"],
        embed_dim=top["embed_dim"],
        depth=agg["depth"],
        num_heads=agg["num_heads"],
        mlp_ratio=agg["mlp_ratio"],
        num_register_tokens=agg["num_register_tokens"],
        qk_norm=agg["qk_norm"],
        rope_freq=agg["rope_freq"],
        init_values=agg["init_values"],
        encoder=EncoderConfig(
            embed_dim=enc["embed_dim"],
            depth=enc["depth"],
            num_heads=enc["num_heads"],
            mlp_ratio=enc["mlp_ratio"],
            num_register_tokens=enc["num_register_tokens"],
            ffn_layer="swiglu" if "swiglu" in str(enc["ffn_layer"]) else "mlp",
        ),
        camera_trunk_depth=cam["trunk_depth"],
        camera_num_heads=cam["num_heads"],
        camera_iterations=cam.get("forward_num_iterations", 4),
        dpt_features=dpt["features"],
        dpt_out_channels=tuple(dpt["out_channels"]),
        dpt_layers=tuple(dpt["intermediate_layer_idx"]),
        enable_camera=top["enable_camera"],
        enable_depth=top["enable_depth"],
        enable_point=top["enable_point"],
        enable_track=top["enable_track"],
        **_track_config_from_official(cfg),
    )


def _track_config_from_official(cfg: dict) -> dict:
    """VGGTConfig track fields from the fixture's `track_head` / `track_feature_extractor` / `tracker` entries."""
    if not cfg.get("track_head"):  # vggt_tiny records `track_head: null` (enable_track=False)
        return {}
    head, extractor, tracker = cfg["track_head"], cfg["track_feature_extractor"], cfg["tracker"]
    if not head.get("predict_conf", True):
        raise ConfigError("official VGGT config: a track head without confidence (predict_conf=False) is not built")
    return dict(
        track_features=head["features"],
        track_iters=head["iters"],
        track_stride=head["stride"],
        track_corr_levels=head["corr_levels"],
        track_corr_radius=head["corr_radius"],
        track_hidden_size=head["hidden_size"],
        track_depth=tracker["depth"],
        track_out_channels=tuple(extractor["out_channels"]),
        track_layers=tuple(extractor["intermediate_layer_idx"]),
    )


def _first_and_rest(token: torch.Tensor, B: int, S: int) -> torch.Tensor:
    """[1, 2, X, C] -> [B*S, X, C]: slot 0 for frame 0, slot 1 for frames 1..S-1 (what makes frame 0 the reference)."""
    first = token[:, :1].expand(B, 1, *token.shape[2:])
    rest = token[:, 1:].expand(B, S - 1, *token.shape[2:])
    return torch.cat([first, rest], dim=1).reshape(B * S, *token.shape[2:])


class Aggregator(nn.Module):
    def __init__(self, cfg: VGGTConfig, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        enc = cfg.encoder
        self.patch_size = cfg.patch_size
        self.patch_start_idx = cfg.num_special_tokens
        self.patch_embed = DinoVisionTransformer(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            embed_dim=enc.embed_dim,
            depth=enc.depth,
            num_heads=enc.num_heads,
            mlp_ratio=enc.mlp_ratio,
            num_register_tokens=enc.num_register_tokens,
            ffn_layer=enc.ffn_layer,
            init_values=1.0,
            **kw,
        )
        self.rope = RotaryEmbedding2D(cfg.rope_freq) if cfg.rope_freq > 0 else None
        block_kw = dict(mlp_ratio=cfg.mlp_ratio, init_values=cfg.init_values, qk_norm=cfg.qk_norm, rope=self.rope, **kw)
        self.frame_blocks = nn.ModuleList(Block(cfg.embed_dim, cfg.num_heads, **block_kw) for _ in range(cfg.depth))
        global_kw = block_kw | {"rope": self.rope if cfg.global_rope else None}
        self.global_blocks = nn.ModuleList(Block(cfg.embed_dim, cfg.num_heads, **global_kw) for _ in range(cfg.depth))
        self.camera_token = nn.Parameter(torch.zeros(1, 2, 1, cfg.embed_dim, **kw))
        self.register_token = nn.Parameter(torch.zeros(1, 2, cfg.num_register_tokens, cfg.embed_dim, **kw))
        self.register_buffer(
            "_resnet_mean", torch.tensor(IMAGENET_MEAN, device=device).view(1, 1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "_resnet_std", torch.tensor(IMAGENET_STD, device=device).view(1, 1, 3, 1, 1), persistent=False
        )

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Per-frame encoder: images [B, S, 3, H, W] in [0, 1] -> patch tokens [B, S, h*w, C].

        Exact per frame, so the reconstruction node caches it per keyframe across re-runs of a window.
        """
        B, S = images.shape[:2]
        x = ((images - self._resnet_mean) / self._resnet_std).reshape(B * S, *images.shape[2:])
        tokens = self.patch_embed(x)
        return tokens.view(B, S, *tokens.shape[1:])

    def first_frame_block(
        self, patch_tokens: torch.Tensor, grid_hw: tuple[int, int], *, reference: bool
    ) -> torch.Tensor:
        """Frame block 0 on patch tokens [B, S, h*w, C] -> [B, S, P, C], each frame with the special tokens of the
        reference frame (`reference`: the window's frame 0) or of the other frames.

        Per frame and exact like the encoder, so the reconstruction node caches it per keyframe (`forward(first_block=)`).
        """
        B, S = patch_tokens.shape[:2]
        slot = 0 if reference else 1
        specials = torch.cat([self.camera_token[:, slot], self.register_token[:, slot]], dim=1)  # [1, 1 + R, C]
        tokens = torch.cat([specials.expand(B * S, -1, -1), patch_tokens.reshape(B * S, -1, specials.shape[-1])], dim=1)
        pos = grid_positions(B * S, *grid_hw, self.patch_start_idx, device=patch_tokens.device)
        return self.frame_blocks[0](tokens, pos=pos).view(B, S, *tokens.shape[1:])

    def forward(
        self,
        images: torch.Tensor,
        *,
        patch_tokens: torch.Tensor | None = None,
        first_block: torch.Tensor | None = None,
        keep_layers: set[int] | None = None,
    ) -> tuple[list[torch.Tensor | None], int]:
        """Alternating attention.

        Args:
            images: [B, S, 3, H, W] in [0, 1] (only the shape is read when `patch_tokens` or `first_block` is given).
            patch_tokens: cached `encode(images)` output [B, S, h*w, C].
            first_block: cached frame block 0 output [B, S, P, C] (`first_frame_block`: frame 0 as the reference,
                the others not); replaces the encoder and frame block 0.
            keep_layers: layer outputs to keep (the ones heads read); None keeps all (debugging, parity).

        Returns:
            (list over layers of concat(frame_i, global_i) [B, S, P, 2C] or None where not kept, patch_start_idx).
        """
        B, S, _, H, W = images.shape
        h, w = H // self.patch_size, W // self.patch_size
        if first_block is None:
            if patch_tokens is None:
                patch_tokens = self.encode(images)
            patch_tokens = patch_tokens.reshape(B * S, h * w, -1)
            special = [_first_and_rest(self.camera_token, B, S), _first_and_rest(self.register_token, B, S)]
            tokens = torch.cat([*special, patch_tokens], dim=1)
        else:
            tokens = first_block.reshape(B * S, *first_block.shape[2:])
        P, C = tokens.shape[1:]
        pos = grid_positions(B * S, h, w, self.patch_start_idx, device=images.device)
        global_pos = pos.reshape(B, S * P, 2)
        layout = TokenLayout(num_frames=S, tokens_per_frame=P, num_special=self.patch_start_idx, grid_hw=(h, w))
        outputs: list[torch.Tensor | None] = []
        for i, (frame_block, global_block) in enumerate(zip(self.frame_blocks, self.global_blocks, strict=True)):
            if i > 0 or first_block is None:
                tokens = frame_block(tokens.view(B * S, P, C), pos=pos)
            frame_out = tokens.view(B, S, P, C)
            tokens = global_block(tokens.view(B, S * P, C), pos=global_pos, layout=layout)
            if keep_layers is None or i in keep_layers:
                outputs.append(torch.cat([frame_out, tokens.view(B, S, P, C)], dim=-1))
            else:
                outputs.append(None)
        return outputs, self.patch_start_idx


class VGGT(nn.Module):
    def __init__(self, cfg: VGGTConfig, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.config = cfg
        dim_in = 2 * cfg.embed_dim
        dpt_kw = dict(
            patch_size=cfg.patch_size,
            features=cfg.dpt_features,
            out_channels=cfg.dpt_out_channels,
            intermediate_layer_idx=cfg.dpt_layers,
            **kw,
        )
        self.aggregator = Aggregator(cfg, **kw)
        self.camera_head = (
            CameraHead(
                dim_in,
                trunk_depth=cfg.camera_trunk_depth,
                num_heads=cfg.camera_num_heads,
                mlp_ratio=cfg.mlp_ratio,
                num_iterations=cfg.camera_iterations,
                **kw,
            )
            if cfg.enable_camera
            else None
        )
        self.point_head = DPTHead(dim_in, output_dim=4, activation="inv_log", **dpt_kw) if cfg.enable_point else None
        self.depth_head = DPTHead(dim_in, output_dim=2, activation="exp", **dpt_kw) if cfg.enable_depth else None
        self.track_head = (
            TrackHead(
                dim_in,
                patch_size=cfg.patch_size,
                features=cfg.track_features,
                iters=cfg.track_iters,
                stride=cfg.track_stride,
                corr_levels=cfg.track_corr_levels,
                corr_radius=cfg.track_corr_radius,
                hidden_size=cfg.track_hidden_size,
                depth=cfg.track_depth,
                out_channels=cfg.track_out_channels,
                intermediate_layer_idx=cfg.track_layers,
                **kw,
            )  # fmt: skip
            if cfg.enable_track
            else None
        )

    @property
    def head_layers(self) -> set[int]:
        """Aggregator layers the heads read (VGGT-1B: 4, 11, 17, 23): the only ones kept in memory."""
        layers = set(self.config.dpt_layers) | {self.config.depth - 1}
        return layers | set(self.config.track_layers) if self.track_head is not None else layers

    def forward(
        self,
        images: torch.Tensor,
        *,
        patch_tokens: torch.Tensor | None = None,
        first_block: torch.Tensor | None = None,
        dense_frames: torch.Tensor | None = None,
        return_all_layers: bool = False,
        return_tokens: bool = False,
        query_points: torch.Tensor | None = None,
        track_taps: dict | None = None,
    ) -> dict:
        """Official VGGT outputs.

        Args:
            images: [S, 3, H, W] or [B, S, 3, H, W] in [0, 1]; H, W multiples of the patch size.
            patch_tokens: cached encoder output for these frames (see `Aggregator.encode`).
            first_block: cached frame block 0 output for these frames (see `Aggregator.first_frame_block`).
            dense_frames: frames whose depth/points are decoded (default all); the camera head always sees all.
            return_all_layers: keep every aggregator layer, returned as `aggregator_tokens` (debugging, parity).
            return_tokens: return the kept aggregator layers as `aggregator_tokens` (training auxiliaries).
            query_points: [N, 2] or [B, N, 2] pixels (x = column, y = row) in frame 0: runs the track head.
            track_taps: a dict that receives the track head's intermediates (parity debugging).

        Returns (S' = the decoded frames, all S by default), each head's keys only when the head is enabled:
            pose_enc [B, S, 9] (translation, quaternion xyzw, FoV h/w; camera-from-world of the last refinement),
            pose_enc_list: the 4 refinement iterations' pose_enc,
            depth [B, S', H, W, 1], depth_conf [B, S', H, W],
            world_points [B, S', H, W, 3] (in frame 0's camera frame), world_points_conf [B, S', H, W],
            images [B, S, 3, H, W] in eval mode, aggregator_tokens (list over layers of [B, S, P, 2C] or None);
            with query_points: track_list (each iteration's [B, S, N, 2]), track [B, S, N, 2] (input pixels; frame 0
            is the query), vis [B, S, N], conf [B, S, N] (probabilities).
        """
        if images.dim() == 4:
            images = images.unsqueeze(0)
        if query_points is not None:
            if self.track_head is None:
                raise ValueError("VGGT query_points: this model has no track head (built with enable_track=False)")
            if query_points.dim() == 2:
                query_points = query_points.unsqueeze(0)
            if query_points.dim() != 3 or query_points.shape[-1] != 2 or len(query_points) != len(images):
                raise ValueError(
                    f"VGGT query_points: expected [N, 2] or [B={len(images)}, N, 2] pixels, got {tuple(query_points.shape)}"
                )
        tokens, patch_start_idx = self.aggregator(
            images,
            patch_tokens=patch_tokens,
            first_block=first_block,
            keep_layers=None if return_all_layers else self.head_layers,
        )
        tokens = [t.float() if t is not None else None for t in tokens]
        image_hw = tuple(images.shape[-2:])
        predictions: dict = {}
        # heads in float32 even under bf16 autocast, as the official forward does
        with torch.autocast(device_type=images.device.type, enabled=False):
            if self.camera_head is not None:
                pose_enc_list = self.camera_head(tokens)
                predictions["pose_enc"] = pose_enc_list[-1]
                predictions["pose_enc_list"] = pose_enc_list
            if self.depth_head is not None:
                predictions["depth"], predictions["depth_conf"] = self.depth_head(
                    tokens, image_hw, patch_start_idx, frames=dense_frames
                )
            if self.point_head is not None:
                predictions["world_points"], predictions["world_points_conf"] = self.point_head(
                    tokens, image_hw, patch_start_idx, frames=dense_frames
                )
        if query_points is not None:
            # official: the track head runs outside the float32 block, i.e. under the caller's autocast
            track_list, vis, conf = self.track_head(
                tokens, image_hw, patch_start_idx, query_points.float(), taps=track_taps
            )
            predictions.update(track_list=track_list, track=track_list[-1], vis=vis, conf=conf)
        if not self.training:
            predictions["images"] = images
        if return_all_layers or return_tokens:
            predictions["aggregator_tokens"] = tokens
        return predictions
