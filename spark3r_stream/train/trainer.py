"""Resumable training of a VGGT-architecture preset on rendered scenes (`spark3r train --preset vggt-tiny`).

Recipe (research/tiny_model_training.md, study 2, plus a curriculum): visible-motion clips, high-contrast textures,
camera + confidence-weighted depth + dense world-point losses and a per-patch correspondence auxiliary; AdamW,
warm-up, constant peak lr, cosine decay at the end of each part of the run; bf16 autocast on the CPU; gradient clip 5.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from spark3r_stream.errors import CheckpointError, ConfigError
from spark3r_stream.models import build_model, load_weights
from spark3r_stream.models.registry import get_preset, packaged_weights_path
from spark3r_stream.train.data import Batch, MotionRange, ScenePool, make_batch
from spark3r_stream.train.init import adamw_param_groups, init_for_training
from spark3r_stream.train.losses import (
    CorrespondenceHead,
    MatchingHead,
    camera_loss,
    confident_regression,
    quaternion_errors,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Clips:
    """One batch's shape: `num` clips of `length` frames, frame gaps in `gaps`, first-to-last motion in `motion`."""

    length: int
    num: int
    gaps: tuple[int, int] = (1, 4)
    motion: MotionRange | None = None


@dataclass(frozen=True, kw_only=True)
class Stage:
    """A curriculum stage: from `start_step` on, clips of `clip_len` frames, `num_clips` per step.

    The scenes (`turn_deg` per frame on handheld paths, drawn per scene from a range; `step_m` per frame; `paths`)
    are re-rendered when they change. `gaps` is the frame gap range inside a clip; `motion` keeps only clips whose
    first-to-last motion lies in its range. `mix` replaces these by several clip lengths in every step (one batch
    each, gradients accumulated): trained on one length at a time, the model traded the other lengths away (session
    10). `matching_only` trains the backbone on the correspondence auxiliary alone (the heads are not run): cross-view
    matching forms first, before the camera loss can settle on the mean pose without it. `freeze_backbone` trains the
    heads alone on a fixed aggregator. Every stage re-warms its peak `lr`.
    """

    start_step: int
    clip_len: int = 2
    num_clips: int = 24
    gaps: tuple[int, int] = (1, 4)
    turn_deg: float | tuple[float, float] = 3.0
    step_m: float = 0.12
    paths: tuple[str, ...] = ("handheld", "handheld", "orbit", "forward")
    motion: MotionRange | None = None
    matching_only: bool = False
    freeze_backbone: bool = False
    lr: float = 1e-3
    correspondence_weight: float = 1.0
    depth_weight: float | None = None  # None: TrainConfig.depth_weight
    mix: tuple[Clips, ...] = ()

    @property
    def scenes(self) -> tuple:
        return (self.turn_deg, self.step_m, self.paths)

    @property
    def batches(self) -> tuple[Clips, ...]:
        """The batches of one step."""
        return self.mix or (Clips(self.clip_len, self.num_clips, self.gaps, self.motion),)

    @property
    def clip_lengths(self) -> str:
        """The clip length of each batch, "2+8+16" (the log's `clip_len`)."""
        return "+".join(str(clips.length) for clips in self.batches)


# What the pose stages train on (research/tiny_model_training.md, study 2): visible motion, no forward paths.
POSE_MOTION = MotionRange(min_deg=4.0, max_deg=25.0, min_m=0.15, max_m=0.7)
POSE_PATHS = ("handheld", "handheld", "orbit")
POSE_PAIRS = Stage(
    start_step=0, clip_len=2, num_clips=24, gaps=(2, 4), turn_deg=(2.0, 8.0), paths=POSE_PATHS, motion=POSE_MOTION
)

