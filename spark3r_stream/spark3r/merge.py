"""Spark3R query path (§3.3): intra-group merging of queries onto cyclic-offset destinations, and the copy-back.

All groups are matched in one batched matmul over padded per-group token lists; no Python loop runs per frame
or token in the forward pass (the index lists depend only on shapes and are built once per layout).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from spark3r_stream.models.layers.attention import TokenLayout
from spark3r_stream.models.outputs import cpu_has_bf16


@dataclass(frozen=True)
class MergeIndex:
    """Destination and source token lists of every merge group (shape-only, reusable across layers and batches).

    dst [num_groups, D] / src [num_groups, M]: token indices into the S*P sequence; where the matching `*_valid`
    is False (frames past the end, the protected frame) dst repeats a real destination of its group and src is 0.
    """

    dst: torch.Tensor
    dst_valid: torch.Tensor
    src: torch.Tensor
    src_valid: torch.Tensor
    num_merged: torch.Tensor  # [num_groups] sources merged per group (same for every batch item)
    num_tokens: int  # N
    num_kept: int  # N - sum(num_merged)
    # Static helpers so that matching needs no boolean compaction (nonzero) in the forward pass; the reduced
    # sequence is [valid destinations, other always-kept tokens, unmerged sources].
    always_kept: torch.Tensor  # [K0] valid destinations (group-major) then specials and protected-frame patches
    dst_slot: torch.Tensor  # [groups * D] row of each destination in the reduced sequence (0 where padded)
    merged_rank: torch.Tensor  # [R] flat (group, rank) positions of the merged sources after sorting by similarity
    unmerged_rank: torch.Tensor  # [U] flat (group, rank) positions of the valid sources that stay
    src_invalid: torch.Tensor  # ~src_valid
    merged_dst_offset: torch.Tensor  # [R] group * D of each merged rank: a source's group is its rank's group
    merged_src_offset: torch.Tensor  # [R] group * M-width of each merged rank (flat position of the group's row)
    unmerged_src_offset: torch.Tensor  # [U] the same for the ranks that stay
    # Every valid source of every group merges (r_Q 4 with 2x2 regions): then the similarity ranking cannot change
    # which sources merge, and matching needs only each source's best destination (no norms, no sort).
    all_merged: bool
    valid_src_pos: torch.Tensor  # [V] flat (group, src) positions of the valid sources, group-major
    valid_src_dst_offset: torch.Tensor  # [V] group * D of each


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
    valid_dst = dst[dst_valid]
    others = torch.ones(S * P, dtype=torch.bool)
    others[valid_dst] = False
    others[src[src_valid]] = False
    always_kept = torch.cat([valid_dst, others.nonzero().squeeze(1)])
    dst_slot = torch.zeros(dst.numel(), dtype=torch.long)
    dst_slot[dst_valid.view(-1)] = torch.arange(len(valid_dst))
    width = src.shape[1]
    rank = torch.arange(width)
    num_valid_src = src_valid.sum(-1)
    group_offset = (torch.arange(num_groups) * width)[:, None]
    merged_rank = (rank + group_offset)[rank < num_merged[:, None]]
    unmerged_rank = (rank + group_offset)[(rank >= num_merged[:, None]) & (rank < num_valid_src[:, None])]
    # Padded destinations repeat the group's first real destination (token and slot): a source that picks one
    # lands on a real destination, so matching needs no -inf mask over the [sources x destinations] scores.
    first = dst_valid.int().argmax(dim=1, keepdim=True)
    dst = torch.where(dst_valid, dst, dst.gather(1, first))
    dst_slot = dst_slot.view(num_groups, -1)
    dst_slot = torch.where(dst_valid, dst_slot, dst_slot.gather(1, first)).view(-1)
    assert len(always_kept) + len(unmerged_rank) == S * P - int(num_merged.sum())
    valid_src_pos = src_valid.view(-1).nonzero().squeeze(1)
    num_dst = dst.shape[1]
    return MergeIndex(
        dst=dst.to(device),
        dst_valid=dst_valid.to(device),
        src=src.to(device),
        src_valid=src_valid.to(device),
        num_merged=num_merged.to(device),
        num_tokens=S * P,
        num_kept=S * P - int(num_merged.sum()),
        always_kept=always_kept.to(device),
        dst_slot=dst_slot.to(device),
        merged_rank=merged_rank.to(device),
        unmerged_rank=unmerged_rank.to(device),
        src_invalid=~src_valid.to(device),
        merged_dst_offset=((merged_rank // width) * num_dst).to(device),
        merged_src_offset=((merged_rank // width) * width).to(device),
        unmerged_src_offset=((unmerged_rank // width) * width).to(device),
        all_merged=bool((num_merged == num_valid_src).all()),
        valid_src_pos=valid_src_pos.to(device),
        valid_src_dst_offset=((valid_src_pos // width) * num_dst).to(device),
    )


@dataclass(frozen=True)
class QueryMerge:
    """One layer's merge for one batch: which sources went to which destination, and where every token reads back.

    src_tokens / dst_tokens [B, R]: merged source token and its destination; kept [B, M] token indices of
    the reduced query sequence (always-kept tokens, then the unmerged sources); slot [B, N]: row of the reduced sequence whose output each token receives.
    """

    src_tokens: torch.Tensor
    dst_tokens: torch.Tensor
    kept: torch.Tensor
    slot: torch.Tensor
    dst_slot: torch.Tensor  # [B, R] row of each merged source's destination in the reduced sequence

    def merge(self, q: torch.Tensor) -> torch.Tensor:
        """[B, heads, N, d] -> [B, heads, M, d]: every destination becomes the mean of itself and its sources (Eq. 3)."""
        B, H, N, d = q.shape
        return self.merge_rows(q.transpose(1, 2).reshape(B, N, H * d)).view(B, -1, H, d).transpose(1, 2)

    def merge_rows(self, q: torch.Tensor) -> torch.Tensor:
        """Token-major [B, N, C] -> [B, M, C]: the same means as `merge`, summing whole token rows.

        One index_add_ of all N rows into their reduced row (`slot`), then one division by the member counts:
        q is read once, and no gathered copy of the kept or merged rows is made.
        """
        B, N, C = q.shape
        M = self.kept.shape[1]
        slot = self.slot if B == 1 else self.slot + torch.arange(0, B * M, M, device=q.device)[:, None]
        slot = slot.view(-1)
        reduced = torch.zeros(B * M, C, dtype=q.dtype, device=q.device).index_add_(0, slot, q.reshape(B * N, C))
        count = torch.bincount(slot, minlength=B * M).to(q.dtype)
        return reduced.div_(count[:, None]).view(B, M, C)

    def unmerge(self, out: torch.Tensor) -> torch.Tensor:
        """[B, M, C] -> [B, N, C]: each merged source receives a copy of its destination's output (one gather)."""
        rows = [out[b].index_select(0, self.slot[b]) for b in range(out.shape[0])]
        return rows[0].unsqueeze(0) if len(rows) == 1 else torch.stack(rows)


