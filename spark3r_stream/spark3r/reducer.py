"""GlobalReducer: executes a ReductionPlan inside one global attention layer (the `Attention.reducer` hook)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from spark3r_stream.models.layers.attention import Attention, TokenLayout, sdpa
from spark3r_stream.models.targets import ReductionTargets
from spark3r_stream.spark3r.merge import MergeIndex, build_merge_index, match_queries, similarity_dtype
from spark3r_stream.spark3r.plan import ReductionPlan, Spark3RConfig, make_plan
from spark3r_stream.spark3r.prune import kv_token_index, project_kept_kv_rows


@dataclass
class ReductionSession:
    """State shared by the reducers of one model: config, targets, and per-layout caches of plan and indices."""

    config: Spark3RConfig
    targets: ReductionTargets
    model_ref: Any = None  # weakref to the model that receives `last_reduction_plan`
    _plans: dict = field(default_factory=dict)
    _merge_indices: dict = field(default_factory=dict)
    _kv_indices: dict = field(default_factory=dict)

    def plan(self, layout: TokenLayout) -> ReductionPlan:
        plan = self._plans.get(layout)
        if plan is None:
            plan = make_plan(layout, self.targets, self.config)
            self._plans = {layout: plan}  # one layout at a time: a growing window changes S every run
            self._merge_indices.clear()
            self._kv_indices.clear()
        return plan

    def publish(self, plan: ReductionPlan) -> None:
        model = None if self.model_ref is None else self.model_ref()
        if model is not None:
            model.last_reduction_plan = plan.to_dict()

    def merge_index(self, layout: TokenLayout, plan: ReductionPlan, device: torch.device) -> MergeIndex:
        key = (layout, str(device))
        index = self._merge_indices.get(key)
        if index is None:
            index = build_merge_index(
                layout,
                r_q=plan.r_q,
                group_size=plan.group_size,
                region=plan.region_size,
                protected_frame=plan.protected_frame,
                device=device,
            )
            self._merge_indices[key] = index
        return index

    def kv_index(self, layout: TokenLayout, r_kv: int, device: torch.device) -> torch.Tensor:
        key = (layout, r_kv, str(device))
        index = self._kv_indices.get(key)
        if index is None:
            index = kv_token_index(layout, r_kv, keep_special=self.config.kv_special_tokens == "keep", device=device)
            self._kv_indices[key] = index
        return index


class GlobalReducer:
    """Spark3R in one global attention layer: KV frame-stride pruning, intra-group query merging, copy-back.

    A plain object (not an nn.Module), so attaching it leaves the state dict unchanged.
    """

    def __init__(self, layer: int, session: ReductionSession) -> None:
        self.layer = layer
        self.session = session

    def __repr__(self) -> str:
        return f"GlobalReducer(layer={self.layer})"

    def __call__(self, attn: Attention, x: torch.Tensor, pos: torch.Tensor | None, layout: TokenLayout) -> torch.Tensor:
        session = self.session
        plan = session.plan(layout)
        if self.layer == 0:
            session.publish(plan)
        step = plan.layers[self.layer]
        B, N, C = x.shape
        if step.num_keys == N:
            q, k, v = attn.project_qkv(x, pos)  # the dense projection: factors 1 reproduce dense exactly
            if step.num_queries == N:
                return attn.project_out(sdpa(q, k, v))
            q = q.transpose(1, 2).reshape(B, N, C)  # token-major rows for the merge (off the paper's factors only)
        else:
            # token-major rows throughout: the merge gathers whole tokens and the metric is a view, not a copy
            (q,) = attn.project_rows(x, pos, "q")
            q = q.reshape(B, N, C)
            k, v = project_kept_kv_rows(attn, x, pos, session.kv_index(layout, step.r_kv, x.device))
            k, v = k.transpose(1, 2), v.transpose(1, 2)
            if step.num_queries == N:
                return attn.project_out(sdpa(q.view(B, N, attn.num_heads, -1).transpose(1, 2), k, v))
        metric = q if plan.similarity == "query" else x
        index = session.merge_index(layout, plan, x.device)
        merge = match_queries(metric, index, similarity_dtype(session.config.similarity_dtype, x.device))
        q_reduced = merge.merge_rows(q)
        q_reduced = q_reduced.view(B, q_reduced.shape[1], attn.num_heads, -1).transpose(1, 2)
        # the output projection is per token, so it runs on the M merged rows before the copy-back (§3.1 note)
        return merge.unmerge(attn.project_out(sdpa(q_reduced, k, v)))


def attached_reducers(model: nn.Module) -> list[tuple[str, Attention]]:
    """(path, attention) of every Attention in `model` that has a GlobalReducer attached."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, Attention) and isinstance(m.reducer, GlobalReducer)
    ]


def new_session(model: nn.Module, config: Spark3RConfig, targets: ReductionTargets) -> ReductionSession:
    return ReductionSession(config=config, targets=targets, model_ref=weakref.ref(model))