# The demo's windows hold 16-64 keyframes. A stage of 16-frame clips alone (session 10) bought 16-frame rotation at
# the cost of pairs and depth: pairs, 8 and 16 frames in every step instead.
MIXED_CLIPS = Stage(
    start_step=9_000,
    turn_deg=(2.0, 6.0),
    paths=POSE_PATHS,
    lr=3e-4,
    correspondence_weight=2.0,
    mix=(Clips(2, 12, (2, 4), POSE_MOTION), Clips(8, 3, (1, 2)), Clips(16, 2, (1, 1))),
)
# The same mix again, re-warmed from the decayed step 10,750, with more pairs (the farthest target).
MORE_PAIRS = replace(MIXED_CLIPS, start_step=10_750, mix=(Clips(2, 16, (2, 4), POSE_MOTION), *MIXED_CLIPS.mix[1:]))


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    preset: str = "vggt-tiny"
    model_overrides: tuple[tuple[str, object], ...] = ()  # family-config fields, e.g. (("global_rope", False),)
    tie_global_qk: bool = True
    # the matching auxiliary (train/losses.py): MatchingHead ("matching") or CorrespondenceHead ("regression")
    correspondence_head: Literal["matching", "regression"] = "matching"
    total_steps: int = 15_000
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)  # beta2 0.95: moments follow a change of the loss set within ~20 steps
    warmup_steps: int = 100
    # cosine decay to 5 % of the stage's peak inside each (start, end) window; constant peak outside (the run was
    # extended in parts: each part ends decayed, so that its last checkpoint is a candidate to ship)
    decay_windows: tuple[tuple[int, int], ...] = (
        (6_750, 9_000),
        (9_750, 10_750),
        (11_500, 12_500),
        (13_000, 14_000),
        (14_250, 15_000),
    )
    grad_clip: float = 5.0  # 1.0 stalls learning (research/tiny_model_training.md)
    camera_weight: float = 5.0
    depth_weight: float = 1.0
    points_weight: float = 1.0
    curriculum: tuple[Stage, ...] = (
        # Matching alone, with a motion curriculum: small displacements first, growing to the pose stages' motions.
        Stage(
            start_step=0, clip_len=2, num_clips=24, gaps=(1, 2), turn_deg=(1.0, 3.0), step_m=0.06, matching_only=True
        ),
        Stage(
            start_step=600, clip_len=2, num_clips=24, gaps=(1, 3), turn_deg=(2.0, 6.0), step_m=0.1, matching_only=True
        ),
        replace(POSE_PAIRS, start_step=1_200, matching_only=True),
        # The heads learn on the fixed backbone first, then everything, at a lower lr with matching kept on.
        replace(POSE_PAIRS, start_step=2_500, freeze_backbone=True),
        replace(POSE_PAIRS, start_step=3_000, lr=3e-4, correspondence_weight=2.0),
        # A model that only saw pairs does not do 16-frame windows: longer clips once pairs have left identity.
        Stage(
            start_step=5_000,
            clip_len=4,
            num_clips=12,
            gaps=(1, 3),
            turn_deg=(2.0, 8.0),
            paths=POSE_PATHS,
            lr=3e-4,
            correspondence_weight=2.0,
        ),
        Stage(
            start_step=7_000,
            clip_len=8,
            num_clips=6,
            gaps=(1, 2),
            turn_deg=(2.0, 6.0),
            lr=3e-4,
            correspondence_weight=2.0,
        ),
        MIXED_CLIPS,
        MORE_PAIRS,
        # Step 12,500 gained pairs and 16-frame ATE but lost depth on real frames (0.20 -> 0.35 AbsRel): the same
        # mix with the depth loss doubled (benchmarks/results/training/session12_candidates.md).
        replace(MORE_PAIRS, start_step=12_500, depth_weight=2.0),
        # Pairs reached 0.63x identity by 14,000 while 16-frame rotation gave back 0.2 deg and real-frame depth fell
        # to a constant's; averaging 10,750 and 14,000 kept the best of both (session13_candidates.md). A short
        # stage weighted to 16-frame clips at a lower lr, to average with them (the 10,750 + 15,000 average ships).
        replace(
            MIXED_CLIPS,
            start_step=14_000,
            lr=2e-4,
            depth_weight=2.0,
            mix=(Clips(2, 12, (2, 4), POSE_MOTION), Clips(8, 2, (1, 2)), Clips(16, 3, (1, 1))),
        ),
    )
    pool_size: int = 128
    pool_frames: int = 24
    seed: int = 1
    checkpoint_every: int = 250
    log_every: int = 25
    bf16: bool = True
    # depth/point heads decode this fraction of each clip's frames (drawn per step; at least one): the DPT heads are
    # ~3/4 of a full step's time on the CPU, and every frame still gets its camera and matching losses
    dense_fraction: float = 0.5
    num_threads: int = 2
    out_dir: str = "checkpoints/vggt-tiny"


