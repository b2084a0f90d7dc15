"""Depth Anything 3: the any-view nets (DINOv2 whose later blocks alternate frame/global attention, DualDPT, camera
MLPs), the monocular metric/mono nets (plain DINOv2 + DPT with a sky head) and the nested net (any-view + metric).

Matches ByteDance-Seed/Depth-Anything-3@2c21ea8 model/da3.py (`DepthAnything3Net`, `NestedDepthAnything3Net`),
model/dpt.py, model/dinov2/ (`DinoV2`, `DinoVisionTransformer`), model/reference_view_selector.py (reference_da3.md,
fixtures/da3_tiny_nested/README.md). State-dict keys are the released ones without the Hugging Face wrapper's `model.`
prefix (stripped by the loader); the aux LayerNorm the released files store once is filled in through
`SHARED_TENSOR_ALIASES`.
"""

from __future__ import annotations

import dataclasses
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


@dataclass(frozen=True, kw_only=True)
class DA3MonoConfig:
    """DA3METRIC / DA3MONO: a plain DINOv2 ViT (every block frame-local: no camera token, RoPE, qk-norm) and a
    single-branch DPT (depth = exp, no confidence) with a ReLU sky head; the head reads the final-normed tokens."""

    img_size: int = 518
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    ffn_layer: str = "mlp"
    out_layers: tuple[int, int, int, int] = (4, 11, 17, 23)
    head_features: int = 256
    head_out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    metric: bool = True  # DA3METRIC: metres = focal_px · depth / 300; DA3MONO (False): relative depth

    def backbone_config(self) -> DA3Config:
        return DA3Config(
            img_size=self.img_size, patch_size=self.patch_size, embed_dim=self.embed_dim, depth=self.depth,
            num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, ffn_layer=self.ffn_layer, alt_start=-1,
            qknorm_start=-1, rope_start=-1, out_layers=self.out_layers,
        )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class DA3NestedConfig:
    """DA3NESTED: an any-view net (`da3`) whose depth and camera translations a metric net (`da3_metric`) rescales."""

    anyview: DA3Config
    metric: DA3MonoConfig
    sky_depth: float = 200.0  # official `sky_depth_def`: cap of the far depth given to sky pixels (metres)

    @property
    def img_size(self) -> int:
        return self.anyview.img_size

    @property
    def patch_size(self) -> int:
        return self.anyview.patch_size


AnyDA3Config = DA3Config | DA3MonoConfig | DA3NestedConfig


def reduction_targets(cfg: AnyDA3Config) -> ReductionTargets:
    if isinstance(cfg, DA3NestedConfig):  # only the any-view branch attends across views; reduced like da3-giant
        targets = reduction_targets(cfg.anyview)
        return dataclasses.replace(targets, global_attention=tuple(f"da3.{p}" for p in targets.global_attention))
    if isinstance(cfg, DA3MonoConfig):  # every block is frame-local: nothing for a cross-frame reduction
        return ReductionTargets(global_attention=(), special_tokens_per_frame=1, reference_frame=None,
                                sensitive_layers=())  # fmt: skip
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


def config_from_official(cfg: dict) -> AnyDA3Config:
    """Translate DA3 constructor arguments to DA3Config / DA3MonoConfig / DA3NestedConfig.

    Accepts the official YAML config (`configs/da3*.yaml` as in the manifests' "config": `net`, `head`, `cam_enc`,
    `gs_head`; nested: `anyview`, `metric`) or the arguments recorded by the reduced fixtures
    (fixtures/da3_tiny*/config.json; da3_tiny_nested's `metric`).
    """
    if "anyview" in cfg and "metric" in cfg:
        anyview, metric = config_from_official(cfg["anyview"]), config_from_official(cfg["metric"])
        if not isinstance(anyview, DA3Config) or not isinstance(metric, DA3MonoConfig):
            raise ConfigError("official DA3 nested config: expected an any-view net and a metric net")
        return DA3NestedConfig(anyview=anyview, metric=metric)
    if "head_DPT_args" in cfg or ("net" in cfg and not cfg["net"].get("cat_token", True)):
        return _mono_config_from_official(cfg)
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


