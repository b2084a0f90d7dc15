"""Streaming benchmark: the long stream (launch/long_window.yaml) with Spark3R and with the dense model, one after
the other in one run: per-run latency against window size, keyframe lag (selection -> first pose) p50/p95 over time,
keyframes/s sustained, peak RSS per node, frames lost and posed; a plot beside the table.

    python -m benchmarks.bench_streaming [--frames 3000] [--dense-cap-s 480] [--window-run 1000] [--live] [--quick]

Both runs go through the launcher exactly as `spark3r demo --long` does (four processes, the synthetic replay paced at
30 fps, latest-wins window requests). The dense run is stopped with SIGINT after --dense-cap-s; its outputs and
reports are written on the way out. Lag is measured from the keyframes node's wall time when it selected the
keyframe to the reconstruction node's wall time when the first run holding it ended (same machine, same clock);
fusion's per-window time is reported beside it. A keyframe no run posed before the cap counts in `unposed`.

`--live`: benchmarks/live_stream.py's `live_stream_figures(...)` (a live MJPEG stream through
launch/live_camera.yaml: frames offered / processed / dropped stale, lag) is called and its figures are tabled.
Then one window of --window-run keyframes alone in this process (2 torch threads): the issue's target run.
`--quick` (CI smoke run): a few seconds of stream per setting, windows of 16, no result files.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_attention import RESULTS, header, table, write_results

REPO = Path(__file__).resolve().parent.parent
NAME = "bench_streaming"
SETTINGS = {"Spark3R": [], "dense": ["--set", "reconstruction.spark3r=false"]}
NODES = ("capture", "keyframes", "reconstruction", "fusion")
QUICK = {"frames": 48, "max_window": 16, "cap_s": 120.0}
LAG_BIN_S = 10.0  # keyframes are grouped by selection time into spans of this length for the lag over time
STOP_WAIT_S = 5  # after SIGINT, before a second one to the reconstruction node (a dense run can take minutes)
SHUTDOWN_TIMEOUT_S = 60  # the launcher's wait after SIGINT, and again after SIGTERM, in a stopped run
STOP_GRACE_S = (
    3 * SHUTDOWN_TIMEOUT_S
)  # after SIGINT: the launcher's own shutdown (SIGTERM after shutdown_timeout_s, then SIGKILL)


def run_stream(setting: str, frames: int, out: Path, cap_s: float | None, extra: list[str]) -> dict[str, Any]:
    """One launcher run of long_window; SIGINT after `cap_s` seconds. Returns the merged report and the wall time."""
    print(f"{setting}: {frames} frames at 30 fps ...", flush=True)
    args = [sys.executable, "-m", "spark3r_stream.cli", "launch", "long_window", "--out", str(out), "--no-rrd"]
    args += ["--set", f"capture.frames={frames}", *SETTINGS[setting], *extra]
    if cap_s is not None:  # a stopped run: fusion may be inside a long window; let it finish and write everything
        args += ["--set", f"shutdown_timeout_s={SHUTDOWN_TIMEOUT_S}"]
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(REPO)}
    log_path = out.parent / f"{out.name}.log"
    start = time.perf_counter()
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        capped = False
        try:
            proc.wait(timeout=cap_s)
        except subprocess.TimeoutExpired:
            capped = True
            proc.send_signal(signal.SIGINT)  # every node writes its outputs and report on the way out
            try:
                proc.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:  # a node in the middle of a long run: a second SIGINT interrupts it
                interrupt_node(log_path, "reconstruction")
                proc.wait(timeout=STOP_GRACE_S)
    wall_s = time.perf_counter() - start
    report_path = out / "report.json"
    if not report_path.exists():
        raise RuntimeError(f"{setting} run wrote no report (exit {proc.returncode}); see {log_path}")
    if proc.returncode not in (0, 130) and not capped:
        raise RuntimeError(f"{setting} run failed (exit {proc.returncode}); see {log_path}")
    return {"report": json.loads(report_path.read_text()), "wall_s": wall_s, "capped": capped, "out": out}


def interrupt_node(log_path: Path, node: str) -> None:
    """SIGINT to a node process of this run (its pid from the launcher's 'started (pid N)' line): a node already
    stopping takes a second SIGINT as KeyboardInterrupt, leaves its model run and writes its report."""
    pids = re.findall(rf"^\[{node}\] launcher: started \(pid (\d+)\)", log_path.read_text(), flags=re.MULTILINE)
    if pids:
        try:
            os.kill(int(pids[-1]), signal.SIGINT)
        except ProcessLookupError:
            pass  # it ended meanwhile


def node_report(report: dict[str, Any], node: str) -> dict[str, Any]:
    if node == "fusion":  # the run's report.json is fusion's own, with the launcher's pipeline section
        return report
    return (report["pipeline"]["nodes"].get(node) or {}).get("report") or {}


def lag_figures(selected: dict[int, float], first_pose: dict[int, float], t0: float, bin_s: float) -> dict[str, Any]:
    """Per keyframe lag (s) and its p50/p95 per `bin_s` span of selection time; unposed keyframes counted apart."""
    posed = sorted(k for k in selected if k in first_pose)
    lag = np.array([first_pose[k] - selected[k] for k in posed])
    t_sel = np.array([selected[k] - t0 for k in posed])
    bins = []
    for index in np.unique(np.floor(t_sel / bin_s)).astype(int) if len(posed) else []:
        values = lag[np.floor(t_sel / bin_s) == index]
        bins.append(
            {
                "t_s": round(float(index * bin_s), 1),
                "keyframes": len(values),
                "lag_p50_s": float(np.percentile(values, 50)),
                "lag_p95_s": float(np.percentile(values, 95)),
            }
        )
    return {
        "num_selected": len(selected),
        "num_posed": len(posed),
        "unposed": len(selected) - len(posed),
        "lag_p50_s": float(np.percentile(lag, 50)) if len(lag) else None,
        "lag_p95_s": float(np.percentile(lag, 95)) if len(lag) else None,
        "lag_max_s": float(lag.max()) if len(lag) else None,
        "bins": bins,
        "series": {"t_s": t_sel.round(3).tolist(), "lag_s": lag.round(3).tolist()},
    }


def summarize(setting: str, run: dict[str, Any], frames: int, bin_s: float) -> dict[str, Any]:
    report = run["report"]
    keyframes, recon = node_report(report, "keyframes"), node_report(report, "reconstruction")
    selected = {int(k): float(t) for k, t in keyframes.get("keyframe_selected_s", [])}
    first_pose = {int(k): float(t) for k, t in recon.get("keyframe_first_pose_s", [])}
    t0 = min(selected.values()) if selected else 0.0
    runs = [{**r, "t_s": round(r["t_start_s"] - t0, 3)} for r in recon.get("runs", [])]
    lag = lag_figures(selected, first_pose, t0, bin_s)
    accounting = report["pipeline"].get("accounting") or {}
    trajectory = run["out"] / "trajectory.tum"
    frames_posed = sum(1 for line in trajectory.read_text().splitlines() if line and not line.startswith("#"))
    span_s = (max(first_pose.values()) - t0) if first_pose else None
    superseding = [r for r in runs if r["superseded"] > 0]
    fuse = (report.get("stages") or {}).get("fuse_window") or {}
    return {
        "setting": setting,
        "capped": run["capped"],
        "wall_s": round(run["wall_s"], 1),
        "frames": frames,
        "frames_posed": frames_posed,
        "accounting": accounting,
        "num_runs": len(runs),
        "superseded": sum(r["superseded"] for r in runs),
        "max_window": max((r["num_keyframes"] for r in runs), default=0),
        "falls_behind_at": superseding[0]["num_keyframes"] if superseding else None,
        "keyframes_per_s_selected": round(len(selected) / (max(selected.values()) - t0), 2)
        if len(selected) > 1
        else None,
        "keyframes_per_s_posed": round(lag["num_posed"] / span_s, 2) if span_s else None,
        "fuse_window_p50_ms": fuse.get("p50_ms"),
        "fuse_window_max_ms": fuse.get("max_ms"),
        "rss_mb": {node: node_report(report, node).get("max_rss_mb") for node in NODES},
        "runs": runs,
        "lag": lag,
        "ate_rmse_m": ((report.get("trajectory") or {}).get("all_frames") or {}).get("ate_rmse_m"),
    }


def frames_lost(accounting: dict[str, Any]) -> str:
    """Messages lost on the lossless edges, from the launcher's accounting: frames / keyframes / results."""
    return " / ".join(str(accounting.get(k)) for k in ("frames_lost", "keyframes_lost", "results_lost"))


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def live_figures(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """benchmarks/live_stream.py's figures (its CI smoke run with --quick)."""
    from benchmarks.live_stream import live_stream_figures

    return live_stream_figures(out=work / "live", quick=args.quick)


def window_run(num_keyframes: int, threads: int, stride: int = 4) -> dict[str, Any]:
    """The target's run in isolation: one window of `num_keyframes` keyframes (synthetic handheld frames) with Spark3R,
    re-run after `stride` new keyframes, with the encoder cache and the streaming head schedule (dense heads on the
    new keyframes plus the refresh budget); `threads` torch threads. The re-run is timed; the first run encodes all."""
    import torch

    from spark3r_stream.sources.synthetic import SyntheticSource
    from spark3r_stream.stream.reconstructor import ReconstructionConfig, WindowReconstructor

    torch.manual_seed(0)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        reconstructor = WindowReconstructor.from_config(ReconstructionConfig())
        frames = list(SyntheticSource(seed=1, frames=num_keyframes, path="handheld"))
        for keyframe_id, frame in enumerate(frames):
            reconstructor.add_keyframe(keyframe_id, frame.image)
        start = time.perf_counter()
        reconstructor.run(0, tuple(range(num_keyframes - stride)))
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        output = reconstructor.run(1, tuple(range(num_keyframes)))
        rerun_s = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous)
    return {
        "num_keyframes": num_keyframes,
        "threads": threads,
        "first_run_s": round(first_s, 2),
        "rerun_s": round(rerun_s, 2),
        "rerun_encode_ms": output.timings["encode_ms"],
        "rerun_forward_ms": output.timings["forward_ms"],
        "num_dense": len(output.dense_keyframe_ids),
    }


def live_table(live: dict[str, Any]) -> str:
    return table(
        [{"figure": k, "value": v} for k, v in _flatten(live).items()], [("figure", "figure"), ("value", "value")]
    )


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    colours = {"Spark3R": "tab:blue", "dense": "tab:red"}
    for result in results:
        colour, name = colours.get(result["setting"], None), result["setting"]
        runs = result["runs"]
        by_size = sorted(runs, key=lambda r: r["num_keyframes"])
        axes[0, 0].plot(
            [r["num_keyframes"] for r in by_size], [r["run_ms"] / 1e3 for r in by_size], "o-", ms=3, c=colour
        )
        axes[0, 1].plot([r["t_s"] for r in runs], [r["num_keyframes"] for r in runs], "o-", ms=3, c=colour, label=name)
        series = result["lag"]["series"]
        axes[1, 0].scatter(series["t_s"], series["lag_s"], s=2, alpha=0.25, color=colour)
        bins = result["lag"]["bins"]
        axes[1, 0].plot([b["t_s"] for b in bins], [b["lag_p95_s"] for b in bins], "-", c=colour, label=f"{name} p95")
        axes[1, 0].plot([b["t_s"] for b in bins], [b["lag_p50_s"] for b in bins], "--", c=colour, label=f"{name} p50")
    axes[0, 0].set(xlabel="window size (keyframes)", ylabel="run time (s)", title="per-run latency", yscale="log")
    axes[0, 1].set(xlabel="stream time (s)", ylabel="window size (keyframes)", title="window size over time")
    axes[1, 0].set(xlabel="keyframe selected at (s)", ylabel="lag to first pose (s)", title="keyframe lag")
    width = 0.38
    for i, result in enumerate(results):
        values = [result["rss_mb"].get(node) or 0 for node in NODES]
        positions = np.arange(len(NODES)) + (i - 0.5) * width
        axes[1, 1].bar(positions, values, width, color=colours.get(result["setting"]), label=result["setting"])
    axes[1, 1].set_xticks(np.arange(len(NODES)), NODES)
    axes[1, 1].set(ylabel="peak RSS (MB)", title="peak RSS per node")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    axes[0, 1].legend()
    axes[1, 0].legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)


