"""Spark3R query merge: destinations, groups, protection, Eq. 3 means and the copy-back."""

from __future__ import annotations

import pytest
import torch

from spark3r_stream.models.layers import sdpa
from spark3r_stream.spark3r import Spark3RConfig, make_plan
from spark3r_stream.spark3r.merge import (
    _max_last,
    build_merge_index,
    destination_cells,
    match_queries,
    similarity_dtype,
)
from spark3r_stream.spark3r.reducer import GlobalReducer, ReductionSession
from tests.unit.spark3r.conftest import global_positions, make_attention, make_layout, single_layer_targets

TIGHT = 1e-5  # float32 attention over <= 400 tokens; a real merge error is O(0.1)


def merged_of(num_frames=12, r_q=3, group_size=5, protected=0, batch=2, grid_hw=(4, 4)):
    layout = make_layout(num_frames, grid_hw=grid_hw)
    index = build_merge_index(layout, r_q=r_q, group_size=group_size, region=(2, 2), protected_frame=protected)
    metric = torch.randn(batch, layout.num_frames * layout.tokens_per_frame, 8)
    return layout, index, match_queries(metric, index)


def test_destination_offset_cycles_with_the_frame():
    cells = destination_cells((4, 4), (2, 2)).view(4, 4, 4)
    assert cells.sum(dim=(1, 2)).tolist() == [4, 4, 4, 4]  # one per 2x2 region
    assert cells[0, ::2, ::2].all() and cells[1, ::2, 1::2].all() and cells[3, 1::2, 1::2].all()
    edge = destination_cells((3, 5), (2, 2))  # partial regions at the bottom and right edges: still one each
    assert edge.sum(dim=1).tolist() == [6, 6, 6, 6]
    assert not (edge[0] & edge[3]).all()


def test_merged_count_matches_the_plan():
    layout, index, merge = merged_of()
    plan = make_plan(layout, single_layer_targets(), Spark3RConfig(r_q=3, group_size=5))
    assert merge.kept.shape == (2, plan.layers[0].num_queries)
    assert index.num_kept == plan.layers[0].num_queries


