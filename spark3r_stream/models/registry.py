"""Model presets and `build_model`: one explicit table, no registration by import side effect."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spark3r_stream.errors import CheckpointError, ConfigError
from spark3r_stream.models import da3, pi3, vggt
from spark3r_stream.models.checkpoint import load_weights
from spark3r_stream.models.targets import ReductionTargets, load_schedule


@dataclass(frozen=True)
class Weights:
    """Where a preset's weights come from: a file shipped in the package, or a hub repo the user may fetch."""

    package_file: str | None = None  # relative to spark3r_stream/models/
    hf_hub_id: str | None = None
    spark3r_schedule: str | None = None  # `spark3r probe` schedule measured on the shipped weights (relative path)


@dataclass(frozen=True)
class Family:
    """How to build one model family: its module, its ReductionTargets, its official-constructor translation."""

    model_cls: Callable[..., nn.Module]
    reduction_targets: Callable[[Any], ReductionTargets]
    from_official: Callable[[dict], Any]


@dataclass(frozen=True)
class Preset:
    family: str
    config: Any
    weights: Weights = Weights()
    input_size: int = 518  # long side of the network input used by preprocessing and the pipeline


def _vggt_from_official(cfg: dict) -> vggt.VGGTConfig:
    """Translate the official VGGT constructor arguments (fixtures' config.json["config"]) to VGGTConfig."""
    top, agg, enc, cam, dpt = cfg["vggt"], cfg["aggregator"], cfg["patch_embed"], cfg["camera_head"], cfg["depth_head"]
    if agg["aa_order"] != ["frame", "global"] or agg["aa_block_size"] != 1:
        raise ConfigError(
            f"official VGGT config: only aa_order [frame, global] with block size 1 is supported, got {agg}"
        )
    return vggt.VGGTConfig(
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
        encoder=vggt.EncoderConfig(
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
    )


def _pi3_from_official(cfg: dict) -> pi3.Pi3Config:
    """Translate π³'s constructor arguments to Pi3Config.

    Accepts the released constructor's kwargs (`{"pos_type": "rope100", "decoder_size": "large"}`, the only working
    combination) or the per-module arguments recorded by the reduced fixture (fixtures/pi3_tiny/config.json).
    """
    if "encoder" not in cfg:
        if cfg.get("pos_type", "rope100") != "rope100" or cfg.get("decoder_size", "large") != "large":
            raise ConfigError(f"official π³ config: only pos_type 'rope100' with decoder_size 'large' works, got {cfg}")
        return pi3.Pi3Config()
    enc, dec, point, cam = cfg["encoder"]["args"], cfg["decoder"], cfg["point_decoder"]["args"], cfg["camera_decoder"]
    if enc["embed_dim"] != dec["args"]["dim"]:
        raise ConfigError(f"official π³ config: encoder width {enc['embed_dim']} != decoder width {dec['args']['dim']}")
    return pi3.Pi3Config(
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


# Official DA3 ViT factories (model/dinov2/vision_transformer.py): name -> (width, depth, heads, FFN)
_DA3_VITS = {
    "vits": (384, 12, 6, "mlp"),
    "vitb": (768, 12, 12, "mlp"),
    "vitl": (1024, 24, 16, "mlp"),
    "vitg": (1536, 40, 24, "swiglu"),
}


def _da3_from_official(cfg: dict) -> da3.DA3Config:
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
    return da3.DA3Config(
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


FAMILIES: dict[str, Family] = {
    "vggt": Family(vggt.VGGT, vggt.reduction_targets, _vggt_from_official),
    "pi3": Family(pi3.Pi3, pi3.reduction_targets, _pi3_from_official),
    "da3": Family(da3.DepthAnything3, da3.reduction_targets, _da3_from_official),
}

PRESETS: dict[str, Preset] = {
    "vggt-1b": Preset(
        family="vggt",
        config=vggt.VGGTConfig(),
        weights=Weights(hf_hub_id="facebook/VGGT-1B"),
    ),
    "vggt-tiny": Preset(
        family="vggt",
        config=vggt.VGGTConfig(
            img_size=112,
            embed_dim=128,
            depth=4,
            num_heads=2,
            # LayerScale from 1, not VGGT's 0.01: at 0.01 this 4-layer model never learned cross-view matching
            # from scratch (model card); the value only sets the initialisation, weights carry the trained gammas
            init_values=1.0,
            encoder=vggt.EncoderConfig(embed_dim=128, depth=2, num_heads=2),
            camera_trunk_depth=2,
            camera_num_heads=2,
            dpt_features=32,
            dpt_out_channels=(16, 32, 64, 64),
            dpt_layers=(0, 1, 2, 3),
            enable_track=False,
        ),
        weights=Weights(
            package_file="weights/vggt-tiny.safetensors", spark3r_schedule="weights/vggt-tiny.spark3r.json"
        ),
        input_size=112,
    ),
    "pi3": Preset(family="pi3", config=pi3.Pi3Config(), weights=Weights(hf_hub_id="yyfz233/Pi3")),
    # DA3 any-view series (configs/da3-*.yaml at ByteDance-Seed/Depth-Anything-3@2c21ea8); official process_res 504
    "da3-small": Preset(
        family="da3",
        config=da3.DA3Config(),
        weights=Weights(hf_hub_id="depth-anything/DA3-SMALL"),
        input_size=504,
    ),
    "da3-base": Preset(
        family="da3",
        config=da3.DA3Config(embed_dim=768, num_heads=12, head_features=128, head_out_channels=(96, 192, 384, 768)),
        weights=Weights(hf_hub_id="depth-anything/DA3-BASE"),
        input_size=504,
    ),
    "da3-large": Preset(
        family="da3",
        config=da3.DA3Config(
            embed_dim=1024,
            depth=24,
            num_heads=16,
            alt_start=8,
            qknorm_start=8,
            rope_start=8,
            out_layers=(11, 15, 19, 23),
            head_features=256,
            head_out_channels=(256, 512, 1024, 1024),
        ),
        weights=Weights(hf_hub_id="depth-anything/DA3-LARGE"),
        input_size=504,
    ),
    "da3-giant": Preset(
        family="da3",
        config=da3.DA3Config(
            embed_dim=1536,
            depth=40,
            num_heads=24,
            ffn_layer="swiglu",
            alt_start=13,
            qknorm_start=13,
            rope_start=13,
            out_layers=(19, 27, 33, 39),
            head_features=256,
            head_out_channels=(256, 512, 1024, 1024),
            enable_gs_head=True,
        ),
        weights=Weights(hf_hub_id="depth-anything/DA3-GIANT"),
        input_size=504,
    ),
}


def list_models() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"model {name!r}: unknown preset; choose one of {', '.join(list_models())}") from None


def packaged_weights_path(preset: Preset) -> Path | None:
    if preset.weights.package_file is None:
        return None
    return Path(str(resources.files("spark3r_stream.models") / preset.weights.package_file))


def build_model(
    name: str,
    *,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    random_weights: bool = False,
    **config_overrides: Any,
) -> nn.Module:
    """Build preset `name` (see `list_models()`) on `device`, in eval mode.

    Args:
        weights: a checkpoint path or hub repo id; None loads the weights shipped with the preset (vggt-tiny) or,
            for presets without shipped weights, leaves the parameters at their initial values.
        device: "meta" builds the module tree without allocating memory.
        random_weights: skip the shipped weights (smoke tests, benchmarks); the initialisation is seeded (0) so such
            runs repeat exactly, without touching the caller's random state.
        config_overrides: fields of the family config, e.g. `enable_track=False`.
    """
    preset = get_preset(name)
    config = dataclasses.replace(preset.config, **config_overrides) if config_overrides else preset.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = FAMILIES[preset.family].model_cls(config, device=device)
    model.preset_name = name
    model.family = preset.family
    if weights is None and not random_weights and str(device) != "meta":
        weights = packaged_weights_path(preset)
        if weights is not None and not weights.exists():
            raise CheckpointError(f"model {name!r}: its shipped weights {weights} are missing from the package")
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def model_from_official_config(family: str, config: dict, *, device: str | torch.device = "cpu") -> nn.Module:
    """Build a model from the official constructor arguments recorded in a fixture's config.json["config"]."""
    if family not in FAMILIES:
        raise ConfigError(f"family {family!r}: unknown; choose one of {', '.join(sorted(FAMILIES))}")
    model = FAMILIES[family].model_cls(FAMILIES[family].from_official(config), device=device)
    model.preset_name = f"{family}-custom"
    model.family = family
    return model.eval()


def reduction_targets_of(model: nn.Module) -> ReductionTargets:
    """The ReductionTargets a model built here declares; a preset's shipped probe schedule sets its sensitive layers.

    The schedule was measured on the preset's own configuration: a model built with other sizes keeps the declared
    (paper-mapped) layers.
    """
    targets = FAMILIES[model.family].reduction_targets(model.config)
    preset = PRESETS.get(getattr(model, "preset_name", ""))
    if preset is not None and preset.weights.spark3r_schedule is not None and model.config == preset.config:
        path = Path(str(resources.files("spark3r_stream.models") / preset.weights.spark3r_schedule))
        layers = tuple(load_schedule(path)["sensitive_layers"])
        targets = dataclasses.replace(targets, sensitive_layers=layers)
    return targets
