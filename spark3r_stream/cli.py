"""`spark3r` console script: argparse subcommands that call the library, nothing else."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from spark3r_stream.errors import Spark3RError

log = logging.getLogger("spark3r")
BENCHMARKS = (
    "attention",
    "backbone",
    "fidelity",
    "transport",
    "pipeline",
    "profile",
    "quality",
    "encoder_cache",
    "backend",
    "faults",
    "streaming",
)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def model_options(args: argparse.Namespace, **extra):
    """The InferOptions of the model flags shared by `infer` and `eval` (--model, --weights, --spark3r, ...)."""
    from spark3r_stream.offline import InferOptions

    return InferOptions(
        model=args.model,
        weights=args.weights,
        random_weights=args.random_weights,
        spark3r=args.spark3r,
        device=args.device,
        **extra,
    )


def add_viewer_options(parser: argparse.ArgumentParser) -> None:
    """The same Rerun flags on every command that records (infer, demo, launch, run): one RerunConfig behind them."""
    group = parser.add_argument_group("viewer (Rerun; headless by default: only the .rrd file is written)")
    group.add_argument("--spawn", action="store_true", help="start a local Rerun viewer and stream to it (a display)")
    group.add_argument("--connect", metavar="URL", help="stream to a running viewer, e.g. rerun+http://HOST:9876/proxy")
    rrd = group.add_mutually_exclusive_group()
    rrd.add_argument("--rrd", metavar="PATH", help="save the recording here (default: OUT/recording.rrd)")
    rrd.add_argument("--no-rrd", action="store_true", help="save no recording")


def viewer_config(args: argparse.Namespace, out: Path):
    """The RerunConfig of the viewer flags."""
    from spark3r_stream.viz.config import RerunConfig

    rrd = None if args.no_rrd else Path(args.rrd) if args.rrd else out / "recording.rrd"
    return RerunConfig(spawn=args.spawn, connect_url=args.connect, rrd_path=rrd)


def viewer_overrides(args: argparse.Namespace) -> list[str]:
    """The viewer flags as launch-file overrides of the fusion node (its `rerun` params and `save_rrd`)."""
    overrides = ["fusion.rerun.spawn=true"] if args.spawn else []
    overrides += [f"fusion.rerun.connect_url={args.connect}"] if args.connect else []
    overrides += [f"fusion.rerun.rrd_path={Path(args.rrd).resolve()}"] if args.rrd else []
    overrides += ["fusion.save_rrd=false"] if args.no_rrd else []
    return overrides


def out_dir(path: str | Path | None) -> Path | None:
    """`--out PATH` as a folder (created later); Spark3RError when PATH names something that is not a folder."""
    if path is None:
        return None
    if Path(path).exists() and not Path(path).is_dir():
        raise Spark3RError(f"--out {path}: is a file, not a folder; give a folder (it is created if missing)")
    return Path(path)


def cmd_infer(args: argparse.Namespace) -> int:
    from spark3r_stream.offline import run_inference

    out_dir(args.out)
    options = model_options(args, spark3r_config=args.spark3r_config, mode=args.mode)
    report = run_inference(args.inputs, Path(args.out), options, viewer_config(args, Path(args.out)))
    print(f"wrote {args.out} ({report['counters']['frames']} frames, forward {report['timings_ms']['forward']:.0f} ms)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from spark3r_stream.train.trainer import TRAIN_PRESETS, ship_weights, train

    if args.preset not in TRAIN_PRESETS:
        raise Spark3RError(f"train preset {args.preset!r}: unknown; choose one of {', '.join(TRAIN_PRESETS)}")
    if args.ship:
        target = ship_weights([Path(path) for path in args.ship], args.preset)
        what = args.ship[0] if len(args.ship) == 1 else f"the average of {', '.join(args.ship)}"
        print(f"shipped {what} as {target} (float16)")
        return 0
    overrides = {
        k: v
        for k, v in (("total_steps", args.steps), ("out_dir", args.out), ("num_threads", args.threads))
        if v is not None
    }
    cfg = dataclasses.replace(TRAIN_PRESETS[args.preset], **overrides)
    state = train(cfg, resume=not args.fresh, max_minutes=args.minutes)
    print(f"training state in {state}; weights in {state.parent / 'weights.safetensors'}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from spark3r_stream.synth import export_tum_folder, render_sequence

    sequence = render_sequence(args.seed, args.frames, height=args.height, width=args.width, path=args.path)
    out = export_tum_folder(sequence, args.out_dir)
    print(f"wrote {sequence.num_frames} frames of seed {args.seed} ({args.path}) to {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from spark3r_stream.eval import format_markdown_table
    from spark3r_stream.eval.model_eval import (
        QUALITY_COLUMNS,
        baseline_rows,
        evaluate_model,
        held_out_pair_errors,
        load_sequence,
        summarize,
    )
    from spark3r_stream.offline import load_model, resolve_device
    from spark3r_stream.report import progress

    if not args.sequences and not args.pairs:
        raise Spark3RError("eval: give sequences to score, --pairs N, or both")
    out_dir(args.out)
    options = model_options(args)
    model = load_model(options, resolve_device(args.device))
    rows = []
    for spec in progress(args.sequences, desc="eval"):
        sequence = load_sequence(spec, model.spec.input_size, args.max_frames)
        rows += [evaluate_model(model, sequence), *baseline_rows(sequence)]
    table = format_markdown_table(rows + summarize(rows), QUALITY_COLUMNS) if rows else ""
    pairs = held_out_pair_errors(model, num_pairs=args.pairs) if args.pairs else None
    if pairs:
        table += (
            f"\nheld-out pairs: {pairs['pairs']}, rotation error {pairs['rotation_error_deg']:.2f}° "
            f"(identity {pairs['identity_rotation_error_deg']:.2f}°, ratio "
            f"{pairs['rotation_error_deg'] / pairs['identity_rotation_error_deg']:.3f}), translation direction error "
            f"{pairs['translation_direction_error_deg']:.1f}° (chance 90°)\n"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.md").write_text(table)
    report = {"model": args.model, "weights": args.weights, "spark3r": args.spark3r, "rows": rows, "pairs": pairs}
    (out / "eval.json").write_text(json.dumps(report, indent=1))
    print(table + f"\nwritten to {out}/eval.md and eval.json")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.frames is not None and args.frames < 1:
        raise Spark3RError(f"demo --frames {args.frames}: expected >= 1")
    overrides = [f"capture.frames={args.frames}"] if args.frames else []
    file, out = ("long_window", args.out or "runs/long") if args.long else ("demo", args.out or "runs/demo")
    return _run_launch_file(file, out, overrides + viewer_overrides(args), args.single_process)


def cmd_launch(args: argparse.Namespace) -> int:
    return _run_launch_file(args.file, args.out, viewer_overrides(args) + args.set, args.single_process)


def _run_launch_file(file: str, out: str, overrides: list[str], single_process: bool) -> int:
    from spark3r_stream.launcher import launch, run_single_process, summarize_run

    out_dir(out)
    code = run_single_process(file, out, overrides) if single_process else launch(file, out, overrides)
    print(summarize_run(out))
    return code


def cmd_run_node(args: argparse.Namespace) -> int:
    from pathlib import Path as _Path

    import yaml

    out_dir(args.out)
    from spark3r_stream.launch_files import node_config_from, run_node_overrides

    config = node_config_from(args.config, args.name, run_node_overrides(args.name, args.set), out=args.out)
    path = _Path(config["out"]) / "launch" / f"{args.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    node = importlib.import_module(f"spark3r_stream.nodes.{config['node']}")  # the node's own main, in this process
    return int(node.main(["--config", str(path), "--name", args.name, "--log-level", args.log_level]))


def cmd_keys(args: argparse.Namespace) -> int:
    from spark3r_stream.transport.endpoints import generate_curve_keys

    names = args.name or ["node"]
    if len(set(names)) != len(names):
        raise Spark3RError(f"keys generate --name {' '.join(names)}: a name is given twice")
    for name in names:  # every name is checked before the first file is written
        generate_curve_keys(args.dir, name, force=args.force, check_only=True)
    for name in names:
        public, secret = generate_curve_keys(args.dir, name, force=args.force)
        print(f"wrote {public} (public: give it to the peers that allow {name}) and {secret} (secret, mode 0600)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    try:  # the benchmarks are repository tools (not installed): run from a checkout
        module = importlib.import_module(f"benchmarks.bench_{args.name}")
    except ModuleNotFoundError as exc:
        if exc.name not in ("benchmarks", f"benchmarks.bench_{args.name}"):
            raise
        raise Spark3RError(
            f"bench {args.name}: benchmarks/bench_{args.name}.py not found; the benchmarks ship with the repository, "
            "not the wheel: run this from a checkout of spark3r-stream"
        ) from None
    return int(module.main(args.bench_args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spark3r", description=__doc__)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("infer", help="reconstruct a set of images offline: depth, cameras, points, .rrd")
    p.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    p.add_argument("--model", default="vggt-tiny")
    p.add_argument(
        "--weights", help="checkpoint path or Hugging Face repo id (required for presets without shipped weights)"
    )
    p.add_argument("--random-weights", action="store_true", help="smoke test only: run with untrained weights")
    p.add_argument("--spark3r", action=argparse.BooleanOptionalAction, default=True, help="Spark3R token reduction")
    p.add_argument("--spark3r-config", help="Spark3R preset YAML (configs/spark3r/*.yaml)")
    p.add_argument("--mode", default="crop", choices=["crop", "pad"], help="VGGT preprocessing mode (π³/DA3: one each)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (auto: cuda when available)")
    p.add_argument("--out", required=True)
    add_viewer_options(p)
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("train", help="train (or resume) a small model on rendered scenes")
    p.add_argument("--preset", default="vggt-tiny")
    p.add_argument("--steps", type=int, help="total steps (default: the preset's)")
    p.add_argument("--minutes", type=float, help="stop after this many minutes (resume later)")
    p.add_argument("--out", help="checkpoint folder (default: checkpoints/<preset>)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--threads", type=int, help="torch threads (default: the preset's, 2)")
    p.add_argument(
        "--ship",
        nargs="+",
        metavar="WEIGHTS",
        help="copy trained weights.safetensors (several: their average) into the package (float16), then exit",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("synth", help="synthetic sequences with ground truth")
    synth = p.add_subparsers(dest="synth_command", required=True)
    e = synth.add_parser("export", help="write a TUM-RGB-D-style folder")
    e.add_argument("out_dir")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--frames", type=int, default=60)
    e.add_argument("--height", type=int, default=112)
    e.add_argument("--width", type=int, default=112)
    e.add_argument("--path", default="handheld", choices=["handheld", "orbit", "forward", "loop"])
    e.set_defaults(func=cmd_synth)

    p = sub.add_parser("eval", help="score a model on sequences with ground truth, next to trivial baselines")
    p.add_argument("sequences", nargs="*", help="synth:seed=N,frames=S[,path=P] or a dataset folder / source spec")
    p.add_argument("--pairs", type=int, default=0, help="also run the two-view pose probe on N held-out pairs")
    p.add_argument("--model", default="vggt-tiny")
    p.add_argument("--weights")
    p.add_argument("--random-weights", action="store_true")
    p.add_argument("--spark3r", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--device", default="auto")
    p.add_argument("--max-frames", type=int, help="first N frames of dataset sequences")
    p.add_argument("--out", default="runs/eval")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("probe", help="measure the Spark3R layer sensitivity of a model; writes a schedule file")
    p.add_argument("probe_args", nargs=argparse.REMAINDER, help="--model NAME [--weights P] [--out F] SEQUENCE…")

    p = sub.add_parser("bench", help="run a benchmark from benchmarks/ (results in benchmarks/results/)")
    p.add_argument("name", choices=BENCHMARKS)
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark (e.g. --quick)")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("demo", help="the whole pipeline on a bundled synthetic sequence (launch/demo.yaml)")
    p.add_argument("--out", help="output folder (default: runs/demo, with --long runs/long)")
    p.add_argument("--frames", type=int, help="frames of the synthetic sequence (default: the launch file's)")
    p.add_argument(
        "--long",
        action="store_true",
        help="the long stream instead (launch/long_window.yaml): 3,000 frames at 30 fps, windows up to 1,000 keyframes",
    )
    p.add_argument("--single-process", action="store_true", help="every step in this process (no ZeroMQ)")
    add_viewer_options(p)
    p.set_defaults(func=cmd_demo)

    for name, text in (
        ("launch", "run a launch file: every node its own process"),
        ("run", "run a launch file: every node its own process, or all in this one with --single-process"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("file", help="launch file (path, or a name in launch/: demo, replay_tum, ...)")
        p.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE", help="override (repeatable)")
        p.add_argument("--out", required=True, help="output folder")
        p.add_argument("--single-process", action="store_true", help="every step in this process (no ZeroMQ)")
        add_viewer_options(p)
        p.set_defaults(func=cmd_launch)

    p = sub.add_parser("run-node", help="run one node by hand (e.g. reconstruction on another host)")
    p.add_argument("name", help="node name in the launch file (capture, keyframes, reconstruction, fusion)")
    p.add_argument("--config", required=True, help="launch file (the node is picked from it) or a node config")
    p.add_argument("--set", action="append", default=[], metavar="PARAM=VALUE", help="override a param")
    p.add_argument("--out", help="output folder (default: runs/NAME)")
    p.set_defaults(func=cmd_run_node)

    p = sub.add_parser("keys", help="CURVE key pairs for nodes on several hosts")
    keys = p.add_subparsers(dest="keys_command", required=True)
    k = keys.add_parser("generate", help="write NAME.key (public) and NAME.key_secret (mode 0600) into DIR")
    k.add_argument("dir", help="key directory (created if missing); also usable as an allow-list of public keys")
    k.add_argument("--name", action="append", metavar="NAME", help="key pair name (repeatable; default: node)")
    k.add_argument("--force", action="store_true", help="replace existing key files of these names")
    k.set_defaults(func=cmd_keys)
    return parser


# Subcommands whose own argparse parses everything after the name (their flags are theirs, not ours).
DELEGATED = {"probe": "spark3r_stream.spark3r.probe"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:
        _setup_logging("info")
        try:
            return int(importlib.import_module(DELEGATED[argv[0]]).main(argv[1:]))
        except Spark3RError as exc:
            print(f"spark3r {argv[0]}: {exc}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    try:
        return args.func(args)
    except Spark3RError as exc:
        print(f"spark3r {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spark3r {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
