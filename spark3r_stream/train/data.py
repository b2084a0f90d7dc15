"""Training batches from procedural scenes: a rolling pool of rendered sequences, clips with visible motion.

Targets follow VGGT's training normalisation: frame 0 of each clip is the world frame, and everything is scaled
so that the mean distance of the valid world points to the origin is 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from spark3r_stream.geometry import apply_transform, invert_se3, unproject_depth
from spark3r_stream.models.pose_encoding import extri_intri_to_pose_encoding
from spark3r_stream.synth.render import SyntheticSequence, pixel_correspondences, render_sequence

HELD_OUT_SEED_START = 900_000  # evaluation scenes use seeds from here on; training never renders them


@dataclass
class Batch:
    images: torch.Tensor  # [B, S, 3, H, W] in [0, 1]
    pose_enc: torch.Tensor  # [B, S, 9] normalised targets
    depth: torch.Tensor  # [B, S, H, W] normalised
    world_points: torch.Tensor  # [B, S, H, W, 3] in frame-0 camera coordinates, normalised
    valid: torch.Tensor  # [B, S, H, W] bool
    patch_uv: torch.Tensor  # [B, S, h*w, 2] each patch centre's pixel in frame 0, in [-1, 1]
    patch_visible: torch.Tensor  # [B, S, h*w] bool


class ScenePool:
    """Rendered sequences to cut clips from; one sequence is replaced by a fresh scene every `refresh_every` draws."""

    def __init__(
        self,
        *,
        size: int,
        frames: int,
        image_size: int,
        first_seed: int,
        step_m: float,
        turn_deg: float | tuple[float, float],
        paths: tuple[str, ...] = ("handheld", "handheld", "orbit", "forward"),
        refresh_every: int = 48,
    ) -> None:
        self.frames, self.image_size = frames, image_size
        self.step_m, self.turn_deg, self.paths = step_m, turn_deg, paths
        self.refresh_every = refresh_every
        self.rng = np.random.default_rng(first_seed)
        self.next_seed = first_seed
        self.sequences = [self._render() for _ in range(size)]
        self.draws = 0

    def _render(self) -> SyntheticSequence:
        seed = self.next_seed
        self.next_seed += 1
        assert seed < HELD_OUT_SEED_START, "training seeds must stay below the held-out range"
        path = self.rng.choice(self.paths)
        return render_sequence(
            seed,
            self.frames,
            height=self.image_size,
            width=self.image_size,
            path=path,
            step_m=self.step_m * self.rng.uniform(0.6, 1.4),
            turn_deg=float(self.rng.uniform(*np.broadcast_to(self.turn_deg, 2))),
        )

    def draw(self) -> SyntheticSequence:
        self.draws += 1
        if self.draws % self.refresh_every == 0:
            self.sequences[self.rng.integers(len(self.sequences))] = self._render()
        return self.sequences[self.rng.integers(len(self.sequences))]


def clip_targets(seq: SyntheticSequence, frames: np.ndarray, patch_size: int = 14) -> dict[str, np.ndarray]:
    """Normalised targets of the clip `frames` of `seq` (frame frames[0] is the world frame)."""
    world_from_cam = seq.world_from_cam[frames]
    ref_from_world = invert_se3(world_from_cam[0])
    ref_from_cam = ref_from_world @ world_from_cam
    depth = seq.depth[frames]
    valid = np.isfinite(depth) & (depth > 1e-3)
    points = np.stack(
        [apply_transform(ref_from_cam[i], unproject_depth(d, seq.intrinsics)) for i, d in enumerate(depth)]
    )
    scale = float(np.linalg.norm(points[valid], axis=-1).mean())
    cam_from_ref = np.linalg.inv(ref_from_cam)
    cam_from_ref[:, :3, 3] /= scale
    H, W = depth.shape[1:]
    h, w = H // patch_size, W // patch_size
    rows = np.arange(h) * patch_size + patch_size // 2
    cols = np.arange(w) * patch_size + patch_size // 2
    uv = np.empty((len(frames), h * w, 2))
    visible = np.empty((len(frames), h * w), bool)
    for i, frame in enumerate(frames):
        pix, vis = pixel_correspondences(seq, int(frame), int(frames[0]))
        uv[i] = pix[rows][:, cols].reshape(-1, 2)
        visible[i] = vis[rows][:, cols].reshape(-1)
    uv = uv / np.array([W - 1, H - 1]) * 2 - 1
    return {
        "cam_from_ref": cam_from_ref,
        "depth": np.where(valid, depth / scale, 0.0).astype(np.float32),
        "points": np.where(valid[..., None], points / scale, 0.0).astype(np.float32),
        "valid": valid,
        "uv": np.nan_to_num(uv).astype(np.float32),
        "visible": visible,
    }


def sample_clip_frames(
    rng: np.random.Generator, num_available: int, clip_len: int, max_gap: int, min_gap: int = 1
) -> np.ndarray:
    gap = int(rng.integers(min_gap, max_gap + 1))
    gap = min(gap, max(1, (num_available - 1) // max(clip_len - 1, 1)))
    start = int(rng.integers(0, num_available - gap * (clip_len - 1)))
    frames = start + gap * np.arange(clip_len)
    return frames[::-1].copy() if rng.random() < 0.5 else frames  # random direction: no "always forward" prior


@dataclass(frozen=True)
class MotionRange:
    """Relative motion between a clip's first and last frame that a clip must show to be kept."""

    min_deg: float = 0.0
    max_deg: float = 180.0
    min_m: float = 0.0
    max_m: float = float("inf")

    def admits(self, first_world_from_cam: np.ndarray, last_world_from_cam: np.ndarray) -> bool:
        relative = invert_se3(first_world_from_cam) @ last_world_from_cam
        angle = np.degrees(np.arccos(np.clip((np.trace(relative[:3, :3]) - 1) / 2, -1.0, 1.0)))
        distance = float(np.linalg.norm(relative[:3, 3]))
        return self.min_deg <= angle <= self.max_deg and self.min_m <= distance <= self.max_m


