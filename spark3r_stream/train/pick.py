"""Score candidate vggt-tiny weights on held-out data, to pick the checkpoint to ship (`spark3r train --ship FILE`).

Per file: the two-view pair probe (rotation error over the identity guess's, translation direction) and 16-frame
handheld and orbit sequences (ATE / extent, relative rotation, depth AbsRel), all on seeds never rendered in training.
Pause training first: this takes the CPU for a few minutes per file.

    python -m spark3r_stream.train.pick spark3r_stream/models/weights/vggt-tiny.safetensors checkpoints/vggt-tiny/weights_005500.safetensors

`--real SPEC ...` adds real sequences with ground truth (the `spark3r eval` specs, e.g. the SUN3D fragments in
../shared/data): their mean depth AbsRel and relative rotation, next to a constant depth's and identity's. Synthetic
scores alone picked a checkpoint whose depth on real frames was worse than a constant (session 12).

`A+B+C` scores the uniform average of those checkpoints (what `spark3r train --ship A B C` ships).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from spark3r_stream.eval.model_eval import (
    GroundTruthSequence,
    baseline_rows,
    evaluate_model,
    held_out_pair_errors,
    held_out_sequences,
    load_sequence,
    summarize,
)
from spark3r_stream.models.registry import get_preset


def score(
    weights: str, num_pairs: int, num_sequences: int, num_frames: int, real: Sequence[GroundTruthSequence] = ()
) -> dict[str, float | str]:
    from spark3r_stream.models.loading import load_model
    from spark3r_stream.train.trainer import average_weights

    paths = weights.split("+")
    model = load_model("vggt-tiny", weights=paths[0])
    if len(paths) > 1:
        model.load_state_dict(average_weights([Path(path) for path in paths]))
    pairs = held_out_pair_errors(model, num_pairs=num_pairs)
    rows = [
        evaluate_model(model, sequence)
        for path in ("handheld", "orbit")
        for sequence in held_out_sequences(num_sequences, num_frames, size=model.config.img_size, path=path)
    ]
    real_rows = [evaluate_model(model, sequence) for sequence in real]
    return {
        "weights": weights,
        "pair_rotation_ratio": pairs["rotation_error_deg"] / pairs["identity_rotation_error_deg"],
        "pair_direction_deg": pairs["translation_direction_error_deg"],
        **{key: float(np.mean([row[key] for row in rows])) for key in _SEQUENCE_KEYS},
        **({f"real_{key}": float(np.mean([row[key] for row in real_rows])) for key in _REAL_KEYS} if real else {}),
    }


_SEQUENCE_KEYS = ("ate_over_extent", "mean_relative_rotation_error_deg", "depth_abs_rel_median")
_REAL_KEYS = ("depth_abs_rel_median", "mean_relative_rotation_error_deg")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spark3r_stream.train.pick", description=__doc__.split("\n")[0])
    parser.add_argument(
        "weights", nargs="+", help="safetensors files (the shipped one first, for reference); A+B: their average"
    )
    parser.add_argument("--pairs", type=int, default=160)
    parser.add_argument("--sequences", type=int, default=4, help="held-out sequences per camera path")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--real", nargs="+", default=[], metavar="SPEC", help="real sequences with ground truth")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    real = [load_sequence(spec, get_preset("vggt-tiny").input_size) for spec in args.real]
    if real:
        means = {row["method"]: row for row in summarize([row for seq in real for row in baseline_rows(seq)])}
        constant = means["constant-depth"]["depth_abs_rel_median"]
        identity = means["identity"]["mean_relative_rotation_error_deg"]
        print(f"real sequences: {len(real)}; constant depth AbsRel {constant:.3f}, identity rotation {identity:.2f}°")
    real_columns = " real: AbsRel | real: rotation (°) |" if real else ""
    print(
        "| weights | pairs: rotation / identity | pairs: direction (°) | ATE / extent | rotation (°) | AbsRel |"
        + real_columns
    )
    print("|---|---|---|---|---|---|" + "---|---|" * bool(real))
    for weights in args.weights:
        row = score(weights, args.pairs, args.sequences, args.frames, real)
        real_cells = (
            f" {row['real_depth_abs_rel_median']:.3f} | {row['real_mean_relative_rotation_error_deg']:.2f} |"
            if real
            else ""
        )
        print(
            f"| {weights} | {row['pair_rotation_ratio']:.3f} | {row['pair_direction_deg']:.1f} | "
            f"{row['ate_over_extent']:.3f} | {row['mean_relative_rotation_error_deg']:.2f} | "
            f"{row['depth_abs_rel_median']:.3f} |" + real_cells,
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
