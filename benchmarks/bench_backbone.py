"""The model forward, dense vs Spark3R, over S: time (with and without the dense heads), the dense time split,
the ideal speedup from that split, and peak memory. Same process, same inputs, paper factors (§3.5).

Model (`--model`): the VGGT, π³ or DA3 architecture at its official-fixture size (tests/fixtures/vggt_tiny, pi3_tiny,
da3_tiny), fixture weights (random-valued; speed does not depend on them), 112x112 images (8x8 patches), float32.
Results go to benchmarks/results/bench_backbone.md (vggt) or bench_backbone_<model>.md.

    python -m benchmarks.bench_backbone [--model vggt|pi3|da3] [--frames 100 300 500 1000] [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict

import torch

from benchmarks.bench_attention import header, machine_load_note, peak_rss_bytes, reset_peak_rss, table, write_results
from spark3r_stream.stream.reconstructor import keep_freed_memory

FIXTURES_OF = {"vggt": "vggt_tiny", "pi3": "pi3_tiny", "da3": "da3_tiny"}  # --model -> fixture folder

# Time split: stage -> module paths per family (hooks time each module call; a ModuleList means each element).
# Global blocks come from the model's ReductionTargets; the per-view blocks between them are added in stage_modules().
STAGES: dict[str, dict[str, tuple[str, ...]]] = {
    "vggt": {
        "encoder": ("aggregator.patch_embed",),
        "frame blocks": ("aggregator.frame_blocks",),
        "camera head": ("camera_head",),
        "dense heads": ("depth_head", "point_head"),
    },
    "pi3": {
        "encoder": ("encoder",),
        "camera head": ("camera_decoder", "camera_head"),
        "dense heads": ("point_decoder", "point_head", "conf_decoder", "conf_head"),
    },
    "da3": {
        "encoder": ("backbone.pretrained.patch_embed",),
        "camera head": ("cam_dec",),
        "dense heads": ("head",),
    },
}
DENSE_HEADS = {"vggt": "DPT heads", "pi3": "point/conf decoders + heads", "da3": "DualDPT head"}


def stage_modules(model) -> dict[str, str]:
    """Module path -> stage for `model` (built here: `model.spec.family` and `model.config` set)."""
    from spark3r_stream.models import reduction_targets_of

    stages = {path: stage for stage, paths in STAGES[model.spec.family].items() for path in paths}
    global_blocks = [path.removesuffix(".attn") for path in reduction_targets_of(model).global_attention]
    stages.update(dict.fromkeys(global_blocks, "global blocks"))
    cfg = model.config
    if model.spec.family == "pi3":  # decoder: even blocks frame-wise, odd blocks global
        stages.update({f"decoder.{i}": "frame blocks" for i in range(0, cfg.depth, 2)})
    elif model.spec.family == "da3":  # one ViT: blocks before alt_start are the per-view encoder, then frame/global
        for i in range(cfg.depth):
            path = f"backbone.pretrained.blocks.{i}"
            if path not in stages:
                stages[path] = "encoder" if i < cfg.alt_start else "frame blocks"
    return stages


def describe(model, size: int) -> str:
    """One line on the benchmarked architecture, from its config."""
    cfg = model.config
    if model.spec.family == "vggt":
        text = (
            f"VGGT architecture at the official-fixture size (width {cfg.embed_dim}, {cfg.depth}+{cfg.depth} blocks, "
            f"{cfg.num_heads} heads, {cfg.encoder.depth}-block encoder, DPT features {cfg.dpt_features})"
        )
    elif model.spec.family == "pi3":
        text = (
            f"π³ architecture at the official-fixture size (width {cfg.embed_dim}, {cfg.encoder_depth}-block encoder, "
            f"{cfg.depth}-block decoder = {cfg.depth // 2} frame + {cfg.depth // 2} global, {cfg.num_heads} heads, "
            f"{cfg.head_depth}-block point/conf/camera decoders of width {cfg.head_embed_dim})"
        )
    else:
        text = (
            f"DA3 architecture at the official-fixture size (width {cfg.embed_dim}, {cfg.depth} blocks, "
            f'{cfg.num_heads} heads, frame-wise up to block {cfg.alt_start - 1} ("encoder"), global blocks '
            f"{', '.join(map(str, cfg.global_layers))}, DualDPT features {cfg.head_features})"
        )
    return f"{text}, {size}×{size} images, batch 1"


class StageClock:
    """Wall time per stage through forward pre/post hooks, plus the dense attention core (SDPA) of global layers."""

    def __init__(self, model, global_attention: list) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._start: dict[int, float] = {}
        for path, stage in stage_modules(model).items():
            module = model.get_submodule(path)
            for target in module if isinstance(module, torch.nn.ModuleList) else [module]:
                self._hook(target, stage)
        for attn in global_attention:
            self._hook(attn, "global attention")

    def _hook(self, module, stage: str) -> None:
        def pre(m, args, kwargs=None):
            self._start[id(m)] = time.perf_counter()

        def post(m, args, out):
            self.totals[stage] += time.perf_counter() - self._start[id(m)]

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    def reset(self) -> None:
        self.totals.clear()


class TimedDenseReducer:
    """The dense attention computation, with its SDPA core timed (a plain `Attention.reducer` object)."""

    def __init__(self, totals: dict[str, float]) -> None:
        self.totals = totals

    def __call__(self, attn, x, pos, layout):
        from spark3r_stream.models.layers.attention import sdpa

        q, k, v = attn.project_qkv(x, pos)
        start = time.perf_counter()
        o = sdpa(q, k, v)
        self.totals["attention core"] += time.perf_counter() - start
        return attn.project_out(o)


def build_bench_model(family: str = "vggt"):
    """The `family` architecture at its official-fixture size with the fixture's weights."""
    from spark3r_stream.models import load_weights, model_from_official_config
    from tests.conftest import FIXTURES

    folder = FIXTURES / FIXTURES_OF[family]
    cfg = json.loads((folder / "config.json").read_text())
    model = model_from_official_config(family, cfg["config"] if family == "vggt" else cfg)
    load_weights(model, folder / "weights.safetensors")
    return model


