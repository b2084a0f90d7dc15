"""Every case of benchmarks/bad_inputs.py, in-process: the expected exit code, one line naming the input, no
traceback, never torch's advice to retry with weights_only=False, no pickle payload run, and nothing left behind
(no /tmp/s3r-* run directory of this process, no recording of a failed run)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from benchmarks import bad_inputs
from spark3r_stream import cli
from spark3r_stream.spark3r.plan import Spark3RConfig, load_config_file

pytestmark = pytest.mark.fault


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory):
    return bad_inputs.make_inputs(tmp_path_factory.mktemp("bad-inputs"))


def run_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob(f"s3r-*-{os.getpid()}"))


@pytest.mark.parametrize("case", bad_inputs.CASES, ids=[c.what for c in bad_inputs.CASES])
def test_bad_input_gives_one_line_and_leaves_nothing(case, hostile_dir, capsys, monkeypatch):
    monkeypatch.chdir(bad_inputs.REPO)
    argv = [a.replace("{dir}", str(hostile_dir)) for a in case.argv]
    before = run_dirs()
    code = cli.main(argv)
    captured = capsys.readouterr()
    output = captured.err + captured.out
    leftovers = [str(p) for p in run_dirs() - before] + bad_inputs.left_behind(case, argv, -1)
    assert bad_inputs.problems(case, code, output, leftovers) == []
    errors = [line for line in captured.err.splitlines() if line.startswith(f"spark3r {argv[0]}:")]
    assert len(errors) <= 1
    if case.code and case.text:
        assert case.text in bad_inputs.error_line(output, argv[0])


def test_spark3r_config_from_yaml_reads_a_preset_file():
    path = bad_inputs.REPO / "configs" / "spark3r" / "paper.yaml"
    assert Spark3RConfig.from_yaml(path) == load_config_file(path)
    assert Spark3RConfig.from_yaml(path, ["layer_multiplier=5"]).layer_multiplier == 5
