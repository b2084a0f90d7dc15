"""Spark3RConfig and ReductionPlan: the reduction factors of every global layer for a sequence of S frames; pure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from spark3r_stream.config import check_field, load_config
from spark3r_stream.errors import ConfigError
from spark3r_stream.models.layers.attention import TokenLayout
from spark3r_stream.models.targets import ReductionTargets, load_schedule


@dataclass(frozen=True, kw_only=True)
class Spark3RConfig:
    """Spark3R switches; every default is the paper-literal choice (`research/spark3r_paper.md`)."""

    r_q: int | None = None  # §3.5 Eq. 4: None = 1/2/3/4 for S <= 100/300/500/more; an int forces it
    r_kv: int | None = None  # §3.5 Eq. 5: None = 1 if S <= 100 else ceil(S/40); an int forces the base factor
    layer_multiplier: int = 3  # §3.6: l, the r_KV multiplier of the layers outside the sensitive set
    group_size: int = 20  # §3.3: G consecutive frames per query-merge group
    # §3.3 (not in paper): "query" = projected, RoPE-rotated queries, heads concatenated; "input" = layer input
    similarity: Literal["query", "input"] = "query"
    # §3.3 (not in paper): dtype of the matching's similarity GEMM, which only picks each source's destination (the
    # merge averages in the queries' dtype). "auto" = bfloat16 where the device computes it natively (CUDA, CPUs with
    # avx512_bf16/AMX), as FastVGGT matches; float32 elsewhere. bench_attention / bench_fidelity measure both.
    similarity_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # §3.4 (not in paper): "drop" = a pruned frame loses all its K/V, specials included; "keep" = specials stay
    kv_special_tokens: Literal["drop", "keep"] = "drop"
    # §3.3 (not in paper): (rows, cols) of the region holding one destination; None = 2x2 up to r_Q 4, 4 x ceil(r_Q/4)
    region_size: tuple[int, int] | None = None
    protect_reference_frame: bool = True  # §3.3 (not in paper): the backbone's reference frame is never merged
    sensitive_layers: tuple[int, ...] | None = None  # §3.6: None = the backbone's declared (paper probe) set
    probe_file: str | None = None  # a `spark3r probe` schedule; overrides `sensitive_layers`
    r_kv_overrides: dict[int, int] = field(default_factory=dict)  # global-layer index -> forced r_KV (probe)

    def __post_init__(self) -> None:
        for name in ("r_q", "r_kv"):
            value = getattr(self, name)
            check_field(self, name, value is None or (_is_int(value) and value >= 1), "null or int >= 1")
        for name in ("layer_multiplier", "group_size"):
            check_field(self, name, _is_int(getattr(self, name)) and getattr(self, name) >= 1, "int >= 1")
        check_field(self, "similarity", self.similarity in ("query", "input"), "'query' or 'input'")
        dtypes = ("auto", "float32", "bfloat16")
        check_field(self, "similarity_dtype", self.similarity_dtype in dtypes, "'auto', 'float32' or 'bfloat16'")
        check_field(self, "kv_special_tokens", self.kv_special_tokens in ("drop", "keep"), "'drop' or 'keep'")
        if self.region_size is not None:
            region = tuple(self.region_size)
            ok = len(region) == 2 and all(_is_int(v) and v >= 1 for v in region)
            check_field(self, "region_size", ok, "null or [rows >= 1, cols >= 1]")
            object.__setattr__(self, "region_size", region)
        if self.sensitive_layers is not None:
            ok = all(_is_int(i) and i >= 0 for i in self.sensitive_layers)
            check_field(self, "sensitive_layers", ok, "null or a list of global-layer indices >= 0")
            object.__setattr__(self, "sensitive_layers", tuple(self.sensitive_layers))
        overrides = dict(self.r_kv_overrides)
        ok = all(_is_int(k) and k >= 0 and _is_int(v) and v >= 1 for k, v in overrides.items())
        check_field(self, "r_kv_overrides", ok, "a mapping of global-layer index >= 0 to int >= 1")
        object.__setattr__(self, "r_kv_overrides", overrides)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Sequence[str] = ()) -> Spark3RConfig:
        """A `configs/spark3r/*.yaml` preset plus `--set` overrides (the same as load_config_file)."""
        return load_config_file(path, overrides)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_config_file(path: str | Path, overrides: Sequence[str] = ()) -> Spark3RConfig:
    """A `configs/spark3r/*.yaml` preset (Spark3RConfig fields; `preset:` names a base) plus `--set` overrides."""
    return load_config(Spark3RConfig, path, overrides)


def paper_r_q(num_frames: int) -> int:
    """§3.5 Eq. 4."""
    if num_frames <= 100:
        return 1
    if num_frames <= 300:
        return 2
    if num_frames <= 500:
        return 3
    return 4


def paper_r_kv(num_frames: int) -> int:
    """§3.5 Eq. 5: keeps about 40 frames of keys/values."""
    return 1 if num_frames <= 100 else math.ceil(num_frames / 40)


def region_for(r_q: int, region_size: tuple[int, int] | None) -> tuple[int, int]:
    """Destination region (rows, cols): 2x2 reaches r_Q ≈ 4 (paper cap); larger factors need larger regions."""
    if region_size is not None:
        return region_size
    return (2, 2) if r_q <= 4 else (4, math.ceil(r_q / 4))


def resolve_sensitive_layers(config: Spark3RConfig, targets: ReductionTargets) -> tuple[int, ...]:
    """The high-sensitivity global layers (base r_KV): probe file, else the config list, else the backbone's."""
    num_layers = len(targets.global_attention)
    if config.probe_file is not None:
        schedule = load_schedule(config.probe_file)
        if schedule.get("num_layers", num_layers) != num_layers:
            raise ConfigError(
                f"spark3r probe_file {config.probe_file}: measured on {schedule['num_layers']} global layers, "
                f"this model has {num_layers}"
            )
        layers = tuple(schedule["sensitive_layers"])
    elif config.sensitive_layers is not None:
        layers = config.sensitive_layers
    else:
        layers = targets.sensitive_layers
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise ConfigError(f"spark3r sensitive_layers {bad}: out of range for {num_layers} global layers")
    return tuple(sorted(set(layers)))