def similarity_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """Spark3RConfig.similarity_dtype for `device`: None (the metric's own dtype) or bfloat16."""
    if setting == "auto":
        native = device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())
        return torch.bfloat16 if native else None
    return torch.bfloat16 if setting == "bfloat16" else None


def match_queries(metric: torch.Tensor, index: MergeIndex, dtype: torch.dtype | None = None) -> QueryMerge:
    """Cosine-match every source to its most similar destination in its group; merge the top sources per group.

    Args:
        metric: [B, N, C'] similarity features (projected queries with heads concatenated, or the layer input).
        dtype: the similarity GEMM's dtype (None: the metric's). bfloat16 halves its time on CPUs with native bf16;
            near-ties may then pick another destination of the group.
    """
    B, N, C = metric.shape
    groups, D = index.dst.shape
    width = index.src.shape[1]
    features = metric.to(dtype or metric.dtype)  # converted once, before the gathers (half the bytes to copy)
    dst_feat = features.index_select(1, index.dst.view(-1)).view(B * groups, D, C)
    dst_feat.div_(dst_feat.norm(dim=-1, keepdim=True).clamp_min(1e-12))  # F.normalize, in the gathered copy
    src_feat = features.index_select(1, index.src.view(-1)).view(B * groups, width, C)
    sim = torch.bmm(src_feat, dst_feat.transpose(1, 2))  # all groups in one batched matmul
    if sim.device.type == "cpu" and sim.dtype == torch.bfloat16:
        sim = sim.float()  # the CPU's row maximum over bf16 is ~4x slower than converting first
    best, best_dst = _max_last(sim)  # [B * groups, width]
    src_flat, dst_flat = index.src.view(-1), index.dst.view(-1)
    if index.all_merged:
        # every valid source merges whatever its similarity: no ranking (the same pairs, in token order)
        merged_pos = index.valid_src_pos.expand(B, -1)
        dst_pos = best_dst.view(B, -1).gather(1, merged_pos) + index.valid_src_dst_offset  # flat (group, dst)
        kept = index.always_kept.expand(B, -1)
    else:
        # the source norm does not change its argmax, only its rank among the group's sources: divide after the max
        best = (best / src_feat.norm(dim=-1).clamp_min(1e-12)).view(B, groups, width)
        best = best.masked_fill(index.src_invalid, float("-inf"))
        order = best.sort(dim=-1, descending=True, stable=True).indices.view(B, -1)  # per group: rank -> source
        # flat (group, src) positions; a rank's group is static, so its offsets are precomputed in the index
        merged_pos = order.index_select(1, index.merged_rank) + index.merged_src_offset  # [B, R]
        unmerged_pos = order.index_select(1, index.unmerged_rank) + index.unmerged_src_offset
        dst_pos = best_dst.view(B, -1).gather(1, merged_pos) + index.merged_dst_offset  # flat (group, dst)
        kept = torch.cat([index.always_kept.expand(B, -1), src_flat.take(unmerged_pos)], dim=1)
    src_tokens = src_flat.take(merged_pos)
    dst_tokens = dst_flat.take(dst_pos)
    dst_slot = index.dst_slot.take(dst_pos)
    slot = torch.empty(B, N, dtype=torch.long, device=metric.device)
    slot.scatter_(1, kept, torch.arange(index.num_kept, device=metric.device).expand(B, -1))
    slot.scatter_(1, src_tokens, dst_slot)
    return QueryMerge(src_tokens=src_tokens, dst_tokens=dst_tokens, kept=kept, slot=slot, dst_slot=dst_slot)


def _max_last(values: torch.Tensor, block: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """values.max(dim=-1) (maximum and the index of its first occurrence), in two levels.

    torch.max with indices is a scalar loop on the CPU (~25 ms for the 15 M similarities of a 1,000-frame window);
    amax is vectorised. The maximum of each block of about `block` columns, then the first block holding the row's
    maximum, then the first column of that block equal to it: the same values and the same first-occurrence
    indices, as max compares exactly.
    """
    *lead, D = values.shape
    size = next((b for b in range(block, 7, -1) if D % b == 0 and D // b > 1), None)
    if size is None:
        return values.max(dim=-1)
    rows = values.reshape(-1, D // size, size)  # [rows, blocks, size]
    best, block_id = rows.amax(dim=-1).max(dim=-1)
    flat = block_id + torch.arange(0, block_id.numel() * (D // size), D // size, device=values.device)
    inner = rows.view(-1, size).index_select(0, flat).argmax(dim=-1)
    return best.view(lead), (block_id * size + inner).view(lead)
