"""Multi-head self-attention with optional per-head q/k LayerNorm and 2-D RoPE; the one place token reduction plugs in.

Dense path = facebookresearch/vggt@44b3afb vggt/layers/attention.py (same `qkv`/`q_norm`/`k_norm`/`proj` keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from spark3r_stream.models.layers.rope import RotaryEmbedding2D


@dataclass(frozen=True)
class TokenLayout:
    """How the N = S·P tokens of a cross-frame attention call are laid out (frame-major)."""

    num_frames: int  # S
    tokens_per_frame: int  # P = num_special + h*w
    num_special: int  # camera/register tokens at the start of every frame
    grid_hw: tuple[int, int]  # patch grid (h, w) of each frame


class TokenReducer(Protocol):
    """What `Attention.reducer` must be: it replaces the dense attention of one layer (see spark3r/reducer.py)."""

    def __call__(
        self, attn: Attention, x: torch.Tensor, pos: torch.Tensor | None, layout: TokenLayout
    ) -> torch.Tensor: ...


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ/√d) v on [B, heads, N, d]; the single attention kernel of the project (SDPA picks flash/mem-eff on CUDA)."""
    return F.scaled_dot_product_attention(q, k, v)


class Attention(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        qk_norm: bool = False,
        norm_eps: float = 1e-5,
        rope: RotaryEmbedding2D | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **kw)
        # one affine [head_dim] shared by all heads (official q/k-norm)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=norm_eps, **kw) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=norm_eps, **kw) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias, **kw)
        self.rope = rope
        # Set by spark3r.accelerate on cross-frame layers; a plain object, so state-dict keys never change.
        self.reducer: TokenReducer | None = None

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, N, _ = t.shape
        return t.view(B, N, self.num_heads, self.head_dim).transpose(1, 2)

    def _finish(
        self, t: torch.Tensor, norm: nn.Module, pos: torch.Tensor | None, *, token_major: bool = False
    ) -> torch.Tensor:
        owned = not isinstance(norm, nn.Identity)  # the norm's output is a new tensor: RoPE may rotate it in place
        t = norm(t)
        if self.rope is not None and pos is not None:
            t = self.rope(t, pos, token_major=token_major, inplace=owned)
        return t

    def project(self, x: torch.Tensor, pos: torch.Tensor | None, part: str) -> torch.Tensor:
        """One of q, k, v for the given tokens only, head-split [B, heads, N, d], normalised and rotated.

        A reducer uses this to project keys/values of the tokens it keeps and nothing else.
        """
        index = "qkv".index(part)
        dim = self.num_heads * self.head_dim
        weight = self.qkv.weight[index * dim : (index + 1) * dim]
        bias = None if self.qkv.bias is None else self.qkv.bias[index * dim : (index + 1) * dim]
        t = self._heads(F.linear(x, weight, bias))
        if part == "v":
            return t
        return self._finish(t, self.q_norm if part == "q" else self.k_norm, pos)

    def project_rows(self, x: torch.Tensor, pos: torch.Tensor | None, parts: str) -> list[torch.Tensor]:
        """Consecutive parts of q, k, v ("q", "kv", "qkv") for the given tokens, token-major [B, N, heads, d].

        One GEMM over the contiguous rows of `qkv.weight` for all requested parts; q and k normalised and rotated.
        Token-major rows let a reducer gather and merge whole tokens without a transposed copy.
        """
        assert parts in ("q", "kv", "qkv", "k", "v"), parts
        start = "qkv".index(parts[0])
        dim = self.num_heads * self.head_dim
        weight = self.qkv.weight[start * dim : (start + len(parts)) * dim]
        bias = None if self.qkv.bias is None else self.qkv.bias[start * dim : (start + len(parts)) * dim]
        B, N, _ = x.shape
        rows = F.linear(x, weight, bias).view(B, N, len(parts), self.num_heads, self.head_dim).unbind(2)
        norms = {"q": self.q_norm, "k": self.k_norm}
        return [
            t if part == "v" else self._finish(t, norms[part], pos, token_major=True)
            for part, t in zip(parts, rows, strict=True)
        ]

    def project_qkv(self, x: torch.Tensor, pos: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return self._finish(q, self.q_norm, pos), self._finish(k, self.k_norm, pos), v

    def project_out(self, o: torch.Tensor) -> torch.Tensor:
        """[B, heads, N, d] -> [B, N, C] through `proj` (heads re-merged head-major)."""
        B, _, N, _ = o.shape
        return self.proj(o.transpose(1, 2).reshape(B, N, -1))

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor | None = None, layout: TokenLayout | None = None
    ) -> torch.Tensor:
        if self.reducer is not None and layout is not None:
            return self.reducer(self, x, pos, layout)
        q, k, v = self.project_qkv(x, pos)
        return self.project_out(sdpa(q, k, v))
