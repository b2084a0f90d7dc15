"""DA3's Gaussian adapter: the GS head's per-pixel raw parameters -> world-space 3-D Gaussians, and the real-SH rotation.

Matches ByteDance-Seed/Depth-Anything-3@2c21ea8 model/gs_adapter.py (`GaussianAdapter`), utils/sh_helpers.py
(`rotate_sh`) and model/utils/transform.py (`cam_quat_xyzw_to_world_quat_wxyz`), reference_da3.md §6. The SH rotation
is written here (e3nn's real Wigner-D for degree ≤ 2, from its Euler angles) because e3nn is not a dependency.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from spark3r_stream.models.pose_encoding import matrix_to_quaternion, quaternion_to_matrix


@dataclass
class Gaussians:
    """World-space 3-D Gaussians, N = S·H·W per batch item (view-major, then row-major pixels)."""

    means: torch.Tensor  # [B, N, 3]
    scales: torch.Tensor  # [B, N, 3]
    rotations: torch.Tensor  # [B, N, 4]: scalar-last world quaternion, as released (which calls it wxyz); see below
    harmonics: torch.Tensor  # [B, N, 3, (sh_degree+1)²]: per colour channel, e3nn-rotated real SH coefficients
    opacities: torch.Tensor  # [B, N] in (0, 1)


class GaussianAdapter(nn.Module):
    """Parameter-free: raw [B, S, H, W, 37] + opacity logit + depth + predicted cameras -> `Gaussians` (official key
    `gs_adapter`; its SH mask is a non-persistent buffer, so no state-dict keys).

    The released configuration only: offsets in xy (pixels) and depth, colour as SH (`pred_color=False`). Raw channel
    layout: xy offset 2 | scale 3 | quaternion 4 (x, y, z, w) | SH 3·(sh_degree+1)² as [colour, coefficient] | depth
    offset 1.
    """

    def __init__(self, sh_degree: int = 2, scale_min: float = 1e-5, scale_max: float = 30.0) -> None:
        super().__init__()
        if not 0 <= sh_degree <= 2:
            raise ValueError(f"DA3 Gaussian adapter: sh_degree {sh_degree} unsupported (the SH rotation covers 0..2)")
        self.sh_degree = sh_degree
        self.scale_min = scale_min
        self.scale_max = scale_max
        # official: view-dependent SH bands start small (0.1·0.25^degree); DC unchanged
        mask = torch.cat([torch.full((2 * d + 1,), 1.0 if d == 0 else 0.1 * 0.25**d) for d in range(sh_degree + 1)])
        self.register_buffer("sh_mask", mask, persistent=False)

    @property
    def num_raw_channels(self) -> int:
        return 2 + 3 + 4 + 3 * (self.sh_degree + 1) ** 2 + 1

    def forward(
        self,
        raw: torch.Tensor,
        opacity: torch.Tensor,
        depth: torch.Tensor,
        cam_from_world: torch.Tensor,
        intrinsics: torch.Tensor,
    ) -> Gaussians:
        """Args:
        raw: [B, S, H, W, 37] linear GS-head channels; opacity: [B, S, H, W] in (0, 1) (sigmoid of the logit).
        depth: the depth head's z-depth [B, S, H, W]; cam_from_world [B, S, 3, 4] and intrinsics [B, S, 3, 3]
            (pixels): the predicted cameras (official: used even when poses are given).
        """
        B, S, H, W, _ = raw.shape
        world_from_cam = affine_inverse(cam_from_world)
        # intrinsics in image-fraction units (x / W, y / H), the official 3DGS convention
        norm_intrinsics = intrinsics.clone()
        norm_intrinsics[..., 0, :] /= W
        norm_intrinsics[..., 1, :] /= H
        inv_intrinsics = torch.linalg.inv(norm_intrinsics.float()).to(raw.dtype)  # [B, S, 3, 3]
        pixel_size = torch.tensor((1.0 / W, 1.0 / H), dtype=raw.dtype, device=raw.device)

        gs_depth = depth + raw[..., -1]
        xs = (torch.arange(W, device=raw.device, dtype=raw.dtype) + 0.5) / W
        ys = (torch.arange(H, device=raw.device, dtype=raw.dtype) + 0.5) / H
        xy = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1) + raw[..., :2] * pixel_size  # [B, S, H, W, 2]
        pixels = torch.cat([xy, torch.ones_like(xy[..., :1])], dim=-1)
        # official quirk: the means march the *unit* ray by the z-depth (not z along the optical axis)
        rays = torch.einsum("bsij,bshwj->bshwi", inv_intrinsics, pixels)
        rays = rays / rays.norm(dim=-1, keepdim=True)
        rays_world = torch.einsum("bsij,bshwj->bshwi", world_from_cam[..., :3], rays)
        means = world_from_cam[:, :, None, None, :, 3] + rays_world * gs_depth[..., None]

        num_sh = (self.sh_degree + 1) ** 2
        scales, quat, sh = raw[..., 2:-1].split((3, 4, 3 * num_sh), dim=-1)
        scales = self.scale_min + (self.scale_max - self.scale_min) * scales.sigmoid()
        # one pixel's footprint at unit depth, 0.1 · (1/fx + 1/fy) in image fractions: scales follow depth, not size
        footprint = 0.1 * (inv_intrinsics[..., :2, :2] @ pixel_size).sum(-1)  # [B, S]
        scales = scales * gs_depth[..., None] * footprint[:, :, None, None, None]

        quat = quat / (quat.norm(dim=-1, keepdim=True) + 1e-8)
        rotations = camera_quaternion_to_world(quat, world_from_cam[..., :3, :3])

        sh = sh.unflatten(-1, (3, num_sh)) * self.sh_mask
        if self.sh_degree > 0:
            sh = rotate_real_sh(sh, world_from_cam[:, :, None, None, None, :3, :3])

        return Gaussians(
            means=means.reshape(B, S * H * W, 3),
            scales=scales.reshape(B, S * H * W, 3),
            rotations=rotations.reshape(B, S * H * W, 4),
            harmonics=sh.reshape(B, S * H * W, 3, num_sh),
            opacities=opacity.reshape(B, S * H * W),
        )


def affine_inverse(transform: torch.Tensor) -> torch.Tensor:
    """[..., 3, 4] rigid [R | t] -> its inverse [Rᵀ | −Rᵀt], [..., 3, 4]."""
    rotation_t = transform[..., :3].transpose(-1, -2)
    return torch.cat([rotation_t, -(rotation_t @ transform[..., 3:])], dim=-1)


def camera_quaternion_to_world(quat: torch.Tensor, world_from_cam_rotation: torch.Tensor) -> torch.Tensor:
    """Unit camera-frame quaternions [B, S, H, W, 4] -> world-frame quaternions, as the official helper computes them.

    Official quirk (parity needs it): the predicted (x, y, z, w) is reordered to (w, x, y, z) and then read by a
    scalar-last quaternion-to-matrix, i.e. the matrix of (x', y', z', w') = (w, x, y, z); the world matrix
    R_wc · R goes back through the scalar-last matrix-to-quaternion (last component ≥ 0). So the result is
    scalar-last, although the official output calls it "wxyz".
    """
    reordered = quat[..., [3, 0, 1, 2]]
    rotation = world_from_cam_rotation[:, :, None, None] @ quaternion_to_matrix(reordered)
    return matrix_to_quaternion(rotation)


# --- real spherical harmonics rotation (e3nn conventions) ---------------------------------------------------------


@functools.cache
def real_so3_generators(degree: int) -> np.ndarray:
    """e3nn's so(3) generators [3, 2l+1, 2l+1] (float64) in its real SH basis; [0] turns about x, [1] about y.

    The angular-momentum ladder matrices in the complex |l, m⟩ basis, moved to e3nn's real basis (Wikipedia's real
    form times (−i)^l, which keeps e3nn's Clebsch-Gordan coefficients real).
    """
    l = degree  # noqa: E741
    m = np.arange(-l, l + 1, dtype=np.float64)
    # J+ |m⟩ = sqrt(l(l+1) − m(m+1)) |m+1⟩ with e3nn's sign (−) on the raising part
    raising = np.diag(-np.sqrt(l * (l + 1) - m[:-1] * (m[:-1] + 1)), k=-1)
    lowering = np.diag(np.sqrt(l * (l + 1) - m[1:] * (m[1:] - 1)), k=1)
    complex_generators = np.stack([0.5 * (raising + lowering), np.diag(1j * m), -0.5j * (raising - lowering)]).astype(
        np.complex128
    )
    basis = np.zeros((2 * l + 1, 2 * l + 1), dtype=np.complex128)  # real -> complex, rows m = −l..l
    for k in range(1, l + 1):
        basis[l - k, l + k] = 1 / math.sqrt(2)
        basis[l - k, l - k] = -1j / math.sqrt(2)
        basis[l + k, l + k] = (-1) ** k / math.sqrt(2)
        basis[l + k, l - k] = 1j * (-1) ** k / math.sqrt(2)
    basis[l, l] = 1
    basis = (-1j) ** l * basis
    real = basis.conj().T @ complex_generators @ basis
    assert np.abs(real.imag).max() < 1e-10
    return real.real


def wigner_d(degree: int, alpha: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """e3nn's real Wigner-D [..., 2l+1, 2l+1] of the rotation Y(α)·X(β)·Y(γ); computed in float64."""
    generators = torch.from_numpy(real_so3_generators(degree)).to(alpha.device)
    angles = [a[..., None, None] % (2 * math.pi) for a in (alpha, beta, gamma)]
    return (
        torch.linalg.matrix_exp(angles[0] * generators[1])
        @ torch.linalg.matrix_exp(angles[1] * generators[0])
        @ torch.linalg.matrix_exp(angles[2] * generators[1])
    )