def _mono_config_from_official(cfg: dict) -> DA3MonoConfig:
    """The metric/mono nets: official YAML (`net` + `head` of DPT) or the fixture's `backbone_ViT_args`/`head_DPT_args`."""
    if "backbone_ViT_args" in cfg:
        vit, net, head = cfg["backbone_ViT_args"], cfg["backbone_DinoV2_args"], cfg["head_DPT_args"]
        width, depth, heads = vit["embed_dim"], vit["depth"], vit["num_heads"]
        ffn = "swiglu" if "swiglu" in vit["ffn_layer"] else "mlp"
    else:
        net, head = cfg["net"], cfg["head"]
        width, depth, heads, ffn = _DA3_VITS[net["name"]]
    if max(net["alt_start"], net["qknorm_start"], net["rope_start"]) >= 0 or head.get("output_dim", 1) != 1:
        raise ConfigError(f"official DA3 metric/mono config: expected a frame-local ViT and a 1-channel DPT, got {cfg}")
    return DA3MonoConfig(
        embed_dim=width, depth=depth, num_heads=heads, ffn_layer=ffn, out_layers=tuple(net["out_layers"]),
        head_features=head["features"], head_out_channels=tuple(head["out_channels"]),
    )  # fmt: skip


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


# --- monocular metric/mono nets and the nested net -------------------------------------------------------------------

METRIC_FOCAL_SCALE = 300.0  # official `apply_metric_scaling(scale_factor=300)`: metres = focal_px · depth / 300
SKY_THRESHOLD = 0.3  # official: a pixel is sky where the (ReLU) sky map is >= 0.3
MIN_CLASS_PIXELS = 10  # official: the mono sky fill needs > 10 sky and > 10 non-sky pixels; nested asserts > 10 non-sky


def quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """`torch.quantile(values, q)` (linear interpolation, rank computed in the values' dtype) over *all* values.

    The official code draws a random 100,000-value subset first when there are more (unseeded `randint`/`randperm`),
    so its full-size statistics change from run to run; ours take every value, which is deterministic and equals the
    official result exactly at or below 100,000 values. A sort has no size limit (torch.quantile stops at 2^24).
    """
    flat = values.reshape(-1)
    if flat.numel() == 0:
        raise ValueError("quantile of an empty set")
    rank = torch.tensor(q, dtype=flat.dtype, device=flat.device) * (flat.numel() - 1)
    low = rank.floor()
    ordered = flat.sort().values
    lo_value = ordered[low.long()]
    hi_value = ordered[rank.ceil().long()]
    return torch.lerp(lo_value, hi_value, rank - low)


