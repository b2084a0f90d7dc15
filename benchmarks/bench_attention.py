"""One global attention layer, dense vs Spark3R, over S: time, FLOP ratios, and the merge overhead.

Token layout of a small model (8x8 patches + 5 special tokens per frame, width 192, 3 heads), paper factors
(§3.5) for each S, one sensitive layer (base r_KV) and one insensitive layer (3 r_KV). Dense and Spark3R run
side by side in one process, after warm-up; times are medians of k repeats.

    python -m benchmarks.bench_attention [--frames 100 300 500 1000] [--threads 2] [--quick]

Also the home of the helpers the other Spark3R benchmarks share (header, timing, result files).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"


# ---------------------------------------------------------------------------------------------------------------------
# shared by bench_attention / bench_backbone / bench_fidelity


def header(name: str, argv: list[str]) -> dict[str, Any]:
    """Date, git sha, machine and the exact command: the top of every result file."""
    from spark3r_stream.report import git_sha, machine_info

    return {
        "bench": name,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git_sha": git_sha(),
        "machine": machine_info(),
        "command": " ".join(["python -m benchmarks." + name, *argv]),
    }


def header_markdown(head: dict[str, Any]) -> str:
    m = head["machine"]
    return (
        f"# {head['bench']}\n\n"
        f"- date: {head['date']}\n- git sha: {head['git_sha']}\n"
        f"- machine: {m['processor']}, {m['cpu_count']} CPUs, torch {m['torch']} with {m['torch_threads']} threads, "
        f"python {m['python']}, {m['platform']}\n- command: `{head['command']}`\n"
    )


def write_results(name: str, head: dict[str, Any], markdown: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(header_markdown(head) + "\n" + markdown)
    (RESULTS / f"{name}.json").write_text(json.dumps({**head, **data}, indent=1, default=str) + "\n")
    return RESULTS / f"{name}.md"


def median_time_s(fn, repeats: int, *args) -> float:
    """Median wall time of `repeats` calls `fn(*args)` (call it once before to warm up)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def reset_peak_rss() -> int:
    """Reset the process high-water mark (Linux clear_refs 5); returns the current RSS in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kb("VmRSS") * 1024


def peak_rss_bytes() -> int:
    return _status_kb("VmHWM") * 1024


def _status_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """Markdown table of `rows` with (key, header) columns; floats to 3 significant decimals."""

    def show(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(show(row.get(k, "")) for k, _ in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def machine_load_note(load_start: float) -> str:
    """One line on how busy the machine was (1-minute load average at the start and the end of the run)."""
    import os

    cores = os.cpu_count()
    return (
        f"Machine load (1-min load average) {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, on "
        f"{cores} cores: above {cores} the machine was shared with other processes, which inflates absolute times "
        "(Spark3R's many small operators more than dense attention's few large ones); ratios are side by side.\n\n"
    )


# ---------------------------------------------------------------------------------------------------------------------


def layer_flops(N: int, M: int, Nk: int, C: int) -> dict[str, float]:
    """Multiply-adds x2 of one attention layer: dense and Spark3R (q on N, k/v on Nk, attention M x Nk, proj on M)."""
    dense = 6 * N * C * C + 4 * N * N * C + 2 * N * C * C
    spark = 2 * N * C * C + 4 * Nk * C * C + 4 * M * Nk * C + 2 * M * C * C
    return {"dense": dense, "spark3r": spark, "core_dense": 4 * N * N * C, "core_spark3r": 4 * M * Nk * C}


def compiled_q_path(attn, pos: torch.Tensor):
    """x -> q rows [1, N, heads, d] as `Attention.project_rows(x, pos, "q")`, with q-norm + RoPE compiled; also
    the first call's time (the compile, or a recompile-free call) and the output change against eager (max abs)."""
    import torch.nn.functional as F

    from spark3r_stream.models.layers.rope import rotate

    dim = attn.num_heads * attn.head_dim
    weight = attn.qkv.weight[:dim]
    bias = None if attn.qkv.bias is None else attn.qkv.bias[:dim]
    cos, sin = attn.rope.token_tables(pos, attn.head_dim, torch.float32)
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    finish = torch.compile(lambda t, cos, sin: rotate(attn.q_norm(t), cos, sin), dynamic=True)

    def q_rows(x: torch.Tensor) -> torch.Tensor:
        return finish(F.linear(x, weight, bias).view(1, x.shape[1], attn.num_heads, attn.head_dim), cos, sin)

    x = torch.randn(1, pos.shape[1], dim)
    start = time.perf_counter()
    compiled = q_rows(x)
    first_call_s = time.perf_counter() - start
    (eager,) = attn.project_rows(x, pos, "q")
    return q_rows, first_call_s, float((compiled - eager).abs().max())


