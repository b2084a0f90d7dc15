"""ReductionTargets: what any token-reduction method needs to know about a backbone, declared as data."""

from __future__ import annotations

from dataclasses import dataclass


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