def metric_depth_metres(depth: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """DA3METRIC output [B, S, H, W] -> metres with the mean focal length (fx + fy)/2 of intrinsics [B, S, 3, 3]."""
    focal = (intrinsics[..., 0, 0] + intrinsics[..., 1, 1]) / 2
    return depth * focal[..., None, None] / METRIC_FOCAL_SCALE


def mono_sky_fill(depth: torch.Tensor, sky: torch.Tensor) -> torch.Tensor:
    """Official `_process_mono_sky_estimation`: sky pixels get the 0.99 quantile of the non-sky depth, pooled over
    every view of the batch; skipped when either class has <= 10 pixels."""
    non_sky = sky < SKY_THRESHOLD
    if int(non_sky.sum()) <= MIN_CLASS_PIXELS or int((~non_sky).sum()) <= MIN_CLASS_PIXELS:
        return depth
    return torch.where(non_sky, depth, quantile(depth[non_sky], 0.99))


def nested_metric_alignment(
    anyview: dict, metric_depth: torch.Tensor, metric_sky: torch.Tensor, *, sky_depth: float = 200.0,
    taps: dict | None = None,
) -> dict:  # fmt: skip
    """Official `NestedDepthAnything3Net` rescaling of an any-view output by a metric net (pure; returns a new dict).

    Args:
        anyview: the any-view net's depth / depth_conf [B, S, H, W], extrinsics [B, S, 3, 4] (world-to-camera),
            intrinsics [B, S, 3, 3] (its *predicted* intrinsics give the metric focal, even with given cameras).
        metric_depth: the metric net's depth [B, S, H, W] after its mono sky fill; metric_sky: its sky map.

    One least-squares scale s (metres ≈ s·depth) for the whole batch from the non-sky pixels with
    depth_conf >= its median; depth and the extrinsics' translations are multiplied by s; sky pixels get
    min(0.99 quantile of the scaled non-sky depth, sky_depth) and confidence 1.
    """
    depth, conf = anyview["depth"], anyview["depth_conf"]
    metres = metric_depth_metres(metric_depth, anyview["intrinsics"])
    non_sky = metric_sky < SKY_THRESHOLD
    if int(non_sky.sum()) <= MIN_CLASS_PIXELS:
        raise ValueError(
            f"DA3 nested metric alignment: only {int(non_sky.sum())} non-sky pixels (needs > {MIN_CLASS_PIXELS})"
        )
    median_conf = quantile(conf[non_sky], 0.5)
    align = (conf >= median_conf) & non_sky & (metres > 1e-2) & (depth > 1e-3)
    a, b = metres[align], depth[align]
    scale = (a * b).sum() / torch.clamp((b * b).sum(), min=1e-12)
    depth = depth * scale
    extrinsics = anyview["extrinsics"].clone()
    extrinsics[..., :3, 3] = extrinsics[..., :3, 3] * scale
    max_depth = torch.clamp(quantile(depth[non_sky], 0.99), max=sky_depth)
    if taps is not None:
        taps.update({"metric.focal_px": (anyview["intrinsics"][..., 0, 0] + anyview["intrinsics"][..., 1, 1]) / 2,
                     "metric.depth_metres": metres, "align.non_sky_mask": non_sky, "align.median_conf": median_conf,
                     "align.mask": align, "align.num_pixels": align.sum(), "align.scale_factor": scale,
                     "nested_sky_fill.max_depth": max_depth})  # fmt: skip
    return {
        **anyview,
        "depth": torch.where(non_sky, depth, max_depth),
        "depth_conf": torch.where(non_sky, conf, torch.ones_like(conf)),
        "extrinsics": extrinsics,
        "is_metric": 1,
        "scale_factor": float(scale),
    }


class DepthAnything3Mono(nn.Module):
    """Official `DepthAnything3Net` built from the metric/mono configs: `backbone.pretrained` + `head` (DPT)."""

    def __init__(self, cfg: DA3MonoConfig, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.config = cfg
        self.backbone = MultiViewBackbone(cfg.backbone_config(), **kw)  # alt_start -1: every block frame-local
        self.head = DPTHead(
            cfg.embed_dim, patch_size=cfg.patch_size, output_dim=1, activation="exp", features=cfg.head_features,
            out_channels=cfg.head_out_channels, intermediate_layer_idx=range(4), pos_embed=False,
            rectified_skip=False, token_norm=False, sky_head=True, **kw,
        )  # fmt: skip
        self.register_buffer("_image_mean", torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1), persistent=False)
        self.register_buffer("_image_std", torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1), persistent=False)

    def forward(
        self,
        images: torch.Tensor,
        *,
        intrinsics: torch.Tensor | None = None,
        export_feat_layers: tuple[int, ...] = (),
        images_normalized: bool = False,
        dense_frames: torch.Tensor | None = None,
        return_intermediates: bool = False,
    ) -> dict:
        """Official outputs: depth [B, S, H, W] (exp, sky filled), sky [B, S, H, W] (ReLU map; sky where >= 0.3),
        aux {"feat_layer_<i>": [B, S, h, w, C]}.

        Args:
            images: [S, 3, H, W] or [B, S, 3, H, W] RGB in [0, 1] (or normalised with `images_normalized`).
            intrinsics: [B, S, 3, 3] pixels of the input, returned as `intrinsics` (NaN when not given); a metric
                net then adds `depth_metres` (focal · depth / 300) and `is_metric` 1 (beyond the official net, which
                leaves this to its user).
            dense_frames: views whose outputs are returned (default all); the sky fill pools over all views.
            return_intermediates: add `depth_raw` (before the sky fill) and `backbone_features`.
        """
        if images.dim() == 4:
            images = images.unsqueeze(0)
        H, W = images.shape[-2:]
        if not images_normalized:
            images = (images - self._image_mean) / self._image_std
        backbone = self.backbone(images, export_feat_layers=tuple(export_feat_layers))
        C = self.config.embed_dim
        with torch.autocast(device_type=images.device.type, enabled=False):
            features = [f[..., C:].float() for f, _ in backbone.taps]  # cat_token=False: the final-normed tokens only
            feat = self.head.output_features(features, (H, W), 0)
            B, S = feat.shape[:2]
            feat = feat.flatten(0, 1)
            depth_raw = torch.exp(self.head.scratch.output_conv2(feat)).view(B, S, H, W)
            sky = torch.relu(self.head.scratch.sky_output_conv2(feat)).view(B, S, H, W)
            depth = mono_sky_fill(depth_raw, sky)
        out = {"depth": depth, "sky": sky, "aux": {f"feat_layer_{i}": t for i, t in backbone.exports.items()}}
        if intrinsics is None:  # the net predicts no camera: unknown intrinsics are NaN
            out["intrinsics"] = torch.full((B, S, 3, 3), float("nan"), device=depth.device)
        else:
            out["intrinsics"] = intrinsics
            if self.config.metric:
                out.update(depth_metres=metric_depth_metres(depth, intrinsics.to(depth.dtype)), is_metric=1)
        if return_intermediates:
            out.update(depth_raw=depth_raw, backbone_features=backbone.taps, last_block_tokens=backbone.last_tokens)
        if dense_frames is not None:
            out = _select_frames(out, dense_frames, keys=("depth", "sky", "depth_metres", "depth_raw"))
        return out


