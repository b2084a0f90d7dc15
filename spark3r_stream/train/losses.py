"""VGGT's training losses (camera, confidence-weighted depth and world points) plus a correspondence auxiliary."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from spark3r_stream.train.data import Batch

CONF_ALPHA = 0.2  # VGGT's weight of -log(conf): keeps confidences from collapsing to 1
IDENTITY_QUAT = (0.0, 0.0, 0.0, 1.0)
LAST_LAYER_INIT_SCALE = (
    0.1  # correspondence head: PyTorch's default init, scaled  # the pose encoding's quaternion is (x, y, z, w)
)


def camera_loss(pose_enc_list: list[torch.Tensor], target: torch.Tensor, gamma: float = 0.8) -> torch.Tensor:
    """L1 on translation, quaternion and FoV of every refinement iteration, later ones weighted more.

    Divided by the sum of the iteration weights, so that a loss weight of 5 means 5 (not 5·Σγ ≈ 15 for 4 iterations).
    """
    n = len(pose_enc_list)
    weights = [gamma ** (n - 1 - i) for i in range(n)]
    total = 0.0
    for weight, pred in zip(weights, pose_enc_list, strict=True):
        err = (pred - target).abs()
        total = total + weight * (err[..., :3].mean() + err[..., 3:7].mean() + err[..., 7:].mean())
    return total / sum(weights)


def quaternion_errors(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quaternion L1 of `pred` [B, S, 9] and of the identity guess on frames 1.. (frame 0 is the identity anyway).

    Their ratio is the training log's pose signal: 1 while the camera head ignores the images.
    """
    identity = torch.tensor(IDENTITY_QUAT, dtype=target.dtype, device=target.device)
    quat = target[:, 1:, 3:7]
    return (pred[:, 1:, 3:7] - quat).abs().mean(), (identity - quat).abs().mean()