def to_markdown(
    results: list[dict[str, Any]], live: dict[str, Any] | None, cap_s: float, isolated: dict[str, Any] | None = None
) -> str:
    rows = []
    for r in results:
        lag = r["lag"]
        rows.append(
            {
                "setting": r["setting"] + (f" (stopped at {cap_s:.0f} s)" if r["capped"] else ""),
                "wall_s": r["wall_s"],
                "frames": f"{r['frames_posed']} / {r['accounting'].get('frames_captured')} / {r['frames']}",
                "lost": frames_lost(r["accounting"]),
                "keyframes": f"{lag['num_posed']} / {lag['num_selected']}",
                "runs": f"{r['num_runs']} ({r['superseded']} superseded)",
                "max_window": r["max_window"],
                "behind": r["falls_behind_at"],
                "kps_in": r["keyframes_per_s_selected"],
                "kps_posed": r["keyframes_per_s_posed"],
                "p50": lag["lag_p50_s"],
                "p95": lag["lag_p95_s"],
                "max": lag["lag_max_s"],
                "fuse": r["fuse_window_p50_ms"],
            }
        )
    columns = [
        ("setting", "setting"),
        ("wall_s", "wall (s)"),
        ("frames", "frames posed / captured / in the stream"),
        ("lost", "lost: frames / keyframes / results"),
        ("keyframes", "keyframes posed / selected"),
        ("runs", "window runs"),
        ("max_window", "largest window"),
        ("behind", "runs fall behind the stride at (keyframes)"),
        ("kps_in", "keyframes/s in"),
        ("kps_posed", "keyframes/s posed"),
        ("p50", "lag p50 (s)"),
        ("p95", "lag p95 (s)"),
        ("max", "lag max (s)"),
        ("fuse", "fusion p50 per window (ms)"),
    ]
    text = table(rows, columns)
    text += "\n## Keyframe lag over time (selection -> first pose): p50 / p95 in s (keyframes) by selection time\n\n"
    by_setting = {r["setting"]: {b["t_s"]: b for b in r["lag"]["bins"]} for r in results}
    lag_rows = []
    for t_s in sorted({t for bins in by_setting.values() for t in bins}):
        row: dict[str, Any] = {"t": f"{t_s:.0f}"}
        for setting, bins in by_setting.items():
            b = bins.get(t_s)
            row[setting] = f"{b['lag_p50_s']:.2f} / {b['lag_p95_s']:.2f} ({b['keyframes']})" if b else "-"
        lag_rows.append(row)
    text += table(lag_rows, [("t", "selected from (s)")] + [(r["setting"], r["setting"]) for r in results])
    text += "\n## Per-run latency against window size\n\n"
    sizes = sorted({r["num_keyframes"] for res in results for r in res["runs"]})
    picks = sorted({sizes[int(i)] for i in np.linspace(0, len(sizes) - 1, min(12, len(sizes)))}) if sizes else []
    latency_rows = []
    for size in picks:
        row = {"size": size}
        for res in results:
            near = [r for r in res["runs"] if abs(r["num_keyframes"] - size) <= max(2, size // 20)]
            row[res["setting"]] = f"{np.median([r['run_ms'] for r in near]) / 1e3:.2f}" if near else ""
        latency_rows.append(row)
    text += table(
        latency_rows, [("size", "window (keyframes)")] + [(r["setting"], f"{r['setting']} run (s)") for r in results]
    )
    if isolated is not None:
        text += (
            f"\nOne {isolated['num_keyframes']}-keyframe window alone (this process, {isolated['threads']} torch threads, "
            "Spark3R, encoder cache, dense heads on the 4 new keyframes plus the refresh budget): re-run "
            f"**{isolated['rerun_s']:.2f} s** (encode {isolated['rerun_encode_ms'] / 1e3:.2f} s, model "
            f"{isolated['rerun_forward_ms'] / 1e3:.2f} s, {isolated['num_dense']} decoded densely); the first run, "
            f"encoding all, {isolated['first_run_s']:.2f} s.\n"
        )
    text += "\n## Peak RSS per node (MB)\n\n"
    text += table(
        [{"setting": r["setting"], **{n: r["rss_mb"].get(n) for n in NODES}} for r in results],
        [("setting", "setting")] + [(n, n) for n in NODES],
    )
    if live is not None:
        text += "\n## Live stream (benchmarks/live_stream.py)\n\n" + live_table(live)
    text += (
        "\nLag: the keyframes node's wall time at selection to the end of the first window run that holds the "
        "keyframe (the reconstruction node, same clock). 'Runs fall behind the stride at': the window size of the "
        "first run that superseded a waiting request (the backbone no longer keeps the scheduled stride of 4 new "
        "keyframes): from there on the cadence follows the run time. A stopped run's keyframes that no run posed "
        "count in 'keyframes posed / selected' and are left out of the lag figures. Runs that superseded requests still pose their keyframes.\n\n"
        f"![long stream: latency, window size, lag, memory]({NAME}.png)\n"
    )
    return text


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--dense-cap-s", type=float, default=480.0, help="stop the dense run after this many seconds")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--live", action="store_true", help="add benchmarks/live_stream.py's figures")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: short streams, no result files")
    parser.add_argument("--window-run", type=int, default=1000, help="time one window of this size alone (0: skip)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for that window run")
    parser.add_argument("--keep", help="keep the runs' output folders here (default: a temporary folder)")
    args = parser.parse_args(argv)
    frames = QUICK["frames"] if args.quick else args.frames
    cap_s = QUICK["cap_s"] if args.quick else args.dense_cap_s
    extra = ["--set", f"keyframes.windows.max_window={QUICK['max_window']}"] if args.quick else []
    head = header(NAME, argv)
    with tempfile.TemporaryDirectory(prefix="bench_streaming_") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = []
        # one after the other, so that neither takes the other's cores; --quick runs them side by side (CI time)
        with ThreadPoolExecutor(max_workers=len(args.settings) if args.quick else 1) as pool:
            runs = {
                setting: pool.submit(
                    run_stream, setting, frames, work / setting, cap_s if setting == "dense" else None, extra
                )
                for setting in args.settings
            }
        for setting in args.settings:
            result = summarize(setting, runs[setting].result(), frames, 1.0 if args.quick else LAG_BIN_S)
            results.append(result)
            brief = {k: v for k, v in result.items() if k not in ("runs", "lag", "accounting")}
            brief |= {k: result["lag"][k] for k in ("num_selected", "num_posed", "lag_p50_s", "lag_p95_s")}
            print(json.dumps(brief | {"frames_lost": frames_lost(result["accounting"])}), flush=True)
        live = live_figures(args, work) if args.live else None
        size = QUICK["max_window"] if args.quick else args.window_run
        isolated = window_run(size, args.threads) if size else None
        print(json.dumps({"window_run": isolated}), flush=True)
        markdown = to_markdown(results, live, cap_s, isolated)
        print(markdown)
        if args.quick:
            plot(results, work / f"{NAME}.png")  # the plotting code runs; nothing is written to results/
            return 0
    data = {"results": results, "live": live, "dense_cap_s": cap_s, "window_run": isolated}
    plot(results, RESULTS / f"{NAME}.png")
    path = write_results(NAME, head, markdown, data)
    print(f"written to {path} and {RESULTS / f'{NAME}.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
