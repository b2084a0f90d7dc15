"""Training curves as markdown: `python -m spark3r_stream.train.curves LOG.jsonl [--every 100]`.

One row per `every` steps from a trainer's loss_log.jsonl: the learning rate, clip length, the two ratios that say
whether the model sees motion (`corr_ratio`, `quat_ratio`: 1.0 for a model that ignores the other view) and the
loss terms. The model card's curves are this command's output on the committed logs (benchmarks/results/training/).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

COLUMNS = (
    "step",
    "lr",
    "clip_len",
    "corr_ratio",
    "quat_ratio",
    "correspondence",
    "camera",
    "depth",
    "points",
    "step_s",
)


def read_log(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def curve_table(records: list[dict], every: int = 100) -> str:
    rows = [r for r in records if r["step"] % every == 0]
    columns = [c for c in COLUMNS if any(c in r for r in rows)]

    def show(value) -> str:
        if isinstance(value, float):
            return f"{value:.3g}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(show(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spark3r_stream.train.curves", description=__doc__.split("\n")[0])
    parser.add_argument("logs", nargs="+", help="loss_log.jsonl files")
    parser.add_argument("--every", type=int, default=100, help="one row per this many steps")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    for path in args.logs:
        print(f"### {path}\n\n{curve_table(read_log(path), args.every)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
