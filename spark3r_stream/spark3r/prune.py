"""Spark3R key/value path (§3.4): frame-stride pruning; K and V are projected for the kept tokens only."""

from __future__ import annotations

import torch

from spark3r_stream.models.layers.attention import Attention, TokenLayout


def kv_token_index(
    layout: TokenLayout, r_kv: int, *, keep_special: bool = False, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Sorted token indices kept as keys/values: every token of frames 0, r_KV, 2 r_KV, ...

    With `keep_special`, the special tokens of the other frames stay as well (variant; the paper drops them).
    """
    S, P = layout.num_frames, layout.tokens_per_frame
    keep = torch.zeros(S, P, dtype=torch.bool)
    keep[::r_kv] = True
    if keep_special:
        keep[:, : layout.num_special] = True
    return keep.view(-1).nonzero().squeeze(1).to(device)


def project_kept_kv(
    attn: Attention, x: torch.Tensor, pos: torch.Tensor | None, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V [B, heads, Nk, d] of the tokens in `index` only (normalised, RoPE at their own positions).

    Exactly the rows a full projection would give (both are per-token maps), at Nk/N of its cost.
    """
    k, v = project_kept_kv_rows(attn, x, pos, index)
    return k.transpose(1, 2), v.transpose(1, 2)


def project_kept_kv_rows(
    attn: Attention, x: torch.Tensor, pos: torch.Tensor | None, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`project_kept_kv` token-major ([B, Nk, heads, d]): one GEMM over the k and v rows of `qkv` for the kept tokens."""
    x_kept = x.index_select(1, index)
    pos_kept = None if pos is None else pos.index_select(1, index)
    k, v = attn.project_rows(x_kept, pos_kept, "kv")
    return k, v