def draw_clip(
    pool: ScenePool,
    rng: np.random.Generator,
    clip_len: int,
    gaps: tuple[int, int],
    motion: MotionRange | None = None,
    max_tries: int = 50,
) -> tuple[SyntheticSequence, np.ndarray]:
    """A clip from the pool, redrawn until its motion lies in `motion` (the last draw is kept after `max_tries`)."""
    for _ in range(max_tries):
        seq = pool.draw()
        frames = sample_clip_frames(rng, seq.num_frames, clip_len, gaps[1], gaps[0])
        if motion is None or motion.admits(seq.world_from_cam[frames[0]], seq.world_from_cam[frames[-1]]):
            break
    return seq, frames


def make_batch(
    pool: ScenePool,
    rng: np.random.Generator,
    num_clips: int,
    clip_len: int,
    gaps: tuple[int, int],
    motion: MotionRange | None = None,
) -> Batch:
    images, pose_enc, depth, points, valid, uv, visible = [], [], [], [], [], [], []
    for _ in range(num_clips):
        seq, frames = draw_clip(pool, rng, clip_len, gaps, motion)
        t = clip_targets(seq, frames)
        H, W = t["depth"].shape[1:]
        K = torch.from_numpy(np.repeat(seq.intrinsics[None], clip_len, 0))
        enc = extri_intri_to_pose_encoding(torch.from_numpy(t["cam_from_ref"][:, :3]), K, (H, W))
        images.append(torch.from_numpy(seq.images[frames]).permute(0, 3, 1, 2).float() / 255)
        pose_enc.append(enc.float())
        depth.append(torch.from_numpy(t["depth"]))
        points.append(torch.from_numpy(t["points"]))
        valid.append(torch.from_numpy(t["valid"]))
        uv.append(torch.from_numpy(t["uv"]))
        visible.append(torch.from_numpy(t["visible"]))
    return Batch(*(torch.stack(x) for x in (images, pose_enc, depth, points, valid, uv, visible)))
