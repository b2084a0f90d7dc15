"""Vectorised numpy ray casting of procedural scenes: RGB, z-depth and ground-truth cameras per frame.

Rays go through integer pixel indices (u, v) with the principal point at (W/2, H/2), the convention of
`geometry.unproject_depth`, so unprojecting the rendered depth lands exactly on the rendered surfaces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spark3r_stream.errors import InputError
from spark3r_stream.geometry import apply_transform, invert_se3, project_points, unproject_depth
from spark3r_stream.synth.paths import PATH_KINDS, PathKind, camera_path
from spark3r_stream.synth.scenes import Material, Scene, sample_room, sample_scene

_EPS_T = 1e-4  # minimum ray parameter (metres of z-depth) of a hit: ignores surfaces through the eye


@dataclass(frozen=True)
class SyntheticSequence:
    """A rendered sequence with exact ground truth."""

    images: np.ndarray  # uint8 [S, H, W, 3] RGB
    depth: np.ndarray  # float32 [S, H, W] z-depth in metres (OpenCV camera z)
    world_from_cam: np.ndarray  # float64 [S, 4, 4] camera-to-world, OpenCV camera axes, world z up
    intrinsics: np.ndarray  # float64 [3, 3], shared by all frames
    timestamps_s: np.ndarray  # float64 [S]
    seed: int
    path: PathKind
    scene: Scene

    @property
    def num_frames(self) -> int:
        return len(self.images)


def intrinsics_from_fov(fov_deg: float, height: int, width: int) -> np.ndarray:
    """Pinhole intrinsics [3, 3] with horizontal field of view `fov_deg`, square pixels, centre (W/2, H/2)."""
    focal = width / 2 / np.tan(np.radians(fov_deg) / 2)
    return np.array([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])


def render_sequence(
    seed: int,
    num_frames: int,
    *,
    height: int = 112,
    width: int = 112,
    path: PathKind = "handheld",
    step_m: float | None = None,
    turn_deg: float | None = None,
    fov_deg: float | None = None,
    num_objects: int | None = None,
    fps: float = 30.0,
) -> SyntheticSequence:
    """Render `num_frames` views of the procedural scene of `seed` along a camera path.

    The same seed gives the same room, path and images; the room does not depend on `num_frames`.

    Args:
        path: "handheld" (smooth random walk looking around), "orbit", "forward" or "loop" (returns to the start).
        step_m: camera-centre motion per frame (default 0.08 m; "loop" walks its loop once regardless).
        turn_deg: mean change of viewing direction per frame on handheld paths (default 2 degrees).
        fov_deg: horizontal field of view; default drawn from 55-75 degrees per seed.
        num_objects: boxes, spheres and cylinders to place (default 4-10 per seed).
        fps: frame rate of `timestamps_s`.
    """
    if num_frames < 1:
        raise InputError(f"render_sequence num_frames: expected >= 1, got {num_frames}")
    if height < 2 or width < 2:
        raise InputError(f"render_sequence size: expected height, width >= 2, got {height}x{width}")
    if path not in PATH_KINDS:
        raise InputError(f"render_sequence path {path!r}: unknown; expected one of {', '.join(PATH_KINDS)}")
    # independent streams per component, so the room is the same whatever the path or frame count
    room_rng, path_rng, object_rng, camera_rng = (np.random.default_rng([seed, part]) for part in range(4))
    room = sample_room(room_rng)
    world_from_cam = camera_path(
        path, path_rng, room.room_min, room.room_max, num_frames, step_m=step_m, turn_deg=turn_deg
    )
    scene = sample_scene(object_rng, room, world_from_cam[:, :3, 3], num_objects=num_objects)
    if fov_deg is None:
        fov_deg = float(camera_rng.uniform(55.0, 75.0))
    intrinsics = intrinsics_from_fov(fov_deg, height, width)
    caster = RayCaster(scene, intrinsics, height, width)
    images = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    depth = np.empty((num_frames, height, width), dtype=np.float32)
    for frame in range(num_frames):
        images[frame], depth[frame] = caster.render(world_from_cam[frame])
    return SyntheticSequence(
        images=images,
        depth=depth,
        world_from_cam=world_from_cam,
        intrinsics=intrinsics,
        timestamps_s=np.arange(num_frames) / fps,
        seed=seed,
        path=path,
        scene=scene,
    )


class RayCaster:
    """Renders one scene from any camera; holds the per-pixel ray directions of one image size."""

    def __init__(self, scene: Scene, intrinsics: np.ndarray, height: int, width: int):
        self.scene = scene
        self.height = height
        self.width = width
        # camera-frame rays with z = 1: the ray parameter of a hit is its z-depth
        self.rays_cam = unproject_depth(np.ones((height, width)), intrinsics).reshape(-1, 3)

    def render(self, world_from_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Render one view; returns (image uint8 [H, W, 3], z-depth float32 [H, W])."""
        origin = world_from_cam[:3, 3]
        dirs = self.rays_cam @ world_from_cam[:3, :3].T
        dirs = np.where(np.abs(dirs) < 1e-12, 1e-12, dirs)  # no exact zeros: slab tests divide by them
        depth, normal, material = _intersect(self.scene, origin, dirs)
        points = origin + depth[:, None] * dirs
        rgb = _shade(self.scene, points, normal, material)
        image = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        return image.reshape(self.height, self.width, 3), depth.astype(np.float32).reshape(self.height, self.width)


