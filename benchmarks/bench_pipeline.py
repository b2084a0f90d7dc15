"""Pipeline benchmark: the demo end to end (wall time, per-stage latency, end-to-end frames/s, ATE, peak memory of
every node process), and the memory of the reconstruction and fusion state as keyframes grow to 2,000.

    python benchmarks/bench_pipeline.py [--quick] [--frames N] [--keyframes K] [--random-weights] [--out DIR]

The demo runs through the launcher exactly as `spark3r demo` does (shipped vggt-tiny weights unless
--random-weights). The memory sweep runs the library objects of the two nodes in this process, with random weights
and a tiny window (max_window 20, stride 16, overlap 4): resident memory and stored keyframes are sampled every 100
keyframes; the reconstruction node must stay bounded by the window, fusion by its point caps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def rss_mb() -> float:
    """Current resident set size of this process (not the peak)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_demo(frames: int, random_weights: bool, out: Path) -> dict[str, Any]:
    args = [sys.executable, "-m", "spark3r_stream.cli", "launch", "demo", "--out", str(out)]
    args += ["--set", f"capture.frames={frames}"] + (["--set", "reconstruction.random_weights=true"] * random_weights)
    start = time.perf_counter()
    result = subprocess.run(
        args,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(REPO)},
    )
    wall_s = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"demo failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    pipeline = report["pipeline"]
    stages = {}
    for name, node in pipeline["nodes"].items():
        data = node.get("report") or {}
        stages.update({f"{name}.{k}": v for k, v in (data.get("stages") or {}).items()})
        stages[f"{name}.max_rss_mb"] = data.get("max_rss_mb")
    stages.update({f"fusion.{k}": v for k, v in report.get("stages", {}).items()})
    stages["fusion.max_rss_mb"] = report.get("max_rss_mb")
    return {
        "frames": frames,
        "weights": "random" if random_weights else "shipped vggt-tiny",
        "wall_s": round(wall_s, 2),
        "pipeline_wall_s": pipeline["wall_s"],
        "frames_per_s": pipeline.get("frames_per_s"),
        "accounting": pipeline["accounting"],
        "trajectory": report.get("trajectory"),
        "stages": stages,
    }


def memory_sweep(num_keyframes: int) -> list[dict[str, float]]:
    """The reconstruction and fusion steps of stream.pipeline on `num_keyframes` keyframes (random weights and
    images: memory does not depend on them), RSS every 100 keyframes."""
    import torch

    from spark3r_stream.stream.global_map import GlobalMap, GlobalMapConfig
    from spark3r_stream.stream.pipeline import FusionStep, ReconstructionStep
    from spark3r_stream.stream.reconstructor import ReconstructionConfig, WindowReconstructor
    from spark3r_stream.stream.windows import WindowScheduler, WindowSchedulerConfig
    from spark3r_stream.transport.messages import Keyframe, WindowRequest

    torch.manual_seed(0)
    recon = ReconstructionStep(WindowReconstructor.from_config(ReconstructionConfig(random_weights=True)))
    scheduler = WindowScheduler(WindowSchedulerConfig(stride=16, max_window=20, overlap=4))
    fusion = FusionStep(
        GlobalMap(GlobalMapConfig(max_points_per_keyframe=500, max_total_points=200_000, max_cached_images=32))
    )
    rng = np.random.default_rng(0)
    rows, base = [], rss_mb()
    for keyframe_id in range(num_keyframes):
        image = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
        keyframe = Keyframe(keyframe_id=keyframe_id, frame_seq=keyframe_id, t_capture=keyframe_id / 30, image=image)
        recon.on_keyframe(keyframe)
        fusion.on_keyframe(keyframe)
        run = scheduler.add(keyframe_id)
        if run is not None:
            result = recon.on_request(WindowRequest(window_id=run.window_id, keyframe_ids=run.keyframe_ids))
            fusion.on_result(result)
        if (keyframe_id + 1) % 100 == 0:
            rows.append(
                {
                    "keyframes": keyframe_id + 1,
                    "rss_mb": round(rss_mb(), 1),
                    "rss_growth_mb": round(rss_mb() - base, 1),
                    "stored_images": len(recon.reconstructor.images),
                    "cached_encodings": len(recon.reconstructor.encoded),
                    "map_points": fusion.gmap.num_points,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def to_markdown(result: dict[str, Any], command: str) -> str:
    demo, sweep = result["demo"], result["memory"]
    lines = [
        "# bench_pipeline",
        "",
        f"{result['date']}, git {result['git_sha']}, {result['machine']}",
        f"command: `{command}`",
        "",
        "## Demo (launch/demo.yaml through the launcher)",
        "",
        "| frames | weights | wall s | frames/s end to end | frames lost | keyframes | windows | ATE RMSE m | ATE / extent |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    acc, ate = demo["accounting"], (demo.get("trajectory") or {}).get("all_frames") or {}
    lines.append(
        f"| {demo['frames']} | {demo['weights']} | {demo['wall_s']} | {demo['frames_per_s']} | {acc['frames_lost']} "
        f"| {acc['keyframes_sent']} | {acc['window_results_received']} | {ate.get('ate_rmse_m', float('nan')):.4f} "
        f"| {ate.get('ate_over_extent', float('nan')):.3f} |"
    )
    lines += [
        "",
        "Per-stage latency (ms per message) and peak memory per node process:",
        "",
        "| stage | count | mean ms | p50 ms | p95 ms | max ms |",
        "|---|---|---|---|---|---|",
    ]
    for name, stats in sorted(demo["stages"].items()):
        if isinstance(stats, dict):
            lines.append(
                f"| {name} | {stats['count']} | {stats['mean_ms']} | {stats['p50_ms']} | {stats['p95_ms']} "
                f"| {stats['max_ms']} |"
            )
    lines += ["", "| node | peak RSS MB |", "|---|---|"]
    lines += [f"| {k.split('.')[0]} | {v} |" for k, v in sorted(demo["stages"].items()) if k.endswith("max_rss_mb")]
    lines += [
        "",
        "## Memory as keyframes grow (reconstruction + fusion state, one process, random weights,",
        "max_window 20, stride 16, overlap 4; fusion caps 500 points/keyframe, 200k points)",
        "",
        "| keyframes | RSS MB | growth MB | stored images | cached encodings | map points |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['keyframes']} | {r['rss_mb']} | {r['rss_growth_mb']} | {r['stored_images']} | "
        f"{r['cached_encodings']} | {r['map_points']} |"
        for r in sweep
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 30 frames, 200 keyframes, no results written")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--keyframes", type=int, default=2000)
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    frames, keyframes = (30, 200) if args.quick else (args.frames, args.keyframes)
    with tempfile.TemporaryDirectory(prefix="s3r-bench-") as tmp:
        demo = run_demo(frames, args.random_weights, Path(tmp) / "demo")
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "git_sha": sha.strip(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, shared",
        "demo": demo,
        "memory": memory_sweep(keyframes),
    }
    command = "python benchmarks/bench_pipeline.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    text = to_markdown(result, command)
    print(text)
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_pipeline.md").write_text(text)
        (args.out / "bench_pipeline.json").write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
