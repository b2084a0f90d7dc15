"""`spark3r infer` end to end on real frames: every output written and readable; refusals with clear messages."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import spark3r_stream
from spark3r_stream.cli import main
from spark3r_stream.eval.trajectory import read_tum
from spark3r_stream.stream.point_cloud import read_ply
from spark3r_stream.viz.rerun_logger import recorded_entity_paths
from tests.conftest import fixture_path

PACKAGE = Path(spark3r_stream.__file__).parent


@pytest.fixture(scope="module")
def infer_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("infer")
    code = main(["infer", str(fixture_path("images")), "--out", str(out)])  # the shipped vggt-tiny
    assert code == 0
    return out


def test_every_output_is_written_and_consistent(infer_run):
    report = json.loads((infer_run / "report.json").read_text())
    assert report["status"] == "ok" and report["counters"]["frames"] == 3
    layers = report["metadata"]["reduction_plan"]["layers"]
    # Spark3R on by default with the shipped `spark3r probe` schedule: sensitive layers keep every key (r_KV 1 at S=3)
    schedule = json.loads((PACKAGE / "models" / "weights" / "vggt-tiny.spark3r.json").read_text())
    expected = [1 if i in schedule["sensitive_layers"] else 3 for i in range(schedule["num_layers"])]
    assert [layer["r_kv"] for layer in layers] == expected
    cameras = json.loads((infer_run / "cameras.json").read_text())
    assert [f["image"] for f in cameras["frames"]] == ["000935.png", "000936.png", "000937.png"]
    times, poses = read_tum(infer_run / "trajectory.tum")
    assert len(times) == 3
    assert np.allclose(poses, np.array([f["world_from_cam"] for f in cameras["frames"]]), atol=1e-6)
    depth = np.load(infer_run / "depth" / "000936.npz")
    png = cv2.imread(str(infer_run / "depth" / "000936.png"), cv2.IMREAD_UNCHANGED)
    assert png.dtype == np.uint16 and png.shape == depth["depth"].shape == (84, 112)
    assert np.allclose(png / cameras["depth_png_scale"], depth["depth"], atol=1 / cameras["depth_png_scale"])
    assert depth["confidence"].min() >= 1.0
    points, colors = read_ply(infer_run / "map.ply")
    assert len(points) == report["counters"]["map_points"] > 100 and colors.dtype == np.uint8


def test_recording_holds_the_cameras_and_the_map(infer_run):
    paths = recorded_entity_paths(infer_run / "recording.rrd")
    assert {"world/keyframes/000000", "world/keyframes/000002/points", "world/map", "world/trajectory"} <= paths


def test_untrained_official_preset_is_refused(tmp_path, capsys):
    code = main(["infer", str(fixture_path("images")), "--model", "vggt-1b", "--out", str(tmp_path)])
    assert code == 2
    assert "model 'vggt-1b' ships no weights: pass --weights PATH" in capsys.readouterr().err


def test_bad_inputs_exit_2_with_the_culprit(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["infer", str(tmp_path / "empty"), "--random-weights", "--out", str(tmp_path / "o")]) == 2
    assert "contains no images" in capsys.readouterr().err
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not really")
    assert main(["infer", str(video), "--random-weights", "--out", str(tmp_path / "o")]) == 2
    assert "clip.mp4: this is a video file" in capsys.readouterr().err
