"""2-D rotary position embedding (VGGT / π³ / DA3 "RoPE2D"): rows rotate the first half of each head, columns the second.

Matches facebookresearch/vggt@44b3afb vggt/layers/rope.py (reference_vggt.md §5.4). The per-token cos/sin are
cached per position layout (the same grid is rotated by every block of a forward, and again by the next forward).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn


def grid_positions(num_frames: int, h: int, w: int, num_special: int, device=None) -> torch.Tensor:
    """(row, col) positions of one frame's tokens, repeated over frames: specials at (0, 0), patches at (r+1, c+1).

    Returns:
        Long tensor [num_frames, num_special + h*w, 2].
    """
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    patches = torch.stack([rows, cols], dim=-1)
    if num_special > 0:
        patches = torch.cat([torch.zeros(num_special, 2, dtype=patches.dtype, device=device), patches + 1])
    return patches.unsqueeze(0).expand(num_frames, -1, -1)


def _same_content(a: torch.Tensor, b: torch.Tensor) -> bool:
    """torch.equal; on the CPU through numpy, single-threaded: 0.5 ms instead of 12 ms for the 69,000 positions of a
    1,000-frame window on 2 busy cores (torch.equal wakes its thread pool on every call)."""
    if a.device.type == b.device.type == "cpu":
        return np.array_equal(a.numpy(), b.numpy())
    return torch.equal(a, b)


class RotaryEmbedding2D(nn.Module):
    """Rotate-half 2-D RoPE with base `frequency`; no parameters (the cos/sin cache is not state)."""

    CACHE_SIZE = 8  # position layouts kept: frame and global grids, the kept-key subsets, a previous window's

    def __init__(self, frequency: float = 100.0) -> None:
        super().__init__()
        self.frequency = frequency
        self._tables: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()

    def _cos_sin(self, half_dim: int, max_position: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = 1.0 / (self.frequency ** (torch.arange(0, half_dim, 2, device=device).float() / half_dim))
        angles = torch.outer(torch.arange(max_position, device=device, dtype=inv_freq.dtype), inv_freq)
        # official: angles cast to the tensor dtype *before* cos/sin
        angles = angles.to(dtype)
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=-1)
        return torch.cat([-b, a], dim=-1)

    def token_tables(
        self, positions: torch.Tensor, head_dim: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token cos and signed sin [B, N, head_dim] for `positions` long [B, N, 2], cached by content.

        Row/column halves side by side; the sine carries rotate-half's sign, so that
        rope(x) = x * cos + swap_quarters(x) * sin (the same products and sum as the official form, bit for bit).
        """
        key = (tuple(positions.shape), positions.device, dtype, head_dim, torch.is_inference_mode_enabled())
        hit = self._tables.get(key)
        if hit is not None and _same_content(hit[0], positions):  # content, not identity: a mutated tensor misses
            self._tables.move_to_end(key)
            return hit[1], hit[2]
        half_dim = head_dim // 2
        cos, sin = self._cos_sin(half_dim, int(positions.max()) + 1, positions.device, dtype)
        quarter = half_dim // 2
        sign = torch.ones(half_dim, device=positions.device, dtype=dtype)
        sign[:quarter] = -1  # rotate_half negates the second quarter and moves it first
        cos_tok = torch.cat([cos[positions[..., 0]], cos[positions[..., 1]]], dim=-1)
        sin_tok = torch.cat([sin[positions[..., 0]] * sign, sin[positions[..., 1]] * sign], dim=-1)
        self._tables[key] = (positions.clone(), cos_tok, sin_tok)
        while len(self._tables) > self.CACHE_SIZE:
            self._tables.popitem(last=False)
        return cos_tok, sin_tok

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, *, token_major: bool = False, inplace: bool = False
    ) -> torch.Tensor:
        """x [B, heads, N, D] (token_major: [B, N, heads, D]), positions long [B, N, 2] (row, col).

        `inplace`: x is a temporary of the caller's and receives the result (no new full-size buffer; same bits).
        """
        D = x.shape[-1]
        assert D % 4 == 0, f"2-D RoPE needs a head dim divisible by 4, got {D}"
        cos, sin = self.token_tables(positions, D, x.dtype)
        cos, sin = (cos.unsqueeze(2), sin.unsqueeze(2)) if token_major else (cos.unsqueeze(1), sin.unsqueeze(1))
        return rotate(x, cos, sin, inplace=inplace)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """x * cos + swap_quarters(x) * sin, with `token_tables`' signed sine: RoPE on x [..., D] given its tables."""
    # quarters (a1, b1, a2, b2) -> (b1, a1, b2, a2); the sign of rotate-half lives in `sin`
    swapped = x.unflatten(-1, (2, 2, x.shape[-1] // 4)).flip(-2).flatten(-3)  # flip: the copy of roll(1), ~1/3 faster
    out = x.mul_(cos) if inplace else x * cos
    out += swapped.mul_(sin)
    return out
