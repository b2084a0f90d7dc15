"""Point clouds: voxel fusion (`voxel_downsample` -> `FusedMap`) and binary PLY files (`write_ply`, `read_ply`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spark3r_stream.errors import InputError

GREY = 128  # colour of points whose keyframe image is not (or no longer) available


@dataclass(frozen=True)
class FusedMap:
    """Voxel-downsampled points: one centroid per occupied voxel."""

    points: np.ndarray  # [N, 3] float32, map frame
    colors: np.ndarray  # [N, 3] uint8, mean colour of the voxel
    counts: np.ndarray  # [N] int64, source points per voxel


def voxel_downsample(points: np.ndarray, colors: np.ndarray, voxel_size: float) -> FusedMap:
    """Fuse points into voxels of edge `voxel_size`: centroid, mean colour and count per occupied voxel.

    Voxels are numpy-hashed (integer cell coordinates packed into one int64, then `np.unique`): open3d would
    add a several-hundred-MB dependency for this one function.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    colors = np.asarray(colors).reshape(-1, 3)
    if len(points) == 0:
        return FusedMap(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8), np.zeros(0, np.int64))
    cells = np.floor(points / voxel_size).astype(np.int64)
    cells -= cells.min(axis=0)
    extent = cells.max(axis=0) + 1
    if np.prod(extent.astype(np.float64)) >= 2.0**62:
        raise InputError(f"voxel_downsample: {extent} voxels do not fit one int64 key; raise voxel_size ({voxel_size})")
    keys = (cells[:, 0] * extent[1] + cells[:, 1]) * extent[2] + cells[:, 2]
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    centroid = np.stack([np.bincount(inverse, weights=points[:, i]) for i in range(3)], axis=1) / counts[:, None]
    mean_color = np.stack([np.bincount(inverse, weights=colors[:, i].astype(np.float64)) for i in range(3)], 1)
    mean_color = np.round(mean_color / counts[:, None])
    return FusedMap(centroid.astype(np.float32), mean_color.astype(np.uint8), counts.astype(np.int64))


_PLY_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])


def write_ply(path: str | os.PathLike, points: np.ndarray, colors: np.ndarray | None = None) -> None:
    """Write a binary little-endian PLY point cloud (float32 x y z, uint8 red green blue)."""
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    colors = np.full((len(points), 3), GREY, np.uint8) if colors is None else np.asarray(colors, np.uint8)
    if colors.shape != points.shape:
        raise InputError(f"write_ply {path}: colors {colors.shape} do not match points {points.shape}")
    rows = np.empty(len(points), dtype=_PLY_DTYPE)
    for i, axis in enumerate("xyz"):
        rows[axis] = points[:, i]
    for i, channel in enumerate(("red", "green", "blue")):
        rows[channel] = colors[:, i]
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment spark3r-stream fused map\n"
        f"element vertex {len(points)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    with open(path, "wb") as file:
        file.write(header.encode("ascii"))
        file.write(rows.tobytes())


def read_ply(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a PLY written by `write_ply` (binary little-endian or ascii, x y z red green blue vertices)."""
    path = Path(path)
    data = path.read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise InputError(f"PLY {path}: not a PLY file (no 'ply' magic or 'end_header')")
    header = data[:end].decode("ascii").splitlines()
    properties = [line.split()[-1] for line in header if line.startswith("property")]
    if properties != list(_PLY_DTYPE.names):
        raise InputError(f"PLY {path}: expected vertex properties {list(_PLY_DTYPE.names)}, got {properties}")
    count = next(int(line.split()[2]) for line in header if line.startswith("element vertex"))
    body = data[end + len(b"end_header\n") :]
    if "format ascii 1.0" in header:
        values = np.array(body.split(), dtype=np.float64).reshape(count, 6)
        return values[:, :3].astype(np.float32), values[:, 3:].astype(np.uint8)
    if "format binary_little_endian 1.0" not in header:
        raise InputError(f"PLY {path}: unsupported format (expected binary_little_endian 1.0 or ascii 1.0)")
    if len(body) != count * _PLY_DTYPE.itemsize:
        raise InputError(f"PLY {path}: {len(body)} bytes of vertex data, expected {count * _PLY_DTYPE.itemsize}")
    rows = np.frombuffer(body, dtype=_PLY_DTYPE)
    points = np.stack([rows[axis] for axis in "xyz"], axis=1)
    colors = np.stack([rows[channel] for channel in ("red", "green", "blue")], axis=1)
    return points, colors
