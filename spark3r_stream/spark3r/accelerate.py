"""accelerate(model, config) / disable(model): attach or detach Spark3R reducers on a backbone's declared targets."""

from __future__ import annotations

from torch import nn

from spark3r_stream.errors import ConfigError
from spark3r_stream.models.layers.attention import Attention
from spark3r_stream.models.targets import ReductionTargets
from spark3r_stream.spark3r.plan import Spark3RConfig, resolve_sensitive_layers
from spark3r_stream.spark3r.reducer import GlobalReducer, attached_reducers, new_session


def _declared_targets(model: nn.Module) -> ReductionTargets:
    """What the model declares (`model.spec`, set by build_model): the reduction reads only this data."""
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ConfigError(
            f"spark3r accelerate {type(model).__name__}: not built by build_model (no spec); pass targets="
        )
    return spec.reduction_targets


def accelerate(
    model: nn.Module, config: Spark3RConfig | None = None, *, targets: ReductionTargets | None = None
) -> nn.Module:
    """Turn Spark3R on in every global attention layer of `model` (in place; returns `model`).

    Args:
        config: None = the paper's defaults.
        targets: what the backbone declares (default: `model.spec.reduction_targets` for a `build_model` model).

    Every forward then sets `model.last_reduction_plan` (a JSON-able dict of the per-layer factors and counts).
    """
    config = Spark3RConfig() if config is None else config
    targets = _declared_targets(model) if targets is None else targets
    if not targets.global_attention:  # e.g. DA3's metric/mono nets: every block is frame-local
        name = model.spec.name if getattr(model, "spec", None) is not None else type(model).__name__
        raise ConfigError(
            f"spark3r accelerate {name!r}: the model has no cross-frame (global) attention to reduce; run it dense"
        )
    resolve_sensitive_layers(config, targets)  # fail now, not in the first forward
    bad = [i for i in config.r_kv_overrides if not 0 <= i < len(targets.global_attention)]
    if bad:
        raise ConfigError(f"spark3r r_kv_overrides {bad}: out of range for {len(targets.global_attention)} layers")
    layers = []
    for path in targets.global_attention:
        try:
            attn = model.get_submodule(path)
        except AttributeError:
            raise ConfigError(f"spark3r target {path!r}: no such module in {type(model).__name__}") from None
        if not isinstance(attn, Attention):
            raise ConfigError(f"spark3r target {path!r}: is {type(attn).__name__}, expected the shared Attention")
        layers.append(attn)
    disable(model)
    session = new_session(model, config, targets)
    for i, attn in enumerate(layers):
        attn.reducer = GlobalReducer(i, session)
    model.spark3r_config = config
    model.spark3r_targets = targets
    return model


def disable(model: nn.Module) -> nn.Module:
    """Back to dense attention everywhere (in place; returns `model`)."""
    for _, attn in attached_reducers(model):
        attn.reducer = None
    for name in ("last_reduction_plan", "spark3r_config", "spark3r_targets"):
        if name in model.__dict__:
            delattr(model, name)
    return model


def is_accelerated(model: nn.Module) -> bool:
    return bool(attached_reducers(model))
