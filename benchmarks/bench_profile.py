"""Cost profile of a VGGT forward on this machine: time per stage (encoder, frame blocks, global blocks, heads)
and peak memory over S — the profile Spark3R attacks. Random weights; each S runs in its own process so its peak
RSS is its own.

    spark3r bench profile [--model vggt-1b] [--size 112] [--frames 2 4 8 16] [--quick]

`--ops` instead profiles the backbone without DPT heads (the fixture architecture of bench_backbone) with
`torch.profiler` at one S, dense and Spark3R in one process: time per stage and per operator, and what the
operators inside Spark3R's global attention are (results: bench_profile_ops.md).

    spark3r bench profile --ops [--frames 1000] [--threads 2] [--no-dense] [--quick: S = 120, no result files]

`--window` profiles the reconstruction node's window run (WindowReconstructor.run: encoder cache, streaming head
schedule, vggt-tiny with Spark3R) at S keyframes in the steady state (the cache holds all but the `--new` newest):
time per stage, and the CPU bf16 path's speed and output change against float32 where the CPU has avx512_bf16/AMX
(results: bench_profile_window.md).

    spark3r bench profile --window [--frames 1000] [--new 4] [--repeats 2 (at least)] [--threads 2] [--quick: S = 40]
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
    parser.add_argument("--ops", action="store_true", help="torch.profiler split of the fixture backbone at one S")
    parser.add_argument("--no-dense", action="store_true", help="--ops: profile Spark3R only")
    parser.add_argument("--window", action="store_true", help="the reconstruction node's window run at one S")
    parser.add_argument("--new", type=int, default=4, help="--window: new keyframes per run (the window stride)")
    args = parser.parse_args(argv)
    if args.ops:
        return profile_ops(args, argv if argv is not None else sys.argv[1:])
    if args.window:
        return profile_window(args, argv if argv is not None else sys.argv[1:])
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


# --- torch.profiler split ------------------------------------------------------------------------------------------

OPS_STAGES = {  # label -> module paths (a ModuleList: each element), fixture VGGT without DPT heads
    "encoder": ("aggregator.patch_embed",),
    "frame attention": tuple(f"aggregator.frame_blocks.{i}.attn" for i in range(4)),
    "frame MLP": tuple(f"aggregator.frame_blocks.{i}.mlp" for i in range(4)),
    "global attention": tuple(f"aggregator.global_blocks.{i}.attn" for i in range(4)),
    "global MLP": tuple(f"aggregator.global_blocks.{i}.mlp" for i in range(4)),
    "camera head": ("camera_head",),
}
# what each operator does inside Spark3R's global attention (the reducer's phases)
GLOBAL_OP_PHASE = {
    "aten::_scaled_dot_product_flash_attention_for_cpu": "SDPA (M queries x kept keys)",
    "aten::addmm": "projections (q on N, k/v on kept, out on M)",
    "aten::native_layer_norm": "q/k-norm",
    "aten::mul": "RoPE",
    "aten::mul_": "RoPE",
    "aten::add_": "RoPE",
    "aten::roll": "RoPE",
    "aten::bmm": "matching (similarity, argmax, ranking)",
    "aten::max": "matching (similarity, argmax, ranking)",
    "aten::sort": "matching (similarity, argmax, ranking)",
    "aten::linalg_vector_norm": "matching (similarity, argmax, ranking)",
    "aten::div": "matching (similarity, argmax, ranking)",
    "aten::clamp_min": "matching (similarity, argmax, ranking)",
    "aten::masked_fill": "matching (similarity, argmax, ranking)",
    "aten::index_select": "gathers (kept K/V rows, merge, copy-back)",
    "aten::index_add_": "gathers (kept K/V rows, merge, copy-back)",
    "aten::take": "gathers (kept K/V rows, merge, copy-back)",
    "aten::scatter_": "gathers (kept K/V rows, merge, copy-back)",
}


def _stage_of(event, labels: set[str]) -> str | None:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in labels:
            return parent.name
        parent = parent.cpu_parent
    return None


def _profile_forward(model, images, forward) -> tuple[float, dict, dict]:
    """One profiled forward: wall (s), self time per (stage, op) in ms, and total time per stage in ms."""
    import torch
    from torch.profiler import profile, record_function

    labels = set(OPS_STAGES)
    handles, open_ = [], {}
    for stage, paths in OPS_STAGES.items():
        for path in paths:
            module = model.get_submodule(path)

            def pre(m, a, stage=stage):
                open_[id(m)] = record_function(stage)
                open_[id(m)].__enter__()

            def post(m, a, o):
                open_.pop(id(m)).__exit__(None, None, None)

            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    with torch.inference_mode(), profile() as prof:
        start = time.perf_counter()
        forward(images)
        wall = time.perf_counter() - start
    for handle in handles:
        handle.remove()
    by_op: dict[tuple[str, str], float] = defaultdict(float)
    by_stage: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.name in labels:
            by_stage[event.name] += event.cpu_time_total / 1e3
        elif event.device_type.name == "CPU":
            by_op[(_stage_of(event, labels) or "other", event.name)] += event.self_cpu_time_total / 1e3
    return wall, dict(by_op), dict(by_stage)


def profile_ops(args, argv: list[str]) -> int:
    import torch

    from benchmarks.bench_attention import header, write_results
    from benchmarks.bench_backbone import build_bench_model
    from spark3r_stream.spark3r import accelerate, disable

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_bench_model("vggt").eval()
    S = 120 if args.quick else args.frames[0] if args.frames != [2, 4, 8, 16] else 1000  # 120: merge and prune
    images = torch.rand(1, S, 3, args.size, args.size)

    def forward(x):
        tokens, _ = model.aggregator(x, keep_layers={len(model.aggregator.global_blocks) - 1})
        model.camera_head(tokens)

    runs = {}
    for name in ("Spark3R",) if args.no_dense else ("dense", "Spark3R"):
        accelerate(model) if name == "Spark3R" else disable(model)
        with torch.inference_mode():
            forward(images[:, :8])  # warm-up
            if name == "Spark3R":
                forward(images)  # fills the per-layout plan/index caches, as a window's re-run finds them
        runs[name] = _profile_forward(model, images, forward)
    names = list(runs)
    lines = [
        f"Backbone without DPT heads (fixture VGGT: width 48, 4+4 blocks, 2-block encoder), S = {S}, "
        f"{args.size}×{args.size}, float32, {args.threads} threads, one profiled forward each after a warm-up, "
        "same process. Profiler times are CPU time of the calling thread and include the profiler's overhead; the "
        "machine was shared with a training run and other tests while this ran, so absolute times are inflated — "
        "read the shares.",
        "",
        "## Time per stage (ms)",
        "",
        "| stage | " + " | ".join(f"{n} (ms)" for n in names) + " | " + " | ".join(f"{n} share" for n in names) + " |",
        "|---|" + "---|" * (2 * len(names)),
    ]
    totals = {n: sum(runs[n][1].values()) for n in names}
    for stage in OPS_STAGES:
        cells = [f"{runs[n][2].get(stage, 0):.0f}" for n in names]
        shares = [f"{runs[n][2].get(stage, 0) / totals[n]:.0%}" for n in names]
        lines.append(f"| {stage} | " + " | ".join(cells + shares) + " |")
    rest = [sum(v for (st, _), v in runs[n][1].items() if st == "other") for n in names]
    lines.append(
        "| other (token assembly, normalisation) | "
        + " | ".join([f"{r:.0f}" for r in rest] + [f"{r / totals[n]:.0%}" for r, n in zip(rest, names, strict=True)])
        + " |"
    )
    lines.append(
        "| **forward, profiled (wall)** | "
        + " | ".join(f"{runs[n][0] * 1e3:.0f}" for n in names)
        + " |"
        + " |" * len(names)
    )
    spark_ops = runs["Spark3R"][1]
    top = sorted(
        ((op, sum(v for (_, o), v in spark_ops.items() if o == op)) for op in {o for _, o in spark_ops}),
        key=lambda item: -item[1],
    )[:15]
    lines += ["", "## Spark3R: operators (self time, all stages)", "", "| operator | ms | share |", "|---|---|---|"]
    lines += [f"| `{op}` | {ms:.0f} | {ms / totals['Spark3R']:.0%} |" for op, ms in top]
    phases: dict[str, float] = defaultdict(float)
    for (stage, op), ms in spark_ops.items():
        if stage == "global attention":
            phases[GLOBAL_OP_PHASE.get(op, "other (copies, views, index bookkeeping)")] += ms
    global_total = sum(phases.values())
    lines += [
        "",
        "## Spark3R global attention: where its time goes (by operator)",
        "",
        "| phase | ms | share |",
        "|---|---|---|",
    ]
    lines += [
        f"| {ph} | {ms:.0f} | {ms / global_total:.0%} |" for ph, ms in sorted(phases.items(), key=lambda i: -i[1])
    ]
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    data = {
        "frames": S,
        "runs": {
            n: {
                "wall_s": runs[n][0],
                "stages_ms": runs[n][2],
                "ops_ms": {f"{st}|{op}": v for (st, op), v in runs[n][1].items()},
            }
            for n in names
        },
    }
    if args.quick:
        return 0
    write_results("bench_profile_ops", {**header("bench_profile", argv), "bench": "bench_profile_ops"}, markdown, data)
    return 0


# --- the reconstruction node's window run -----------------------------------------------------------------------

WINDOW_STAGES = {  # label -> module paths (each element of a ModuleList timed on its own)
    "frame blocks 1+ (block 0 is cached)": "aggregator.frame_blocks.1:",
    "global attention": "aggregator.global_blocks.*.attn",
    "global blocks rest (MLP, norms)": "aggregator.global_blocks",
    "camera head": "camera_head",
    "depth head": "depth_head",
    "point head": "point_head",
}


def _window_hooks(model, totals: dict[str, float]) -> None:
    """Accumulate wall time per WINDOW_STAGES label with forward hooks; the global attention is taken out of its
    blocks' time afterwards (`_window_split`)."""
    import torch

    for stage, path in WINDOW_STAGES.items():
        if path.endswith(".*.attn"):
            targets = [block.attn for block in model.get_submodule(path.split(".*")[0])]
        elif path.endswith(".1:"):  # block 0 runs with the encoder, on the keyframes not cached (the encoder row)
            targets = list(model.get_submodule(path[: -len(".1:")]))[1:]
        elif _has(model, path):
            module = model.get_submodule(path)
            targets = list(module) if isinstance(module, torch.nn.ModuleList) else [module]
        else:
            continue
        for target in targets:
            target.register_forward_pre_hook(lambda m, a, s=stage: totals.__setitem__(f"_{s}", time.perf_counter()))
            target.register_forward_hook(
                lambda m, a, o, s=stage: totals.__setitem__(s, totals[s] + time.perf_counter() - totals[f"_{s}"])
            )