def compile_note(rows: list[dict[str, Any]]) -> str:
    """The line under the phase table on its last column (none in a --quick run, which compiles nothing)."""
    if "q_compile_first_call_s" not in rows[0]:
        return ""
    first_compile_s = rows[0]["q_compile_first_call_s"]
    change = max(row["q_compiled_change"] for row in rows)
    return (
        "\nThe last column is the q path with q-norm and RoPE fused by `torch.compile` (dynamic shapes, inductor), "
        f"measured beside the product's eager path and not used by it: first compile {first_compile_s:.1f} s in this "
        f"process (warm inductor cache or not), output change against eager {change:.1e} (max abs).\n"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="bench_attention", description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[100, 300, 500, 1000])
    parser.add_argument("--grid", type=int, default=8, help="patches per side")
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="Spark3R repeats (dense: 3, or 1 above 400 frames)")
    parser.add_argument("--name", default="bench_attention", help="result file stem")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: tiny S, one repeat, no result files")
    parser.add_argument(
        "--malloc-keep-mb",
        type=int,
        default=1024,
        help="freed memory glibc keeps for reuse, as the reconstruction node (reconstruction.malloc_keep_mb); 0 = "
        "glibc's defaults",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.repeats = [12, 30], 1

    from spark3r_stream.models.layers import Attention, RotaryEmbedding2D, TokenLayout, grid_positions, sdpa
    from spark3r_stream.models.targets import ReductionTargets
    from spark3r_stream.spark3r import Spark3RConfig
    from spark3r_stream.spark3r.merge import match_queries, similarity_dtype
    from spark3r_stream.spark3r.prune import project_kept_kv
    from spark3r_stream.spark3r.reducer import GlobalReducer, ReductionSession
    from spark3r_stream.stream.reconstructor import keep_freed_memory

    torch.set_num_threads(args.threads)
    keeps_memory = bool(args.malloc_keep_mb) and keep_freed_memory(args.malloc_keep_mb << 20)
    torch.manual_seed(0)
    load_start = os.getloadavg()[0]
    C, h = args.width, args.grid
    attn = Attention(C, args.heads, qk_norm=True, rope=RotaryEmbedding2D(100.0)).eval()
    # layer 0 insensitive (l r_KV), layer 1 sensitive (r_KV): the two kinds of layer of the paper's schedule
    targets = ReductionTargets(("insensitive", "sensitive"), 5, 0, (1,))
    rows = []
    with torch.inference_mode():
        for S in args.frames:
            layout = TokenLayout(num_frames=S, tokens_per_frame=5 + h * h, num_special=5, grid_hw=(h, h))
            N = S * layout.tokens_per_frame
            x = torch.randn(1, N, C)
            pos = grid_positions(S, h, h, 5).reshape(1, N, 2)
            # the product's matching (similarity_dtype "auto": bfloat16 on CPUs with native bf16) and float32 matching
            settings = ["auto"] + (["float32"] if similarity_dtype("auto", x.device) is not None else [])
            sessions = {name: ReductionSession(Spark3RConfig(similarity_dtype=name), targets) for name in settings}
            reducers = {(name, layer): GlobalReducer(layer, sessions[name]) for name in settings for layer in range(2)}
            attn.reducer = None
            attn(x[:, : min(N, 5000)], pos[:, : min(N, 5000)])  # warm-up of the dense kernels
            for reducer in reducers.values():  # warm-up: builds the cached indices
                attn.reducer = reducer
                attn(x, pos, layout)
            # interleaved repeats, so that dense and Spark3R see the same load of this shared machine
            dense_repeats = 1 if (S > 400 or args.quick) else 3
            times: dict = {key: [] for key in [None, *reducers]}
            for i in range(args.repeats):
                for key in [*reducers, None] if i < dense_repeats else reducers:
                    attn.reducer = None if key is None else reducers[key]
                    times[key].append(median_time_s(attn, 1, x, pos, layout))
            dense_s = statistics.median(times[None])
            for (setting, layer), reducer in reducers.items():
                kind = ("insensitive", "sensitive")[layer]
                spark_s = statistics.median(times[setting, layer])
                session = reducer.session
                plan = session.plan(layout)
                step = plan.layers[layer]
                flops = layer_flops(N, step.num_queries, step.num_keys, C)
                match_dtype = similarity_dtype(setting, x.device)
                row = {
                    "frames": S,
                    "layer": kind,
                    "matching": str(match_dtype or x.dtype).removeprefix("torch."),
                    "r_q": step.r_q,
                    "r_kv": step.r_kv,
                    "tokens": N,
                    "queries": step.num_queries,
                    "keys": step.num_keys,
                    "dense_ms": dense_s * 1e3,
                    "spark3r_ms": spark_s * 1e3,
                    "speedup": dense_s / spark_s,
                    "flop_ratio": flops["dense"] / flops["spark3r"],
                    "core_flop_ratio": flops["core_dense"] / flops["core_spark3r"],
                }
                row["achieved_pct"] = 100 * row["speedup"] / row["flop_ratio"]
                # where Spark3R's time goes: each phase alone, median of the same repeats
                q = attn.project(x, pos, "q")
                phases = {"q_proj_ms": (attn.project_rows, x, pos, "q")}  # token-major, as the reducer projects
                if step.num_keys < N:
                    kv_index = session.kv_index(layout, step.r_kv, x.device)
                    phases["kv_proj_ms"] = (project_kept_kv, attn, x, pos, kv_index)
                    k, v = project_kept_kv(attn, x, pos, kv_index)
                else:
                    _, k, v = attn.project_qkv(x, pos)
                q_reduced = q
                if step.num_queries < N:
                    metric = q.transpose(1, 2).reshape(1, N, C)
                    index = session.merge_index(layout, plan, x.device)
                    merge = match_queries(metric, index, match_dtype)
                    q_reduced = merge.merge(q)
                    phases["match_ms"] = (match_queries, metric, index, match_dtype)
                    phases["merge_ms"] = (merge.merge_rows, metric)  # token-major rows, as the reducer merges
                    row["match_gflop"] = 2 * float((index.src_valid.sum(-1) * index.dst_valid.sum(-1)).sum()) * C / 1e9
                phases["sdpa_ms"] = (sdpa, q_reduced, k, v)
                if not args.quick:
                    q_rows, row["q_compile_first_call_s"], row["q_compiled_change"] = compiled_q_path(attn, pos)
                    phases["q_proj_compiled_ms"] = (q_rows, x)
                for name, (fn, *fn_args) in phases.items():
                    fn(*fn_args)
                    row[name] = median_time_s(fn, args.repeats, *fn_args) * 1e3
                row["match_pct"] = 100 * row.get("match_ms", 0.0) / row["spark3r_ms"]
                rows.append(row)
                print(json.dumps(row), flush=True)
    columns = [
        ("frames", "S"),
        ("layer", "layer"),
        ("matching", "matching dtype"),
        ("r_q", "r_Q"),
        ("r_kv", "r_KV"),
        ("tokens", "N"),
        ("queries", "queries M"),
        ("keys", "keys"),
        ("dense_ms", "dense (ms)"),
        ("spark3r_ms", "Spark3R (ms)"),
        ("speedup", "speedup (×)"),
        ("flop_ratio", "FLOP ratio (×)"),
        ("achieved_pct", "achieved / FLOP ratio (%)"),
        ("core_flop_ratio", "attention-core FLOP ratio (×)"),
        ("match_gflop", "matching (GFLOP)"),
    ]
    phase_columns = [
        ("frames", "S"),
        ("layer", "layer"),
        ("matching", "matching dtype"),
        ("spark3r_ms", "Spark3R layer (ms)"),
        ("q_proj_ms", "q projection + q-norm + RoPE, all N (ms)"),
        ("kv_proj_ms", "k/v projection, kept tokens (ms)"),
        ("match_ms", "query matching (ms)"),
        ("merge_ms", "query merge (ms)"),
        ("sdpa_ms", "SDPA M×keys (ms)"),
        ("match_pct", "matching share (%)"),
        ("q_proj_compiled_ms", "q path with norm + RoPE by torch.compile (ms)"),
    ]
    markdown = (
        machine_load_note(load_start)
        + f"One `Attention` layer (width {C}, {args.heads} heads, q/k-norm, 2-D RoPE), {h}×{h} patches + 5 special "
        f"tokens per frame, float32, batch 1, {args.threads} thread(s)"
        + (
            f", glibc keeping up to {args.malloc_keep_mb} MB of freed memory (as the reconstruction node)"
            if keeps_memory
            else ""
        )
        + ", paper factors for S (Eqs. 4–5; insensitive layer = 3·r_KV).\n"
        "FLOP ratio = dense FLOPs (qkv + attention + proj) ÷ Spark3R FLOPs (q on N, k/v on kept tokens, attention "
        "M×keys, proj on M); the query-matching FLOPs are overhead counted against Spark3R (measured separately "
        'in the second table; `Spark3RConfig.similarity_dtype` "auto" runs its similarity GEMM in bfloat16 on CPUs '
        "with native bf16, float32 rows beside it). Dense: median of 3 (1 above 400 frames); Spark3R: median of "
        f"{args.repeats}; interleaved, after warm-up.\n\n"
        + table(rows, columns)
        + "\n## Where a Spark3R layer's time goes (each phase timed alone; the rest is output projection + copy-back)\n\n"
        + table(rows, phase_columns)
        + compile_note(rows)
    )
    if not args.quick:
        write_results(args.name, header("bench_attention", argv), markdown, {"rows": rows})
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