TRAIN_PRESETS: dict[str, TrainConfig] = {"vggt-tiny": TrainConfig()}


def stage_at(cfg: TrainConfig, step: int) -> Stage:
    return [s for s in cfg.curriculum if s.start_step <= step][-1]


def learning_rate(cfg: TrainConfig, step: int, warm_from: int = 0) -> float:
    """The stage's peak lr, warmed up again at each stage start (and after a resume with a fresh optimizer, from
    `warm_from`), cosine decay inside the `decay_windows`, held at the decayed floor after a window until the next
    stage."""
    stage = stage_at(cfg, step)
    since = step - max(stage.start_step, warm_from)
    if since < cfg.warmup_steps:
        return stage.lr * (since + 1) / cfg.warmup_steps
    started = [(start, end) for start, end in cfg.decay_windows if start <= step and end > stage.start_step]
    if not started:
        return stage.lr
    start, end = started[-1]
    progress = min((step - start) / max(end - start, 1), 1.0)
    return stage.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def safe_open_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return handle.metadata() or {}


def save_weights(model: torch.nn.Module, path: Path, metadata: dict | None = None) -> None:
    """Model weights as safetensors (what the package ships), float32."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={k: json.dumps(v) for k, v in (metadata or {}).items()})


def average_weights(paths: Sequence[Path]) -> dict[str, torch.Tensor]:
    """The uniform average of checkpoints of one run (a "model soup"; Wortsman et al. 2022), in float32: late
    checkpoints of one run lie in one basin, and their mean is often better on held-out data than any one of them."""
    from safetensors.torch import load_file

    if missing := [str(path) for path in paths if not Path(path).is_file()]:
        raise CheckpointError(f"{', '.join(missing)}: no such checkpoint file")
    states = [load_file(str(path)) for path in paths]
    for path, state in zip(paths[1:], states[1:], strict=True):
        if state.keys() != states[0].keys() or any(state[k].shape != v.shape for k, v in states[0].items()):
            raise CheckpointError(
                f"{path}: its tensors differ from {paths[0]}'s; only checkpoints of one model average"
            )
    return {
        key: torch.stack([state[key].float() for state in states]).mean(0) if value.is_floating_point() else value
        for key, value in states[0].items()
    }


def ship_weights(weights: Path | Sequence[Path], preset: str) -> Path:
    """Copy trained weights (or the average of several checkpoints) into the package as the preset's shipped file,
    in float16 (half the size; they load into float32 parameters), keeping the latest training step in the metadata so
    training can resume from them."""
    target = packaged_weights_path(get_preset(preset))
    if target is None:
        raise ConfigError(f"preset {preset!r} ships no weights")
    paths = [weights] if isinstance(weights, Path) else list(weights)
    state = {k: v.half() if v.is_floating_point() else v for k, v in average_weights(paths).items()}
    steps = [json.loads(safe_open_metadata(path).get("step", "0")) for path in paths]
    metadata = {"step": max(steps), "preset": preset, "storage": "float16 (loaded into float32 parameters)"}
    if len(paths) > 1:
        metadata["averaged_steps"] = steps
    save_file(state, str(target), metadata={k: json.dumps(v) for k, v in metadata.items()})
    return target


def training_losses(
    model: torch.nn.Module,
    aux: CorrespondenceHead | MatchingHead,
    batch: Batch,
    stage: Stage,
    cfg: TrainConfig,
    dense_frames: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each loss term of `stage`, their weighted sum, and the log's reference values (`no_motion`: the
    correspondence error of "every patch stays put"; `quat`/`quat_identity`: the last iteration's quaternion L1 and
    the identity guess's). Heads in float32, as in the forward. `dense_frames`: the frames whose depth and points
    are decoded and scored (None: all)."""
    if stage.matching_only:
        tokens, patch_start_idx = model.aggregator(batch.images, keep_layers={model.config.depth - 1})
        loss, error, no_motion = aux.losses(tokens[-1], patch_start_idx, batch)
        terms = {"correspondence": loss, "corr_l1": error, "no_motion": no_motion}
        return terms, stage.correspondence_weight * loss
    out = model(batch.images, return_tokens=True, dense_frames=dense_frames)
    loss, error, no_motion = aux.losses(out["aggregator_tokens"][-1], model.aggregator.patch_start_idx, batch)
    pose_enc_list = [p.float() for p in out["pose_enc_list"]]
    quat, quat_identity = quaternion_errors(pose_enc_list[-1].detach(), batch.pose_enc)
    dense = slice(None) if dense_frames is None else dense_frames
    valid = batch.valid[:, dense]
    losses = {
        "camera": camera_loss(pose_enc_list, batch.pose_enc),
        "depth": confident_regression(out["depth"][..., 0], out["depth_conf"], batch.depth[:, dense], valid),
        "points": confident_regression(
            out["world_points"], out["world_points_conf"], batch.world_points[:, dense], valid
        ),
        "correspondence": loss,
    }
    total = (
        cfg.camera_weight * losses["camera"]
        + (cfg.depth_weight if stage.depth_weight is None else stage.depth_weight) * losses["depth"]
        + cfg.points_weight * losses["points"]
        + stage.correspondence_weight * loss
    )
    references = {"corr_l1": error, "no_motion": no_motion, "quat": quat, "quat_identity": quat_identity}
    return losses | references, total