@dataclass(frozen=True)
class LayerPlan:
    """What one global attention layer does for one forward pass."""

    layer: int  # global-layer index
    path: str  # module path of its Attention
    sensitive: bool
    r_q: int  # requested query factor
    r_kv: int  # key/value frame stride
    num_tokens: int  # N = S*P queries before merging (per batch item)
    num_queries: int  # queries after the merge
    num_keys: int  # keys/values after pruning
    kept_frames: tuple[int, ...]  # frames whose K/V are kept ({0, r_KV, 2 r_KV, ...})

    @property
    def attention_flop_fraction(self) -> float:
        """(queries x keys) / N^2: the fraction of dense attention-core FLOPs this layer spends."""
        return self.num_queries * self.num_keys / self.num_tokens**2


@dataclass(frozen=True)
class ReductionPlan:
    """Spark3R for one sequence length: the base factors and every global layer's plan."""

    num_frames: int
    tokens_per_frame: int
    num_special: int
    grid_hw: tuple[int, int]
    r_q: int
    r_kv: int
    layer_multiplier: int
    group_size: int
    region_size: tuple[int, int]
    similarity: str
    kv_special_tokens: str
    protected_frame: int | None
    layers: tuple[LayerPlan, ...]

    @property
    def is_dense(self) -> bool:
        return all(lp.r_q == 1 and lp.r_kv == 1 for lp in self.layers)

    @property
    def attention_flop_fraction(self) -> float:
        """Mean over the global layers of the attention-core FLOP fraction."""
        return sum(lp.attention_flop_fraction for lp in self.layers) / len(self.layers)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["attention_flop_fraction"] = self.attention_flop_fraction
        return data


def kept_frames(num_frames: int, r_kv: int) -> tuple[int, ...]:
    """§3.4: all tokens of frames 0, r_KV, 2 r_KV, ... (phase 0 keeps the reference frame)."""
    return tuple(range(0, num_frames, r_kv))


def merge_group_counts(
    layout: TokenLayout, r_q: int, group_size: int, region: tuple[int, int], protected_frame: int | None
) -> list[tuple[int, int, int]]:
    """Per merge group: (tokens, mergeable sources, sources merged). Merged = min(n - ceil(n / r_Q), sources)."""
    h, w = layout.grid_hw
    num_regions = math.ceil(h / region[0]) * math.ceil(w / region[1])
    sources_per_frame = h * w - num_regions
    counts = []
    for start in range(0, layout.num_frames, group_size):
        frames = range(start, min(start + group_size, layout.num_frames))
        tokens = len(frames) * layout.tokens_per_frame
        sources = sum(sources_per_frame for f in frames if f != protected_frame)
        merged = 0 if r_q == 1 else min(tokens - math.ceil(tokens / r_q), sources)
        counts.append((tokens, sources, merged))
    return counts


def make_plan(layout: TokenLayout, targets: ReductionTargets, config: Spark3RConfig) -> ReductionPlan:
    """The plan of every global layer for `layout` (pure: depends only on shapes, targets and config)."""
    S = layout.num_frames
    r_q = config.r_q if config.r_q is not None else paper_r_q(S)
    r_kv = config.r_kv if config.r_kv is not None else paper_r_kv(S)
    region = region_for(r_q, config.region_size)
    sensitive = set(resolve_sensitive_layers(config, targets))
    protected = targets.reference_frame if config.protect_reference_frame else None
    if protected is not None and protected >= S:
        protected = None
    N = S * layout.tokens_per_frame
    merged = sum(m for _, _, m in merge_group_counts(layout, r_q, config.group_size, region, protected))
    layers = []
    for i, path in enumerate(targets.global_attention):
        layer_r_kv = r_kv if i in sensitive else r_kv * config.layer_multiplier
        layer_r_kv = config.r_kv_overrides.get(i, layer_r_kv)
        frames = kept_frames(S, layer_r_kv)
        num_keys = len(frames) * layout.tokens_per_frame
        if config.kv_special_tokens == "keep":
            num_keys += (S - len(frames)) * layout.num_special
        layers.append(
            LayerPlan(
                layer=i,
                path=path,
                sensitive=i in sensitive,
                r_q=r_q,
                r_kv=layer_r_kv,
                num_tokens=N,
                num_queries=N - merged,
                num_keys=num_keys,
                kept_frames=frames,
            )
        )
    return ReductionPlan(
        num_frames=S,
        tokens_per_frame=layout.tokens_per_frame,
        num_special=layout.num_special,
        grid_hw=tuple(layout.grid_hw),
        r_q=r_q,
        r_kv=r_kv,
        layer_multiplier=config.layer_multiplier,
        group_size=config.group_size,
        region_size=region,
        similarity=config.similarity,
        kv_special_tokens=config.kv_special_tokens,
        protected_frame=protected,
        layers=tuple(layers),
    )
