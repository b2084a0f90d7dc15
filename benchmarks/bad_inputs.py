"""The table of bad inputs: each command run as a user would, with its exit code and the one line it prints.

    python -m benchmarks.bad_inputs          # runs every case in CASES -> benchmarks/results/bad_inputs.md

A case passes when the exit code is the expected one, stderr holds no traceback, the error is one line starting with
`spark3r <command>:` that contains the expected text (and never torch's advice to retry with weights_only=False), and
the run left no `/tmp/s3r-*` run directory and no recording behind. tests/fault/test_bad_inputs.py runs the same
cases in-process.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "tests" / "fixtures" / "images"
TIMEOUT_S = 300  # one command on 2 shared cores (torch import, a failed launch)
NEVER_PRINTED = ("weights_only=False", "weights_only` set to `False", "Traceback")


@dataclass(frozen=True)
class Case:
    """One bad input: `argv` after `spark3r` ({dir} = a folder with the hostile files of make_inputs)."""

    what: str
    argv: tuple[str, ...]
    code: int
    text: str  # must appear in the error line (empty: a success case)


def _images(n: int = 2) -> tuple[str, ...]:
    return tuple(str(p) for p in sorted(IMAGES.glob("*.png"))[:n])


CASES: tuple[Case, ...] = (
    Case("infer: unknown device", ("infer", *_images(), "--device", "bogus", "--out", "{dir}/o1"), 2,
         "device 'bogus': not a torch device"),
    Case("infer: weights file with a pickle payload (torch.save)", ("infer", *_images(1), "--weights",
         "{dir}/evil.pt", "--out", "{dir}/o2"), 2, "refused without running anything in it"),
    Case("infer: raw pickle as weights", ("infer", *_images(1), "--weights", "{dir}/evil_raw.pt", "--out",
         "{dir}/o3"), 2, "not a readable PyTorch checkpoint"),
    Case("infer: Spark3R config that does not exist", ("infer", *_images(1), "--spark3r-config", "{dir}/none.yaml",
         "--out", "{dir}/o4"), 2, "file not found"),
    Case("infer: --out names a file", ("infer", *_images(1), "--out", "{dir}/a_file"), 2, "is a file, not a folder"),
    Case("infer: --spark3r-config configs/spark3r/paper.yaml (works)", ("infer", *_images(), "--spark3r-config",
         "configs/spark3r/paper.yaml", "--out", "{dir}/o5"), 0, ""),
    Case("launch: unknown capture param", ("launch", "launch/demo.yaml", "--set", "capture.bogus=1", "--out",
         "{dir}/o6"), 2, "source 'synth': unknown option 'bogus'"),
    Case("launch: capture param of the wrong type", ("launch", "launch/demo.yaml", "--set", "capture.frames=abc",
         "--out", "{dir}/o7"), 2, "option 'frames': expected int, got 'abc'"),
    Case("launch: override without a value", ("launch", "launch/demo.yaml", "--set", "capture.frames", "--out",
         "{dir}/o8"), 2, "expected node.param=value"),
    Case("launch: launch file that does not exist", ("launch", "nope.yaml", "--out", "{dir}/o9"), 2, "not found"),
    Case("launch: input path that does not exist (nodes start, capture fails)", ("launch", "launch/replay_tum.yaml",
         "--set", "capture.path=/nonexistent/seq", "--out", "{dir}/o10"), 2, "source /nonexistent/seq: does not exist"),
    Case("eval: seed that is not a number", ("eval", "synth:seed=abc", "--out", "{dir}/o11"), 2,
         "seed must be an integer, got 'abc'"),
    Case("eval: unknown key in a synth spec", ("eval", "synth:seed=1,bogus=4", "--out", "{dir}/o12"), 2,
         "unknown key 'bogus'"),
    Case("eval: nothing to score", ("eval", "--out", "{dir}/o13"), 2, "give sequences to score"),
    Case("run-node: invalid YAML", ("run-node", "keyframes", "--config", "{dir}/bad.yaml", "--out", "{dir}/o14"), 2,
         "invalid YAML (line 2, column 6)"),
    Case("run-node: YAML with a !!python tag", ("run-node", "keyframes", "--config", "{dir}/python_tag.yaml", "--out",
         "{dir}/o15"), 2, "could not determine a constructor for the tag"),
    Case("run-node: node not in the launch file", ("run-node", "mallory", "--config", "launch/demo.yaml", "--out",
         "{dir}/o16"), 2, "no node 'mallory'"),
    Case("run-node: --out names a file", ("run-node", "keyframes", "--config", "launch/demo.yaml", "--out",
         "{dir}/a_file"), 2, "is a file, not a folder"),
    Case("demo: --out names a file", ("demo", "--out", "{dir}/a_file"), 2, "is a file, not a folder"),
    Case("demo: --frames 0", ("demo", "--frames", "0", "--out", "{dir}/o17"), 2, "demo --frames 0: expected >= 1"),
    Case("demo: --frames -3", ("demo", "--frames", "-3", "--out", "{dir}/o18"), 2, "expected >= 1"),
    Case("train: unknown preset", ("train", "--preset", "bogus", "--out", "{dir}/o19"), 2, "unknown"),
)  # fmt: skip


class _Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo PAYLOAD-RAN > /tmp/spark3r-payload-ran",))  # would mark a file if ever executed


def make_inputs(folder: Path) -> Path:
    """The hostile files the cases name: invalid YAML, a !!python tag, weights files with pickle payloads, a file."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bad.yaml").write_text("nodes: [\n  bad")
    (folder / "python_tag.yaml").write_text('nodes: !!python/object/apply:os.system ["echo PAYLOAD-RAN"]\n')
    (folder / "a_file").write_text("not a folder\n")
    torch.save({"model": _Payload()}, folder / "evil.pt")
    (folder / "evil_raw.pt").write_bytes(pickle.dumps(_Payload()))
    return folder


