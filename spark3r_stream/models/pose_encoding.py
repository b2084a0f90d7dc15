"""VGGT's `absT_quaR_FoV` pose encoding ⇄ camera-from-world extrinsics and pinhole intrinsics (torch, batched).

Matches facebookresearch/vggt@44b3afb vggt/utils/pose_enc.py and rotation.py (reference_vggt.md §7):
9 numbers [tx, ty, tz, qx, qy, qz, qw, fov_h, fov_w], quaternion scalar-last, OpenCV axes.
"""

from __future__ import annotations

import torch


def quaternion_to_matrix(quat_xyzw: torch.Tensor) -> torch.Tensor:
    """[..., 4] (x, y, z, w), not necessarily unit -> [..., 3, 3] (normalised implicitly by 2/|q|²)."""
    x, y, z, w = quat_xyzw.unbind(-1)
    s = 2.0 / (quat_xyzw * quat_xyzw).sum(-1)
    rows = (
        1 - s * (y * y + z * z),
        s * (x * y - z * w),
        s * (x * z + y * w),
        s * (x * y + z * w),
        1 - s * (x * x + z * z),
        s * (y * z - x * w),
        s * (x * z - y * w),
        s * (y * z + x * w),
        1 - s * (x * x + y * y),
    )
    return torch.stack(rows, -1).reshape(quat_xyzw.shape[:-1] + (3, 3))


def matrix_to_quaternion(matrix: torch.Tensor) -> torch.Tensor:
    """[..., 3, 3] -> [..., 4] (x, y, z, w) with w ≥ 0 (largest-candidate method of PyTorch3D)."""
    m = matrix.reshape(matrix.shape[:-2] + (9,))
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m.unbind(-1)
    q_abs = torch.sqrt(
        torch.clamp(
            torch.stack(
                [
                    1.0 + m00 + m11 + m22,
                    1.0 + m00 - m11 - m22,
                    1.0 - m00 + m11 - m22,
                    1.0 - m00 - m11 + m22,
                ],
                -1,
            ),
            min=0.0,
        )
    )
    # candidate rows (w, x, y, z), each scaled by 2·|component|; pick the best-conditioned one
    candidates = torch.stack(
        [
            torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], -1),
            torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], -1),
            torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], -1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], -1),
        ],
        -2,
    )
    floor = torch.tensor(0.1, dtype=q_abs.dtype, device=q_abs.device)
    candidates = candidates / (2.0 * q_abs[..., None].max(floor))
    best = q_abs.argmax(-1)
    wxyz = torch.gather(candidates, -2, best[..., None, None].expand(best.shape + (1, 4))).squeeze(-2)
    xyzw = wxyz[..., [1, 2, 3, 0]]
    return torch.where(xyzw[..., 3:] < 0, -xyzw, xyzw)


def pose_encoding_to_extri_intri(
    pose_enc: torch.Tensor, image_size_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., 9] -> (cam_from_world [..., 3, 4], intrinsics [..., 3, 3]) in network-input pixels."""
    H, W = image_size_hw
    t, quat, fov_h, fov_w = pose_enc[..., :3], pose_enc[..., 3:7], pose_enc[..., 7], pose_enc[..., 8]
    cam_from_world = torch.cat([quaternion_to_matrix(quat), t[..., None]], dim=-1)
    intrinsics = torch.zeros(pose_enc.shape[:-1] + (3, 3), dtype=pose_enc.dtype, device=pose_enc.device)
    intrinsics[..., 0, 0] = (W / 2) / torch.tan(fov_w / 2)
    intrinsics[..., 1, 1] = (H / 2) / torch.tan(fov_h / 2)
    intrinsics[..., 0, 2] = W / 2
    intrinsics[..., 1, 2] = H / 2
    intrinsics[..., 2, 2] = 1.0
    return cam_from_world, intrinsics


def extri_intri_to_pose_encoding(
    cam_from_world: torch.Tensor, intrinsics: torch.Tensor, image_size_hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of `pose_encoding_to_extri_intri`."""
    H, W = image_size_hw
    quat = matrix_to_quaternion(cam_from_world[..., :3, :3])
    fov_h = 2 * torch.atan((H / 2) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((W / 2) / intrinsics[..., 0, 0])
    return torch.cat([cam_from_world[..., :3, 3], quat, fov_h[..., None], fov_w[..., None]], dim=-1)
