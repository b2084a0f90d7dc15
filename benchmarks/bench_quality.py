"""Quality of the shipped `vggt-tiny` on held-out synthetic sequences, against ground truth: the model card's tables.

1. Held-out quality: the two-view pair probe (160 pairs), and 16- and 64-frame handheld and orbit sequences (seeds
   >= 900,000, never rendered in training) next to the trivial baselines (identity cameras, constant velocity,
   constant depth).
2. Longer inputs, dense vs Spark3R (paper schedule): ATE / extent and depth AbsRel against ground truth and their
   relative change — the fidelity table of the Spark3R issue on a trained model.
3. Which side is sensitive: Q-only and KV-only sweeps (paper Tables IV / V, uniform factors) against ground truth.

    python -m benchmarks.bench_quality [--sequences 16] [--frames 128 256 512 1000] [--sweep-frames 256] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from benchmarks.bench_attention import header, table, write_results
from benchmarks.bench_fidelity import KV_ONLY, Q_ONLY

SCORE_COLUMNS = [
    ("ate_over_extent", "ATE / extent"),
    ("mean_relative_rotation_error_deg", "mean relative rotation error (°)"),
    ("depth_abs_rel_median", "depth AbsRel (median)"),
    ("depth_delta_1_25_median", "δ<1.25 (median)"),
    ("depth_abs_rel_scale_shift", "depth AbsRel (scale+shift)"),
]


PATHS = ("handheld", "orbit")


def held_out_table(model, num_sequences: int, num_frames: int) -> list[dict]:
    """Per camera path and over both: the model's means next to the baselines' (`num_sequences` per path)."""
    from spark3r_stream.eval.model_eval import baseline_rows, evaluate_model, held_out_sequences, summarize
    from spark3r_stream.report import progress

    by_path = {}
    for path in PATHS:
        rows = []
        sequences = held_out_sequences(num_sequences, num_frames, size=model.config.img_size, path=path)
        for sequence in progress(sequences, desc=f"{num_frames} frames, {path}"):
            rows += [evaluate_model(model, sequence), *baseline_rows(sequence)]
        by_path[path] = rows
    every = [row for rows in by_path.values() for row in rows]
    return [
        {"frames": num_frames, "path": path, **row}
        for path, rows in (*by_path.items(), (" + ".join(PATHS), every))
        for row in summarize(rows)
    ]


def scored_settings(model, sequence, settings) -> list[dict]:
    """Each (name, Spark3RConfig | None) on `sequence`, scored against its ground truth."""
    from spark3r_stream.eval.model_eval import evaluate_model
    from spark3r_stream.spark3r import accelerate, disable

    rows = []
    for name, config in settings:
        disable(model) if config is None else accelerate(model, config)
        start = time.perf_counter()
        row = evaluate_model(model, sequence)
        rows.append({"setting": name, "frames": len(sequence.images), "time_s": time.perf_counter() - start, **row})
        print(json.dumps({k: v for k, v in rows[-1].items() if k in dict(SCORE_COLUMNS) or k == "setting"}))
    disable(model)
    return rows


def relative_change(rows: list[dict]) -> list[dict]:
    """Per sequence length: dense, Spark3R and Spark3R's change relative to dense (%)."""
    out = []
    for frames in dict.fromkeys(r["frames"] for r in rows):
        dense, fast = (next(r for r in rows if r["frames"] == frames and r["setting"] == s) for s in ("dense", "paper"))
        row = {"frames": frames, "speedup": dense["time_s"] / fast["time_s"]}
        for key in ("ate_over_extent", "depth_abs_rel_median"):
            row[f"{key}_dense"], row[f"{key}_spark3r"] = dense[key], fast[key]
            row[f"{key}_change_pct"] = 100 * (fast[key] - dense[key]) / dense[key]
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="bench_quality", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vggt-tiny")
    parser.add_argument("--sequences", type=int, default=16, help="held-out sequences per length and camera path")
    parser.add_argument("--frames", type=int, nargs="+", default=[128, 256, 512, 1000])
    parser.add_argument("--sweep-frames", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="CI smoke run: short sequences, no result files")
    args = parser.parse_args(argv)
    if args.quick:
        args.sequences, args.frames, args.sweep_frames = 1, [12], 12

    from spark3r_stream.eval.model_eval import HELD_OUT_SEED_START, held_out_pair_errors, held_out_sequences
    from spark3r_stream.models import build_model
    from spark3r_stream.spark3r import Spark3RConfig

    torch.set_num_threads(args.threads)
    model = build_model(args.model).eval()
    held_out = [row for n in ((4, 8) if args.quick else (16, 64)) for row in held_out_table(model, args.sequences, n)]
    pairs = held_out_pair_errors(model, num_pairs=4 if args.quick else 160)
    pairs["rotation_vs_identity"] = pairs["rotation_error_deg"] / pairs["identity_rotation_error_deg"]

    long_rows = []
    for frames in args.frames:
        (sequence,) = held_out_sequences(1, frames, size=model.config.img_size, first_seed=HELD_OUT_SEED_START + 500)
        long_rows += scored_settings(model, sequence, [("dense", None), ("paper", Spark3RConfig())])
    (sweep_sequence,) = held_out_sequences(
        1, args.sweep_frames, size=model.config.img_size, first_seed=HELD_OUT_SEED_START + 600
    )
    sweep = [("dense", None)]
    sweep += [(f"Q-only r_Q={r}", Spark3RConfig(r_q=r, r_kv=1, layer_multiplier=1)) for r in Q_ONLY[1:]]
    sweep += [(f"KV-only r_KV={r}", Spark3RConfig(r_q=1, r_kv=r, layer_multiplier=1)) for r in KV_ONLY[1:]]
    sweep_rows = scored_settings(model, sweep_sequence, sweep[:3] if args.quick else sweep)

    markdown = (
        f"Model `{args.model}` (shipped weights), {model.config.img_size}×{model.config.img_size} input, float32, "
        f"{args.threads} threads. Held-out sequences (seeds ≥ {HELD_OUT_SEED_START}, never rendered in "
        "training). Trajectories Sim(3)-aligned to ground truth; depth median-scaled per frame (and scale+shift per "
        "sequence).\n\n## Held-out pairs (two views 2-4 frames apart on 2-8°/frame handheld paths)\n\n"
        + table(
            [pairs],
            [
                ("pairs", "pairs"),
                ("rotation_error_deg", "rotation error (°)"),
                ("identity_rotation_error_deg", "identity (°)"),
                ("rotation_vs_identity", "rotation ÷ identity"),
                ("translation_direction_error_deg", "translation direction error (°, chance 90)"),
            ],
        )
        + f"\n\n## Held-out quality (mean over {args.sequences} sequences per camera path)\n\n"
        + table(held_out, [("frames", "frames"), ("path", "path"), ("method", "method"), *SCORE_COLUMNS])
        + "\n\n## Longer inputs: dense vs Spark3R (paper schedule), against ground truth\n\n"
        + table(
            relative_change(long_rows),
            [
                ("frames", "frames"),
                ("ate_over_extent_dense", "ATE/extent dense"),
                ("ate_over_extent_spark3r", "ATE/extent Spark3R"),
                ("ate_over_extent_change_pct", "ATE change (%)"),
                ("depth_abs_rel_median_dense", "AbsRel dense"),
                ("depth_abs_rel_median_spark3r", "AbsRel Spark3R"),
                ("depth_abs_rel_median_change_pct", "AbsRel change (%)"),
                ("speedup", "speedup (×, e2e, indicative)"),
            ],
        )
        + f"\n\n## Q-only and KV-only sweeps ({args.sweep_frames} frames, uniform factors), against ground truth\n\n"
        + table(sweep_rows, [("setting", "setting"), *SCORE_COLUMNS, ("time_s", "time (s)")])
    )
    if not args.quick:
        data = {"pairs": pairs, "held_out": held_out, "long": long_rows, "sweep": sweep_rows}
        write_results("bench_quality", header("bench_quality", argv), markdown, json.loads(json.dumps(data)))
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
