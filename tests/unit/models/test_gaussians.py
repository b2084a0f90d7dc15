"""DA3 Gaussian adapter and the hand-written real-SH rotation (e3nn conventions, degree ≤ 2)."""

from __future__ import annotations

import pytest
import torch

from spark3r_stream.models.heads.gaussians import GaussianAdapter, rotate_real_sh, wigner_d
from spark3r_stream.models.pose_encoding import quaternion_to_matrix

# float32 rotations through acos/atan2 and float64 Wigner-D: ~1e-6 on unit-size coefficients
SH_ATOL = 1e-5


def real_sh_3dgs(directions: torch.Tensor) -> torch.Tensor:
    """The 3DGS real SH basis (degree ≤ 2) at unit directions [..., 3] -> [..., 9]."""
    x, y, z = directions.unbind(-1)
    c0, c1 = 0.28209479177387814, 0.4886025119029199
    c2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
    return torch.stack(
        [torch.full_like(x, c0), -c1 * y, c1 * z, -c1 * x, c2[0] * x * y, c2[1] * y * z,
         c2[2] * (2 * z * z - x * x - y * y), c2[3] * x * z, c2[4] * (x * x - y * y)],
        dim=-1,
    )  # fmt: skip


def random_rotations(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return quaternion_to_matrix(torch.randn(n, 4, generator=generator, dtype=torch.float64)).float()


def test_rotated_sh_evaluated_at_rotated_directions_equals_the_original():
    rotations = random_rotations(6, seed=0)
    generator = torch.Generator().manual_seed(1)
    coefficients = torch.randn(6, 9, generator=generator)
    directions = torch.nn.functional.normalize(torch.randn(6, 50, 3, generator=generator), dim=-1)
    rotated = rotate_real_sh(coefficients, rotations)
    before = (real_sh_3dgs(directions) * coefficients[:, None]).sum(-1)
    after = (real_sh_3dgs((rotations[:, None] @ directions[..., None]).squeeze(-1)) * rotated[:, None]).sum(-1)
    torch.testing.assert_close(after, before, atol=SH_ATOL, rtol=0)
    assert (after - (real_sh_3dgs(directions) * rotated[:, None]).sum(-1)).abs().max() > 0.1  # the rotation acts
    torch.testing.assert_close(rotated[:, 0], coefficients[:, 0])  # DC is invariant


def test_sh_rotation_is_a_representation():
    r1, r2 = random_rotations(4, seed=2), random_rotations(4, seed=3)
    coefficients = torch.randn(4, 9, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(rotate_real_sh(coefficients, torch.eye(3)), coefficients, atol=SH_ATOL, rtol=0)
    torch.testing.assert_close(
        rotate_real_sh(rotate_real_sh(coefficients, r2), r1), rotate_real_sh(coefficients, r1 @ r2),
        atol=SH_ATOL, rtol=0,
    )  # fmt: skip


@pytest.mark.parametrize("degree", [0, 1, 2])
def test_wigner_d_is_orthogonal_and_identity_at_zero(degree):
    angles = torch.tensor([0.3, 1.1, -2.0]), torch.tensor([0.7, 2.9, 0.1]), torch.tensor([-1.3, 0.4, 5.0])
    d = wigner_d(degree, *angles)
    eye = torch.eye(2 * degree + 1, dtype=torch.float64)
    assert d.shape == (3, 2 * degree + 1, 2 * degree + 1) and d.dtype == torch.float64
    torch.testing.assert_close(d @ d.transpose(-1, -2), eye.expand_as(d))
    zero = torch.zeros(())
    torch.testing.assert_close(wigner_d(degree, zero, zero, zero), eye)


def test_adapter_geometry_with_identity_camera_and_zero_raw():
    adapter = GaussianAdapter(sh_degree=2, scale_min=1e-5, scale_max=30.0)
    B, S, H, W = 1, 1, 4, 6
    raw = torch.zeros(B, S, H, W, adapter.num_raw_channels)
    raw[..., 5 + 3] = 1.0  # quaternion (x, y, z, w) = (0, 0, 0, 1)
    depth = torch.full((B, S, H, W), 2.0)
    opacity = torch.rand(B, S, H, W, generator=torch.Generator().manual_seed(5))
    cam_from_world = torch.eye(3, 4).expand(B, S, 3, 4)
    fx, fy = 5.0, 4.0
    intrinsics = torch.tensor([[fx, 0, W / 2], [0, fy, H / 2], [0, 0, 1]]).expand(B, S, 3, 3)
    g = adapter(raw, opacity, depth, cam_from_world, intrinsics)
    assert g.means.shape == (1, H * W, 3) and g.harmonics.shape == (1, H * W, 3, 9)
    # pixel (row 1, col 4): centre (4.5, 1.5) px; the unit ray is marched by the depth (official)
    ray = torch.tensor([(4.5 - W / 2) / fx, (1.5 - H / 2) / fy, 1.0])
    torch.testing.assert_close(g.means[0, 1 * W + 4], 2.0 * ray / ray.norm())
    expected_scale = (1e-5 + (30.0 - 1e-5) * 0.5) * 2.0 * 0.1 * (1 / fx + 1 / fy)
    torch.testing.assert_close(g.scales, torch.full_like(g.scales, expected_scale))
    torch.testing.assert_close(g.opacities, opacity.reshape(1, -1))
    assert torch.all(g.harmonics == 0)
    # official quirk: (x, y, z, w) is reordered to (w, x, y, z) and read scalar-last, so the identity quaternion
    # becomes a half-turn about x, returned scalar-last
    torch.testing.assert_close(g.rotations, torch.tensor([1.0, 0, 0, 0]).expand_as(g.rotations))