def batch_step(
    model: torch.nn.Module,
    aux: CorrespondenceHead | MatchingHead,
    pool: ScenePool,
    rng: np.random.Generator,
    clips: Clips,
    stage: Stage,
    cfg: TrainConfig,
) -> dict[str, float]:
    """Draw one batch of `clips`, run the stage's losses and back-propagate their weighted sum ÷ the stage's number of
    batches (one of its step's batches); returns the loss terms and the weighted sum ("total")."""
    batch = make_batch(pool, rng, clips.num, clips.length, clips.gaps, clips.motion)
    num_dense = max(1, round(clips.length * cfg.dense_fraction))
    dense_frames = (
        None
        if num_dense >= clips.length
        else torch.from_numpy(np.sort(rng.choice(clips.length, num_dense, replace=False)))
    )
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
        losses, total = training_losses(model, aux, batch, stage, cfg, dense_frames)
    (total / len(stage.batches)).backward()
    return {k: v.item() for k, v in losses.items()} | {"total": total.item()}


def ratios(running: dict[str, float]) -> dict[str, float]:
    """What says whether the model sees motion: correspondence error ÷ no-motion guess's, quaternion L1 ÷ identity's
    (both 1.0 for a model that ignores the other view)."""
    out = {}
    if running.get("no_motion"):
        out["corr_ratio"] = running["corr_l1"] / running["no_motion"]
    if running.get("quat_identity"):
        out["quat_ratio"] = running["quat"] / running["quat_identity"]
    return out


