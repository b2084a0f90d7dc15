"""TUM RGB-D layout: rgb.txt (timestamp filename), groundtruth.txt (TUM poses) by nearest timestamp, intrinsics.json."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from spark3r_stream.errors import SourceError, Spark3RError
from spark3r_stream.sources.base import FrameEntry, IndexedSource, SourceOptions, load_intrinsics_json, require_dir

log = logging.getLogger(__name__)

MAX_GT_DIFFERENCE_S = 0.02  # TUM's associate.py default: a pose more than 20 ms away is not this frame's pose


def read_index(path: Path, what: str) -> list[tuple[str, str]]:
    """`timestamp value` lines of a TUM-style index ('#' comments); timestamps kept as text (exact ns)."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.replace(",", " ").split()
        if len(parts) < 2:
            raise SourceError(f"{what} {path}:{number}: expected 'timestamp filename', got {text!r}")
        try:
            float(parts[0])
        except ValueError:
            raise SourceError(f"{what} {path}:{number}: timestamp {parts[0]!r} is not a number") from None
        rows.append((parts[0], parts[1]))
    if not rows:
        raise SourceError(f"{what} {path}: lists no frames")
    return rows


def read_tum_poses(path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(timestamps_s [N], world_from_cam [N, 4, 4]) from a TUM trajectory; errors name the dataset file."""
    from spark3r_stream.eval.trajectory import read_tum  # the project's one TUM reader (lazy: scipy)

    try:
        return read_tum(path)
    except Spark3RError as exc:
        raise SourceError(f"{what} ground truth: {exc}") from None


def attach_poses(times_s: np.ndarray, gt_times_s: np.ndarray, gt_world_from_cam: np.ndarray) -> list[np.ndarray | None]:
    """The GT pose of each frame time (nearest, one-to-one, within MAX_GT_DIFFERENCE_S) or None."""
    from spark3r_stream.eval.trajectory import associate

    poses: list[np.ndarray | None] = [None] * len(times_s)
    idx_frames, idx_gt = associate(times_s, gt_times_s, max_difference_s=MAX_GT_DIFFERENCE_S)
    for i, j in zip(idx_frames, idx_gt, strict=True):
        poses[int(i)] = gt_world_from_cam[int(j)]
    return poses


class TumSource(IndexedSource):
    """A TUM RGB-D style folder (also the SUN3D fragments in ../shared/data)."""

    kind = "tum"

    def __init__(self, path: str | Path, options: SourceOptions | None = None) -> None:
        root = require_dir(Path(path), "TUM folder")
        index = root / "rgb.txt"
        if not index.is_file():
            raise SourceError(f"TUM folder {root}: no rgb.txt")
        rows = read_index(index, "TUM index")
        times = np.array([float(t) for t, _ in rows])
        gt_file = root / "groundtruth.txt"
        poses: list[np.ndarray | None] = [None] * len(rows)
        if gt_file.is_file():
            poses = attach_poses(times, *read_tum_poses(gt_file, f"TUM folder {root}"))
        k_file = root / "intrinsics.json"
        k = load_intrinsics_json(k_file) if k_file.is_file() else None
        entries = [
            FrameEntry(t_capture=t, path=root / name, world_from_cam=pose, intrinsics=k)
            for t, (_, name), pose in zip(times, rows, poses, strict=True)
        ]
        super().__init__(root, entries, options, info={"gt_file": str(gt_file) if gt_file.is_file() else None})


TUM_DEPTH_SCALE = 5000.0  # TUM RGB-D's documented factor: 16-bit value / 5000 = metres


def read_tum_depth(path: str | Path, times_s: np.ndarray) -> np.ndarray | None:
    """Metric depth [S, H, W] (0 = invalid) of the frames at `times_s` from a TUM-style folder's depth.txt, each the
    nearest depth image within MAX_GT_DIFFERENCE_S (all zeros where none is); None when the folder has no depth.txt.

    The scale is intrinsics.json's `depth_scale` when given (SUN3D: 1000, millimetres), else TUM's 5000.
    """
    import cv2

    from spark3r_stream.eval.trajectory import associate

    root = Path(path)
    index = root / "depth.txt"
    if not index.is_file():
        return None
    rows = read_index(index, "TUM depth index")
    scale = TUM_DEPTH_SCALE
    if (root / "intrinsics.json").is_file():
        scale = float(json.loads((root / "intrinsics.json").read_text()).get("depth_scale") or TUM_DEPTH_SCALE)
    idx_frames, idx_depth = associate(
        np.asarray(times_s, float), np.array([float(t) for t, _ in rows]), max_difference_s=MAX_GT_DIFFERENCE_S
    )
    maps: dict[int, np.ndarray] = {}
    for i, j in zip(idx_frames, idx_depth, strict=True):
        file = root / rows[int(j)][1]
        raw = cv2.imread(str(file), cv2.IMREAD_UNCHANGED)
        if raw is None or raw.ndim != 2:
            raise SourceError(f"TUM depth {file}: missing, unreadable or not a single-channel 16-bit image")
        maps[int(i)] = raw.astype(np.float32) / scale
    if not maps:
        raise SourceError(f"TUM depth {index}: no depth image within {MAX_GT_DIFFERENCE_S} s of any frame")
    shape = next(iter(maps.values())).shape
    return np.stack([maps.get(i, np.zeros(shape, np.float32)) for i in range(len(times_s))])