def confident_regression(
    pred: torch.Tensor, conf: torch.Tensor, target: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """mean over valid pixels of conf·|pred − target| − α·log(conf) (VGGT's aleatoric regression loss)."""
    err = (pred - target).abs()
    if err.dim() == conf.dim() + 1:
        err = err.sum(-1)
    per_pixel = conf * err - CONF_ALPHA * torch.log(conf)
    return per_pixel[valid].mean()


def patch_centres(grid_hw: tuple[int, int], patch_size: int) -> torch.Tensor:
    """Each patch's centre pixel, normalised to [-1, 1] like the targets: [h*w, 2] as (x, y)."""
    h, w = grid_hw
    H, W = h * patch_size, w * patch_size
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    centres = torch.stack([xs, ys], -1).reshape(-1, 2).float() * patch_size + patch_size // 2
    return centres / torch.tensor([W - 1, H - 1]) * 2 - 1


def correspondence_errors(
    pred_uv: torch.Tensor, batch: Batch, centres: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """|dx| + |dy| of the predicted positions in frame 0 and of the no-motion guess (each patch stays where it is).

    Frames 1.. only: frame 0's patches map onto themselves, which would dilute the loss with a trivial part.
    """
    mask = batch.patch_visible[:, 1:]
    if not mask.any():
        zero = pred_uv.sum() * 0.0
        return zero, zero.detach()
    target = batch.patch_uv[:, 1:][mask]
    error = (pred_uv[:, 1:][mask] - target).abs().sum(-1).mean()
    no_motion = (centres.expand_as(batch.patch_uv)[:, 1:][mask] - target).abs().sum(-1).mean()
    return error, no_motion


class CorrespondenceHead(nn.Module):
    """Training-only auxiliary: each patch's pixel in frame 0 regressed from its last-layer token (not shipped).

    LayerNorm + a small MLP (the aggregator's tokens are not normalised), predicting an offset from the patch's own
    centre, so "no motion" is near the starting point and the loss only rewards cross-view matching. The last layer
    starts small, not zero: under an L1 loss whose no-information optimum is a zero offset, a zero last layer passes
    no gradient into the backbone and stays there (measured: ratio 1.000 after 1,000 steps).
    """

    def __init__(self, dim_in: int, grid_hw: tuple[int, int], patch_size: int, hidden: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.LayerNorm(dim_in), nn.Linear(dim_in, hidden), nn.GELU(), nn.Linear(hidden, 2))
        with torch.no_grad():
            self.mlp[-1].weight.mul_(LAST_LAYER_INIT_SCALE)
            self.mlp[-1].bias.zero_()
        self.register_buffer("centres", patch_centres(grid_hw, patch_size), persistent=False)

    def forward(self, tokens: torch.Tensor, patch_start_idx: int) -> torch.Tensor:
        """Tokens [B, S, P, C] -> each patch's predicted position in frame 0, [B, S, h*w, 2] in [-1, 1]."""
        return self.centres + self.mlp(tokens[:, :, patch_start_idx:])

    def losses(self, tokens: torch.Tensor, patch_start_idx: int, batch: Batch) -> tuple[torch.Tensor, ...]:
        """(loss, |dx|+|dy| of the predicted positions, the no-motion guess's)."""
        error, no_motion = correspondence_errors(self(tokens, patch_start_idx).float(), batch, self.centres)
        return error, error, no_motion


class MatchingHead(nn.Module):
    """Training-only auxiliary: each patch of frames 1.. classifies which frame-0 patch it shows (not shipped).

    Cosine similarity of projected last-layer tokens against frame 0's, a softmax over frame 0's patches, and a
    cross-entropy against the true position spread bilinearly over the four nearest patch centres: every patch pulls
    its match closer and pushes the other 63 away, a dense signal for cross-view matching where a regressed position
    (`CorrespondenceHead`) only gets a gradient through a two-number bottleneck. The expected position under the
    softmax is scored like the regression, so the log's ratio to "no motion" means the same for both heads.
    """

    def __init__(self, dim_in: int, grid_hw: tuple[int, int], patch_size: int, dim: int = 128) -> None:
        super().__init__()
        self.grid_hw, self.patch_size = grid_hw, patch_size
        self.proj = nn.Sequential(nn.LayerNorm(dim_in), nn.Linear(dim_in, dim))
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))  # softmax temperature 1/10 to start
        self.register_buffer("centres", patch_centres(grid_hw, patch_size), persistent=False)

    def forward(self, tokens: torch.Tensor, patch_start_idx: int) -> torch.Tensor:
        """Tokens [B, S, P, C] -> logits [B, S, h*w, h*w] of each patch against frame 0's patches."""
        features = F.normalize(self.proj(tokens[:, :, patch_start_idx:]).float(), dim=-1)
        return torch.einsum("bsnc,bmc->bsnm", features, features[:, 0]) * self.log_scale.exp().clamp(max=100.0)

    def soft_targets(self, uv: torch.Tensor) -> torch.Tensor:
        """Positions in [-1, 1] [..., 2] -> bilinear weights over the patch grid [..., h*w]."""
        h, w = self.grid_hw
        size = torch.tensor([w * self.patch_size - 1, h * self.patch_size - 1], dtype=uv.dtype, device=uv.device)
        grid = ((uv + 1) / 2 * size - self.patch_size // 2) / self.patch_size  # continuous patch index (x, y)
        grid = torch.stack([grid[..., 0].clamp(0, w - 1), grid[..., 1].clamp(0, h - 1)], -1)
        low = grid.floor().clamp(max=torch.tensor([w - 2, h - 2], device=uv.device)).long()
        frac = grid - low
        weights = torch.zeros(*uv.shape[:-1], h * w, dtype=uv.dtype, device=uv.device)
        for dy in (0, 1):
            for dx in (0, 1):
                wx = frac[..., 0] if dx else 1 - frac[..., 0]
                wy = frac[..., 1] if dy else 1 - frac[..., 1]
                index = (low[..., 1] + dy) * w + (low[..., 0] + dx)
                weights.scatter_add_(-1, index.unsqueeze(-1), (wx * wy).unsqueeze(-1))
        return weights

    def losses(self, tokens: torch.Tensor, patch_start_idx: int, batch: Batch) -> tuple[torch.Tensor, ...]:
        """(cross-entropy, |dx|+|dy| of the expected positions, the no-motion guess's), frames 1.. only."""
        logits = self(tokens, patch_start_idx)[:, 1:]
        mask = batch.patch_visible[:, 1:]
        if not mask.any():
            zero = logits.sum() * 0.0
            return zero, zero.detach(), zero.detach()
        logits = logits[mask]  # [N, h*w]
        target = batch.patch_uv[:, 1:][mask]
        cross_entropy = -(self.soft_targets(target) * F.log_softmax(logits, -1)).sum(-1).mean()
        with torch.no_grad():
            expected = logits.softmax(-1) @ self.centres
            error = (expected - target).abs().sum(-1).mean()
            no_motion = (self.centres.expand_as(batch.patch_uv)[:, 1:][mask] - target).abs().sum(-1).mean()
        return cross_entropy, error, no_motion
