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
from spark3r_stream.models import vggt
from spark3r_stream.models.checkpoint import load_weights
from spark3r_stream.models.targets import ReductionTargets


@dataclass(frozen=True)
class Weights:
    """Where a preset's weights come from: a file shipped in the package, or a hub repo the user may fetch."""

    package_file: str | None = None  # relative to spark3r_stream/models/
    hf_hub_id: str | None = None


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
        raise ConfigError(f"official VGGT config: only aa_order [frame, global] with block size 1 is supported, got {agg}")
    return vggt.VGGTConfig(
        img_size=top["img_size"], patch_size=top["patch_size"], embed_dim=top["embed_dim"],
        depth=agg["depth"], num_heads=agg["num_heads"], mlp_ratio=agg["mlp_ratio"],
        num_register_tokens=agg["num_register_tokens"], qk_norm=agg["qk_norm"], rope_freq=agg["rope_freq"],
        init_values=agg["init_values"],
        encoder=vggt.EncoderConfig(embed_dim=enc["embed_dim"], depth=enc["depth"], num_heads=enc["num_heads"],
                                   mlp_ratio=enc["mlp_ratio"], num_register_tokens=enc["num_register_tokens"],
                                   ffn_layer="swiglu" if "swiglu" in str(enc["ffn_layer"]) else "mlp"),
        camera_trunk_depth=cam["trunk_depth"], camera_num_heads=cam["num_heads"],
        camera_iterations=cam.get("forward_num_iterations", 4),
        dpt_features=dpt["features"], dpt_out_channels=tuple(dpt["out_channels"]),
        dpt_layers=tuple(dpt["intermediate_layer_idx"]),
        enable_camera=top["enable_camera"], enable_depth=top["enable_depth"], enable_point=top["enable_point"],
        enable_track=top["enable_track"],
    )


FAMILIES: dict[str, Family] = {
    "vggt": Family(vggt.VGGT, vggt.reduction_targets, _vggt_from_official),
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
            img_size=112, embed_dim=128, depth=4, num_heads=2, init_values=0.01,
            encoder=vggt.EncoderConfig(embed_dim=128, depth=2, num_heads=2),
            camera_trunk_depth=2, camera_num_heads=2,
            dpt_features=32, dpt_out_channels=(16, 32, 64, 64), dpt_layers=(0, 1, 2, 3),
            enable_track=False,
        ),
        weights=Weights(package_file="weights/vggt-tiny.safetensors"),
        input_size=112,
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
        random_weights: skip the shipped weights (smoke tests, benchmarks).
        config_overrides: fields of the family config, e.g. `enable_track=False`.
    """
    preset = get_preset(name)
    config = dataclasses.replace(preset.config, **config_overrides) if config_overrides else preset.config
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
    """The ReductionTargets a model built here declares."""
    return FAMILIES[model.family].reduction_targets(model.config)
