"""Run a model on sequences with ground truth and score it next to trivial baselines (`spark3r eval`, quality bench).

Baselines, scored with the same protocol: `identity` (every camera at the origin; its best Sim(3) fit is the mean
camera centre), `constant-velocity` (the ground truth's first frame-to-frame motion repeated: what a motion model
predicts without looking at the images; a rotating motion makes it an arc, so the Sim(3) fit is determined) and
`constant-depth` (one depth per frame: after median scaling, the frame's median).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from spark3r_stream.eval.depth import depth_metrics
from spark3r_stream.eval.sequence import evaluate_sequence
from spark3r_stream.eval.trajectory import (
    constant_trajectory_ate,
    relative_rotation_errors_deg,
    trajectory_extent,
    trajectory_metrics,
)

log = logging.getLogger(__name__)

HELD_OUT_SEED_START = 900_000  # seeds the training never renders (spark3r_stream.train.data)


@dataclass
class GroundTruthSequence:
    """Images at the model's input size with matching ground truth."""

    name: str
    images: np.ndarray  # uint8 [S, H, W, 3]
    world_from_cam: np.ndarray  # [S, 4, 4]
    depth: np.ndarray | None  # [S, H, W] metres, 0 = invalid
    intrinsics: np.ndarray | None  # [3, 3]


def held_out_sequences(
    num_sequences: int, num_frames: int, size: int = 112, path: str = "handheld", first_seed: int = HELD_OUT_SEED_START
) -> list[GroundTruthSequence]:
    from spark3r_stream.synth import render_sequence

    sequences = []
    for seed in range(first_seed, first_seed + num_sequences):
        seq = render_sequence(seed, num_frames, height=size, width=size, path=path)
        sequences.append(
            GroundTruthSequence(
                f"synth-{seed}-{path}-{num_frames}", seq.images, seq.world_from_cam, seq.depth, seq.intrinsics
            )
        )
    return sequences


def evaluate_model(model: torch.nn.Module, sequence: GroundTruthSequence) -> dict[str, float | str]:
    from spark3r_stream.models import predict

    images = torch.from_numpy(sequence.images).permute(0, 3, 1, 2).float() / 255.0
    prediction = predict(model, images)
    row = evaluate_sequence(
        sequence.name,
        gt_world_from_cam=sequence.world_from_cam,
        est_world_from_cam=prediction.world_from_cam,
        gt_depth=sequence.depth,
        est_depth=None if sequence.depth is None else prediction.depth,
        depth_valid=None if sequence.depth is None else sequence.depth > 0,
        depth_alignments=("median", "scale_shift"),
    )
    row["method"] = prediction.model
    row["forward_ms"] = prediction.timings_ms["forward"]
    return row


def held_out_pair_errors(
    model: torch.nn.Module, num_pairs: int = 160, first_seed: int = HELD_OUT_SEED_START + 500
) -> dict[str, float]:
    """Two-view pose probe on held-out pairs with clearly visible motion (the training curriculum's first stage).

    Each pair: two frames 2-4 apart on a handheld path turning 2-8° per frame, in random order. Scores the relative
    rotation error next to the identity guess (the true relative angle) and the angle between the predicted and true
    translation directions (a guess that ignores the images scores ~90°). Fast enough to run on every checkpoint.
    """
    from spark3r_stream.models import predict
    from spark3r_stream.report import progress
    from spark3r_stream.synth import render_sequence

    rng = np.random.default_rng(0)
    size = model.config.img_size
    rotation, identity, direction = [], [], []
    for seed in progress(range(first_seed, first_seed + num_pairs), desc="pair probe"):
        seq = render_sequence(seed, 14, height=size, width=size, step_m=0.12, turn_deg=float(rng.uniform(2, 8)))
        gap = int(rng.integers(2, 5))
        first = int(rng.integers(0, seq.num_frames - gap))
        frames = [first, first + gap][:: 1 if rng.random() < 0.5 else -1]
        images = torch.from_numpy(seq.images[frames]).permute(0, 3, 1, 2).float() / 255.0
        est, gt = predict(model, images).world_from_cam, seq.world_from_cam[frames]
        rotation.append(relative_rotation_errors_deg(est, gt)[0])
        identity.append(relative_rotation_errors_deg(np.tile(np.eye(4), (2, 1, 1)), gt)[0])
        # frame 1's centre seen from frame 0: the translation direction, free of the unknown scale
        est_t = (np.linalg.inv(est[0]) @ est[1])[:3, 3]
        gt_t = (np.linalg.inv(gt[0]) @ gt[1])[:3, 3]
        cosine = est_t @ gt_t / max(np.linalg.norm(est_t) * np.linalg.norm(gt_t), 1e-12)
        direction.append(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))
    return {
        "pairs": num_pairs,
        "rotation_error_deg": float(np.mean(rotation)),
        "identity_rotation_error_deg": float(np.mean(identity)),
        "translation_direction_error_deg": float(np.mean(direction)),
    }


def static_trajectory_metrics(gt_world_from_cam: np.ndarray) -> dict[str, float]:
    """Metrics of a predictor that never moves: the best Sim(3) fit collapses it onto the mean camera centre."""
    ate = constant_trajectory_ate(gt_world_from_cam)
    identity = np.tile(np.eye(4), (len(gt_world_from_cam), 1, 1))
    extent = trajectory_extent(gt_world_from_cam)
    return {
        "ate_rmse_m": ate,
        "ate_over_extent": ate / extent if extent > 0 else float("nan"),
        "mean_relative_rotation_error_deg": float(relative_rotation_errors_deg(identity, gt_world_from_cam).mean()),
    }


