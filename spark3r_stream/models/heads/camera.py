"""Camera heads of the three families, each under its official key names.

- `CameraHead`: VGGT's adaptive-LayerNorm trunk over the camera tokens, refined iteratively
  (facebookresearch/vggt@44b3afb vggt/heads/camera_head.py, reference_vggt.md §6).
- `Pi3CameraHead`: π³'s pooled residual MLP with an SVD-projected rotation (yyfz/Pi3@9fa3ddb pi3/models/layers/
  camera_head.py, reference_pi3.md §2.5).
- `CameraDecoder` / `CameraEncoder`: DA3's pose regressor from the camera token and its pose-conditioning encoder
  (ByteDance-Seed/Depth-Anything-3@2c21ea8 model/cam_dec.py, model/cam_enc.py, reference_da3.md §5.2–5.3).
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
        self.trunk = nn.Sequential(
            *(Block(dim_in, num_heads, mlp_ratio=mlp_ratio, init_values=init_values, **kw) for _ in range(trunk_depth))
        )
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


class ResidualLinearBlock(nn.Module):
    """`x + relu(res_conv3(relu(res_conv2(relu(res_conv1(x))))))` (official keys `res_conv1..3`)."""

    def __init__(self, dim: int, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.res_conv1 = nn.Linear(dim, dim, **kw)
        self.res_conv2 = nn.Linear(dim, dim, **kw)
        self.res_conv3 = nn.Linear(dim, dim, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.relu(self.res_conv3(F.relu(self.res_conv2(F.relu(self.res_conv1(x))))))


def closest_rotation(matrix: torch.Tensor) -> torch.Tensor:
    """[..., 3, 3] -> nearest rotation after L2-normalising each row (π³: Mᵀ = U S Vᵀ, R = V diag(1, 1, det VUᵀ) Uᵀ)."""
    m = F.normalize(matrix, dim=-1)
    u, _, vh = torch.linalg.svd(m.transpose(-1, -2))
    v = vh.transpose(-1, -2)
    ut = u.transpose(-1, -2)
    d = torch.det(v @ ut)
    v = torch.cat([v[..., :2], v[..., 2:] * d[..., None, None]], dim=-1)  # sign fix on V's last column
    return v @ ut


class Pi3CameraHead(nn.Module):
    def __init__(self, dim: int = 512, num_res_blocks: int = 2, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.res_conv = nn.ModuleList(ResidualLinearBlock(dim, **kw) for _ in range(num_res_blocks))
        self.more_mlps = nn.Sequential(nn.Linear(dim, dim, **kw), nn.ReLU(), nn.Linear(dim, dim, **kw), nn.ReLU())
        self.fc_t = nn.Linear(dim, 3, **kw)
        self.fc_rot = nn.Linear(dim, 9, **kw)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens of each view [N, h*w, C] -> camera-to-world poses [N, 4, 4] (OpenCV), float32."""
        with torch.autocast(device_type=tokens.device.type, enabled=False):
            x = tokens.float()
            for block in self.res_conv:
                x = block(x)
            x = self.more_mlps(x.mean(dim=1))  # average over all patches of the view
            translation = self.fc_t(x)
            rotation = closest_rotation(self.fc_rot(x).view(-1, 3, 3))
            pose = torch.zeros(x.shape[0], 4, 4, dtype=x.dtype, device=x.device)
            pose[:, :3, :3] = rotation
            pose[:, :3, 3] = translation
            pose[:, 3, 3] = 1.0
        return pose


class CameraDecoder(nn.Module):
    """DA3 `cam_dec`: camera token [.., 2C] -> pose encoding [.., 9] = (t, quaternion xyzw, fov_h, fov_w)."""

    def __init__(self, dim_in: int, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.backbone = nn.Sequential(
            nn.Linear(dim_in, dim_in, **kw), nn.ReLU(), nn.Linear(dim_in, dim_in, **kw), nn.ReLU()
        )  # official key
        self.fc_t = nn.Linear(dim_in, 3, **kw)
        self.fc_qvec = nn.Linear(dim_in, 4, **kw)
        self.fc_fov = nn.Sequential(nn.Linear(dim_in, 2, **kw), nn.ReLU())

    def forward(self, camera_token: torch.Tensor) -> torch.Tensor:
        x = self.backbone(camera_token)
        return torch.cat([self.fc_t(x), self.fc_qvec(x), self.fc_fov(x)], dim=-1)


class CameraEncoder(nn.Module):
    """DA3 `cam_enc`: known poses (pose encodings [B, S, 9]) -> one camera token per view [B, S, C].

    The trunk attends across the S views (the tokens form one sequence per batch item).
    """

    def __init__(
        self,
        dim_out: int,
        *,
        dim_in: int = 9,
        num_heads: int = 16,
        trunk_depth: int = 4,
        mlp_ratio: float = 4.0,
        init_values: float = 0.01,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.pose_branch = Mlp(dim_in, dim_out // 2, dim_out, **kw)
        self.token_norm = nn.LayerNorm(dim_out, **kw)
        self.trunk = nn.Sequential(
            *(Block(dim_out, num_heads, mlp_ratio=mlp_ratio, init_values=init_values, **kw) for _ in range(trunk_depth))
        )
        self.trunk_norm = nn.LayerNorm(dim_out, **kw)

    def forward(self, pose_encoding: torch.Tensor) -> torch.Tensor:
        return self.trunk_norm(self.trunk(self.token_norm(self.pose_branch(pose_encoding))))