def train(cfg: TrainConfig, *, resume: bool = True, max_minutes: float | None = None) -> Path:
    """Train (or resume) until `cfg.total_steps` or `max_minutes`; returns the state file path."""
    torch.set_num_threads(cfg.num_threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "state.pt"
    model = build_model(cfg.preset, random_weights=True, **dict(cfg.model_overrides))
    model = init_for_training(model, tie_global_qk=cfg.tie_global_qk).train()
    grid = model.config.img_size // model.config.patch_size
    head = MatchingHead if cfg.correspondence_head == "matching" else CorrespondenceHead
    aux = head(2 * model.config.embed_dim, (grid, grid), model.config.patch_size)
    params = list(model.parameters()) + list(aux.parameters())
    optimizer = torch.optim.AdamW(adamw_param_groups([model, aux], cfg.weight_decay), betas=cfg.betas)
    step = warm_from = 0
    if resume and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        aux.load_state_dict(state["aux"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        log.info("resumed %s at step %d", state_path, step)
    elif resume and (shipped := packaged_weights_path(get_preset(cfg.preset))) is not None and shipped.exists():
        # Across sessions only the shipped weights are kept (a few MB, committed): resume from them with a fresh
        # optimizer and correspondence head; the warm-up re-estimates Adam's moments.
        load_weights(model, shipped)
        step = warm_from = int(json.loads(safe_open_metadata(shipped).get("step", "0")))
        log.info("resumed from the shipped weights %s at step %d (fresh optimizer)", shipped, step)
    rng = np.random.default_rng(cfg.seed * 7919 + step)

    def scene_pool(stage: Stage) -> ScenePool:
        return ScenePool(
            size=cfg.pool_size,
            frames=cfg.pool_frames,
            image_size=model.config.img_size,
            first_seed=cfg.seed * 100_000 + step * 2,
            step_m=stage.step_m,
            turn_deg=stage.turn_deg,
            paths=stage.paths,
        )

    stage = stage_at(cfg, step)
    pool = scene_pool(stage)
    log_file = (out / "loss_log.jsonl").open("a")
    start = time.perf_counter()
    running: dict[str, float] = {}

    def checkpoint() -> None:
        tmp = state_path.with_suffix(".tmp")
        torch.save(
            {
                "model": model.state_dict(),
                "aux": aux.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "config": json.dumps(asdict(cfg), default=str),
            },
            tmp,
        )
        tmp.replace(state_path)
        metadata = {"step": step, "preset": cfg.preset, "model_overrides": dict(cfg.model_overrides)}
        save_weights(model, out / "weights.safetensors", metadata)
        save_weights(model, out / f"weights_{step:06d}.safetensors", metadata)  # every checkpoint, to probe later

    def stop_on_signal(signum, frame):  # SIGTERM (and SIGINT in background jobs) still writes a checkpoint
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, stop_on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    bar = tqdm(total=cfg.total_steps, initial=step, desc="train", disable=not sys.stderr.isatty(), dynamic_ncols=True)
    try:
        while step < cfg.total_steps:
            if max_minutes is not None and time.perf_counter() - start > max_minutes * 60:
                break
            if stage_at(cfg, step) != stage:
                stage = stage_at(cfg, step)
                running.clear()
            if stage.scenes != (pool.turn_deg, pool.step_m, pool.paths):
                pool = scene_pool(stage)
            model.aggregator.requires_grad_(not stage.freeze_backbone)
            lr = learning_rate(cfg, step, warm_from)
            for group in optimizer.param_groups:
                group["lr"] = lr
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            record: dict[str, float] = {}  # the step's losses, averaged over its batches
            for clips in stage.batches:  # gradients of every batch accumulated into one step
                batch_losses = batch_step(model, aux, pool, rng, clips, stage, cfg)
                for k, v in batch_losses.items():
                    record[k] = record.get(k, 0.0) + v / len(stage.batches)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            step += 1
            record["grad_norm"] = grad_norm.item()
            for k, v in record.items():
                running[k] = 0.9 * running.get(k, v) + 0.1 * v
            bar.update(1)
            if step % cfg.log_every == 0:
                entry = {
                    "step": step,
                    "lr": lr,
                    "clip_len": stage.clip_lengths,
                    "step_s": round(time.perf_counter() - t0, 3),
                }
                log_file.write(json.dumps(entry | record | ratios(running)) + "\n")
                log_file.flush()
                bar.set_postfix({k: f"{v:.3f}" for k, v in ratios(running).items()})
                log.info(
                    "step %d clips %s lr %.2e %s",
                    step,
                    stage.clip_lengths,
                    lr,
                    " ".join(f"{k} {v:.4f}" for k, v in (running | ratios(running)).items()),
                )
            if step % cfg.checkpoint_every == 0:
                checkpoint()
    except KeyboardInterrupt as exc:
        log.info("stopping at step %d (%s)", step, exc)
    finally:
        bar.close()
        checkpoint()
        log_file.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return state_path