def matrix_to_yxy_angles(rotation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[..., 3, 3] rotation -> e3nn's Euler angles (α, β, γ) with R = Y(α)·X(β)·Y(γ)."""
    y_image = rotation[..., :, 1]
    y_image = y_image / y_image.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    beta = torch.acos(y_image[..., 1].clamp(-1, 1))
    alpha = torch.atan2(y_image[..., 0], y_image[..., 2])
    rest = (rotation_y(alpha) @ rotation_x(beta)).transpose(-1, -2) @ rotation
    gamma = torch.atan2(rest[..., 0, 2], rest[..., 0, 0])
    return alpha, beta, gamma


def rotation_x(angle: torch.Tensor) -> torch.Tensor:
    c, s, one, zero = angle.cos(), angle.sin(), torch.ones_like(angle), torch.zeros_like(angle)
    return torch.stack([one, zero, zero, zero, c, -s, zero, s, c], dim=-1).unflatten(-1, (3, 3))


def rotation_y(angle: torch.Tensor) -> torch.Tensor:
    c, s, one, zero = angle.cos(), angle.sin(), torch.ones_like(angle), torch.zeros_like(angle)
    return torch.stack([c, zero, s, zero, one, zero, -s, zero, c], dim=-1).unflatten(-1, (3, 3))


def nearest_rotation(matrix: torch.Tensor) -> torch.Tensor:
    """[..., 3, 3] -> the nearest proper rotation (SVD, reflection flipped), det scaled to exactly 1 in float32."""
    u, _, vh = torch.linalg.svd(matrix)
    flip = torch.ones(matrix.shape[:-1], dtype=matrix.dtype, device=matrix.device)
    flip[..., 2] = torch.where(torch.det(u) * torch.det(vh) < 0, -1.0, 1.0)
    rotation = (u * flip[..., None, :]) @ vh
    return rotation * torch.det(rotation).pow(-1 / 3)[..., None, None]


# conjugating by this permutation moves a rotation into e3nn's axes (e3nn's y, its polar axis, is the camera's z)
_SH_AXES = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def rotate_real_sh(sh: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate real SH coefficients [..., (l_max+1)²] (3DGS basis) by rotation matrices [..., 3, 3] (broadcast).

    As the official `rotate_sh`: the rotation is conjugated into e3nn's axes, made exactly SO(3), split into e3nn's
    Euler angles, and each band is multiplied by e3nn's Wigner-D of (α, −β, γ). The permutation and the −β together
    map e3nn's real basis onto the 3DGS one: the rotated expansion evaluated at R·d equals the original at d (tested).
    """
    axes = _SH_AXES.to(device=rotation.device)
    rotation = nearest_rotation(axes.T @ rotation.float() @ axes)
    alpha, beta, gamma = matrix_to_yxy_angles(rotation)
    bands = []
    for degree in range(math.isqrt(sh.shape[-1])):
        d = wigner_d(degree, alpha, -beta, gamma).to(sh.dtype)
        bands.append((d @ sh[..., degree**2 : (degree + 1) ** 2, None]).squeeze(-1))
    return torch.cat(bands, dim=-1)
