"""Layer-sensitivity probe: schedule contents, the file round trip into Spark3RConfig, and the CLI entry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spark3r_stream.spark3r import Spark3RConfig, accelerate, is_accelerated, make_plan
from spark3r_stream.spark3r.probe import ProbeSequence, main, parse_sequence_spec, run_probe, write_schedule
from tests.unit.spark3r.conftest import make_layout
from tests.unit.spark3r.test_accelerate import tiny_model


def straight_line(num_frames: int) -> ProbeSequence:
    world_from_cam = np.tile(np.eye(4), (num_frames, 1, 1))
    world_from_cam[:, 0, 3] = np.linspace(0, 1, num_frames) ** 1.5
    world_from_cam[:, 2, 3] = np.sin(np.linspace(0, 2, num_frames))
    return ProbeSequence(f"line{num_frames}", torch.rand(num_frames, 3, 28, 28), world_from_cam)


def test_probe_schedule_and_round_trip(tmp_path):
    model = tiny_model()
    schedule = run_probe(model, [straight_line(6)], base_r_kv=2, probe_r_kv=6, threshold=1.0)
    assert not is_accelerated(model)
    assert schedule["format"] == "spark3r-schedule" and schedule["num_layers"] == 2
    assert [entry["layer"] for entry in schedule["layers"]] == [0, 1]
    for entry in schedule["layers"]:
        assert entry["sensitive"] == any(entry[f"{k}_ratio"] > 1.0 for k in ("ate", "rpe_t", "rpe_r"))
    assert schedule["sensitive_layers"] == [e["layer"] for e in schedule["layers"] if e["sensitive"]]
    path = write_schedule({**schedule, "sensitive_layers": [0]}, tmp_path / "s.json")
    accelerate(model, Spark3RConfig(probe_file=str(path)))
    plan = make_plan(make_layout(200), model.spark3r_targets, model.spark3r_config)
    assert [layer.sensitive for layer in plan.layers] == [True, False]
    json.loads(path.read_text())


def test_sequence_specs_and_cli_errors(capsys):
    with pytest.raises(Exception, match="expected synth:SEED:FRAMES"):
        parse_sequence_spec("tum:/data", 28, 28)
    assert main(["--model", "no-such-model", "synth:0:4"]) == 2
    assert "unknown" in capsys.readouterr().err
