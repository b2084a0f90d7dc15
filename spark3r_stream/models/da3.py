"""Depth Anything 3 (any-view): DINOv2 whose later blocks alternate frame/global attention, DualDPT, camera MLPs.

Matches ByteDance-Seed/Depth-Anything-3@2c21ea8 model/da3.py (`DepthAnything3Net`), model/dinov2/
(`DinoV2`, `DinoVisionTransformer`), model/reference_view_selector.py (reference_da3.md). State-dict keys are the
released ones without the Hugging Face wrapper's `model.` prefix (stripped by the loader); the aux LayerNorm the
released files store once is filled in through `SHARED_TENSOR_ALIASES`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from spark3r_stream.errors import ConfigError
from spark3r_stream.models.heads import CameraDecoder, CameraEncoder, DPTHead, DualDPTHead, GaussianAdapter, Gaussians
from spark3r_stream.models.layers import DinoVisionTransformer, TokenLayout, grid_positions
from spark3r_stream.models.pose_encoding import extri_intri_to_pose_encoding, pose_encoding_to_extri_intri
from spark3r_stream.models.targets import ReductionTargets, map_sensitive_layers

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RefViewStrategy = Literal["saddle_balanced", "saddle_sim_range", "first", "middle"]

# The four `output_conv2_aux.{level}.2` LayerNorms are one shared module; the released safetensors keep only the
# lexicographically first name (reference_da3.md §3, §10b). Alias key -> the key the file stores.
SHARED_TENSOR_ALIASES: dict[str, str] = {
    f"head.scratch.output_conv2_aux.{level}.2.{param}": f"head.scratch.output_conv2_aux.0.2.{param}"
    for level in (1, 2, 3)
    for param in ("weight", "bias")
}


@dataclass(frozen=True, kw_only=True)
class DA3Config:
    img_size: int = 518
    patch_size: int = 14
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    ffn_layer: str = "mlp"  # "swiglu" for giant
    alt_start: int = 4  # first block with the camera token; odd blocks from here on attend globally
    qknorm_start: int = 4
    rope_start: int = 4
    rope_freq: float = 100.0
    out_layers: tuple[int, int, int, int] = (5, 7, 9, 11)
    head_features: int = 64
    head_out_channels: tuple[int, int, int, int] = (48, 96, 192, 384)
    cam_enc_num_heads: int = 16
    cam_enc_depth: int = 4
    enable_gs_head: bool = False  # giant only: `gs_head` (GSDPT) + `gs_adapter`, run with infer_gs=True
    gs_sh_degree: int = 2  # released giant: GaussianAdapter(sh_degree=2, offsets in xy and depth, no colour head)
    gs_scale_range: tuple[float, float] = (1e-5, 30.0)
    ref_view_strategy: RefViewStrategy = "saddle_balanced"

    @property
    def global_layers(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.alt_start, self.depth) if i % 2 == 1) if self.alt_start >= 0 else ()


def reduction_targets(cfg: DA3Config) -> ReductionTargets:
    num_global = len(cfg.global_layers)
    return ReductionTargets(
        global_attention=tuple(f"backbone.pretrained.blocks.{i}.attn" for i in cfg.global_layers),
        special_tokens_per_frame=1,  # the camera token
        reference_frame=0,  # the reference view sits first after the in-model reordering
        # Spark3R §IV-D: DA3-Giant global layers 3–12 of 14; other sizes mapped by relative depth until probed
        sensitive_layers=map_sensitive_layers(range(3, 13), 14, num_global),
    )


# Official DA3 ViT factories (model/dinov2/vision_transformer.py): name -> (width, depth, heads, FFN)
_DA3_VITS = {
    "vits": (384, 12, 6, "mlp"),
    "vitb": (768, 12, 12, "mlp"),
    "vitl": (1024, 24, 16, "mlp"),
    "vitg": (1536, 40, 24, "swiglu"),
}


def config_from_official(cfg: dict) -> DA3Config:
    """Translate DA3 constructor arguments to DA3Config.

    Accepts the official YAML config (`configs/da3-*.yaml` as in the manifests' "config": `net`, `head`, `cam_enc`,
    `gs_head`) or the arguments recorded by the reduced fixtures (fixtures/da3_tiny*/config.json).
    """
    if "backbone_ViT_args" in cfg:
        vit, net, head, cam_enc = (cfg["backbone_ViT_args"], cfg["backbone_DinoV2_args"], cfg["head_DualDPT_args"],
                                   cfg["cam_enc_CameraEnc_args"])  # fmt: skip
        width, depth, heads = vit["embed_dim"], vit["depth"], vit["num_heads"]
        ffn = "swiglu" if "swiglu" in vit["ffn_layer"] else "mlp"
        cam_enc_heads, cam_enc_depth = cam_enc["num_heads"], cam_enc["trunk_depth"]
        gs = cfg.get("gs")
    else:
        net, head = cfg["net"], cfg["head"]
        if net["name"] not in _DA3_VITS or not net.get("cat_token", True):
            raise ConfigError(
                f"official DA3 config: only the any-view nets ({', '.join(_DA3_VITS)}) are built, got {net}"
            )
        width, depth, heads, ffn = _DA3_VITS[net["name"]]
        cam_enc_heads, cam_enc_depth = (
            cfg.get("cam_enc", {}).get("num_heads", 16),
            cfg.get("cam_enc", {}).get("trunk_depth", 4),
        )
        gs = cfg.get("gs_head")
    return DA3Config(
        embed_dim=width,
        depth=depth,
        num_heads=heads,
        ffn_layer=ffn,
        alt_start=net["alt_start"],
        qknorm_start=net["qknorm_start"],
        rope_start=net["rope_start"],
        out_layers=tuple(net["out_layers"]),
        head_features=head["features"],
        head_out_channels=tuple(head["out_channels"]),
        cam_enc_num_heads=cam_enc_heads,
        cam_enc_depth=cam_enc_depth,
        enable_gs_head=gs is not None,
    )


def select_reference_view(cls_tokens: torch.Tensor, strategy: RefViewStrategy) -> torch.Tensor:
    """Reference view per batch item from the raw cls tokens [B, S, C] (reference_da3.md §4.1). Returns long [B]."""
    B, S, _ = cls_tokens.shape
    if strategy == "first":
        return torch.zeros(B, dtype=torch.long, device=cls_tokens.device)
    if strategy == "middle":
        return torch.full((B,), S // 2, dtype=torch.long, device=cls_tokens.device)
    unit = cls_tokens / cls_tokens.norm(dim=-1, keepdim=True)
    sim = unit @ unit.transpose(1, 2) - torch.eye(S, dtype=unit.dtype, device=unit.device)
    if strategy == "saddle_sim_range":
        return (sim.max(dim=-1).values - sim.min(dim=-1).values).argmax(dim=-1)
    if strategy != "saddle_balanced":
        raise ValueError(f"reference-view strategy {strategy!r}: unknown")

    def min_max(m: torch.Tensor) -> torch.Tensor:
        lo, hi = m.min(dim=-1, keepdim=True).values, m.max(dim=-1, keepdim=True).values
        return (m - lo) / (hi - lo + 1e-8)

    metrics = (sim.sum(dim=-1) / (S - 1), cls_tokens.norm(dim=-1), unit.var(dim=-1))
    score = sum((min_max(m) - 0.5).abs() for m in metrics)
    return score.argmin(dim=-1)


def reference_first_order(ref: torch.Tensor, num_views: int) -> torch.Tensor:
    """[B] reference indices -> [B, S] view order [r, 0, 1, …, r-1, r+1, …]."""
    slots = torch.arange(num_views, device=ref.device).expand(len(ref), -1)
    r = ref[:, None]
    return torch.where(slots == 0, r, torch.where(slots <= r, slots - 1, slots))


@dataclass
class BackboneOutput:
    taps: list[tuple[torch.Tensor, torch.Tensor]]  # per out layer: (features [B, S, h*w, 2C], camera token [B, S, 2C])
    ref_view_index: torch.Tensor | None  # [B] when the reference selection ran
    exports: dict[int, torch.Tensor]  # requested layers' norm(x) [B, S, h, w, C], internal view order (official quirk)
    last_tokens: torch.Tensor  # output of the last block [B, S*(1+h*w), C], internal view order


class MultiViewBackbone(nn.Module):
    """Official container `DinoV2` (key `backbone`): the ViT under `pretrained` run as a multi-view transformer."""

    def __init__(self, cfg: DA3Config, device=None, dtype=None) -> None:
        super().__init__()
        self.config = cfg
        self.pretrained = DinoVisionTransformer(
            img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth,
            num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, num_register_tokens=0, init_values=1.0,
            ffn_layer=cfg.ffn_layer, interpolate_antialias=False, interpolate_offset=0.1, has_mask_token=False,
            final_norm_eps=1e-5, alt_start=cfg.alt_start, qknorm_start=cfg.qknorm_start, rope_start=cfg.rope_start,
            rope_freq=cfg.rope_freq, device=device, dtype=dtype,
        )  # fmt: skip

    def _camera_tokens(self, B: int, S: int) -> torch.Tensor:
        token = self.pretrained.camera_token  # [1, 2, C]: reference view, other views
        return torch.cat([token[:, :1].expand(B, 1, -1), token[:, 1:].expand(B, S - 1, -1)], dim=1)

    def forward(
        self,
        images: torch.Tensor,
        *,
        cam_tokens: torch.Tensor | None = None,
        ref_view_strategy: RefViewStrategy = "saddle_balanced",
        export_feat_layers: tuple[int, ...] = (),
    ) -> BackboneOutput:
        """Args:
            images: [B, S, 3, H, W], ImageNet-normalised.
            cam_tokens: camera-encoder tokens [B, S, C] (known poses): replace the learned camera tokens, no reordering.

        Tap features are the raw frame-wise half ‖ the final-normed global half, restored to the input view order.
        """
        vit = self.pretrained
        cfg = self.config
        B, S, _, H, W = images.shape
        h, w = H // cfg.patch_size, W // cfg.patch_size
        x = vit.prepare_tokens(images.reshape(B * S, 3, H, W))
        P, C = x.shape[1:]
        x = x.view(B, S, P, C)
        pos = grid_positions(B * S, h, w, 1, device=x.device)
        # global blocks: every patch at (1, 1), camera token at (0, 0) — "no spatial difference" between patches
        global_pos = torch.ones_like(pos)
        global_pos[:, 0] = 0
        global_pos = global_pos.reshape(B, S * P, 2)
        layout = TokenLayout(num_frames=S, tokens_per_frame=P, num_special=1, grid_hw=(h, w))
        order: torch.Tensor | None = None
        ref: torch.Tensor | None = None
        local_x = x
        taps: list[tuple[torch.Tensor, torch.Tensor]] = []
        exports: dict[int, torch.Tensor] = {}
        for i, block in enumerate(vit.blocks):
            if i == cfg.alt_start - 1 and S >= 3 and cam_tokens is None:
                ref = select_reference_view(x[:, :, 0], ref_view_strategy)
                order = reference_first_order(ref, S)
                index = order[:, :, None, None].expand(B, S, P, C)
                x, local_x = x.gather(1, index), local_x.gather(1, index)
            if i == cfg.alt_start:
                token = self._camera_tokens(B, S) if cam_tokens is None else cam_tokens
                x = torch.cat([token[:, :, None].to(x.dtype), x[:, :, 1:]], dim=2)
            if cfg.alt_start >= 0 and i >= cfg.alt_start and i % 2 == 1:
                x = block(x.reshape(B, S * P, C), pos=global_pos, layout=layout).view(B, S, P, C)
            else:
                x = block(x.reshape(B * S, P, C), pos=pos).view(B, S, P, C)
                local_x = x
            if i in cfg.out_layers:
                tap = torch.cat([local_x, x], dim=-1)
                if order is not None:
                    tap = tap.gather(1, order.argsort(dim=1)[:, :, None, None].expand_as(tap))
                features = torch.cat([tap[..., :C], vit.norm(tap[..., C:])], dim=-1)
                taps.append((features[:, :, 1:], tap[:, :, 0]))
            if i in export_feat_layers:
                exports[i] = vit.norm(x)[:, :, 1:].reshape(B, S, h, w, C)
        return BackboneOutput(taps=taps, ref_view_index=ref, exports=exports, last_tokens=x.reshape(B, S * P, C))


class DepthAnything3(nn.Module):
    def __init__(self, cfg: DA3Config, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.config = cfg
        dim_in = 2 * cfg.embed_dim
        head_kw = dict(patch_size=cfg.patch_size, features=cfg.head_features, out_channels=cfg.head_out_channels, **kw)
        self.backbone = MultiViewBackbone(cfg, **kw)
        self.head = DualDPTHead(dim_in, **head_kw)
        self.cam_dec = CameraDecoder(dim_in, **kw)
        self.cam_enc = CameraEncoder(
            cfg.embed_dim, num_heads=cfg.cam_enc_num_heads, trunk_depth=cfg.cam_enc_depth, **kw
        )
        self.gs_head, self.gs_adapter = None, None
        if cfg.enable_gs_head:
            self.gs_adapter = GaussianAdapter(cfg.gs_sh_degree, *cfg.gs_scale_range)
            self.gs_head = DPTHead(
                dim_in, output_dim=self.gs_adapter.num_raw_channels + 1, activation="linear",
                conf_activation="sigmoid", intermediate_layer_idx=range(4), rectified_skip=False, token_norm=False,
                image_merger=True, **head_kw,
            )  # fmt: skip
        self.shared_tensor_aliases = SHARED_TENSOR_ALIASES  # read by checkpoint.load_state_dict_strict
        # the official net consumes normalised images (its API normalises); ours takes [0, 1] like every family
        self.register_buffer("_image_mean", torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1), persistent=False)
        self.register_buffer("_image_std", torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1), persistent=False)

    def forward(
        self,
        images: torch.Tensor,
        *,
        extrinsics: torch.Tensor | None = None,
        intrinsics: torch.Tensor | None = None,
        export_feat_layers: tuple[int, ...] = (),
        ref_view_strategy: RefViewStrategy | None = None,
        images_normalized: bool = False,
        dense_frames: torch.Tensor | None = None,
        infer_gs: bool = False,
        return_intermediates: bool = False,
    ) -> dict:
        """Official `DepthAnything3Net.forward` outputs (camera-decoder pose path).

        Args:
            images: [S, 3, H, W] or [B, S, 3, H, W] RGB in [0, 1]; H, W multiples of 14.
            extrinsics: known world-to-camera poses [B, S, 4, 4] (OpenCV) with `intrinsics` [B, S, 3, 3] in pixels:
                the camera-encoder path (no reference reordering).
            ref_view_strategy: default `config.ref_view_strategy`.
            images_normalized: the images are already ImageNet-normalised (what the official net consumes).
            dense_frames: views whose depth is decoded (default all; returned as `dense_frames`); cameras: all views.
            infer_gs: also predict world-space 3-D Gaussians (giant's `gs_head` + `gs_adapter`), from the predicted
                depth and cameras, for the decoded views: `gaussians` (a `Gaussians`, N = S'·H·W per batch item).
            return_intermediates: add `ray`, `ray_conf`, `pose_enc`, `ref_view_index`, `backbone_features`.

        Returns:
            depth / depth_conf [B, S, H, W], extrinsics [B, S, 3, 4] world-to-camera, intrinsics [B, S, 3, 3],
            aux {"feat_layer_<i>": [B, S, h, w, C]}; all in the input view order (except aux, see the backbone);
            gaussians with infer_gs.
        """
        if images.dim() == 4:
            images = images.unsqueeze(0)
        H, W = images.shape[-2:]
        if infer_gs and self.gs_head is None:
            raise ValueError("DA3 infer_gs: this configuration has no Gaussian head (only da3-giant has one)")
        if not images_normalized:
            images = (images - self._image_mean) / self._image_std
        cam_tokens = None
        if extrinsics is not None:
            if intrinsics is None:
                raise ValueError("DA3 pose conditioning needs intrinsics with the extrinsics")
            world_from_cam = torch.linalg.inv(extrinsics.float())
            cam_tokens = self.cam_enc(extri_intri_to_pose_encoding(world_from_cam[..., :3, :], intrinsics, (H, W)))
        backbone = self.backbone(
            images, cam_tokens=cam_tokens, ref_view_strategy=ref_view_strategy or self.config.ref_view_strategy,
            export_feat_layers=tuple(export_feat_layers),
        )  # fmt: skip
        with torch.autocast(device_type=images.device.type, enabled=False):
            features = [f.float() if dense_frames is None else f[:, dense_frames].float() for f, _ in backbone.taps]
            dense = self.head(features, (H, W))
            pose_enc = self.cam_dec(backbone.taps[-1][1].float())
            cam_from_world, intrinsics_out = da3_pose_encoding_to_extri_intri(pose_enc, (H, W))
            if infer_gs:
                gaussians = self._gaussians(features, images, dense["depth"], cam_from_world, intrinsics_out,
                                            dense_frames)  # fmt: skip
        out = {
            "depth": dense["depth"],
            "depth_conf": dense["depth_conf"],
            "extrinsics": cam_from_world,
            "intrinsics": intrinsics_out,
            "aux": {f"feat_layer_{i}": t for i, t in backbone.exports.items()},
        }
        if dense_frames is not None:
            out["dense_frames"] = dense_frames
        if infer_gs:
            out["gaussians"] = gaussians
        if return_intermediates:
            out.update(ray=dense["ray"], ray_conf=dense["ray_conf"], pose_enc=pose_enc, cam_tokens=cam_tokens,
                       ref_view_index=backbone.ref_view_index, backbone_features=backbone.taps,
                       last_block_tokens=backbone.last_tokens)  # fmt: skip
        return out

    def _gaussians(self, features, images, depth, cam_from_world, intrinsics, dense_frames) -> Gaussians:
        """GS head on the tap features and the normalised images, then the adapter with the *predicted* cameras
        (official: even when poses are given, since the depth lives in the model's camera frame)."""
        if dense_frames is not None:
            images, cam_from_world, intrinsics = (t[:, dense_frames] for t in (images, cam_from_world, intrinsics))
        raw, opacity = self.gs_head(features, images.shape[-2:], 0, images=images.float())
        return self.gs_adapter(raw, opacity, depth, cam_from_world, intrinsics)


def da3_pose_encoding_to_extri_intri(pose_enc: torch.Tensor, image_hw: tuple[int, int]):
    """DA3: the decoded [R(q) | t] is camera-to-world; returns (world-to-camera [.., 3, 4], intrinsics [.., 3, 3])."""
    # official: tan(fov/2) clamped at 1e-6 (fov ≥ 0 after the ReLU), i.e. fov clamped at 2·atan(1e-6)
    fov = pose_enc[..., 7:].clamp(min=2 * math.atan(1e-6))
    world_from_cam, intrinsics = pose_encoding_to_extri_intri(torch.cat([pose_enc[..., :7], fov], dim=-1), image_hw)
    rotation_t = world_from_cam[..., :3].transpose(-1, -2)
    translation = -(rotation_t @ world_from_cam[..., 3:])
    return torch.cat([rotation_t, translation], dim=-1), intrinsics
