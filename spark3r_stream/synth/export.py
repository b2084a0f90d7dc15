"""Write a rendered sequence as a TUM-RGB-D-style folder that the replay source reads like a real recording."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from spark3r_stream.errors import InputError
from spark3r_stream.eval.trajectory import write_tum
from spark3r_stream.synth.render import SyntheticSequence

TUM_DEPTH_SCALE = 5000.0  # TUM RGB-D: a 16-bit depth value of 5000 is one metre; 0 means no depth
_MAX_DEPTH_VALUE = np.iinfo(np.uint16).max


def export_tum_folder(sequence: SyntheticSequence, out_dir: str | os.PathLike) -> Path:
    """Write rgb/*.png, depth/*.png (16-bit, 1/5000 m), rgb.txt, depth.txt, groundtruth.txt, intrinsics.json.

    Depth beyond the 16-bit range (13.1 m) is written as 0 (invalid), as a real sensor would report it. The
    folder must be new or empty, so an earlier export is never partly overwritten.

    Returns:
        The output folder.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"synthetic export folder {out}: exists and is not empty; choose a new folder")
    (out / "rgb").mkdir(parents=True, exist_ok=True)
    (out / "depth").mkdir(exist_ok=True)
    source = f"spark3r_stream.synth seed {sequence.seed}, path {sequence.path}, {sequence.num_frames} frames"
    rgb_lines = [f"# {source}", "# timestamp filename"]
    depth_lines = [f"# {source}", "# timestamp filename (16-bit PNG, depth * 5000 = metres, 0 = invalid)"]
    for frame in range(sequence.num_frames):
        stamp = f"{sequence.timestamps_s[frame]:.6f}"
        name = f"{frame:06d}.png"
        if not cv2.imwrite(str(out / "rgb" / name), cv2.cvtColor(sequence.images[frame], cv2.COLOR_RGB2BGR)):
            raise InputError(f"synthetic export {out / 'rgb' / name}: OpenCV could not write the image")
        scaled = np.round(sequence.depth[frame].astype(np.float64) * TUM_DEPTH_SCALE)
        depth_png = np.where((scaled > 0) & (scaled <= _MAX_DEPTH_VALUE), scaled, 0).astype(np.uint16)
        if not cv2.imwrite(str(out / "depth" / name), depth_png):
            raise InputError(f"synthetic export {out / 'depth' / name}: OpenCV could not write the depth")
        rgb_lines.append(f"{stamp} rgb/{name}")
        depth_lines.append(f"{stamp} depth/{name}")
    (out / "rgb.txt").write_text("\n".join(rgb_lines) + "\n")
    (out / "depth.txt").write_text("\n".join(depth_lines) + "\n")
    write_tum(
        out / "groundtruth.txt",
        np.round(sequence.timestamps_s, 6),  # the same strings as rgb.txt, so exact association works
        sequence.world_from_cam,
        comment=f"{source}\ncamera-to-world pose of the camera (OpenCV axes, world z up), TUM format",
    )
    height, width = sequence.images.shape[1:3]
    intrinsics = {
        "fx": float(sequence.intrinsics[0, 0]),
        "fy": float(sequence.intrinsics[1, 1]),
        "cx": float(sequence.intrinsics[0, 2]),
        "cy": float(sequence.intrinsics[1, 2]),
        "width": int(width),
        "height": int(height),
        "depth_scale": TUM_DEPTH_SCALE,
        "distortion": None,
        "source_file": None,
        "generator": source,
    }
    (out / "intrinsics.json").write_text(json.dumps(intrinsics, indent=2) + "\n")
    return out
