"""Spark3R query path (§3.3): intra-group merging of queries onto cyclic-offset destinations, and the copy-back.

All groups are matched in one batched matmul over padded per-group token lists; no Python loop runs per frame
or token in the forward pass (the index lists depend only on shapes and are built once per layout).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from spark3r_stream.models.layers.attention import TokenLayout


@dataclass(frozen=True)
class MergeIndex:
    """Destination and source token lists of every merge group (shape-only, reusable across layers and batches).

    dst [num_groups, D] / src [num_groups, M]: token indices into the S*P sequence, padded with 0 where the
    matching `*_valid` is False (frames past the end, the protected frame).
    """

    dst: torch.Tensor
    dst_valid: torch.Tensor
    src: torch.Tensor
    src_valid: torch.Tensor
    num_merged: torch.Tensor  # [num_groups] sources merged per group (same for every batch item)
    num_tokens: int  # N
    num_kept: int  # N - sum(num_merged)


def destination_cells(grid_hw: tuple[int, int], region: tuple[int, int]) -> torch.Tensor:
    """Bool [region_h*region_w, h*w]: row t marks one destination per region at offset t (clamped in edge regions).

    §3.3: the offset cycles with the frame index, so consecutive frames contribute different destinations.
    """
    h, w = grid_hw
    rh, rw = region
    rows = torch.arange(h)
    cols = torch.arange(w)
    masks = []
    for offset in range(rh * rw):
        dy, dx = divmod(offset, rw)
        # region start + offset, clamped to the last row/col of a partial edge region
        row_start = (rows // rh) * rh
        col_start = (cols // rw) * rw
        row_pick = torch.minimum(row_start + dy, torch.clamp(row_start + rh - 1, max=h - 1))
        col_pick = torch.minimum(col_start + dx, torch.clamp(col_start + rw - 1, max=w - 1))
        masks.append(((rows == row_pick)[:, None] & (cols == col_pick)[None, :]).reshape(-1))
    return torch.stack(masks)


def build_merge_index(
    layout: TokenLayout,
    *,
    r_q: int,
    group_size: int,
    region: tuple[int, int],
    protected_frame: int | None,
    device: torch.device | str = "cpu",
) -> MergeIndex:
    """Groups of `group_size` consecutive frames; per frame one destination per region, the other patches sources.

    Special tokens of every frame and all tokens of `protected_frame` are neither sources nor destinations:
    they keep their own queries. Each group merges min(n - ceil(n / r_Q), sources) of its n tokens.
    """
    S, P, s0 = layout.num_frames, layout.tokens_per_frame, layout.num_special
    cells = destination_cells(layout.grid_hw, region)  # [area, hw]
    frames = torch.arange(S)
    dst_cells = cells[frames % cells.shape[0]]  # [S, hw]
    per_frame_dst = int(dst_cells[0].sum())
    cell_ids = torch.arange(cells.shape[1]).expand(S, -1)
    dst = (cell_ids[dst_cells].view(S, per_frame_dst) + s0) + frames[:, None] * P
    src = (cell_ids[~dst_cells].view(S, -1) + s0) + frames[:, None] * P
    valid = torch.ones(S, dtype=torch.bool)
    if protected_frame is not None and protected_frame < S:
        valid[protected_frame] = False
    num_groups = -(-S // group_size)
    pad = num_groups * group_size - S

    def grouped(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frame_valid = valid[:, None].expand_as(tokens)
        tokens = F.pad(tokens, (0, 0, 0, pad)).view(num_groups, -1)
        frame_valid = F.pad(frame_valid, (0, 0, 0, pad)).view(num_groups, -1)
        return tokens, frame_valid

    dst, dst_valid = grouped(dst)
    src, src_valid = grouped(src)
    group_tokens = torch.full((num_groups,), group_size * P)
    group_tokens[-1] = (S - (num_groups - 1) * group_size) * P
    if r_q == 1:
        num_merged = torch.zeros(num_groups, dtype=torch.long)
    else:
        target = group_tokens - (-(-group_tokens // r_q))  # n - ceil(n / r_Q)
        num_merged = torch.minimum(target, src_valid.sum(-1))
    return MergeIndex(
        dst=dst.to(device),
        dst_valid=dst_valid.to(device),
        src=src.to(device),
        src_valid=src_valid.to(device),
        num_merged=num_merged.to(device),
        num_tokens=S * P,
        num_kept=S * P - int(num_merged.sum()),
    )


@dataclass(frozen=True)
class QueryMerge:
    """One layer's merge for one batch: which sources went to which destination, and where every token reads back.

    src_tokens / dst_tokens [B, R]: merged source token and its destination; kept [B, M] sorted token indices of
    the reduced query sequence; slot [B, N]: row of the reduced sequence whose output each token receives.
    """

    src_tokens: torch.Tensor
    dst_tokens: torch.Tensor
    kept: torch.Tensor
    slot: torch.Tensor

    def merge(self, q: torch.Tensor) -> torch.Tensor:
        """[B, heads, N, d] -> [B, heads, M, d]: every destination becomes the mean of itself and its sources (Eq. 3)."""
        B, H, N, d = q.shape
        R = self.src_tokens.shape[1]
        total = q.clone()
        total.scatter_add_(
            2,
            self.dst_tokens[:, None, :, None].expand(B, H, R, d),
            q.gather(2, self.src_tokens[:, None, :, None].expand(B, H, R, d)),
        )
        count = torch.ones(B, N, dtype=q.dtype, device=q.device)
        count.scatter_add_(1, self.dst_tokens, torch.ones_like(self.dst_tokens, dtype=q.dtype))
        M = self.kept.shape[1]
        kept = total.gather(2, self.kept[:, None, :, None].expand(B, H, M, d))
        return kept / count.gather(1, self.kept)[:, None, :, None]

    def unmerge(self, out: torch.Tensor) -> torch.Tensor:
        """[B, M, C] -> [B, N, C]: each merged source receives a copy of its destination's output (one gather)."""
        B, _, C = out.shape
        return out.gather(1, self.slot[..., None].expand(B, self.slot.shape[1], C))


