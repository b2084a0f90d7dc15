"""EuRoC MAV layout: mav0/<cam>/data.csv + data/<ns>.png, sensor.yaml intrinsics, ground truth in the camera frame.

Ground truth (`gt`): "auto" takes the folder's groundtruth.txt (TUM, camera-to-world: the ORB-SLAM3 convention,
and the layout of ../shared/data) when present, else mav0/state_groundtruth_estimate0/data.csv, which in real
EuRoC is the pose of the IMU body: camera pose = world_from_body @ body_from_cam (T_BS of sensor.yaml).
"csv_camera" reads that CSV as camera poses already (as in ../shared/data/euroc_v101_micro_cam0).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import yaml

from spark3r_stream.errors import SourceError
from spark3r_stream.sources.base import (
    FrameEntry,
    IndexedSource,
    SourceOptions,
    intrinsics_matrix,
    load_intrinsics_json,
    require_dir,
)
from spark3r_stream.sources.tum import attach_poses, read_tum_poses

log = logging.getLogger(__name__)

GroundTruth = Literal["auto", "tum", "csv_body", "csv_camera", "none"]


def euroc_root(path: Path) -> tuple[Path, Path]:
    """(dataset root, mav0 folder) for a path naming either."""
    if (path / "mav0").is_dir():
        return path, path / "mav0"
    if path.name == "mav0":
        return path.parent, path
    raise SourceError(f"EuRoC folder {path}: no mav0/ inside")


def read_sensor_yaml(path: Path) -> dict:
    text = path.read_text()
    if text.startswith("%YAML:"):  # OpenCV-style directive that PyYAML rejects
        text = text.split("\n", 1)[1]
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SourceError(f"EuRoC sensor file {path}: not YAML ({exc})") from None
    if not isinstance(data, dict):
        raise SourceError(f"EuRoC sensor file {path}: expected a mapping")
    return data


def read_ns_csv(path: Path, num_columns: int, what: str) -> tuple[np.ndarray, list[list[str]]]:
    """(int64 ns timestamps, remaining columns as text) of a EuRoC CSV; '#' header lines skipped."""
    stamps, rest = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = [p.strip() for p in text.split(",")]
        if len(parts) < num_columns:
            raise SourceError(f"{what} {path}:{number}: expected {num_columns} columns, got {len(parts)}")
        try:
            stamps.append(int(parts[0]))
        except ValueError:
            raise SourceError(f"{what} {path}:{number}: timestamp {parts[0]!r} is not integer nanoseconds") from None
        rest.append(parts[1:])
    if not stamps:
        raise SourceError(f"{what} {path}: no rows")
    return np.array(stamps, dtype=np.int64), rest


def read_csv_poses(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """EuRoC state CSV `ts_ns, px, py, pz, qw, qx, qy, qz, ...` -> (seconds, [N, 4, 4]); quaternion is w-first."""
    from scipy.spatial.transform import Rotation

    from spark3r_stream.geometry import se3_matrix

    stamps, rest = read_ns_csv(path, 8, "EuRoC ground truth")
    try:
        values = np.array([[float(v) for v in row[:7]] for row in rest])
    except ValueError as exc:
        raise SourceError(f"EuRoC ground truth {path}: {exc}") from None
    quat_xyzw = values[:, [4, 5, 6, 3]]
    rotations = Rotation.from_quat(quat_xyzw / np.linalg.norm(quat_xyzw, axis=1, keepdims=True)).as_matrix()
    return stamps / 1e9, se3_matrix(rotations, values[:, :3])


class EurocSource(IndexedSource):
    """EuRoC MAV camera stream (grey images become RGB by repeating the channel)."""

    kind = "euroc"

    def __init__(
        self,
        path: str | Path,
        options: SourceOptions | None = None,
        *,
        camera: str = "cam0",
        gt: GroundTruth = "auto",
        undistort: bool = False,
    ) -> None:
        root, mav0 = euroc_root(require_dir(Path(path), "EuRoC folder"))
        cam_dir = mav0 / camera
        index = cam_dir / "data.csv"
        if not index.is_file():
            raise SourceError(f"EuRoC folder {root}: no {camera}/data.csv in {mav0}")
        stamps_ns, rest = read_ns_csv(index, 2, "EuRoC index")
        times = stamps_ns / 1e9  # float seconds lose < 1 us at 1.4e9 s; matching uses a 20 ms tolerance
        sensor = read_sensor_yaml(cam_dir / "sensor.yaml") if (cam_dir / "sensor.yaml").is_file() else {}
        k, dist = self._intrinsics(root, cam_dir, sensor)
        gt_kind, gt_poses = self._ground_truth(root, mav0, sensor, gt)
        poses = attach_poses(times, *gt_poses) if gt_poses is not None else [None] * len(times)
        self._undistort = (k, dist) if undistort and dist is not None and k is not None else None
        entries = [
            FrameEntry(t_capture=t, path=cam_dir / "data" / row[0], world_from_cam=pose, intrinsics=k)
            for t, row, pose in zip(times, rest, poses, strict=True)
        ]
        info = {"camera": camera, "gt_source": gt_kind, "undistorted": self._undistort is not None}
        super().__init__(root, entries, options, info=info)

    @staticmethod
    def _intrinsics(root: Path, cam_dir: Path, sensor: dict) -> tuple[np.ndarray | None, np.ndarray | None]:
        if "intrinsics" in sensor:
            fx, fy, cx, cy = (float(v) for v in sensor["intrinsics"])
            dist = sensor.get("distortion_coefficients")
            return intrinsics_matrix(fx, fy, cx, cy), (np.array(dist, dtype=np.float64) if dist else None)
        k_file = root / "intrinsics.json"
        if k_file.is_file():
            dist = json.loads(k_file.read_text()).get("distortion")
            return load_intrinsics_json(k_file), (np.array(dist, dtype=np.float64) if dist else None)
        return None, None

    @staticmethod
    def _ground_truth(root: Path, mav0: Path, sensor: dict, gt: str) -> tuple[str, tuple | None]:
        tum_file = root / "groundtruth.txt"
        csv_file = mav0 / "state_groundtruth_estimate0" / "data.csv"
        if gt == "auto":
            gt = "tum" if tum_file.is_file() else "csv_body" if csv_file.is_file() else "none"
        if gt == "none":
            return gt, None
        if gt == "tum":
            if not tum_file.is_file():
                raise SourceError(f"EuRoC folder {root}: gt 'tum' asked but there is no groundtruth.txt")
            return gt, read_tum_poses(tum_file, f"EuRoC folder {root}")
        if gt not in ("csv_body", "csv_camera"):
            raise SourceError(f"EuRoC folder {root}: gt must be auto, tum, csv_body, csv_camera or none, got {gt!r}")
        if not csv_file.is_file():
            raise SourceError(f"EuRoC folder {root}: gt {gt!r} asked but {csv_file} does not exist")
        times, world_from_x = read_csv_poses(csv_file)
        if gt == "csv_body":
            body_from_cam = np.array(sensor.get("T_BS", {}).get("data", []), dtype=np.float64)
            if body_from_cam.size != 16:
                raise SourceError(f"EuRoC folder {root}: gt 'csv_body' needs T_BS (4x4) in the camera's sensor.yaml")
            world_from_x = world_from_x @ body_from_cam.reshape(4, 4)
        return gt, (times, world_from_x)

    def postprocess(self, image: np.ndarray) -> np.ndarray:
        if self._undistort is None:
            return image
        k, dist = self._undistort
        return cv2.undistort(image, k, dist)  # same K: intrinsics stay valid for the undistorted image
