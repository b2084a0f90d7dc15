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
from spark3r_stream.models.spec import ModelSpec
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


FAMILIES: dict[str, Family] = {
    "vggt": Family(vggt.VGGT, vggt.reduction_targets, vggt.config_from_official),
    "pi3": Family(pi3.Pi3, pi3.reduction_targets, pi3.config_from_official),
    "da3": Family(da3.build, da3.reduction_targets, da3.config_from_official),  # any-view, metric/mono, nested
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
    # DA3 monocular nets (configs/da3metric-large.yaml, da3mono-large.yaml): no cross-view attention, no cameras
    "da3-metric-large": Preset(
        family="da3",
        config=da3.DA3MonoConfig(metric=True),
        weights=Weights(hf_hub_id="depth-anything/DA3METRIC-LARGE"),
        input_size=504,
    ),
    "da3-mono-large": Preset(
        family="da3",
        config=da3.DA3MonoConfig(metric=False),
        weights=Weights(hf_hub_id="depth-anything/DA3MONO-LARGE"),
        input_size=504,
    ),
}
# configs/da3nested-giant-large.yaml: da3-giant (Gaussian head included) + da3-metric-large, depth in metres
PRESETS["da3-nested-giant-large"] = Preset(
    family="da3",
    config=da3.DA3NestedConfig(anyview=PRESETS["da3-giant"].config, metric=PRESETS["da3-metric-large"].config),
    weights=Weights(hf_hub_id="depth-anything/DA3NESTED-GIANT-LARGE"),
    input_size=504,
)


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
    if weights is None and not random_weights and str(device) != "meta":
        weights = packaged_weights_path(preset)
        if weights is not None and not weights.exists():
            raise CheckpointError(f"model {name!r}: its shipped weights {weights} are missing from the package")
    if weights is not None:
        load_weights(model, weights)
    model.spec = ModelSpec(
        name=name,
        family=preset.family,
        input_size=preset.input_size,
        weights=None if weights is None else str(weights),
        reduction_targets=_declared_targets(preset, config),
    )
    return model.eval()


def model_from_official_config(family: str, config: dict, *, device: str | torch.device = "cpu") -> nn.Module:
    """Build a model from the official constructor arguments recorded in a fixture's config.json["config"]."""
    if family not in FAMILIES:
        raise ConfigError(f"family {family!r}: unknown; choose one of {', '.join(sorted(FAMILIES))}")
    config = FAMILIES[family].from_official(config)
    model = FAMILIES[family].model_cls(config, device=device)
    targets = FAMILIES[family].reduction_targets(config)
    model.spec = ModelSpec(f"{family}-custom", family, config.img_size, None, targets)
    return model.eval()


def _declared_targets(preset: Preset, config: Any) -> ReductionTargets:
    """The family's ReductionTargets for `config`; a preset's shipped probe schedule sets its sensitive layers.

    The schedule was measured on the preset's own configuration: a model built with other sizes keeps the declared
    (paper-mapped) layers.
    """
    targets = FAMILIES[preset.family].reduction_targets(config)
    if preset.weights.spark3r_schedule is not None and config == preset.config:
        path = Path(str(resources.files("spark3r_stream.models") / preset.weights.spark3r_schedule))
        targets = dataclasses.replace(targets, sensitive_layers=tuple(load_schedule(path)["sensitive_layers"]))
    return targets


def reduction_targets_of(model: nn.Module) -> ReductionTargets:
    """The ReductionTargets a model built by `build_model` declares (`model.spec.reduction_targets`)."""
    return model.spec.reduction_targets