def constant_velocity_trajectory(gt_world_from_cam: np.ndarray) -> np.ndarray:
    """Camera-to-world poses that repeat the ground truth's first frame-to-frame motion from the first pose."""
    step = np.linalg.inv(gt_world_from_cam[0]) @ gt_world_from_cam[1]
    poses = [gt_world_from_cam[0]]
    for _ in range(len(gt_world_from_cam) - 1):
        poses.append(poses[-1] @ step)
    return np.stack(poses)


def baseline_rows(sequence: GroundTruthSequence) -> list[dict[str, float | str]]:
    gt = sequence.world_from_cam
    rows: list[dict[str, float | str]] = [
        {"sequence": sequence.name, "method": "identity", **static_trajectory_metrics(gt)},
        {
            "sequence": sequence.name,
            "method": "constant-velocity",
            **trajectory_metrics(constant_velocity_trajectory(gt), gt),
        },
    ]
    if sequence.depth is not None:
        valid = sequence.depth > 0
        constant = np.ones_like(sequence.depth)
        row: dict[str, float | str] = {"sequence": sequence.name, "method": "constant-depth"}
        for protocol in ("median", "scale_shift"):
            metrics = depth_metrics(constant, sequence.depth, valid, alignment=protocol)
            row[f"depth_abs_rel_{protocol}"] = metrics["abs_rel"]
            row[f"depth_delta_1_25_{protocol}"] = metrics["delta_1_25"]
        rows.append(row)
    return rows


QUALITY_COLUMNS = (
    "sequence",
    "method",
    "ate_rmse_m",
    "ate_over_extent",
    "mean_relative_rotation_error_deg",
    "rpe_rot_rmse_deg",
    "depth_abs_rel_median",
    "depth_delta_1_25_median",
    "depth_abs_rel_scale_shift",
)


def summarize(rows: list[dict[str, float | str]]) -> list[dict[str, float | str]]:
    """Mean of every numeric column per method (over sequences)."""
    methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    summary = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        out: dict[str, float | str] = {"sequence": f"mean of {len(mine)}", "method": method}
        for column in QUALITY_COLUMNS[2:]:
            values = [float(r[column]) for r in mine if column in r and np.isfinite(float(r[column]))]
            if values:
                out[column] = float(np.mean(values))
        summary.append(out)
    return summary


SYNTH_EVAL_KEYS: dict[str, type] = {"seed": int, "frames": int, "path": str}  # of `synth:key=value,...`


def synth_eval_args(spec: str) -> dict[str, Any]:
    """`synth:seed=N,frames=S,path=P` -> {seed, frames, path}; ConfigError for an unknown key or a non-integer."""
    import difflib

    from spark3r_stream.errors import ConfigError

    args: dict[str, Any] = {}
    for item in filter(None, spec[len("synth:") :].split(",")):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep:
            raise ConfigError(f"eval sequence {spec!r}: expected key=value items, got {item!r}")
        if key not in SYNTH_EVAL_KEYS:
            near = difflib.get_close_matches(key, SYNTH_EVAL_KEYS, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"expected {', '.join(SYNTH_EVAL_KEYS)}"
            raise ConfigError(f"eval sequence {spec!r}: unknown key {key!r}; {hint}")
        if SYNTH_EVAL_KEYS[key] is int:
            try:
                args[key] = int(value)
            except ValueError:
                raise ConfigError(f"eval sequence {spec!r}: {key} must be an integer, got {value!r}") from None
        else:
            args[key] = value
    return args


def load_sequence(spec: str, input_size: int, max_frames: int | None = None) -> GroundTruthSequence:
    """A sequence to evaluate: `synth:seed=N,frames=S[,path=P]` (rendered with depth) or any source spec/folder
    with ground-truth poses (TUM RGB-D, EuRoC, 7-Scenes); a TUM-style folder with depth.txt adds its depth maps."""
    from spark3r_stream.errors import SourceError
    from spark3r_stream.models.preprocess import load_and_preprocess_images, preprocess_depth
    from spark3r_stream.sources import open_source, parse_spec
    from spark3r_stream.sources.tum import read_tum_depth

    if spec.startswith("synth:"):
        from spark3r_stream.synth import render_sequence

        args = synth_eval_args(spec)
        seed, frames = args.get("seed", HELD_OUT_SEED_START), args.get("frames", 16)
        path = args.get("path", "handheld")
        seq = render_sequence(seed, frames, height=input_size, width=input_size, path=path)
        return GroundTruthSequence(
            f"synth-{seed}-{path}-{frames}", seq.images, seq.world_from_cam, seq.depth, seq.intrinsics
        )
    source = open_source(spec, stop=max_frames)
    try:
        frames = list(source)
    finally:
        source.close()
    with_pose = [f for f in frames if f.world_from_cam is not None]
    if len(with_pose) < 2:
        raise SourceError(f"sequence {spec}: {len(with_pose)} of {len(frames)} frames have a ground-truth pose; need 2")
    if len(with_pose) < len(frames):  # e.g. EuRoC, whose ground truth starts after the images
        log.info(
            "sequence %s: scoring the %d of %d frames that have a ground-truth pose", spec, len(with_pose), len(frames)
        )
    frames = with_pose
    poses = [f.world_from_cam for f in frames]
    images = load_and_preprocess_images([f.image for f in frames], target_size=input_size)
    images_u8 = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    kind, target, _ = parse_spec(spec)
    depth = read_tum_depth(target, np.array([f.t_capture for f in frames])) if kind == "tum" else None
    if depth is not None:
        depth = preprocess_depth(depth, input_size)
    return GroundTruthSequence(str(spec), images_u8, np.stack(poses), depth, None)