def test_no_merge_crosses_a_group_boundary():
    layout, _, merge = merged_of(num_frames=12, group_size=5)
    P = layout.tokens_per_frame
    assert merge.src_tokens.numel() > 0
    assert torch.equal((merge.src_tokens // P) // 5, (merge.dst_tokens // P) // 5)


def test_protected_tokens_are_never_merged():
    layout, _, merge = merged_of(r_q=4)
    P, s0 = layout.tokens_per_frame, layout.num_special
    touched = torch.cat([merge.src_tokens, merge.dst_tokens], dim=1)
    assert not (touched % P < s0).any(), "a special token was merged"
    assert not (touched // P == 0).any(), "a token of the reference frame was merged"
    _, _, unprotected = merged_of(r_q=4, protected=None)
    assert (unprotected.src_tokens // P == 0).any()


def test_protected_tokens_keep_their_own_queries():
    layout, _, merge = merged_of(r_q=4)
    q = torch.randn(2, 2, layout.num_frames * layout.tokens_per_frame, 4)
    reduced = merge.merge(q)
    own = merge.unmerge(reduced.transpose(1, 2).flatten(2))  # each token reads the reduced row it maps to
    P = layout.tokens_per_frame
    token = torch.arange(q.shape[2])
    protected = (token % P < layout.num_special) | (token // P == 0)
    assert torch.equal(own[:, protected], q.transpose(1, 2).flatten(2)[:, protected])


def test_destination_becomes_the_mean_of_its_sources():
    layout, _, merge = merged_of(r_q=3, batch=1)
    q = torch.randn(1, 2, layout.num_frames * layout.tokens_per_frame, 4)
    full = merge.unmerge(merge.merge(q).transpose(1, 2).flatten(2))[0]
    dst = int(merge.dst_tokens[0, 0])
    members = [dst] + merge.src_tokens[0][merge.dst_tokens[0] == dst].tolist()
    expected = q[0].transpose(0, 1).flatten(1)[members].mean(dim=0)
    torch.testing.assert_close(full[dst], expected)
    for src in members:
        assert torch.equal(full[src], full[dst])


def test_sources_pick_their_most_similar_destination():
    layout = make_layout(4)
    index = build_merge_index(layout, r_q=2, group_size=4, region=(2, 2), protected_frame=None)
    metric = torch.randn(1, 4 * layout.tokens_per_frame, 8)
    merge = match_queries(metric, index)
    unit = torch.nn.functional.normalize(metric[0], dim=-1)
    dst_all = index.dst[0]
    for src, dst in zip(merge.src_tokens[0].tolist(), merge.dst_tokens[0].tolist(), strict=True):
        sims = unit[src] @ unit[dst_all].T
        assert dst == int(dst_all[sims.argmax()])


def test_bfloat16_similarity_picks_a_best_destination_up_to_near_ties():
    layout = make_layout(40)
    index = build_merge_index(layout, r_q=4, group_size=20, region=(2, 2), protected_frame=0)
    metric = torch.randn(1, 40 * layout.tokens_per_frame, 64)
    exact = match_queries(metric, index)
    fast = match_queries(metric, index, torch.bfloat16)
    assert torch.equal(exact.src_tokens, fast.src_tokens)  # every source merges: the same sources
    unit = torch.nn.functional.normalize(metric[0], dim=-1)
    cosine = (unit[exact.src_tokens[0]] * unit[exact.dst_tokens[0]]).sum(-1)
    cosine_fast = (unit[fast.src_tokens[0]] * unit[fast.dst_tokens[0]]).sum(-1)
    assert (cosine_fast <= cosine + 1e-6).all() and (cosine - cosine_fast).max() < 0.02  # bf16 rounding only
    assert 0.8 < (exact.dst_tokens == fast.dst_tokens).float().mean() < 1.0  # ties of random features do flip
    assert similarity_dtype("float32", torch.device("cpu")) is None
    assert similarity_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert similarity_dtype("auto", torch.device("cuda")) == torch.bfloat16


def test_merged_tokens_receive_identical_outputs():
    layout = make_layout(12)
    attn = make_attention()
    attn.reducer = GlobalReducer(0, ReductionSession(Spark3RConfig(r_q=3, group_size=5), single_layer_targets()))
    x = torch.randn(2, 12 * layout.tokens_per_frame, 16)
    pos = global_positions(layout, batch=2)
    with torch.no_grad():
        out = attn(x, pos, layout)
        metric = attn.project(x, pos, "q").transpose(1, 2).flatten(2)
    index = build_merge_index(layout, r_q=3, group_size=5, region=(2, 2), protected_frame=0)
    merge = match_queries(metric, index, similarity_dtype("auto", x.device))  # as the reducer matches
    assert merge.src_tokens.shape[1] > 50
    for b in range(2):
        assert torch.equal(out[b, merge.src_tokens[b]], out[b, merge.dst_tokens[b]])


def test_identical_frames_merge_reproduces_dense_attention():
    layout = make_layout(10)
    attn = make_attention()
    frame = torch.randn(1, 1, layout.tokens_per_frame, 16)
    x = frame.expand(1, 10, -1, -1).reshape(1, -1, 16)
    pos = global_positions(layout)
    with torch.no_grad():
        dense = attn(x, pos, layout)
        for config in (Spark3RConfig(r_q=4, r_kv=1, group_size=5), Spark3RConfig(r_q=3, r_kv=1, similarity="input")):
            attn.reducer = GlobalReducer(0, ReductionSession(config, single_layer_targets(reference_frame=None)))
            merged = attn(x, pos, layout)
            assert attn.reducer.session.plan(layout).layers[0].num_queries == 10 * (2 + 4)  # every source merged
            torch.testing.assert_close(merged, dense, atol=TIGHT, rtol=TIGHT)
    q, k, v = attn.project_qkv(x, pos)
    torch.testing.assert_close(attn.project_out(sdpa(q, k, v)), dense)


def test_row_merge_equals_head_split_merge():
    layout, _, merge = merged_of(r_q=3, batch=2)
    q = torch.randn(2, 2, layout.num_frames * layout.tokens_per_frame, 4)
    rows = merge.merge_rows(q.transpose(1, 2).flatten(2))
    assert torch.equal(rows, merge.merge(q).transpose(1, 2).flatten(2))


def reference_merge(metric: torch.Tensor, q: torch.Tensor, index) -> tuple[set, torch.Tensor]:
    """Straightforward Spark3R query merge of one batch item, group by group: (merged (src, dst) pairs, per-token q).

    Each valid source takes its most cosine-similar valid destination of the group; the group's num_merged sources
    with the highest similarity merge; every destination becomes the mean of itself and its sources (Eq. 3).
    """
    pairs, full = set(), q.clone()
    for g in range(index.dst.shape[0]):
        dst = index.dst[g][index.dst_valid[g]]
        src = index.src[g][index.src_valid[g]]
        if len(src) == 0:
            continue
        unit = torch.nn.functional.normalize(metric, dim=-1)
        sims = unit[src] @ unit[dst].T
        best, pick = sims.max(dim=1)
        order = torch.sort(best, descending=True, stable=True).indices[: int(index.num_merged[g])]
        members = {int(d): [int(d)] for d in dst}
        for i in order.tolist():
            pairs.add((int(src[i]), int(dst[pick[i]])))
            members[int(dst[pick[i]])].append(int(src[i]))
        for tokens in members.values():
            full[tokens] = q[tokens].mean(dim=0)
    return pairs, full


def test_matching_and_merge_equal_a_straightforward_reference():
    torch.manual_seed(1)
    paths = set()
    for num_frames, group_size, protected, r_q in ((12, 5, 0, 3), (9, 4, None, 4), (7, 7, 3, 2), (10, 4, 0, 4)):
        layout = make_layout(num_frames, grid_hw=(4, 6))
        index = build_merge_index(layout, r_q=r_q, group_size=group_size, region=(2, 2), protected_frame=protected)
        paths.add(index.all_merged)
        N = num_frames * layout.tokens_per_frame
        metric, q = torch.randn(2, N, 8), torch.randn(2, N, 12)
        merge = match_queries(metric, index)
        reduced = merge.merge_rows(q)
        full = merge.unmerge(reduced)
        for b in range(2):
            pairs, expected = reference_merge(metric[b], q[b], index)
            assert set(zip(merge.src_tokens[b].tolist(), merge.dst_tokens[b].tolist(), strict=True)) == pairs
            torch.testing.assert_close(full[b], expected, atol=TIGHT, rtol=TIGHT)
        assert reduced.shape[1] == index.num_kept
    assert paths == {True, False}  # both the ranked matching and the one where every valid source merges


@pytest.mark.parametrize("num_columns", [320, 64, 37, 9, 1])
def test_two_level_max_equals_torch_max_first_occurrence(num_columns):
    torch.manual_seed(0)
    values = torch.randn(3, 50, num_columns)
    values[0, :, num_columns // 2 :] = values[0, :, :1]  # ties, as padded destinations make them
    values[1] = values[1].round()  # many ties
    best, where = _max_last(values)
    expected, expected_where = values.max(dim=-1)
    assert torch.equal(best, expected) and torch.equal(where, expected_where)
    assert torch.equal(where[0], values[0].argmax(dim=-1))  # the first of the tied columns
