"""Frame sources on the real data copied into tests/fixtures/data (see PROVENANCE.md) and data generated from it."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from spark3r_stream.errors import ConfigError, SourceError
from spark3r_stream.eval.trajectory import read_tum
from spark3r_stream.sources import (
    SOURCES,
    EurocSource,
    FrameSource,
    Pacer,
    SourceOptions,
    detect_format,
    open_source,
    parse_spec,
)
from spark3r_stream.transport import Frame, decode, encode

DATA = Path(__file__).resolve().parents[2] / "fixtures" / "data"
TUM = DATA / "tum_sun3d"
EUROC = DATA / "euroc_micro"
POSE_TOL = 1e-9  # poses are copied from text, no arithmetic beyond quaternion -> matrix


def test_fixtures_exist():
    assert (TUM / "rgb.txt").is_file() and (EUROC / "mav0" / "cam0" / "data.csv").is_file()


def check_frames(frames: list[Frame], height: int, width: int) -> None:
    assert [f.frame_seq for f in frames] == list(range(len(frames)))
    for f in frames:
        assert f.image.dtype == np.uint8 and f.image.shape == (height, width, 3)
        decode(encode(f, 0))  # every frame fits the wire schema


def test_tum_folder_associates_ground_truth_by_nearest_timestamp():
    source = open_source(str(TUM))
    assert isinstance(source, FrameSource) and source.info["kind"] == "tum"
    frames = list(source)
    check_frames(frames, 480, 640)
    times, poses = read_tum(TUM / "groundtruth.txt")
    assert len(frames) == 5 and source.info["num_gt"] == 5
    for i, f in enumerate(frames):
        assert f.t_capture == pytest.approx(times[2 * i])  # every 2nd GT row belongs to a listed frame
        np.testing.assert_allclose(f.world_from_cam, poses[2 * i], atol=POSE_TOL)
        np.testing.assert_allclose(f.intrinsics, [[570.342205, 0, 320], [0, 570.342205, 240], [0, 0, 1]])
    # colour order: RGB, not OpenCV's BGR
    np.testing.assert_array_equal(frames[0].image, cv2.imread(str(TUM / "rgb" / "000935.jpg"))[..., ::-1])


def test_start_stop_stride_select_native_frames():
    frames = list(open_source(f"tum:{TUM}", start=1, stop=5, stride=2))
    assert [round(f.t_capture * 30) for f in frames] == [937, 941]
    assert [f.frame_seq for f in frames] == [0, 1]


def test_euroc_layout_grey_to_rgb_ns_timestamps_and_gt_from_the_camera_frame():
    source = open_source(str(EUROC))
    assert source.info["kind"] == "euroc" and source.info["gt_source"] == "tum"
    frames = list(source)
    check_frames(frames, 240, 376)
    assert frames[0].t_capture == pytest.approx(1403715274.212143104, abs=1e-6)
    assert [f.world_from_cam is not None for f in frames] == [False, False, True, True]  # GT starts later
    np.testing.assert_array_equal(frames[2].image[..., 0], frames[2].image[..., 1])  # grey repeated
    np.testing.assert_allclose(frames[0].intrinsics, [[229.327, 0, 183.4825], [0, 228.648, 124.0625], [0, 0, 1]])
    csv = list(open_source(str(EUROC), gt="csv_camera"))
    for a, b in zip(frames[2:], csv[2:], strict=True):
        np.testing.assert_allclose(a.world_from_cam, b.world_from_cam, atol=POSE_TOL)


def test_euroc_body_frame_ground_truth_applies_t_bs():
    body = EurocSource(EUROC, gt="csv_body")
    camera = EurocSource(EUROC, gt="csv_camera")
    t_bs = np.array(
        [
            [0.0148655429818, -0.999880929698, 0.00414029679422, -0.0216401454975],
            [0.999557249008, 0.0149672133247, 0.025715529948, -0.064676986768],
            [-0.0257744366974, 0.00375618835797, 0.999660727178, 0.00981073058949],
            [0, 0, 0, 1],
        ]
    )
    np.testing.assert_allclose(body.entries[3].world_from_cam, camera.entries[3].world_from_cam @ t_bs, atol=1e-12)


def test_euroc_undistort_keeps_size_and_changes_pixels():
    raw = next(iter(open_source(str(EUROC))))
    und = next(iter(open_source(str(EUROC), undistort=True)))
    assert und.image.shape == raw.image.shape and not np.array_equal(und.image, raw.image)


@pytest.fixture
def seven_scenes(tmp_path) -> Path:
    folder = tmp_path / "chess" / "seq-01"
    folder.mkdir(parents=True)
    _, poses = read_tum(TUM / "groundtruth.txt")
    for i, image in enumerate(sorted((TUM / "rgb").glob("*.jpg"))):
        cv2.imwrite(str(folder / f"frame-{i:06d}.color.png"), cv2.imread(str(image)))
        np.savetxt(folder / f"frame-{i:06d}.pose.txt", poses[2 * i])
    np.savetxt(folder / f"frame-{3:06d}.pose.txt", np.full((4, 4), np.inf))  # lost tracking
    return folder


def test_seven_scenes_layout(seven_scenes):
    assert detect_format(seven_scenes) == "7scenes"
    frames = list(open_source(str(seven_scenes)))
    check_frames(frames, 480, 640)
    _, poses = read_tum(TUM / "groundtruth.txt")
    np.testing.assert_allclose(frames[1].world_from_cam, poses[2], atol=1e-12)
    assert frames[3].world_from_cam is None and frames[0].intrinsics is None
    assert [f.t_capture for f in frames] == pytest.approx([i / 30 for i in range(5)])
    with pytest.raises(SourceError, match="no frame-XXXXXX.color.png files; pick a sequence: seq-01"):
        open_source(f"7scenes:{seven_scenes.parent}")


def test_image_folder_sorts_naturally_and_skips_corrupt_images(tmp_path, caplog):
    folder = tmp_path / "imgs"
    folder.mkdir()
    images = sorted((TUM / "rgb").glob("*.jpg"))
    for name, image in zip(["f_10.jpg", "f_2.jpg", "f_1.jpg"], images, strict=False):
        shutil.copy(image, folder / name)
    (folder / "f_3.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    source = open_source(str(folder))
    assert source.info["kind"] == "folder" and source.info["timestamps_synthetic"]
    frames = list(source)
    check_frames(frames, 480, 640)
    expected = [cv2.imread(str(folder / n))[..., ::-1] for n in ("f_1.jpg", "f_2.jpg", "f_10.jpg")]
    for f, want in zip(frames, expected, strict=True):
        np.testing.assert_array_equal(f.image, want)
    assert source.counters["skipped_unreadable"] == 1
    assert "f_3.png: not a readable image" in caplog.text
    assert [f.t_capture for f in frames] == pytest.approx([0, 1 / 30, 3 / 30])  # native position kept


def test_video_file_round_trip(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (640, 480))
    assert writer.isOpened()
    originals = [cv2.imread(str(p)) for p in sorted((TUM / "rgb").glob("*.jpg"))]
    for image in originals:
        writer.write(image)
    writer.release()
    assert detect_format(path) == "video"
    frames = list(open_source(str(path), stride=2))
    check_frames(frames, 480, 640)
    assert [f.t_capture for f in frames] == pytest.approx([0.0, 0.2, 0.4])
    diff = np.abs(frames[1].image.astype(int) - originals[2][..., ::-1].astype(int)).mean()
    assert diff < 8  # MJPG is lossy; a BGR/RGB swap or wrong frame would be far larger


def test_synthetic_source_carries_ground_truth():
    source = open_source("synth:seed=3,frames=4,height=24,width=32")
    frames = list(source)
    check_frames(frames, 24, 32)
    assert all(f.world_from_cam is not None and f.intrinsics is not None for f in frames)
    np.testing.assert_array_equal(frames[2].world_from_cam, source.sequence.world_from_cam[2])


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("/nonexistent/seq", SourceError, "source /nonexistent/seq: does not exist"),
        ("tum:/nonexistent/seq", SourceError, "TUM folder /nonexistent/seq: does not exist"),
        ("video:/nonexistent.mp4", SourceError, "video /nonexistent.mp4: file not found"),
        ("camera:97", SourceError, "camera 97 did not open"),
        ("lidar:/x", SourceError, "source lidar:/x: does not exist"),
        ({"type": "lidar", "path": "/x"}, ConfigError, "source type 'lidar': unknown; expected one of camera"),
        ("synth:seed", ConfigError, "expected key=value items"),
    ],
)
def test_bad_sources_name_the_input(spec, error, match):
    with pytest.raises(error, match=match):
        open_source(spec)


def test_unknown_format_and_options(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SourceError, match="unknown format: no mav0/"):
        open_source(str(tmp_path))
    with pytest.raises(SourceError, match="notes.txt: unknown format"):
        open_source(str(tmp_path / "notes.txt"))
    with pytest.raises(ConfigError, match="unknown option 'strid'; did you mean 'stride'"):
        open_source(str(TUM), strid=2)
    with pytest.raises(ConfigError, match="source stride: expected int >= 1, got 0"):
        open_source(str(TUM), stride=0)
    (tmp_path / "rgb.txt").write_text("# nothing\n")
    with pytest.raises(SourceError, match="rgb.txt: lists no frames"):
        open_source(str(tmp_path))


def test_spec_parsing():
    assert parse_spec("camera:0") == ("camera", 0, {})
    assert parse_spec("2") == ("camera", 2, {})
    assert parse_spec("rtsp://10.0.0.5/live") == ("camera", "rtsp://10.0.0.5/live", {})
    assert parse_spec("synth:seed=3,frames=60,path=orbit") == (
        "synth",
        None,
        {"seed": 3, "frames": 60, "path": "orbit"},
    )
    assert parse_spec(f"euroc:{EUROC}") == ("euroc", str(EUROC), {})
    assert parse_spec(str(EUROC))[0] == "euroc"
    assert set(SOURCES) == {"camera", "video", "folder", "tum", "euroc", "7scenes", "synth"}


def test_dict_spec_from_a_launch_file():
    source = open_source({"type": "tum", "path": str(TUM), "stop": 2, "source_id": "replay"})
    assert [f.source_id for f in source] == ["replay", "replay"]


def test_pacer_holds_frames_to_the_recorded_rate():
    now = [100.0]
    waits: list[float] = []

    def sleep(dt: float) -> None:
        waits.append(round(dt, 9))
        now[0] += dt

    pacer = Pacer(2.0, clock=lambda: now[0], sleep=sleep)
    for t in (10.0, 10.5, 11.0):
        pacer.wait(t)
    assert waits == [0.25, 0.25]
    asap = Pacer(0.0, clock=lambda: now[0], sleep=sleep)
    asap.wait(0.0)
    asap.wait(50.0)
    assert waits == [0.25, 0.25]
    with pytest.raises(ConfigError, match="source rate"):
        SourceOptions(rate=-1)
