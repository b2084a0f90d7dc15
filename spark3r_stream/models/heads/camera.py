"""VGGT's camera head: adaptive-LayerNorm modulated trunk over the camera tokens, refined iteratively.

Matches facebookresearch/vggt@44b3afb vggt/heads/camera_head.py (reference_vggt.md §6).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from spark3r_stream.models.layers import Block, Mlp


class CameraHead(nn.Module):
    def __init__(
        self,
        dim_in: int = 2048,
        *,
        trunk_depth: int = 4,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        init_values: float = 0.01,
        target_dim: int = 9,
        num_iterations: int = 4,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.num_iterations = num_iterations
        self.trunk = nn.Sequential(*(
            Block(dim_in, num_heads, mlp_ratio=mlp_ratio, init_values=init_values, **kw) for _ in range(trunk_depth)
        ))
        self.token_norm = nn.LayerNorm(dim_in, **kw)
        self.trunk_norm = nn.LayerNorm(dim_in, **kw)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, target_dim, **kw))
        self.embed_pose = nn.Linear(target_dim, dim_in, **kw)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in, **kw))  # official key
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6, **kw)
        self.pose_branch = Mlp(dim_in, dim_in // 2, target_dim, **kw)

    def forward(self, tokens: Sequence[torch.Tensor | None], num_iterations: int | None = None) -> list[torch.Tensor]:
        """Camera tokens of the last layer -> list of pose encodings [B, S, 9], one per refinement iteration."""
        camera_tokens = self.token_norm(tokens[-1][:, :, 0])
        B, S, _ = camera_tokens.shape
        pred = None
        outputs = []
        for _ in range(num_iterations or self.num_iterations):
            inp = self.empty_pose_tokens.expand(B, S, -1) if pred is None else pred.detach()
            shift, scale, gate = self.poseLN_modulation(self.embed_pose(inp)).chunk(3, dim=-1)
            x = gate * (self.adaln_norm(camera_tokens) * (1 + scale) + shift) + camera_tokens
            delta = self.pose_branch(self.trunk_norm(self.trunk(x)))
            pred = delta if pred is None else pred + delta  # accumulated before activation
            # translation and quaternion linear, FoV relu
            outputs.append(torch.cat([pred[..., :7], F.relu(pred[..., 7:])], dim=-1))
        return outputs
