"""Layer-sensitivity probe (§3.6): which global layers need the base r_KV, measured on sequences with GT poses.

All global layers at r_KV = 32, then each layer alone at 256; a layer is sensitive when ATE, RPE-t or RPE-r
degrades by more than 1.05x against the all-32 run. The result is a schedule file `Spark3RConfig(probe_file=)`
accepts.

    spark3r probe --model vggt-tiny [--weights PATH] [--out schedule.json] synth:0:300 synth:1:300
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spark3r_stream.errors import InputError, Spark3RError
from spark3r_stream.models.targets import SCHEDULE_FORMAT
from spark3r_stream.spark3r.accelerate import accelerate, disable
from spark3r_stream.spark3r.plan import Spark3RConfig

log = logging.getLogger(__name__)
METRICS = {"ate": "ate_rmse_m", "rpe_t": "rpe_trans_rmse_m", "rpe_r": "rpe_rot_rmse_deg"}


@dataclass(frozen=True)
class ProbeSequence:
    """Images at model resolution with ground-truth camera-to-world poses."""

    name: str
    images: torch.Tensor  # [S, 3, H, W] in [0, 1]
    world_from_cam: np.ndarray  # [S, 4, 4]


def synthetic_sequence(seed: int, num_frames: int, height: int, width: int) -> ProbeSequence:
    """A procedural scene (`spark3r_stream.synth`) rendered at the model's input size."""
    from spark3r_stream.synth import render_sequence

    seq = render_sequence(seed, num_frames, height=height, width=width)
    images = torch.from_numpy(seq.images).permute(0, 3, 1, 2).float() / 255.0
    return ProbeSequence(f"synth:{seed}:{num_frames}", images, seq.world_from_cam)


def _pose_errors(model: nn.Module, sequences: Sequence[ProbeSequence]) -> dict[str, float]:
    from spark3r_stream.eval.trajectory import trajectory_metrics
    from spark3r_stream.models import predict

    totals = dict.fromkeys(METRICS, 0.0)
    for seq in sequences:
        metrics = trajectory_metrics(predict(model, seq.images).world_from_cam, seq.world_from_cam)
        for key, name in METRICS.items():
            totals[key] += metrics[name] / len(sequences)
    return totals


def run_probe(
    model: nn.Module,
    sequences: Iterable[ProbeSequence],
    *,
    base_r_kv: int = 32,
    probe_r_kv: int = 256,
    threshold: float = 1.05,
    model_name: str | None = None,
) -> dict[str, Any]:
    """The paper's probe on `model` (left dense afterwards). Returns the schedule (JSON-able dict).

    Metrics are averaged over the sequences before the ratio probe / all-`base_r_kv` is taken.
    """
    sequences = list(sequences)
    if not sequences:
        raise InputError("spark3r probe: no sequences given")
    short = [s.name for s in sequences if len(s.images) <= base_r_kv]
    if short:
        log.warning("probe sequences %s have <= %d frames: r_KV %d keeps frame 0 only", short, base_r_kv, base_r_kv)
    base_config = Spark3RConfig(r_q=1, r_kv=base_r_kv, layer_multiplier=1)
    try:
        accelerate(model, base_config)
        num_layers = len(model.spark3r_targets.global_attention)
        base = _pose_errors(model, sequences)
        layers = []
        for layer in range(num_layers):
            accelerate(
                model, Spark3RConfig(r_q=1, r_kv=base_r_kv, layer_multiplier=1, r_kv_overrides={layer: probe_r_kv})
            )
            errors = _pose_errors(model, sequences)
            ratios = {f"{k}_ratio": errors[k] / max(base[k], 1e-12) for k in METRICS}
            sensitive = any(r > threshold for r in ratios.values())
            layers.append({"layer": layer, **ratios, "sensitive": sensitive})
            log.info("probe layer %d/%d: %s", layer + 1, num_layers, ratios)
    finally:
        disable(model)
    return {
        "format": SCHEDULE_FORMAT,
        "version": 1,
        "model": model_name or getattr(getattr(model, "spec", None), "name", type(model).__name__),
        "num_layers": num_layers,
        "sensitive_layers": [entry["layer"] for entry in layers if entry["sensitive"]],
        "threshold": threshold,
        "base_r_kv": base_r_kv,
        "probe_r_kv": probe_r_kv,
        "base_errors": base,
        "layers": layers,
        "sequences": [{"name": s.name, "num_frames": len(s.images)} for s in sequences],
    }


def write_schedule(schedule: dict[str, Any], path: str | Path) -> Path:
    """Write a probe schedule as JSON (what `Spark3RConfig(probe_file=path)` reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(schedule, indent=1) + "\n")
    return path


def parse_sequence_spec(spec: str, height: int, width: int) -> ProbeSequence:
    """`synth:SEED:FRAMES` -> a rendered synthetic sequence."""
    parts = spec.split(":")
    if len(parts) != 3 or parts[0] != "synth" or not (parts[1].isdigit() and parts[2].isdigit()):
        raise InputError(f"probe sequence {spec!r}: expected synth:SEED:FRAMES (e.g. synth:0:300)")
    return synthetic_sequence(int(parts[1]), int(parts[2]), height, width)


def main(argv: list[str] | None = None) -> int:
    """`spark3r probe --model NAME [--weights PATH] SEQUENCE...`; exit 0 ok, 2 bad usage or input."""
    parser = argparse.ArgumentParser(prog="spark3r probe", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="preset name, e.g. vggt-tiny")
    parser.add_argument("--weights", default=None, help="checkpoint (default: the preset's shipped weights)")
    parser.add_argument("--out", default="spark3r_schedule.json")
    parser.add_argument("--base-r-kv", type=int, default=32)
    parser.add_argument("--probe-r-kv", type=int, default=256)
    parser.add_argument("--threshold", type=float, default=1.05)
    parser.add_argument("--size", type=int, default=None, help="square render size (default: the preset's)")
    parser.add_argument("sequences", nargs="+", metavar="SEQUENCE", help="synth:SEED:FRAMES")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from spark3r_stream.models import load_model

    try:
        model = load_model(args.model, weights=args.weights)
        patch = model.config.patch_size
        size = (args.size or model.spec.input_size) // patch * patch
        sequences = [parse_sequence_spec(spec, size, size) for spec in args.sequences]
        schedule = run_probe(
            model,
            sequences,
            base_r_kv=args.base_r_kv,
            probe_r_kv=args.probe_r_kv,
            threshold=args.threshold,
            model_name=args.model,
        )
    except Spark3RError as error:
        print(f"spark3r probe: {error}", file=sys.stderr)
        return 2
    path = write_schedule(schedule, args.out)
    print(f"sensitive global layers {schedule['sensitive_layers']} of {schedule['num_layers']}; wrote {path}")
    return 0