def error_line(output: str, command: str) -> str:
    """The one-line error of a command (`spark3r <command>: ...`); for a run whose node failed, that node's ERROR
    line (without the time stamp)."""
    lines = [line for line in output.splitlines() if line.startswith(f"spark3r {command}:")]
    if lines:
        return lines[-1]
    errors = [re.sub(r"\d\d:\d\d:\d\d ERROR \S+: ", "", line) for line in output.splitlines() if " ERROR " in line]
    return errors[0] if errors else ""


def left_behind(case: Case, argv: list[str], pid: int) -> list[str]:
    """Run directories of this process (/tmp/s3r-<date>-<pid>) and the recording of a failed run."""
    found = [str(p) for p in Path(tempfile.gettempdir()).glob(f"s3r-*-{pid}")]
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else None
    if case.code and out is not None and (out / "recording.rrd").exists():
        found.append(str(out / "recording.rrd"))
    return found


def problems(case: Case, code: int, output: str, leftovers: list[str]) -> list[str]:
    """Why a case's outcome is not the expected one (empty: it passes); `output`: stdout and stderr."""
    out = []
    line = error_line(output, case.argv[0])
    if code != case.code:
        out.append(f"exit code {code}, expected {case.code}")
    for text in NEVER_PRINTED:
        if text in output:
            out.append(f"the output holds {text!r}")
    if case.code and case.text and case.text not in line:
        out.append(f"error line lacks {case.text!r}")
    if leftovers:
        out.append(f"left behind {leftovers}")
    if Path("/tmp/spark3r-payload-ran").exists():
        out.append("a pickle payload ran")
    return out


def run_case(case: Case, folder: Path) -> dict[str, Any]:
    argv = [a.replace("{dir}", str(folder)) for a in case.argv]
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "spark3r_stream.cli", *argv],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    output = stderr + stdout
    leftovers = left_behind(case, argv, proc.pid)
    line = error_line(output, case.argv[0])
    return {
        "what": case.what,
        "command": "spark3r "
        + " ".join(re.sub(r"^.*/tests/fixtures/images/", "", a) for a in argv).replace(str(folder), "DIR"),
        "code": proc.returncode,
        "message": line.replace(str(folder), "DIR") if case.code else "(ok)",
        "problems": problems(case, proc.returncode, output, leftovers),
        "wall_s": round(time.monotonic() - start, 1),
    }


def markdown(rows: list[dict[str, Any]], head: dict[str, Any]) -> str:
    from benchmarks.bench_attention import header_markdown

    def cell(text: Any) -> str:
        return str(text).replace("|", "\\|")

    lines = [
        header_markdown(head),
        f"{sum(not r['problems'] for r in rows)} of {len(rows)} cases as expected: exit code, no traceback, one "
        "line naming the input, nothing left in /tmp/s3r-* and no recording of a failed run. DIR = a temporary "
        "folder holding the hostile files of `make_inputs` (invalid YAML, a `!!python` tag, weights files with "
        "pickle payloads, a plain file).\n",
        "| input | command | exit code | message | as expected |",
        "|---|---|---:|---|---|",
    ]
    for r in rows:
        ok = "yes" if not r["problems"] else "NO: " + "; ".join(r["problems"])
        lines.append(f"| {cell(r['what'])} | `{cell(r['command'])}` | {r['code']} | {cell(r['message'])} | {ok} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="bad_inputs", description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="run the cases whose description contains this text")
    args = parser.parse_args(argv)
    from benchmarks.bench_attention import RESULTS, header

    rows = []
    with tempfile.TemporaryDirectory(prefix="bad-inputs-") as tmp:
        folder = make_inputs(Path(tmp))
        for case in CASES:
            if args.only and args.only not in case.what:
                continue
            rows.append(run_case(case, folder))
            print(f"{rows[-1]['code']:>3}  {case.what}: {rows[-1]['message']}  {rows[-1]['problems'] or ''}")
    text = markdown(rows, header("bad_inputs", argv))
    if not args.only:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "bad_inputs.md").write_text(text)
        print(f"written to {RESULTS / 'bad_inputs.md'}")
    return 1 if any(r["problems"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