def _intersect(scene: Scene, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit per ray: (ray parameter [P], unit normal [P, 3], material index [P])."""
    num_rays = len(dirs)
    rows = np.arange(num_rays)
    # axis-first layout [3, P]: numpy reduces a short trailing axis slowly, elementwise min/max of rows is fast
    inv = 1.0 / dirs.T
    positive = inv > 0

    # room: the camera is inside the box, every ray leaves through one face
    t_axes = np.where(positive, (scene.room_max - origin)[:, None], (scene.room_min - origin)[:, None]) * inv
    axis = np.argmin(t_axes, axis=0)
    best_t = t_axes[axis, rows]
    normal = np.zeros((num_rays, 3))
    exits_positive = positive[axis, rows]
    normal[rows, axis] = np.where(exits_positive, -1.0, 1.0)  # walls face into the room
    material = scene.room_material[axis * 2 + exits_positive]

    if len(scene.box_min):
        t_low = (scene.box_min.T[:, :, None] - origin[:, None, None]) * inv[:, None, :]  # [3, B, P]
        t_high = (scene.box_max.T[:, :, None] - origin[:, None, None]) * inv[:, None, :]
        t_enter = np.minimum(t_low, t_high)
        t_exit = np.maximum(t_low, t_high)
        t_near = np.maximum(np.maximum(t_enter[0], t_enter[1]), t_enter[2])  # [B, P]
        t_far = np.minimum(np.minimum(t_exit[0], t_exit[1]), t_exit[2])
        t_near = np.where((t_near <= t_far) & (t_near > _EPS_T), t_near, np.inf)
        box = np.argmin(t_near, axis=0)
        t_box = t_near[box, rows]
        closer = np.flatnonzero(t_box < best_t)
        if len(closer):
            hit_axis = np.argmax(t_enter[:, box[closer], closer], axis=0)
            best_t[closer] = t_box[closer]
            normal[closer] = 0.0
            normal[closer, hit_axis] = np.where(positive[hit_axis, closer], -1.0, 1.0)
            material[closer] = scene.box_material[box[closer]]

    if len(scene.sphere_radius):
        to_origin = origin - scene.sphere_centre  # [N, 3]
        a = np.einsum("pi,pi->p", dirs, dirs)
        half_b = to_origin @ dirs.T  # [N, P]
        c = np.einsum("ni,ni->n", to_origin, to_origin) - scene.sphere_radius**2
        disc = half_b**2 - a * c[:, None]
        t_sphere = (-half_b - np.sqrt(np.maximum(disc, 0.0))) / a
        t_sphere = np.where((disc >= 0) & (t_sphere > _EPS_T), t_sphere, np.inf)
        sphere = np.argmin(t_sphere, axis=0)
        t_hit = t_sphere[sphere, rows]
        closer = np.flatnonzero(t_hit < best_t)
        if len(closer):
            best_t[closer] = t_hit[closer]
            hit = origin + t_hit[closer, None] * dirs[closer]
            normal[closer] = (hit - scene.sphere_centre[sphere[closer]]) / scene.sphere_radius[sphere[closer], None]
            material[closer] = scene.sphere_material[sphere[closer]]

    if len(scene.cylinder_radius):
        to_origin = origin[:2] - scene.cylinder_centre_xy  # [C, 2]
        a = dirs[:, 0] ** 2 + dirs[:, 1] ** 2
        half_b = to_origin @ dirs[:, :2].T  # [C, P]
        c = np.einsum("ni,ni->n", to_origin, to_origin) - scene.cylinder_radius**2
        disc = half_b**2 - a * c[:, None]
        t_side = (-half_b - np.sqrt(np.maximum(disc, 0.0))) / a
        z_side = origin[2] + t_side * dirs[:, 2]
        t_side = np.where(
            (disc >= 0) & (t_side > _EPS_T) & (z_side >= 0) & (z_side <= scene.cylinder_top[:, None]), t_side, np.inf
        )
        t_cap = (scene.cylinder_top[:, None] - origin[2]) / dirs[:, 2]  # [C, P]
        cap_x = origin[0] + t_cap * dirs[:, 0] - scene.cylinder_centre_xy[:, 0:1]
        cap_y = origin[1] + t_cap * dirs[:, 1] - scene.cylinder_centre_xy[:, 1:2]
        in_cap = (cap_x**2 + cap_y**2 <= scene.cylinder_radius[:, None] ** 2) & (t_cap > _EPS_T)
        t_cap = np.where(in_cap, t_cap, np.inf)
        t_cyl = np.minimum(t_side, t_cap)
        cylinder = np.argmin(t_cyl, axis=0)
        t_hit = t_cyl[cylinder, rows]
        closer = np.flatnonzero(t_hit < best_t)
        if len(closer):
            on_cap = t_cap[cylinder[closer], closer] <= t_side[cylinder[closer], closer]
            best_t[closer] = t_hit[closer]
            hit_xy = origin[:2] + t_hit[closer, None] * dirs[closer, :2]
            radial = (hit_xy - scene.cylinder_centre_xy[cylinder[closer]]) / scene.cylinder_radius[
                cylinder[closer], None
            ]
            normal[closer] = np.where(on_cap[:, None], [0.0, 0.0, 1.0], np.c_[radial, np.zeros(len(closer))])
            material[closer] = scene.cylinder_material[cylinder[closer]]

    return best_t, normal, material


def _hash01(cells: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per integer lattice cell [M, 3] (int64 wrap-around is intended)."""
    h = cells[:, 0] * 73856093 ^ cells[:, 1] * 19349663 ^ cells[:, 2] * 83492791 ^ salt
    h = (h ^ (h >> 13)) * 1274126177
    h = h ^ (h >> 16)
    return (h & 0xFFFFFF).astype(np.float64) / float(0x1000000)


def _value_noise(coords: np.ndarray, salt: int) -> np.ndarray:
    """Trilinear value noise in [0, 1) at [M, 3] lattice coordinates."""
    base = np.floor(coords)
    frac = coords - base
    smooth = frac * frac * (3.0 - 2.0 * frac)
    cells = base.astype(np.int64)
    total = np.zeros(len(coords))
    for corner in range(8):
        offset = np.array([corner & 1, (corner >> 1) & 1, (corner >> 2) & 1])
        weight = np.prod(np.where(offset, smooth, 1.0 - smooth), axis=1)
        total += weight * _hash01(cells + offset, salt)
    return total


def _pattern(material: Material, points: np.ndarray) -> np.ndarray:
    """Mix factor in [0, 1] between the dark (0) and bright (1) colour at world points [M, 3]."""
    coords = points @ material.rotation.T * material.frequency + material.offset
    if material.pattern == "checker":
        return (np.floor(coords).astype(np.int64).sum(axis=1) & 1).astype(np.float64)
    if material.pattern == "stripes":
        return (np.floor(coords[:, 0] * 2.0).astype(np.int64) & 1).astype(np.float64)
    if material.pattern == "grid":
        to_line = np.abs(coords - np.round(coords))  # distance to the nearest lattice plane, per axis
        return (to_line.min(axis=1) > 0.12).astype(np.float64)
    if material.pattern == "dots":
        return (np.linalg.norm(coords - np.floor(coords) - 0.5, axis=1) > 0.3).astype(np.float64)
    assert material.pattern == "noise", material.pattern
    # sharpened value noise: blobs with crisp dark/bright boundaries
    return np.clip((_value_noise(coords, material.salt) - 0.5) * 6.0 + 0.5, 0.0, 1.0)


def _shade(scene: Scene, points: np.ndarray, normal: np.ndarray, material: np.ndarray) -> np.ndarray:
    """Lambertian RGB in [0, 1] per hit [P, 3]: textured albedo, directional + point light, ambient floor."""
    albedo = np.empty_like(points)
    order = np.argsort(material, kind="stable")
    sorted_material = material[order]
    bounds = np.flatnonzero(np.diff(sorted_material)) + 1
    for group in np.split(order, bounds):
        mat = scene.materials[material[group[0]]]
        pts = points[group]
        mix = _pattern(mat, pts)
        colour = mat.dark + mix[:, None] * (mat.bright - mat.dark)
        cells = np.floor(pts @ mat.rotation.T / mat.speckle_cell_m + mat.offset).astype(np.int64)
        speckle = 1.0 + mat.speckle * (2.0 * _hash01(cells, mat.salt ^ 0x5BD1E995) - 1.0)
        albedo[group] = colour * speckle[:, None]
    sun = np.maximum(normal @ -scene.light_direction, 0.0)
    to_light = scene.point_light - points
    distance = np.linalg.norm(to_light, axis=1)
    lamp = np.maximum(np.einsum("pi,pi->p", normal, to_light) / distance, 0.0) / (1.0 + 0.15 * distance**2)
    light = scene.ambient + (1.0 - scene.ambient) * sun + scene.point_light_strength * lamp
    return albedo * light[:, None]


def pixel_correspondences(
    sequence: SyntheticSequence,
    src_frame: int,
    dst_frame: int,
    *,
    occlusion_tolerance: float = 0.03,
) -> tuple[np.ndarray, np.ndarray]:
    """Where every pixel of `src_frame` appears in `dst_frame`, from ground-truth depth and poses.

    Args:
        occlusion_tolerance: relative z-depth difference above which the point is hidden in `dst_frame`.

    Returns:
        (uv [H, W, 2] float64 pixel coordinates in `dst_frame` (integer-index convention),
        is_visible [H, W] bool: in front of the camera, inside the image and not occluded).
    """
    for name, frame in (("src_frame", src_frame), ("dst_frame", dst_frame)):
        if not 0 <= frame < sequence.num_frames:
            raise InputError(f"pixel_correspondences {name}: {frame} outside [0, {sequence.num_frames})")
    height, width = sequence.depth.shape[1:]
    points_src = unproject_depth(sequence.depth[src_frame], sequence.intrinsics)
    dst_from_src = invert_se3(sequence.world_from_cam[dst_frame]) @ sequence.world_from_cam[src_frame]
    uv, z = project_points(apply_transform(dst_from_src, points_src), sequence.intrinsics)
    inside = (
        (z > 0) & (uv[..., 0] > -0.5) & (uv[..., 0] < width - 0.5) & (uv[..., 1] > -0.5) & (uv[..., 1] < height - 0.5)
    )
    nearest_u = np.clip(np.round(np.nan_to_num(uv[..., 0])), 0, width - 1).astype(np.int64)
    nearest_v = np.clip(np.round(np.nan_to_num(uv[..., 1])), 0, height - 1).astype(np.int64)
    seen_depth = sequence.depth[dst_frame][nearest_v, nearest_u]
    is_visible = inside & (np.abs(seen_depth - z) <= occlusion_tolerance * np.maximum(z, 1e-6))
    return uv, is_visible