def bf16_change(model, images: torch.Tensor) -> dict[str, float]:
    """How far the accelerated model's outputs move under CPU bf16 autocast, against float32 on the same input."""
    outputs = {}
    for enabled in (False, True):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            outputs[enabled] = {k: v.float() for k, v in model(images).items() if isinstance(v, torch.Tensor)}
    ref, out = outputs[False], outputs[True]

    def rel(key: str) -> float:
        return float((out[key] - ref[key]).abs().max() / ref[key].abs().max())

    depth_absrel = float(((out["depth"] - ref["depth"]).abs() / ref["depth"].abs().clamp_min(1e-6)).mean())
    return {"pose_enc_rel": rel("pose_enc"), "depth_absrel": depth_absrel, "world_points_rel": rel("world_points")}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="bench_backbone", description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(FIXTURES_OF), default="vggt", help="architecture (fixture size)")
    parser.add_argument("--frames", type=int, nargs="+", default=[100, 300, 500, 1000])
    parser.add_argument("--size", type=int, default=112, help="square image side (multiple of 14)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="Spark3R repeats (dense: 2, or 1 above 400 frames)")
    parser.add_argument("--autocast", choices=["none", "bf16"], default="none", help="caller-side CPU autocast")
    parser.add_argument("--name", help="result file stem (default bench_backbone, or bench_backbone_<model>)")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: tiny S, one repeat, no result files")
    parser.add_argument(
        "--malloc-keep-mb",
        type=int,
        default=1024,
        help="freed memory glibc keeps for reuse, as the reconstruction "
        "node (reconstruction.malloc_keep_mb); 0 = glibc's defaults",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.repeats = [4, 24], 1
    name = args.name or ("bench_backbone" if args.model == "vggt" else f"bench_backbone_{args.model}")

    from spark3r_stream.models import reduction_targets_of
    from spark3r_stream.spark3r import accelerate, disable

    torch.set_num_threads(args.threads)
    keeps_memory = bool(args.malloc_keep_mb) and keep_freed_memory(args.malloc_keep_mb << 20)
    torch.manual_seed(0)
    load_start = os.getloadavg()[0]
    model = build_bench_model(args.model)
    targets = reduction_targets_of(model)
    global_attention = [model.get_submodule(path) for path in targets.global_attention]
    clock = StageClock(model, global_attention)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast == "bf16")

    def forward(images):
        clock.reset()
        base = reset_peak_rss()
        start = time.perf_counter()
        with torch.inference_mode(), autocast:
            model(images)
        total = time.perf_counter() - start
        return total, dict(clock.totals), peak_rss_bytes() - base

    def use_dense():
        disable(model)
        for attn in global_attention:
            attn.reducer = TimedDenseReducer(clock.totals)

    rows = []
    for S in args.frames:
        images = torch.rand(S, 3, args.size, args.size)
        warm = images[: min(S, 8)]
        use_dense()
        forward(warm)
        accelerate(model)
        forward(warm)
        dense_runs, spark_runs = [], []
        dense_repeats = 1 if (S > 400 or args.quick) else 2
        for i in range(max(dense_repeats, args.repeats)):  # interleaved: both see the same machine load
            if i < dense_repeats:
                use_dense()
                dense_runs.append(forward(images))
            accelerate(model)
            spark_runs.append(forward(images))
        plan = model.last_reduction_plan
        dense = sorted(dense_runs, key=lambda r: r[0])[len(dense_runs) // 2]
        spark = sorted(spark_runs, key=lambda r: r[0])[len(spark_runs) // 2]
        d_split, s_split = dense[1], spark[1]
        d_heads, s_heads = d_split.get("dense heads", 0.0), s_split.get("dense heads", 0.0)
        core = d_split["attention core"]
        fraction = plan["attention_flop_fraction"]
        ideal_no_heads = (dense[0] - d_heads) / (dense[0] - d_heads - core + core * fraction)
        row = {
            "frames": S,
            "r_q": plan["r_q"],
            "r_kv": plan["r_kv"],
            "dense_s": dense[0] - d_heads,
            "spark3r_s": spark[0] - s_heads,
            "speedup": (dense[0] - d_heads) / (spark[0] - s_heads),
            "ideal": ideal_no_heads,
            "dense_e2e_s": dense[0],
            "spark3r_e2e_s": spark[0],
            "speedup_e2e": dense[0] / spark[0],
            "core_flop_fraction": fraction,
            "d_encoder": d_split["encoder"],
            "d_frame": d_split["frame blocks"],
            "d_core": core,
            "d_attn_rest": d_split["global attention"] - core,
            "d_global_rest": d_split["global blocks"] - d_split["global attention"],
            "d_camera": d_split["camera head"],
            "d_dpt": d_heads,
            "s_encoder": s_split["encoder"],
            "s_frame": s_split["frame blocks"],
            "s_attn": s_split["global attention"],
            "s_global_rest": s_split["global blocks"] - s_split["global attention"],
            "s_camera": s_split["camera head"],
            "s_dpt": s_heads,
            "dense_peak_mib": dense[2] / 2**20,
            "spark3r_peak_mib": spark[2] / 2**20,
            "dense_repeats": dense_repeats,
            "spark3r_repeats": args.repeats,
        }
        row["achieved_pct"] = 100 * row["speedup"] / row["ideal"]
        if args.autocast == "bf16":
            row.update(bf16_change(model, images))  # Spark3R under autocast against Spark3R in float32
        rows.append(row)
        print(json.dumps(row), flush=True)
    heads = DENSE_HEADS[args.model]
    speed = [
        ("frames", "S"),
        ("r_q", "r_Q"),
        ("r_kv", "r_KV (base)"),
        ("dense_s", "dense (s)"),
        ("spark3r_s", "Spark3R (s)"),
        ("speedup", "speedup (×)"),
        ("ideal", "ideal from split (×)"),
        ("achieved_pct", "achieved / ideal (%)"),
        ("dense_e2e_s", "dense e2e (s)"),
        ("spark3r_e2e_s", "Spark3R e2e (s)"),
        ("speedup_e2e", "e2e speedup (×)"),
    ]
    split = [
        ("frames", "S"),
        ("d_encoder", "encoder"),
        ("d_frame", "frame blocks"),
        ("d_core", "global attn core (SDPA)"),
        ("d_attn_rest", "global attn qkv/proj/norm/RoPE"),
        ("d_global_rest", "global blocks rest (MLP, norms)"),
        ("d_camera", "camera head"),
        ("d_dpt", heads),
    ]
    spark_split = [
        ("frames", "S"),
        ("s_encoder", "encoder"),
        ("s_frame", "frame blocks"),
        ("s_attn", "global attention (all of Spark3R)"),
        ("s_global_rest", "global blocks rest (MLP, norms)"),
        ("s_camera", "camera head"),
        ("s_dpt", heads),
    ]
    memory = [("frames", "S"), ("dense_peak_mib", "dense peak (MiB)"), ("spark3r_peak_mib", "Spark3R peak (MiB)")]
    change = [
        ("frames", "S"),
        ("pose_enc_rel", "pose_enc: max abs Δ ÷ max abs fp32"),
        ("depth_absrel", "depth AbsRel vs fp32"),
        ("world_points_rel", "world_points: max abs Δ ÷ max abs fp32"),
    ]
    markdown = (
        machine_load_note(load_start)
        + describe(model, args.size)
        + ", float32"
        + (" under caller-side bf16 CPU autocast (heads stay float32)" if args.autocast == "bf16" else "")
        + f", {args.threads} threads"
        + (
            f", glibc keeping up to {args.malloc_keep_mb} MB of freed memory (as the reconstruction node)"
            if keeps_memory
            else ""
        )
        + "; paper factors (Eqs. 4–5, l = 3; sensitive global layers "
        f"{list(targets.sensitive_layers)} of {len(global_attention)}, the paper's mapped by relative depth).\n"
        f'"without heads" = the forward minus the dense heads\' ({heads}) time measured inside the same forward '
        "(hooks); it includes encoder, frame/global blocks and camera head; e2e includes the dense heads too. "
        "Ideal = dense ÷ (dense − core + core × the plan's "
        "attention-core FLOP fraction), from the same run's split. Dense and Spark3R runs are interleaved; "
        "dense median of 2 (1 above 400 frames), Spark3R median of "
        f"{args.repeats}; warm-up first. Peak memory = process high-water mark over the forward minus the RSS "
        "before it"
        + (
            " (the RSS before a forward already holds up to the kept freed memory of the previous one, so these "
            "understate; `--malloc-keep-mb 0` for memory figures)"
            if keeps_memory
            else ""
        )
        + f".\n\n## Speed (without {heads} unless marked e2e)\n\n"
        + table(rows, speed)
        + "\n## Dense time split (s)\n\n"
        + table(rows, split)
        + "\n## Spark3R time split (s)\n\n"
        + table(rows, spark_split)
        + "\n## Peak memory\n\n"
        + table(rows, memory)
        + (
            "\n## Output change of the bf16 path (Spark3R under bf16 autocast vs Spark3R in float32, same input)\n\n"
            + table(rows, change)
            if args.autocast == "bf16"
            else ""
        )
    )
    if not args.quick:
        head = {**header("bench_backbone", argv), "bench": name}  # the command names the script, the title the file
        write_results(name, head, markdown, {"model": args.model, "rows": rows})
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
