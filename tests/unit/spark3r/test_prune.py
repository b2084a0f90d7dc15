"""Spark3R key/value pruning: kept frames, kept-only projection, and the pruned attention it computes."""

from __future__ import annotations

import pytest
import torch

from spark3r_stream.models.layers import sdpa
from spark3r_stream.spark3r import Spark3RConfig
from spark3r_stream.spark3r.prune import kv_token_index, project_kept_kv
from spark3r_stream.spark3r.reducer import GlobalReducer, ReductionSession
from tests.unit.spark3r.conftest import global_positions, make_attention, make_layout, single_layer_targets

TIGHT = 1e-5  # float32, <= 300 keys


@pytest.mark.parametrize(("num_frames", "r_kv"), [(10, 1), (10, 3), (10, 4), (7, 7), (7, 20)])
def test_kept_frames_are_the_stride_from_zero(num_frames, r_kv):
    layout = make_layout(num_frames)
    index = kv_token_index(layout, r_kv)
    frames = sorted(set((index // layout.tokens_per_frame).tolist()))
    assert frames == list(range(0, num_frames, r_kv))
    assert len(index) == len(frames) * layout.tokens_per_frame  # all tokens of a kept frame, none of the others


def test_keep_special_keeps_every_frames_specials():
    layout = make_layout(6)
    index = kv_token_index(layout, 3, keep_special=True)
    P = layout.tokens_per_frame
    dropped = index[(index // P) % 3 != 0]
    assert (dropped % P < layout.num_special).all() and len(dropped) == 4 * layout.num_special


def test_kept_only_projection_equals_gathered_full_projection():
    layout = make_layout(6)
    attn = make_attention()
    x = torch.randn(2, 6 * layout.tokens_per_frame, 16)
    pos = global_positions(layout, batch=2)
    index = kv_token_index(layout, 2)
    with torch.no_grad():
        _, k_full, v_full = attn.project_qkv(x, pos)
        k, v = project_kept_kv(attn, x, pos, index)
    torch.testing.assert_close(k, k_full[:, :, index], atol=TIGHT, rtol=TIGHT)
    torch.testing.assert_close(v, v_full[:, :, index], atol=TIGHT, rtol=TIGHT)


def test_reducer_attends_to_the_kept_frames_only():
    layout = make_layout(9)
    attn = make_attention()
    x = torch.randn(1, 9 * layout.tokens_per_frame, 16)
    pos = global_positions(layout)
    attn.reducer = GlobalReducer(0, ReductionSession(Spark3RConfig(r_q=1, r_kv=4), single_layer_targets()))
    with torch.no_grad():
        pruned = attn(x, pos, layout)
        q, k, v = attn.project_qkv(x, pos)
        index = kv_token_index(layout, 4)
        expected = attn.project_out(sdpa(q, k[:, :, index], v[:, :, index]))
    torch.testing.assert_close(pruned, expected, atol=TIGHT, rtol=TIGHT)
