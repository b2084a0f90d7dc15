"""The reconstruction node's encoder cache: WindowReconstructor with and without it over a growing window sequence.

vggt-tiny (shipped weights, Spark3R as in the pipeline) at its 112x112 input, keyframes from the synthetic replay,
windows as WindowScheduler makes them (every `stride` new keyframes the whole window is re-run). With the cache each
run encodes only the new keyframes (the encoder and VGGT's frame block 0, both per frame); without it, every keyframe
of the window again. Both reconstructors share one
model and see the same windows in the same order; per window the two are timed interleaved (alternating which goes
first), median of k repeats after a warm-up. Before each repeat the state a run changes is restored (the cached
encodings of the window's new keyframes, which keyframes were decoded densely), so every repeat does the work of
the first run of that window in a stream.

    python -m benchmarks.bench_encoder_cache [--keyframes 64] [--stride 4] [--repeats 5] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch

from benchmarks.bench_attention import header, table, write_results


def windows(num_keyframes: int, stride: int) -> list[tuple[int, tuple[int, ...]]]:
    """(window_id, keyframe_ids) of every run, as the keyframes node schedules them (one window, growing)."""
    from spark3r_stream.stream.windows import WindowScheduler, WindowSchedulerConfig

    size = max(num_keyframes, 2)
    scheduler = WindowScheduler(WindowSchedulerConfig(stride=stride, max_window=size, overlap=min(8, size - 1)))
    runs = [scheduler.add(k) for k in range(num_keyframes)] + [scheduler.flush()]
    return [(run.window_id, tuple(run.keyframe_ids)) for run in runs if run is not None]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="bench_encoder_cache", description=__doc__.split("\n")[0])
    parser.add_argument("--keyframes", type=int, default=64, help="keyframes in the last window (pipeline: 64)")
    parser.add_argument("--stride", type=int, default=4, help="new keyframes between two runs (pipeline default)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per window and mode (median)")
    # 1 thread: on a shared, loaded machine two OpenMP threads wait on each other at every barrier (measured 70x
    # slower here under a training run); the cache's saving is a share of the work, which one thread shows as well
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-spark3r", action="store_true", help="the dense model")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: 8 keyframes, one repeat, no result files")
    args = parser.parse_args(argv)
    if args.quick:
        args.keyframes, args.repeats = 8, 1

    from spark3r_stream.sources import open_source
    from spark3r_stream.stream.reconstructor import ReconstructionConfig, WindowReconstructor

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ReconstructionConfig(model="vggt-tiny", spark3r=not args.no_spark3r, device="cpu")
    cached = WindowReconstructor.from_config(config)
    uncached = WindowReconstructor(cached.model, ReconstructionConfig(**{**vars(config), "encoder_cache": False}))
    source = open_source({"type": "synth", "seed": 0, "frames": args.keyframes, "path": "handheld", "rate": 0})
    frames = list(source)  # every frame a keyframe: this measures the reconstructor, not the selection
    for recon in (cached, uncached):
        for keyframe_id, frame in enumerate(frames):
            recon.add_keyframe(keyframe_id, frame.image)
    images = torch.stack([cached.images[k] for k in range(len(frames))])

    def encode_all(ids: tuple[int, ...]) -> float:
        """The encoder and frame block 0 (both cached per keyframe) on every keyframe of the window: what a run
        without the cache spends on them."""
        aggregator = cached.model.aggregator
        grid_hw = (images.shape[-2] // aggregator.patch_size, images.shape[-1] // aggregator.patch_size)
        start = time.perf_counter()
        with torch.inference_mode():
            patch_tokens = aggregator.encode(images[list(ids)][None])
            aggregator.first_frame_block(patch_tokens[:, :1], grid_hw, reference=True)
            aggregator.first_frame_block(patch_tokens[:, 1:], grid_hw, reference=False)
        return (time.perf_counter() - start) * 1e3

    schedule = windows(len(frames), args.stride)
    for recon in (cached, uncached):  # warm-up on the largest window, then back to an empty state
        recon.run(-1, schedule[-1][1])
        recon.encoded.clear()
        recon.first_block.clear()
        recon.last_decoded.clear()
    encode_all(schedule[-1][1])

    rows, previous = [], set()
    for window_id, ids in schedule:
        new = [k for k in ids if k not in previous]
        decoded_before = dict(cached.last_decoded)  # identical in both: same windows, same dense selection
        times: dict[str, list[float]] = {"cache": [], "no_cache": [], "encode_new": [], "encode_all": []}
        outputs = {}
        hits_before = dict(cached.stats)
        for rep in range(args.repeats):
            for name in ("cache", "no_cache") if rep % 2 == 0 else ("no_cache", "cache"):
                recon = cached if name == "cache" else uncached
                recon.last_decoded = dict(decoded_before)
                for k in new:
                    recon.encoded.pop(k, None)
                    recon.first_block.pop(k, None)
                start = time.perf_counter()
                outputs[name] = recon.run(window_id, ids)
                times[name].append((time.perf_counter() - start) * 1e3)
                if name == "cache":
                    times["encode_new"].append(outputs[name].timings["encode_ms"])
            times["encode_all"].append(encode_all(ids))
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {
            "window_id": window_id,
            "keyframes": len(ids),
            "new": len(new),
            "dense": len(outputs["cache"].dense_keyframe_ids),
            "no_cache_ms": med["no_cache"],
            "cache_ms": med["cache"],
            "saved_ms": med["no_cache"] - med["cache"],
            "saved_pct": 100 * (med["no_cache"] - med["cache"]) / med["no_cache"],
            "ideal_saved_ms": med["encode_all"] - med["encode_new"],
            "encode_new_ms": med["encode_new"],
            "encode_all_ms": med["encode_all"],
            "cache_hits": (cached.stats["encoder_cache_hits"] - hits_before["encoder_cache_hits"]) // args.repeats,
            "cache_misses": (cached.stats["encoder_cache_misses"] - hits_before["encoder_cache_misses"])
            // args.repeats,
            "max_pose_diff": float(np.abs(outputs["cache"].world_from_cam - outputs["no_cache"].world_from_cam).max()),
            "max_depth_diff": float(np.abs(outputs["cache"].depth - outputs["no_cache"].depth).max()),
        }
        rows.append(row)
        previous = set(ids)
        print(json.dumps(row), flush=True)

    total = {
        "no_cache_s": sum(r["no_cache_ms"] for r in rows) / 1e3,
        "cache_s": sum(r["cache_ms"] for r in rows) / 1e3,
        "ideal_saved_s": sum(r["ideal_saved_ms"] for r in rows) / 1e3,
    }
    total["saved_pct"] = 100 * (total["no_cache_s"] - total["cache_s"]) / total["no_cache_s"]
    total["speedup"] = total["no_cache_s"] / total["cache_s"]
    columns = [
        ("window_id", "window"),
        ("keyframes", "keyframes"),
        ("new", "new"),
        ("dense", "dense-decoded"),
        ("no_cache_ms", "no cache (ms)"),
        ("cache_ms", "cache (ms)"),
        ("saved_ms", "saved (ms)"),
        ("saved_pct", "saved (%)"),
        ("ideal_saved_ms", "encoder of reused keyframes (ms)"),
        ("cache_hits", "cache hits"),
        ("max_pose_diff", "max |Δ pose|"),
    ]
    markdown = (
        f"vggt-tiny (shipped weights, Spark3R {'off' if args.no_spark3r else 'on'}), 112×112 synthetic keyframes, "
        f"one growing window re-run every {args.stride} new keyframes up to {args.keyframes}; {args.threads} torch "
        f"threads. Wall time of `WindowReconstructor.run` per window, median of {args.repeats} interleaved repeats "
        "after warm-up, with the encoder cache (the encoder and frame block 0 of the new keyframes only) and without "
        "(the whole window). 'encoder of reused keyframes' = the encoder and frame block 0 on the whole window minus "
        "on the new keyframes, measured in the same loop: the saving to expect. max |Δ pose| compares the two runs' "
        "poses (both are per frame, so the cache is exact).\n\n"
        f"**Total over {len(rows)} windows: {total['no_cache_s']:.2f} s without the cache, {total['cache_s']:.2f} s "
        f"with it: {total['saved_pct']:.1f} % saved ({total['speedup']:.2f}×); the encoder and frame block 0 time "
        f"of the reused keyframes was {total['ideal_saved_s']:.2f} s.**\n\n" + table(rows, columns)
    )
    if not args.quick:
        write_results("bench_encoder_cache", header("bench_encoder_cache", argv), markdown, {"rows": rows, **total})
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