def match_queries(metric: torch.Tensor, index: MergeIndex) -> QueryMerge:
    """Cosine-match every source to its most similar destination in its group; merge the top sources per group.

    Args:
        metric: [B, N, C'] similarity features (projected queries with heads concatenated, or the layer input).
    """
    B = metric.shape[0]
    unit = F.normalize(metric, dim=-1)
    dst_feat = unit[:, index.dst]  # [B, groups, D, C']
    src_feat = unit[:, index.src]  # [B, groups, M, C']
    sim = src_feat @ dst_feat.transpose(-1, -2)  # [B, groups, M, D], all groups in one batched matmul
    sim.masked_fill_(~index.dst_valid[None, :, None, :], float("-inf"))
    best, best_dst = sim.max(dim=-1)  # [B, groups, M]
    best.masked_fill_(~index.src_valid[None], float("-inf"))
    order = best.argsort(dim=-1, descending=True, stable=True)
    rank_merged = torch.arange(order.shape[-1], device=metric.device) < index.num_merged[:, None]  # [groups, M]
    merged = torch.zeros_like(rank_merged[None].expand(B, -1, -1)).scatter_(-1, order, rank_merged.expand(B, -1, -1))
    num_merged = index.num_tokens - index.num_kept
    src_tokens = index.src[None].expand(B, -1, -1)[merged].view(B, num_merged)
    dst_tokens = index.dst[None].expand(B, -1, -1).gather(-1, best_dst)[merged].view(B, num_merged)
    keep = torch.ones(B, index.num_tokens, dtype=torch.bool, device=metric.device)
    keep.scatter_(1, src_tokens, False)
    kept = keep.nonzero()[:, 1].view(B, index.num_kept)
    slot = torch.empty(B, index.num_tokens, dtype=torch.long, device=metric.device)
    slot.scatter_(1, kept, torch.arange(index.num_kept, device=metric.device).expand(B, -1))
    slot.scatter_(1, src_tokens, slot.gather(1, dst_tokens))  # destinations are always kept
    return QueryMerge(src_tokens=src_tokens, dst_tokens=dst_tokens, kept=kept, slot=slot)
