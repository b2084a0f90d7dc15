"""Tolerance check shared by the π³ and DA3 parity tests."""

from __future__ import annotations

import torch

# Fixture READMEs: float32-vs-float64 gaps of the official code ≤ 2.5e-6·max|value|; 1e-4 is ~40× that and far
# below any structural bug (O(1) errors).
ATOL = RTOL = 1e-4


def assert_close(name: str, ours: torch.Tensor, ref: torch.Tensor) -> None:
    """|ours − ref| ≤ ATOL + RTOL·|ref| elementwise, same shape."""
    assert ours is not None, f"{name}: not produced"
    assert tuple(ours.shape) == tuple(ref.shape), f"{name}: shape {tuple(ours.shape)} vs {tuple(ref.shape)}"
    if not ref.is_floating_point():
        assert torch.equal(ours.to(ref.dtype), ref), f"{name}: {ours.tolist()} vs {ref.tolist()}"
        return
    err = (ours.float() - ref).abs()
    bad = err > ATOL + RTOL * ref.abs()
    assert not bad.any(), f"{name}: {int(bad.sum())} elements off, max |Δ| {err.max().item():.3e}"
