"""Fidelity of Spark3R against the dense model on the same inputs, for the factor sweeps of the paper's
Tables IV (Q-only, r_KV = 1) and V (KV-only, r_Q = 1), uniform over the global layers (l = 1), plus the paper
schedule: pose and depth differences to the dense prediction.

Model: the VGGT architecture at the official-fixture size with the fixture's RANDOM-VALUED weights (no trained
small model yet), so these numbers measure how far the reduction moves the network's outputs, not accuracy.

    python -m benchmarks.bench_fidelity [--frames 256] [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from benchmarks.bench_attention import header, table, write_results

Q_ONLY = (1, 2, 3, 4, 8, 12, 16)  # paper Table IV
KV_ONLY = (1, 2, 4, 8, 16, 32)  # paper Table V


def differences(pred, dense) -> dict[str, float]:
    """Pose (Sim(3)-aligned trajectory of the prediction onto the dense one) and depth differences to dense."""
    from spark3r_stream.eval.depth import abs_rel, delta_accuracy
    from spark3r_stream.eval.trajectory import trajectory_metrics
    from spark3r_stream.geometry import rotation_angle_deg

    pose = trajectory_metrics(pred.world_from_cam, dense.world_from_cam)
    rel_rot = np.swapaxes(dense.world_from_cam[:, :3, :3], 1, 2) @ pred.world_from_cam[:, :3, :3]
    d_pred, d_dense = pred.depth.reshape(-1), dense.depth.reshape(-1)
    return {
        "ate_vs_dense": pose["ate_rmse_m"],
        "ate_over_extent": pose["ate_over_extent"],
        "rpe_t_vs_dense": pose.get("rpe_trans_rmse_m", float("nan")),
        "rpe_r_vs_dense_deg": pose.get("rpe_rot_rmse_deg", float("nan")),
        "rot_diff_deg": float(np.median(rotation_angle_deg(rel_rot))),
        "depth_absrel_vs_dense": abs_rel(d_pred, d_dense),
        "depth_delta125_vs_dense": delta_accuracy(d_pred, d_dense),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="bench_fidelity", description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=256, help="sequence length (paper ablations: 256)")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--seed", type=int, default=0, help="synthetic scene")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="CI smoke run: 24 frames, 3 settings, no result files")
    args = parser.parse_args(argv)

    from benchmarks.bench_backbone import build_bench_model
    from spark3r_stream.models import predict
    from spark3r_stream.spark3r import Spark3RConfig, accelerate, disable
    from spark3r_stream.spark3r.merge import similarity_dtype
    from spark3r_stream.synth import render_sequence

    torch.set_num_threads(args.threads)
    frames = 24 if args.quick else args.frames
    seq = render_sequence(args.seed, frames, height=args.size, width=args.size)
    images = torch.from_numpy(seq.images).permute(0, 3, 1, 2).float() / 255.0
    model = build_bench_model()
    settings = [("dense", None)]
    settings += [(f"Q-only r_Q={r}", Spark3RConfig(r_q=r, r_kv=1, layer_multiplier=1)) for r in Q_ONLY[1:]]
    settings += [(f"KV-only r_KV={r}", Spark3RConfig(r_q=1, r_kv=r, layer_multiplier=1)) for r in KV_ONLY[1:]]
    if similarity_dtype("auto", torch.device("cpu")) is not None:  # this CPU matches in bf16: float32 beside it
        settings += [("paper schedule, float32 matching", Spark3RConfig(similarity_dtype="float32"))]
    settings += [("paper schedule (Eqs. 4-5, l=3)", Spark3RConfig())]
    if args.quick:
        settings = settings[:2] + settings[-1:]
    rows, dense = [], None
    for name, config in settings:
        disable(model) if config is None else accelerate(model, config)
        start = time.perf_counter()
        pred = predict(model, images)
        elapsed = time.perf_counter() - start
        dense = dense or pred
        plan = model.__dict__.get("last_reduction_plan")
        row = {"setting": name, "time_s": elapsed, **differences(pred, dense)}
        if plan is not None:
            row["queries_pct"] = 100 * plan["layers"][0]["num_queries"] / plan["layers"][0]["num_tokens"]
            row["keys_pct"] = 100 * np.mean([lp["num_keys"] / lp["num_tokens"] for lp in plan["layers"]])
        rows.append(row)
        print(json.dumps(row), flush=True)
    columns = [
        ("setting", "setting"),
        ("queries_pct", "queries kept (%)"),
        ("keys_pct", "keys kept, mean (%)"),
        ("time_s", "forward (s)"),
        ("ate_vs_dense", "ATE vs dense"),
        ("ate_over_extent", "ATE / dense extent"),
        ("rpe_t_vs_dense", "RPE-t vs dense"),
        ("rpe_r_vs_dense_deg", "RPE-r vs dense (°)"),
        ("rot_diff_deg", "median rotation diff (°)"),
        ("depth_absrel_vs_dense", "depth AbsRel vs dense"),
        ("depth_delta125_vs_dense", "depth δ<1.25 vs dense"),
    ]
    markdown = (
        "**Random weights**: the official-fixture VGGT architecture (width 48, 4+4 blocks) with its random-valued "
        "weights, not a trained model — these are differences to the dense output on the same input, not accuracy; "
        "rerun with the trained small model once it lands.\n"
        f"Input: synthetic scene seed {args.seed}, {frames} frames, {args.size}×{args.size}, float32, one forward "
        "per setting (time is indicative only). Pose: the prediction's trajectory Sim(3)-aligned onto the dense "
        "one (ATE, RPE, model units). Sweeps as the paper's Tables IV/V: uniform factors in all global layers "
        '(l = 1). Query matching as `Spark3RConfig.similarity_dtype` "auto" (bf16 similarity on CPUs with native bf16; '
        "the float32-matching row beside it where that applies).\n\n" + table(rows, columns)
    )
    if not args.quick:
        write_results("bench_fidelity", header("bench_fidelity", argv), markdown, {"rows": rows})
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
