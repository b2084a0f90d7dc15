"""`load_model`: a built model with its weights and, when asked, Spark3R attached: what every command and node runs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from spark3r_stream.errors import CheckpointError, ConfigError
from spark3r_stream.models.registry import build_model, get_preset

if TYPE_CHECKING:
    from spark3r_stream.spark3r import Spark3RConfig


def resolve_device(name: str | torch.device) -> torch.device:
    """ "auto" -> cuda when available, else cpu; anything else as torch names it (a clear error if it cannot)."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {name!r}: not a torch device ({exc}); use cpu, cuda, cuda:N or auto") from None


def load_model(
    name: str = "vggt-tiny",
    *,
    weights: str | Path | None = None,
    random_weights: bool = False,
    device: str | torch.device = "cpu",
    spark3r: Spark3RConfig | bool = False,
) -> nn.Module:
    """Build preset `name` with its weights; refuses a preset that ships none unless `weights` or `random_weights`.

    Args:
        weights: a checkpoint path or hub repo id (None: the preset's shipped weights).
        device: "auto", "cpu", "cuda", "cuda:1", ...
        spark3r: True for the paper's reduction, a Spark3RConfig for another, False for the dense model.
    """
    preset = get_preset(name)
    if weights is None and preset.weights.package_file is None and not random_weights:
        hub = f" (e.g. --weights {preset.weights.hf_hub_id} when online)" if preset.weights.hf_hub_id else ""
        raise CheckpointError(
            f"model {name!r} ships no weights: pass --weights PATH{hub}, or --random-weights for a smoke test"
        )
    model = build_model(name, weights=weights, random_weights=random_weights, device=resolve_device(device))
    if spark3r is not False and spark3r is not None:
        from spark3r_stream.spark3r import Spark3RConfig, accelerate

        accelerate(model, Spark3RConfig() if spark3r is True else spark3r)
    return model
