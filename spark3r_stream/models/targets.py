"""ReductionTargets: what any token-reduction method needs to know about a backbone, declared as data."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spark3r_stream.errors import ConfigError

SCHEDULE_FORMAT = "spark3r-schedule"  # `probe` output: {"format": ..., "version": 1, "sensitive_layers": [...], ...}


@dataclass(frozen=True)
class ReductionTargets:
    """Cross-frame attention layers of a backbone and the tokens a reduction must leave alone."""

    global_attention: tuple[str, ...]  # module paths of the cross-frame `Attention` layers, in depth order
    special_tokens_per_frame: int  # tokens before each frame's patch grid (camera, registers): never merged
    reference_frame: int | None  # frame (in global-layer order) whose tokens are never merged; None = no reference
    sensitive_layers: tuple[int, ...]  # global-layer indices the paper's probe found sensitive (keep base r_KV)


def map_sensitive_layers(paper_layers: range, paper_depth: int, depth: int) -> tuple[int, ...]:
    """Map a sensitive-layer range measured on a `paper_depth`-layer model to `depth` layers by relative depth.

    Used for configurations the paper did not probe, until `spark3r probe` measures them.
    """
    if depth == paper_depth:
        return tuple(paper_layers)
    lo = round(paper_layers.start * depth / paper_depth)
    hi = round(paper_layers.stop * depth / paper_depth)
    return tuple(range(lo, max(hi, lo + 1)))


def load_schedule(path: str | Path) -> dict[str, Any]:
    """Read a `spark3r probe` schedule file (JSON) and check its format."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"spark3r probe_file {path}: file not found")
    try:
        schedule = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"spark3r probe_file {path}: not JSON ({error})") from None
    if not isinstance(schedule, dict) or schedule.get("format") != SCHEDULE_FORMAT:
        raise ConfigError(f"spark3r probe_file {path}: not a {SCHEDULE_FORMAT} file (written by `spark3r probe`)")
    layers = schedule.get("sensitive_layers")
    if not isinstance(layers, list) or not all(isinstance(i, int) for i in layers):
        raise ConfigError(f"spark3r probe_file {path}: sensitive_layers must be a list of ints, got {layers!r}")
    return schedule
