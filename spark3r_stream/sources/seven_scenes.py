"""7-Scenes layout: frame-XXXXXX.color.png (or .jpg) + frame-XXXXXX.pose.txt (4x4 camera-to-world), no timestamps."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from spark3r_stream.errors import SourceError
from spark3r_stream.sources.base import FrameEntry, IndexedSource, SourceOptions, load_intrinsics_json, require_dir

log = logging.getLogger(__name__)

COLOR_RE = re.compile(r"^frame-(\d+)\.color\.(png|jpg|jpeg)$", re.IGNORECASE)
FPS = 30.0  # Kinect v1 rate; 7-Scenes has no timestamps


def read_pose_txt(path: Path) -> np.ndarray | None:
    """4x4 pose or None if missing or not finite (some datasets mark lost tracking with inf/NaN)."""
    if not path.is_file():
        return None
    try:
        pose = np.loadtxt(path, dtype=np.float64)
    except ValueError as exc:
        raise SourceError(f"7-Scenes pose {path}: {exc}") from None
    if pose.shape != (4, 4):
        raise SourceError(f"7-Scenes pose {path}: expected 4x4 values, got shape {pose.shape}")
    return pose if np.isfinite(pose).all() else None


class SevenScenesSource(IndexedSource):
    """One 7-Scenes sequence folder (e.g. chess/seq-01); intrinsics from camera-intrinsics.txt or intrinsics.json."""

    kind = "7scenes"

    def __init__(self, path: str | Path, options: SourceOptions | None = None, *, fps: float = FPS) -> None:
        folder = require_dir(Path(path), "7-Scenes folder")
        frames = sorted(
            ((int(m.group(1)), p) for p in folder.iterdir() if (m := COLOR_RE.match(p.name))), key=lambda t: t[0]
        )
        if not frames:
            sequences = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith("seq-"))
            hint = f"; pick a sequence: {', '.join(sequences)}" if sequences else ""
            raise SourceError(f"7-Scenes folder {folder}: no frame-XXXXXX.color.png files{hint}")
        k = self._intrinsics(folder)
        entries = []
        for number, color in frames:
            pose = read_pose_txt(folder / f"frame-{number:06d}.pose.txt")
            entries.append(FrameEntry(t_capture=number / fps, path=color, world_from_cam=pose, intrinsics=k))
        super().__init__(folder, entries, options, timestamps_synthetic=True, info={"fps": fps})

    @staticmethod
    def _intrinsics(folder: Path) -> np.ndarray | None:
        for candidate in (folder / "camera-intrinsics.txt", folder.parent / "camera-intrinsics.txt"):
            if candidate.is_file():
                k = np.loadtxt(candidate, dtype=np.float64)
                if k.shape != (3, 3):
                    raise SourceError(f"7-Scenes intrinsics {candidate}: expected a 3x3 matrix, got {k.shape}")
                return k
        if (folder / "intrinsics.json").is_file():
            return load_intrinsics_json(folder / "intrinsics.json")
        log.info("7-Scenes folder %s: no camera-intrinsics.txt or intrinsics.json; frames carry no intrinsics", folder)
        return None
