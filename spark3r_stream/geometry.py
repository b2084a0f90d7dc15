"""4x4 SE(3)/Sim(3) transforms, Umeyama alignment, unprojection and pose interpolation; pure numpy, no I/O.

Conventions: cameras are OpenCV (x right, y down, z forward), metres; a transform `a_from_b` maps points
in frame b to frame a, and composition reads right to left (`world_from_cam @ cam_from_obj`).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from spark3r_stream.errors import InputError

__all__ = [
    "apply_transform",
    "invert_se3",
    "invert_sim3",
    "interpolate_poses",
    "project_points",
    "rotation_angle_deg",
    "se3_matrix",
    "sim3_matrix",
    "sim3_scale",
    "umeyama_sim3",
    "unproject_depth",
]

# Relative size below which a singular value of the cross-covariance counts as zero: the points then lie on a
# line (or a point) and the rotation about that line is not determined.
_RANK_TOLERANCE = 1e-9


def se3_matrix(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Build 4x4 rigid transforms from rotations [..., 3, 3] and translations [..., 3]."""
    return sim3_matrix(1.0, rotation, translation)


def sim3_matrix(scale: float | np.ndarray, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Build 4x4 similarity transforms `x -> scale * rotation @ x + translation`.

    Args:
        scale: scalar or [...] (broadcast against the leading dims of `rotation`).
        rotation: [..., 3, 3].
        translation: [..., 3].

    Returns:
        [..., 4, 4] float64.
    """
    rotation = np.asarray(rotation, dtype=np.float64)
    translation = np.asarray(translation, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    batch = np.broadcast_shapes(rotation.shape[:-2], translation.shape[:-1], scale.shape)
    out = np.zeros((*batch, 4, 4))
    out[..., :3, :3] = scale[..., None, None] * rotation
    out[..., :3, 3] = translation
    out[..., 3, 3] = 1.0
    return out


def sim3_scale(transform: np.ndarray) -> np.ndarray:
    """Scale factor of 4x4 similarity transforms [..., 4, 4] (cube root of the linear part's determinant)."""
    return np.cbrt(np.linalg.det(np.asarray(transform, dtype=np.float64)[..., :3, :3]))


def invert_se3(transform: np.ndarray) -> np.ndarray:
    """Invert rigid transforms [..., 4, 4] in closed form (`cam_from_world = invert_se3(world_from_cam)`)."""
    transform = np.asarray(transform, dtype=np.float64)
    rotation_t = np.swapaxes(transform[..., :3, :3], -1, -2)
    out = np.zeros_like(transform)
    out[..., :3, :3] = rotation_t
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", rotation_t, transform[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def invert_sim3(transform: np.ndarray) -> np.ndarray:
    """Invert similarity transforms [..., 4, 4] (`s R x + t` becomes `R^T (x - t) / s`)."""
    transform = np.asarray(transform, dtype=np.float64)
    scale = sim3_scale(transform)
    linear_inv = np.swapaxes(transform[..., :3, :3], -1, -2) / (scale**2)[..., None, None]
    out = np.zeros_like(transform)
    out[..., :3, :3] = linear_inv
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", linear_inv, transform[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def apply_transform(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply one 4x4 transform to points [..., 3]; returns float64 points of the same shape."""
    transform = np.asarray(transform, dtype=np.float64)
    if transform.shape != (4, 4):
        raise InputError(f"apply_transform transform: expected shape (4, 4), got {transform.shape}")
    points = np.asarray(points, dtype=np.float64)
    if points.shape[-1:] != (3,):
        raise InputError(f"apply_transform points: expected shape [..., 3], got {points.shape}")
    return points @ transform[:3, :3].T + transform[:3, 3]


def rotation_angle_deg(rotation: np.ndarray) -> np.ndarray:
    """Rotation angle in degrees of rotation matrices [..., 3, 3] (0 for the identity, at most 180)."""
    rotation = np.asarray(rotation, dtype=np.float64)
    # via quaternions, not arccos((trace - 1) / 2): arccos loses half the digits near 0 degrees
    angles = Rotation.from_matrix(rotation.reshape(-1, 3, 3)).magnitude()
    return np.degrees(angles).reshape(rotation.shape[:-2])


def umeyama_sim3(
    src: np.ndarray,
    dst: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    with_scale: bool = True,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity (Umeyama 1991) such that `dst ≈ scale * R @ src + t`, optionally weighted.

    Minimises `sum_i w_i |dst_i - (s R src_i + t)|^2` over R in SO(3) (reflections excluded), t, and s > 0
    (s fixed to 1 when `with_scale=False`).

    Args:
        src: [N, 3] points in the source frame.
        dst: [N, 3] the same points in the destination frame.
        weights: [N] non-negative confidences, or None for uniform weights.
        with_scale: estimate the scale (Sim(3)); False gives the rigid SE(3) fit.

    Returns:
        (scale, R [3, 3], t [3]); compose with `sim3_matrix(scale, R, t)` to get `dst_from_src`.

    Raises:
        InputError: mismatched shapes, fewer than 3 points with positive weight, non-finite values,
            negative weights, or points that are all coincident or collinear (rotation undetermined).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 3 or src.shape != dst.shape:
        raise InputError(
            f"umeyama_sim3 src/dst: expected two [N, 3] arrays of equal shape, got {src.shape} and {dst.shape}"
        )
    if weights is None:
        weights = np.ones(len(src))
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(src),):
        raise InputError(f"umeyama_sim3 weights: expected shape ({len(src)},), got {weights.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all() and np.isfinite(weights).all()):
        raise InputError("umeyama_sim3 inputs: contain NaN or infinite values; filter them with a validity mask first")
    if (weights < 0).any():
        raise InputError(f"umeyama_sim3 weights: must be >= 0, got min {weights.min():.3g}")
    num_used = int((weights > 0).sum())
    if num_used < 3:
        raise InputError(f"umeyama_sim3 src/dst: need at least 3 points with positive weight, got {num_used}")

    w = weights / weights.sum()
    mean_src = w @ src
    mean_dst = w @ dst
    src_c = src - mean_src
    dst_c = dst - mean_dst
    var_src = float(w @ np.einsum("ij,ij->i", src_c, src_c))
    cov = (dst_c * w[:, None]).T @ src_c  # [3, 3] sum_i w_i dst_i src_i^T
    u, sing, vt = np.linalg.svd(cov)
    extent = max(var_src, float(w @ np.einsum("ij,ij->i", dst_c, dst_c)))
    if extent <= 0 or sing[1] <= _RANK_TOLERANCE * max(sing[0], extent):
        raise InputError(
            "umeyama_sim3 src/dst: points are coincident or collinear (cross-covariance rank < 2, "
            f"singular values {sing[0]:.3g}, {sing[1]:.3g}); the rotation is undetermined"
        )
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[2] = -1.0  # Umeyama's correction: the best proper rotation, never a reflection
    rotation = (u * d) @ vt
    scale = float((sing * d).sum() / var_src) if with_scale else 1.0
    if scale <= 0:
        raise InputError(f"umeyama_sim3 src/dst: the best-fit scale is {scale:.3g} <= 0; the correspondences disagree")
    translation = mean_dst - scale * rotation @ mean_src
    return scale, rotation, translation


def unproject_depth(depth: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """Lift z-depth maps to camera-frame points (OpenCV axes).

    Pixel (u, v) = (column, row) integer index maps to `((u - cx) z / fx, (v - cy) z / fy, z)`, the VGGT
    convention (no half-pixel offset).

    Args:
        depth: [..., H, W] z-depth in metres.
        intrinsics: [3, 3] or [..., 3, 3] matching the leading dims of `depth`.

    Returns:
        [..., H, W, 3] float64 points in each camera's frame.
    """
    depth = np.asarray(depth, dtype=np.float64)
    intrinsics = np.asarray(intrinsics, dtype=np.float64)
    if depth.ndim < 2:
        raise InputError(f"unproject_depth depth: expected [..., H, W], got shape {depth.shape}")
    if intrinsics.shape[-2:] != (3, 3):
        raise InputError(f"unproject_depth intrinsics: expected [..., 3, 3], got shape {intrinsics.shape}")
    height, width = depth.shape[-2:]
    fx = intrinsics[..., 0, 0, None, None]
    fy = intrinsics[..., 1, 1, None, None]
    cx = intrinsics[..., 0, 2, None, None]
    cy = intrinsics[..., 1, 2, None, None]
    u = np.arange(width, dtype=np.float64)[None, :]
    v = np.arange(height, dtype=np.float64)[:, None]
    x = (u - cx) / fx * depth
    y = (v - cy) / fy * depth
    return np.stack([x, y, depth], axis=-1)


def project_points(points_cam: np.ndarray, intrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project camera-frame points [..., 3] with intrinsics [3, 3]; the inverse of `unproject_depth`.

    Returns:
        (uv [..., 2] pixel coordinates in the integer-index convention of `unproject_depth`, z [...] depth).
        Points with z <= 0 get NaN pixel coordinates.
    """
    points_cam = np.asarray(points_cam, dtype=np.float64)
    intrinsics = np.asarray(intrinsics, dtype=np.float64)
    z = points_cam[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        safe_z = np.where(z > 0, z, np.nan)
        u = intrinsics[0, 0] * points_cam[..., 0] / safe_z + intrinsics[0, 2]
        v = intrinsics[1, 1] * points_cam[..., 1] / safe_z + intrinsics[1, 2]
    return np.stack([u, v], axis=-1), z


def interpolate_poses(
    times_known: np.ndarray,
    world_from_cam_known: np.ndarray,
    times_query: np.ndarray,
) -> np.ndarray:
    """Interpolate rigid camera poses: SLERP on rotations, linear on camera centres.

    Queries before the first or after the last known time take the nearest known pose (no extrapolation).

    Args:
        times_known: [K] strictly increasing seconds.
        world_from_cam_known: [K, 4, 4] rigid camera-to-world transforms.
        times_query: [Q] seconds, any order.

    Returns:
        [Q, 4, 4] world_from_cam at the query times.
    """
    times_known = np.asarray(times_known, dtype=np.float64)
    world_from_cam_known = np.asarray(world_from_cam_known, dtype=np.float64)
    times_query = np.asarray(times_query, dtype=np.float64)
    num_known = len(times_known)
    if times_known.ndim != 1 or num_known == 0:
        raise InputError(
            f"interpolate_poses times_known: expected a non-empty [K] array, got shape {times_known.shape}"
        )
    if world_from_cam_known.shape != (num_known, 4, 4):
        raise InputError(
            f"interpolate_poses world_from_cam_known: expected shape ({num_known}, 4, 4), got {world_from_cam_known.shape}"
        )
    if times_query.ndim != 1:
        raise InputError(f"interpolate_poses times_query: expected a [Q] array, got shape {times_query.shape}")
    if num_known > 1 and not (np.diff(times_known) > 0).all():
        raise InputError("interpolate_poses times_known: must be strictly increasing")
    if num_known == 1:
        return np.repeat(world_from_cam_known, len(times_query), axis=0)

    clamped = np.clip(times_query, times_known[0], times_known[-1])
    rotations = Slerp(times_known, Rotation.from_matrix(world_from_cam_known[:, :3, :3]))(clamped)
    centres = np.stack([np.interp(clamped, times_known, world_from_cam_known[:, i, 3]) for i in range(3)], axis=-1)
    return se3_matrix(rotations.as_matrix(), centres)