class NestedDepthAnything3(nn.Module):
    """Official `NestedDepthAnything3Net`: `da3` (any-view) + `da3_metric` (metric net) rescaling it to metres."""

    def __init__(self, cfg: DA3NestedConfig, device=None, dtype=None) -> None:
        super().__init__()
        self.config = cfg
        self.da3 = DepthAnything3(cfg.anyview, device=device, dtype=dtype)
        self.da3_metric = DepthAnything3Mono(cfg.metric, device=device, dtype=dtype)
        self.shared_tensor_aliases = {f"da3.{k}": f"da3.{v}" for k, v in SHARED_TENSOR_ALIASES.items()}

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
        return_intermediates: bool = False,
        taps: dict | None = None,
    ) -> dict:
        """Official outputs: depth (metres) / depth_conf [B, S, H, W], extrinsics [B, S, 3, 4] world-to-camera with
        metric translations, intrinsics, aux (any-view branch), is_metric (1), scale_factor (float); plus `sky`
        (the metric branch's sky map, which the official forward keeps to itself).

        Args: as `DepthAnything3.forward`; every view is decoded (the scale is pooled over all of them), then
        `dense_frames` selects the returned depth. `taps` receives the any-view output and the alignment's steps.
        """
        if images.dim() == 4:
            images = images.unsqueeze(0)
        if not images_normalized:
            images = (images - self.da3._image_mean) / self.da3._image_std
        out = self.da3(
            images, extrinsics=extrinsics, intrinsics=intrinsics, export_feat_layers=export_feat_layers,
            ref_view_strategy=ref_view_strategy, images_normalized=True, return_intermediates=return_intermediates,
        )  # fmt: skip
        metric = self.da3_metric(images, images_normalized=True)
        if taps is not None:
            taps.update({f"da3.{k}": out[k] for k in ("depth", "depth_conf", "extrinsics", "intrinsics")})
        with torch.autocast(device_type=images.device.type, enabled=False):
            anyview = {k: (v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                       for k, v in out.items()}  # fmt: skip
            out = nested_metric_alignment(
                anyview, metric["depth"], metric["sky"], sky_depth=self.config.sky_depth, taps=taps
            )
        out["sky"] = metric["sky"]
        if dense_frames is not None:
            out = _select_frames(out, dense_frames, keys=("depth", "depth_conf", "sky"))
        return out


def _select_frames(out: dict, frames: torch.Tensor, keys: tuple[str, ...]) -> dict:
    """Keep only `frames` of the per-view dense outputs named by `keys` ([B, S, ...]); records dense_frames."""
    selected = dict(out)
    for key in keys:
        if key in out:
            selected[key] = out[key][:, frames]
    selected["dense_frames"] = frames
    return selected


def build(cfg: AnyDA3Config, device=None, dtype=None) -> nn.Module:
    """The DA3 net a config describes: any-view, metric/mono, or nested."""
    if isinstance(cfg, DA3NestedConfig):
        return NestedDepthAnything3(cfg, device=device, dtype=dtype)
    if isinstance(cfg, DA3MonoConfig):
        return DepthAnything3Mono(cfg, device=device, dtype=dtype)
    return DepthAnything3(cfg, device=device, dtype=dtype)
