"""Cost profile of a VGGT forward on this machine: time per stage (encoder, frame blocks, global blocks, heads)
and peak memory over S — the profile Spark3R attacks. Random weights; each S runs in its own process so its peak
RSS is its own.

    spark3r bench profile [--model vggt-1b] [--size 112] [--frames 2 4 8 16] [--quick]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
STAGES = {
    "encoder": "aggregator.patch_embed",
    "frame blocks": "aggregator.frame_blocks",
    "global blocks": "aggregator.global_blocks",
    "camera head": "camera_head",
    "depth head": "depth_head",
    "point head": "point_head",
}


def _timed(model, totals: dict[str, float]) -> None:
    """Accumulate wall time of each stage's modules with forward hooks (children of ModuleLists timed one by one)."""
    for stage, path in STAGES.items():
        module = model.get_submodule(path) if _has(model, path) else None
        if module is None:
            continue
        targets = list(module) if isinstance(module, __import__("torch").nn.ModuleList) else [module]
        for target in targets:
            target.register_forward_pre_hook(lambda m, a, s=stage: totals.__setitem__(f"_{s}", time.perf_counter()))
            target.register_forward_hook(
                lambda m, a, o, s=stage: totals.__setitem__(s, totals[s] + time.perf_counter() - totals[f"_{s}"])
            )


def _has(model, path: str) -> bool:
    try:
        return model.get_submodule(path) is not None
    except AttributeError:
        return False


def _run_one(model_name: str, size: int, frames: int, threads: int, repeats: int, queue) -> None:
    import torch

    from spark3r_stream.models import build_model

    torch.set_num_threads(threads)
    model = build_model(model_name, random_weights=True, enable_track=False)
    rss_model_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    images = torch.rand(frames, 3, size, size)
    totals: dict[str, float] = defaultdict(float)
    _timed(model, totals)
    walls = []
    with torch.inference_mode():
        model(images[:2])  # warm-up
        for _ in range(repeats):
            totals.clear()
            start = time.perf_counter()
            model(images)
            walls.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {"frames": frames, "wall_s": min(walls), **{s: totals[s] for s in STAGES if s in totals}}
    row["peak_rss_mb"] = peak_mb
    row["activations_mb"] = peak_mb - rss_model_mb
    queue.put(row)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spark3r bench profile", description=__doc__)
    parser.add_argument("--model", default="vggt-1b")
    parser.add_argument("--size", type=int, default=112, help="square input side (multiple of 14)")
    parser.add_argument("--frames", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke run: vggt-tiny, S = 2, 4; results not written")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.size, args.frames = "vggt-tiny", 112, [2, 4]
    ctx = mp.get_context("spawn")
    rows = []
    for frames in args.frames:
        queue = ctx.Queue()
        proc = ctx.Process(target=_run_one, args=(args.model, args.size, frames, args.threads, args.repeats, queue))
        proc.start()
        rows.append(queue.get())
        proc.join()
    stages = [s for s in STAGES if s in rows[0]]
    lines = [
        f"# Forward cost profile: {args.model}, {args.size}×{args.size}, float32, random weights, CPU",
        "",
        f"{time.strftime('%Y-%m-%d')} · git {_git_sha()} · {_machine()} · {args.threads} threads · "
        f"`spark3r bench profile {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
        "| S | forward (s) | "
        + " | ".join(f"{s} (s)" for s in stages)
        + " | global share | peak RSS (MB) | activations (MB) |",
        "|---|---|" + "---|" * len(stages) + "---|---|---|",
    ]
    for r in rows:
        share = r.get("global blocks", 0) / r["wall_s"]
        cells = " | ".join(f"{r[s]:.2f}" for s in stages)
        lines.append(
            f"| {r['frames']} | {r['wall_s']:.2f} | {cells} | {share:.0%} | {r['peak_rss_mb']:.0f} | "
            f"{r['activations_mb']:.0f} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "bench_profile.md").write_text(table)
        (RESULTS / "bench_profile.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


def _git_sha() -> str:
    from spark3r_stream.report import git_sha

    return git_sha() or "unknown"


def _machine() -> str:
    import platform

    return f"{platform.machine()} {platform.processor() or ''} ({mp.cpu_count()} cores)".replace("  ", " ")


if __name__ == "__main__":
    sys.exit(main())
