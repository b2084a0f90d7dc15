"""A normal install works: the wheel, installed into a fresh venv, runs `spark3r demo` from an unrelated folder.

Runs once in CI (it builds the wheel): the fresh venv takes its dependencies from the test environment's
site-packages through a path entry, not from the checkout, so only what the wheel carries is importable as
spark3r_stream.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
import zipfile

import pytest

from tests.integration.conftest import REPO, RUN_DEADLINE_S

pytestmark = pytest.mark.integration


def test_wheel_installs_and_runs_the_demo_from_another_folder(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("spark3r_stream-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "spark3r_stream/nodes/fusion.py" in names and "spark3r_stream/launch/demo.yaml" in names
    assert (
        "spark3r_stream/configs/pipeline.yaml" in names
        and "spark3r_stream/models/weights/vggt-tiny.safetensors" in names
    )
    assert not any(n.startswith(("nodes/", "benchmarks/", "tests/", "launch/", "configs/")) for n in names)

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    ).stdout.strip()
    # dependencies from the test environment; a plain path entry does not run its .pth files (no editable finder)
    with open(os.path.join(site, "test-deps.pth"), "w") as handle:
        handle.write(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"NO_COLOR": "1"}
    probe = subprocess.run(
        [str(python), "-c", "import spark3r_stream; print(spark3r_stream.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert probe.stdout.startswith(site), probe.stdout + probe.stderr  # the wheel's copy, not the checkout
    result = subprocess.run(
        [str(python), "-m", "spark3r_stream.cli", "demo", "--frames", "20", "--out", "run"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_DEADLINE_S,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((elsewhere / "run" / "report.json").read_text())
    assert report["pipeline"]["accounting"]["frames_captured"] == 20
    assert (elsewhere / "run" / "recording.rrd").is_file()
