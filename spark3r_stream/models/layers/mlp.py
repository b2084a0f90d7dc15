"""Feed-forward layers of the shared block: GELU MLP (`fc1/fc2`) and DINOv2's fused SwiGLU (`w12/w3`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Mlp(nn.Module):
    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int | None = None,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias, **kw)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features, bias=bias, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    """DINOv2 `SwiGLUFFNFused`: hidden width 2/3 of the nominal one, rounded up to a multiple of 8."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int | None = None,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        hidden = (int(hidden_features * 2 / 3) + 7) // 8 * 8
        kw = {"device": device, "dtype": dtype}
        self.w12 = nn.Linear(in_features, 2 * hidden, bias=bias, **kw)
        self.w3 = nn.Linear(hidden, out_features or in_features, bias=bias, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


MLP_LAYERS = {"mlp": Mlp, "swiglu": SwiGLUFFN}
