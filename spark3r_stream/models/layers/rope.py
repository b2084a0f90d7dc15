"""2-D rotary position embedding (VGGT / π³ / DA3 "RoPE2D"): rows rotate the first half of each head, columns the second.

Matches facebookresearch/vggt@44b3afb vggt/layers/rope.py (reference_vggt.md §5.4).
"""

from __future__ import annotations

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


class RotaryEmbedding2D(nn.Module):
    """Rotate-half 2-D RoPE with base `frequency`; no parameters."""

    def __init__(self, frequency: float = 100.0) -> None:
        super().__init__()
        self.frequency = frequency

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

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [B, heads, N, D], positions long [B, N, 2] (row, col)."""
        half_dim = x.shape[-1] // 2
        cos, sin = self._cos_sin(half_dim, int(positions.max()) + 1, x.device, x.dtype)
        out = []
        for axis, part in enumerate(x.chunk(2, dim=-1)):
            pos = positions[..., axis]
            c = cos[pos].unsqueeze(1)
            s = sin[pos].unsqueeze(1)
            out.append(part * c + self._rotate_half(part) * s)
        return torch.cat(out, dim=-1)
