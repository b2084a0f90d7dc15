"""The back end's effect: the same runs with fusion's local refinement off (network poses chained by Sim(3)) and on
(each window bundle-adjusted against the keyframes' feature tracks), next to the constant-trajectory baseline.

Runs the single-process pipeline (stream/pipeline.py: the nodes' steps) on the demo, a synthetic orbit, a synthetic
1,000-frame loop that returns to its start, and the real RGB-D fragments in ../shared/data. ATE is Sim(3)-aligned over
every frame; the loop's end-to-start gap is the distance between the first and last estimated camera after that
alignment (its ground truth is ~0). Loop closure and the pose graph are not built yet (issue 14).

    python -m benchmarks.bench_backend [--data ../shared/data] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.bench_attention import header, table, write_results

REAL = ("sun3d_studyroom_frag1_f0935-0984", "sun3d_studyroom_frag2_f3160-3209")


def end_to_start_gap(trajectory: Path, groundtruth: Path) -> tuple[float, float]:
    """(estimated, true) distance between the first and last camera centre, the estimate Sim(3)-aligned to the truth."""
    from spark3r_stream.eval.trajectory import align_trajectory, associate, read_tum

    est_t, est = read_tum(trajectory)
    gt_t, gt = read_tum(groundtruth)
    i, j = associate(est_t, gt_t, max_difference_s=0.02)
    gt_from_est = align_trajectory(est[i], gt[j])
    centres = est[i][:, :3, 3] @ gt_from_est[:3, :3].T + gt_from_est[:3, 3]
    true = gt[j][:, :3, 3]
    return float(np.linalg.norm(centres[-1] - centres[0])), float(np.linalg.norm(true[-1] - true[0]))


def run(launch: str, overrides: list[str], refine: bool) -> dict:
    from spark3r_stream.launcher import run_single_process

    with tempfile.TemporaryDirectory(prefix="bench_backend-") as out:
        code = run_single_process(launch, out, [*overrides, f"fusion.backend.refine={str(refine).lower()}"])
        report = json.loads((Path(out) / "report.json").read_text())
        gap, true_gap = end_to_start_gap(Path(out) / "trajectory.tum", Path(out) / "groundtruth.tum")
    if code != 0:
        raise RuntimeError(f"{launch} {overrides}: exit code {code}")
    ate = report["trajectory"]["all_frames"]
    runs = (report.get("backend") or {}).get("runs", [])
    applied = [r for r in runs if r["applied"]]
    stages = report.get("stages", {})
    return {
        "ate_rmse_m": ate["ate_rmse_m"],
        "ate_over_extent": ate["ate_over_extent"],
        "ate_constant_baseline_m": ate["ate_constant_baseline_m"],
        "rpe_rot_rmse_deg": ate.get("rpe_rot_rmse_deg", float("nan")),
        "end_to_start_m": gap,
        "true_end_to_start_m": true_gap,
        "windows": report["windows"]["count"],
        "refined": f"{len(applied)}/{len(runs)}" if refine else "–",
        "reprojection_px": (
            f"{sum(r['error_before_px'] for r in applied) / len(applied):.2f} → "
            f"{sum(r['error_after_px'] for r in applied) / len(applied):.2f}"
            if applied
            else "–"
        ),
        "fuse_ms_per_window": stages.get("fuse_window", {}).get("mean_ms", float("nan")),
        "reconstruct_ms_per_window": stages.get("reconstruct_window", {}).get("mean_ms", float("nan")),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="bench_backend", description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data", help="folder holding the real TUM-style fragments")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: 30 demo frames, no result files")
    args = parser.parse_args(argv)
    cases = [("demo", "demo", ["capture.frames=30"] if args.quick else [])]
    if not args.quick:
        cases += [
            ("orbit, 300 frames", "demo", ["capture.path=orbit", "capture.frames=300", "capture.seed=3"]),
            ("loop, 1,000 frames", "demo", ["capture.path=loop", "capture.frames=1000", "capture.seed=4"]),
        ]
        cases += [(name, "replay_tum", [f"capture.path={Path(args.data) / name}"]) for name in REAL]
    rows = []
    for name, launch, overrides in cases:
        for refine in (False, True):
            row = {"sequence": name, "back end": "refinement" if refine else "network poses + Sim(3) chain"}
            rows.append(row | run(launch, overrides, refine))
            print(json.dumps(rows[-1]), flush=True)
    markdown = (
        "Single-process pipeline (the nodes' steps), shipped vggt-tiny, Spark3R on. ATE Sim(3)-aligned over every "
        "frame, next to a constant trajectory's; reprojection error = median over a window's track observations, "
        "mean over windows, before → after the bundle adjustment. Times are per window on this machine.\n\n"
        + table(
            rows,
            [
                ("sequence", "sequence"),
                ("back end", "back end"),
                ("ate_rmse_m", "ATE (m)"),
                ("ate_over_extent", "ATE / extent"),
                ("ate_constant_baseline_m", "constant trajectory (m)"),
                ("rpe_rot_rmse_deg", "RPE rot (°)"),
                ("end_to_start_m", "end-to-start (m)"),
                ("true_end_to_start_m", "true end-to-start (m)"),
                ("windows", "windows"),
                ("refined", "windows refined"),
                ("reprojection_px", "reprojection (px)"),
                ("fuse_ms_per_window", "fusion ms / window"),
                ("reconstruct_ms_per_window", "reconstruction ms / window"),
            ],
        )
    )
    if not args.quick:
        write_results("bench_backend", header("bench_backend", argv), markdown, {"rows": rows})
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
