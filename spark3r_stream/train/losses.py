"""VGGT's training losses (camera, confidence-weighted depth and world points) plus a correspondence auxiliary."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spark3r_stream.train.data import Batch

CONF_ALPHA = 0.2  # VGGT's weight of -log(conf): keeps confidences from collapsing to 1


def camera_loss(pose_enc_list: list[torch.Tensor], target: torch.Tensor, gamma: float = 0.8) -> torch.Tensor:
    """L1 on translation, quaternion and FoV of every refinement iteration, later ones weighted more."""
    n = len(pose_enc_list)
    total = 0.0
    for i, pred in enumerate(pose_enc_list):
        err = (pred - target).abs()
        terms = err[..., :3].mean() + err[..., 3:7].mean() + err[..., 7:].mean()
        total = total + gamma ** (n - 1 - i) * terms
    return total


def confident_regression(
    pred: torch.Tensor, conf: torch.Tensor, target: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """mean over valid pixels of conf·|pred − target| − α·log(conf) (VGGT's aleatoric regression loss)."""
    err = (pred - target).abs()
    if err.dim() == conf.dim() + 1:
        err = err.sum(-1)
    per_pixel = conf * err - CONF_ALPHA * torch.log(conf)
    return per_pixel[valid].mean()


class CorrespondenceHead(nn.Module):
    """Training-only auxiliary: each patch's pixel in frame 0 from its last-layer token (not part of the model).

    Predicted as an offset from the patch's own centre, so "no motion" is the starting point and the loss only
    rewards cross-view matching (an absolute position scored worse than that trivial guess in session 3).
    """

    def __init__(self, dim_in: int, grid_hw: tuple[int, int], patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, 2)
        h, w = grid_hw
        H, W = h * patch_size, w * patch_size
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        centres = torch.stack([xs, ys], -1).reshape(-1, 2).float() * patch_size + patch_size // 2
        self.register_buffer("centres", centres / torch.tensor([W - 1, H - 1]) * 2 - 1, persistent=False)

    def forward(self, tokens: torch.Tensor, patch_start_idx: int) -> torch.Tensor:
        return self.centres + self.proj(tokens[:, :, patch_start_idx:])


def correspondence_loss(pred_uv: torch.Tensor, batch: Batch) -> torch.Tensor:
    mask = batch.patch_visible
    if not mask.any():
        return pred_uv.sum() * 0.0
    return F.l1_loss(pred_uv[mask], batch.patch_uv[mask])
