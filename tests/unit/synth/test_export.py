"""Tests for spark3r_stream.synth.export: the TUM-style folder reads back exactly and matches the real data's format."""

import json

import cv2
import numpy as np
import pytest

from spark3r_stream.errors import InputError
from spark3r_stream.eval.trajectory import read_tum
from spark3r_stream.synth import export_tum_folder, render_sequence

DEPTH_QUANTUM_M = 0.5 / 5000.0  # rounding of depth * 5000 to 16-bit integers
POSE_TOL = 1e-8  # 9 decimals written per value
REAL_INTRINSICS_KEYS = {"fx", "fy", "cx", "cy", "width", "height", "depth_scale", "distortion", "source_file"}


def _index(path) -> list[tuple[str, str]]:
    lines = [line.split() for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return [(stamp, name) for stamp, name in lines]


def test_export_round_trip(tmp_path):
    seq = render_sequence(4, 3, height=24, width=32)
    out = export_tum_folder(seq, tmp_path / "seq")
    rgb_index, depth_index = _index(out / "rgb.txt"), _index(out / "depth.txt")
    assert [name for _, name in rgb_index] == ["rgb/000000.png", "rgb/000001.png", "rgb/000002.png"]
    assert (
        [stamp for stamp, _ in rgb_index] == [stamp for stamp, _ in depth_index] == ["0.000000", "0.033333", "0.066667"]
    )
    for frame, ((_, rgb_name), (_, depth_name)) in enumerate(zip(rgb_index, depth_index, strict=True)):
        rgb = cv2.cvtColor(cv2.imread(str(out / rgb_name), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(rgb, seq.images[frame])
        depth_png = cv2.imread(str(out / depth_name), cv2.IMREAD_UNCHANGED)
        assert depth_png.dtype == np.uint16
        np.testing.assert_allclose(depth_png / 5000.0, seq.depth[frame], atol=DEPTH_QUANTUM_M + 1e-7)

    timestamps, world_from_cam = read_tum(out / "groundtruth.txt")
    np.testing.assert_allclose(timestamps, [0.0, 0.033333, 0.066667])
    np.testing.assert_allclose(world_from_cam, seq.world_from_cam, atol=POSE_TOL)

    intrinsics = json.loads((out / "intrinsics.json").read_text())
    assert REAL_INTRINSICS_KEYS <= set(intrinsics)
    assert (intrinsics["width"], intrinsics["height"], intrinsics["depth_scale"]) == (32, 24, 5000.0)
    assert intrinsics["fx"] == pytest.approx(seq.intrinsics[0, 0]) and intrinsics["cx"] == 16.0


def test_export_writes_out_of_range_depth_as_invalid(tmp_path):
    seq = render_sequence(4, 1, height=8, width=8)
    seq.depth[0, 0, 0] = 20.0  # beyond 65535 / 5000 = 13.1 m
    out = export_tum_folder(seq, tmp_path / "seq")
    depth_png = cv2.imread(str(out / "depth" / "000000.png"), cv2.IMREAD_UNCHANGED)
    assert depth_png[0, 0] == 0 and (depth_png[1:] > 0).all()


def test_export_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "old.txt").write_text("keep me")
    with pytest.raises(InputError, match="exists and is not empty"):
        export_tum_folder(render_sequence(0, 1, height=8, width=8), tmp_path)
    assert (tmp_path / "old.txt").read_text() == "keep me"