def _window_run(reconstructor, window_id: int, keyframe_ids: tuple[int, ...], totals: dict[str, float]) -> dict:
    totals.clear()
    start = time.perf_counter()
    output = reconstructor.run(window_id, keyframe_ids)
    row = {"run_s": time.perf_counter() - start, "forward_s": output.timings["forward_ms"] / 1e3}
    row["encode_s"] = output.timings["encode_ms"] / 1e3
    row |= {stage: totals.get(stage, 0.0) for stage in WINDOW_STAGES}
    row["global blocks rest (MLP, norms)"] -= row["global attention"]
    row["other (token assembly, outputs)"] = row["run_s"] - sum(row[s] for s in WINDOW_STAGES) - row["encode_s"]
    row["num_dense"] = len(output.dense_keyframe_ids)
    return row | {"_output": output}


def profile_window(args, argv: list[str]) -> int:
    import numpy as np
    import torch

    from benchmarks.bench_attention import header, machine_load_note, table, write_results
    from spark3r_stream.models.outputs import cpu_has_bf16
    from spark3r_stream.stream.reconstructor import ReconstructionConfig, WindowReconstructor
    from spark3r_stream.synth import render_sequence

    torch.set_num_threads(args.threads)
    S = 40 if args.quick else args.frames[0] if args.frames != [2, 4, 8, 16] else 1000
    args.repeats = 1 if args.quick else max(args.repeats, 2)
    model_name = "vggt-tiny" if args.model == "vggt-1b" else args.model  # the long-window preset
    load_start = __import__("os").getloadavg()[0]
    seq = render_sequence(0, S + args.new * (args.repeats + 2), height=args.size, width=args.size)
    reconstructor = WindowReconstructor.from_config(ReconstructionConfig(model=model_name))
    for keyframe_id, image in enumerate(seq.images):
        reconstructor.add_keyframe(keyframe_id, image)
    totals: dict[str, float] = defaultdict(float)
    _window_hooks(reconstructor.model, totals)
    reconstructor.run(0, tuple(range(S)))  # fills the encoder cache and the plan/index caches
    precisions = ["float32", "bf16"] if cpu_has_bf16() else ["float32"]
    if "bf16" in precisions:  # warm-up: oneDNN builds its bf16 kernels on first use; then back to the state before
        decoded = dict(reconstructor.last_decoded)
        reconstructor.cpu_bf16 = True
        reconstructor.run(-1, tuple(range(S)))
        reconstructor.cpu_bf16, reconstructor.last_decoded = False, decoded
    rows, outputs = [], {}
    for run in range(1, args.repeats + 2):  # the steady state: `new` keyframes enter, `new` leave; run 1 warms up
        window = tuple(range(run * args.new, S + run * args.new))
        decoded = dict(reconstructor.last_decoded)  # the streaming head schedule's state before this run
        new = [k for k in window if k not in reconstructor.first_block]
        for precision in precisions:  # interleaved, the same work: the run's state is restored before each
            reconstructor.last_decoded = dict(decoded)
            for keyframe_id in new:
                reconstructor.encoded.pop(keyframe_id, None)
                reconstructor.first_block.pop(keyframe_id, None)
            reconstructor.cpu_bf16 = precision == "bf16"
            row = _window_run(reconstructor, run, window, totals)
            outputs[precision] = row.pop("_output")
            if run > 1:  # the first steady-state run builds the kernels of its shapes (oneDNN: first-call cost)
                rows.append({"precision": precision, "run": run - 1, **row})
    reconstructor.cpu_bf16 = False
    change = _output_change(outputs["bf16"], outputs["float32"]) if "bf16" in outputs else {}
    for row in rows:
        row.pop("_output", None)
    stages = ["encode_s", *WINDOW_STAGES, "other (token assembly, outputs)"]
    median = {
        precision: {
            k: float(np.median([r[k] for r in rows if r["precision"] == precision])) for k in ["run_s", *stages]
        }
        for precision in dict.fromkeys(r["precision"] for r in rows)
    }
    split_rows = [
        {"stage": "encoder + frame block 0 (keyframes not cached)" if k == "encode_s" else k}
        | {f"{p} (s)": median[p][k] for p in median}
        | {f"{p} share": f"{median[p][k] / median[p]['run_s']:.0%}" for p in median}
        for k in stages
    ]
    split_rows.append({"stage": "**window run (wall)**"} | {f"{p} (s)": median[p]["run_s"] for p in median})
    columns = (
        [("stage", "stage")]
        + [(f"{p} (s)", f"{p} (s)") for p in median]
        + [(f"{p} share", f"{p} share") for p in median]
    )
    markdown = (
        machine_load_note(load_start)
        + f"Window run of the reconstruction node (`WindowReconstructor.run`: {model_name} with Spark3R (paper "
        f"factors, the preset's schedule), encoder cache, streaming head schedule: dense heads on the new keyframes "
        f"plus the refresh budget) at S = {S} keyframes of a synthetic handheld sequence ({args.size}×{args.size}), "
        f"{args.threads} threads. Steady state: the cache holds every keyframe but the {args.new} new ones; "
        f"median of {args.repeats} runs per precision after one steady-state warm-up run, each window run in float32 "
        "then in bf16 from the same state "
        "(wall time per stage from forward hooks; "
        "'other' = the run's wall time minus the stages).\n\n## Time per stage\n\n" + table(split_rows, columns)
    )
    if change:
        speed = median["float32"]["run_s"] / median["bf16"]["run_s"]
        fidelity = json.loads((RESULTS / "bench_fidelity.json").read_text())
        spark3r = next(r for r in fidelity["rows"] if r["setting"].startswith("paper schedule"))
        within = all(change[k] <= spark3r[k] for k in CHANGE_COLUMNS if k != "depth_delta125_vs_dense")
        within = within and change["depth_delta125_vs_dense"] >= spark3r["depth_delta125_vs_dense"]
        markdown += (
            f"\n## CPU bf16 path (autocast over the backbone, heads float32) against float32, same window\n\n"
            f"Speed-up {speed:.2f}× on the window run. Output change of the bf16 path against float32 (pose "
            "Sim(3)-aligned, as bench_fidelity), beside the fidelity table's change of Spark3R (paper schedule) "
            f"against dense (bench_fidelity.md, {fidelity['git_sha']}):\n\n"
            + table(
                [
                    {"what": "bf16 vs float32 (this window)", **change},
                    {"what": "Spark3R vs dense (fidelity)", **spark3r},
                ],
                [("what", "")] + list(CHANGE_COLUMNS.items()),
            )
            + (
                "\nEvery bf16 change is within the fidelity table's Spark3R change.\n"
                if within
                else "\nNot every bf16 change is within the fidelity table's Spark3R change: float32 stays the default.\n"
            )
        )
    else:
        markdown += "\nThis CPU has neither avx512_bf16 nor AMX: the bf16 path was not measured.\n"
    print(markdown)
    if not args.quick:
        data = {
            "frames": S,
            "new": args.new,
            "model": model_name,
            "rows": rows,
            "median": median,
            "bf16_change": change,
        }
        write_results(
            "bench_profile_window", {**header("bench_profile", argv), "bench": "bench_profile_window"}, markdown, data
        )
    return 0


CHANGE_COLUMNS = {
    "ate_over_extent": "ATE / extent",
    "rpe_t_vs_dense": "RPE-t",
    "rpe_r_vs_dense_deg": "RPE-r (°)",
    "rot_diff_deg": "median rotation diff (°)",
    "depth_absrel_vs_dense": "depth AbsRel",
    "depth_delta125_vs_dense": "depth δ<1.25",
}


def _output_change(pred, ref) -> dict[str, float]:
    """WindowOutput `pred` against `ref` (same window): bench_fidelity's pose and depth differences."""
    from benchmarks.bench_fidelity import differences

    def as_prediction(output):
        return __import__("types").SimpleNamespace(world_from_cam=output.world_from_cam, depth=output.depth)

    return differences(as_prediction(pred), as_prediction(ref))


def _git_sha() -> str:
    from spark3r_stream.report import git_sha

    return git_sha() or "unknown"


def _machine() -> str:
    import platform

    return f"{platform.machine()} {platform.processor() or ''} ({mp.cpu_count()} cores)".replace("  ", " ")


if __name__ == "__main__":
    sys.exit(main())
