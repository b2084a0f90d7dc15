"""The back end's effect: the same runs with network poses chained by Sim(3) only, with each window bundle-adjusted
against the keyframes' feature tracks, and with loop closure and the keyframe pose graph on top, next to the
constant-trajectory baseline.

Runs the single-process pipeline (stream/pipeline.py: the nodes' steps) on the demo, a synthetic orbit, a forward walk
(no revisit: any loop closure there is false), a synthetic 1,000-frame loop that returns to its start, and the real
RGB-D fragments in ../shared/data. ATE is Sim(3)-aligned over every frame; the end-to-start gap is the distance between
the first and last estimated camera after that alignment (the loop's true gap is one 1.5 cm step). Loop closures are
judged against the ground truth (stream/backend.py: relative rotation within 5°, direction within 30°). A top view of
each sequence's trajectories goes to results/bench_backend/<sequence>.png.

    python -m benchmarks.bench_backend [--data ../shared/data] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.bench_attention import RESULTS, header, table, write_results

REAL = ("sun3d_studyroom_frag1_f0935-0984", "sun3d_studyroom_frag2_f3160-3209")
VARIANTS = {  # row label -> fusion.backend overrides
    "network poses + Sim(3) chain": ["fusion.backend.refine=false", "fusion.backend.loop_closure=false"],
    "+ refinement": ["fusion.backend.refine=true", "fusion.backend.loop_closure=false"],
    "+ loop closure (pose graph)": ["fusion.backend.refine=true", "fusion.backend.loop_closure=true"],
}


def aligned_centres(trajectory: Path, groundtruth: Path) -> dict[str, np.ndarray]:
    """{"estimate": [F, 3] camera centres Sim(3)-aligned to the truth, "truth": [F, 3]} of the associated frames."""
    from spark3r_stream.eval.trajectory import align_trajectory, associate, read_tum

    est_t, est = read_tum(trajectory)
    gt_t, gt = read_tum(groundtruth)
    i, j = associate(est_t, gt_t, max_difference_s=0.02)
    gt_from_est = align_trajectory(est[i], gt[j])
    return {"estimate": est[i][:, :3, 3] @ gt_from_est[:3, :3].T + gt_from_est[:3, 3], "truth": gt[j][:, :3, 3]}


def end_to_start_gap(centres: np.ndarray) -> float:
    """Distance between the first and last camera centre."""
    return float(np.linalg.norm(centres[-1] - centres[0]))


def run(launch: str, overrides: list[str]) -> tuple[dict, dict[str, np.ndarray]]:
    """(the row's figures, {"estimate": [F, 3], "truth": [F, 3]} camera centres, the estimate Sim(3)-aligned)."""
    from spark3r_stream.launcher import run_single_process

    with tempfile.TemporaryDirectory(prefix="bench_backend-") as out:
        code = run_single_process(launch, out, overrides)
        if code != 0:
            raise RuntimeError(f"{launch} {overrides}: exit code {code}")
        report = json.loads((Path(out) / "report.json").read_text())
        centres = aligned_centres(Path(out) / "trajectory.tum", Path(out) / "groundtruth.tum")
    ate = report["trajectory"]["all_frames"]
    backend = report.get("backend") or {}
    runs = backend.get("runs", [])
    applied = [r for r in runs if r["applied"]]
    loops = backend.get("loop_closure")
    stages = report.get("stages", {})
    fuse = stages.get("fuse_window", {})
    row = {
        "ate_rmse_m": ate["ate_rmse_m"],
        "ate_over_extent": ate["ate_over_extent"],
        "ate_constant_baseline_m": ate["ate_constant_baseline_m"],
        "rpe_rot_rmse_deg": ate.get("rpe_rot_rmse_deg", float("nan")),
        "end_to_start_m": end_to_start_gap(centres["estimate"]),
        "true_end_to_start_m": end_to_start_gap(centres["truth"]),
        "windows": report["windows"]["count"],
        "keyframes": report["keyframes"]["posed"],
        "refined": f"{len(applied)}/{len(runs)}" if runs else "–",
        "reprojection_px": (
            f"{sum(r['error_before_px'] for r in applied) / len(applied):.2f} → "
            f"{sum(r['error_after_px'] for r in applied) / len(applied):.2f}"
            if applied
            else "–"
        ),
        "loops": f"{loops['accepted']} / {loops['true']} / {loops['false']}" if loops else "–",
        "backend_failures": len(backend.get("failures", [])),
        "fuse_ms_per_window": fuse.get("mean_ms", float("nan")),
        "backend_ms_per_window": backend.get("ms_per_window", {}).get("total", float("nan")),
        "fuse_ms_per_keyframe": 1000 * fuse.get("total_s", float("nan")) / max(report["keyframes"]["posed"], 1),
        "reconstruct_ms_per_window": stages.get("reconstruct_window", {}).get("mean_ms", float("nan")),
    }
    return row, centres


def plot(name: str, trajectories: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    """Top view (x, y) of the ground truth and each variant's Sim(3)-aligned camera centres."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 5))
    truth = next(iter(trajectories.values()))["truth"]
    axes.plot(truth[:, 0], truth[:, 1], "k-", linewidth=2, label="ground truth")
    for label, centres in trajectories.items():
        axes.plot(centres["estimate"][:, 0], centres["estimate"][:, 1], linewidth=1, label=label)
    axes.plot(*truth[0, :2], "ko")
    axes.set(title=name, xlabel="x (m)", ylabel="y (m)", aspect="equal")
    axes.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


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
            ("forward, 300 frames", "demo", ["capture.path=forward", "capture.frames=300", "capture.seed=5"]),
            ("loop, 1,000 frames", "demo", ["capture.path=loop", "capture.frames=1000", "capture.seed=4"]),
        ]
        cases += [(name, "replay_tum", [f"capture.path={Path(args.data) / name}"]) for name in REAL]
    rows = []
    for name, launch, overrides in cases:
        trajectories = {}
        for label, variant in VARIANTS.items():
            row, trajectories[label] = run(launch, [*overrides, *variant])
            rows.append({"sequence": name, "back end": label} | row)
            print(json.dumps(rows[-1]), flush=True)
        if not args.quick:
            plot(name, trajectories, RESULTS / "bench_backend" / f"{name.split(',')[0].replace(' ', '_')}.png")
    markdown = (
        "Single-process pipeline (the nodes' steps), shipped vggt-tiny, Spark3R on. ATE Sim(3)-aligned over every "
        "frame, next to a constant trajectory's; reprojection error = median over a window's track observations, "
        "mean over windows, before → after the bundle adjustment; loop closures accepted / true / false against the "
        "ground truth. Fusion times (alignment, back end, map and viewer updates) per window and per posed keyframe, "
        "and the back end's share (refinement, pose graph, loop closure), next to the reconstruction's per window, "
        "on this machine. The demo and the synthetic paths are rendered at 224 px (the model sees 112 px). "
        "Trajectory plots: results/bench_backend/*.png.\n\n"
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
                ("loops", "loop closures (accepted / true / false)"),
                ("backend_failures", "back-end failures"),
                ("fuse_ms_per_window", "fusion ms / window"),
                ("backend_ms_per_window", "back end ms / window"),
                ("fuse_ms_per_keyframe", "fusion ms / keyframe"),
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
