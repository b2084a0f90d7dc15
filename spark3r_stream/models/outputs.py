"""One prediction type for everything downstream: official output dicts -> `Prediction` (OpenCV, camera-to-world)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from spark3r_stream.geometry import unproject_depth
from spark3r_stream.models.da3 import SKY_THRESHOLD, DA3MonoConfig
from spark3r_stream.models.pose_encoding import pose_encoding_to_extri_intri


@dataclass
class Prediction:
    """Per-frame geometry of one forward pass, in the model's world frame (VGGT: frame 0's camera).

    Shapes: world_from_cam [S,4,4] float64 camera-to-world (OpenCV axes: x right, y down, z forward);
    intrinsics [S,3,3] in network-input pixels; depth / depth_conf [S',H,W]; world_points [S',H,W,3];
    points_conf [S',H,W]. S' = len(dense_frames): the frames whose dense outputs were decoded (default all).
    With query points (VGGT's track head): tracks [S,N,2] pixels (x = column, y = row) of the network input, frame 0
    = the queries; track_vis / track_conf [S,N] probabilities in (0, 1).
    DA3 metric and nested models give depth (and nested: camera translations) in metres (`metadata["is_metric"]`);
    DA3 nets with a sky head give sky [S',H,W] bool (where their sky map is >= 0.3, the pixels whose depth they
    replace by a far value; the official API's own report thresholds at 0.5). The monocular DA3 nets predict no
    camera: identity poses, intrinsics as given to `predict` (NaN when not).
    """

    model: str
    world_from_cam: np.ndarray
    intrinsics: np.ndarray
    depth: np.ndarray | None
    depth_conf: np.ndarray | None
    world_points: np.ndarray | None
    points_conf: np.ndarray | None
    image_hw: tuple[int, int]
    dense_frames: np.ndarray
    timings_ms: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    tracks: np.ndarray | None = None
    track_vis: np.ndarray | None = None
    track_conf: np.ndarray | None = None
    sky: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return len(self.world_from_cam)

    @property
    def cam_from_world(self) -> np.ndarray:
        return np.linalg.inv(self.world_from_cam)


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().float().cpu().numpy()


def cam_from_world_to_world_from_cam(cam_from_world_3x4: np.ndarray) -> np.ndarray:
    """[S,3,4] camera-from-world -> [S,4,4] camera-to-world (float64)."""
    S = len(cam_from_world_3x4)
    full = np.tile(np.eye(4), (S, 1, 1))
    full[:, :3, :4] = cam_from_world_3x4
    return np.linalg.inv(full)


def vggt_outputs_to_prediction(out: dict, image_hw: tuple[int, int]) -> dict[str, np.ndarray | None]:
    """VGGT: pose encoding -> official extrinsic (camera-from-world) -> camera-to-world; batch item 0."""
    cam_from_world, intrinsics = pose_encoding_to_extri_intri(out["pose_enc"], image_hw)
    depth = out.get("depth")
    return {
        "world_from_cam": cam_from_world_to_world_from_cam(cam_from_world[0].double().cpu().numpy()),
        "intrinsics": intrinsics[0].double().cpu().numpy(),
        "depth": None if depth is None else _np(depth[0, ..., 0]),
        "depth_conf": None if depth is None else _np(out["depth_conf"][0]),
        "world_points": None if out.get("world_points") is None else _np(out["world_points"][0]),
        "points_conf": None if out.get("world_points_conf") is None else _np(out["world_points_conf"][0]),
    }


def _dense_index(out: dict, num_frames: int) -> np.ndarray:
    frames = out.get("dense_frames")
    return np.arange(num_frames) if frames is None else frames.detach().cpu().numpy().reshape(-1)


def fit_intrinsics(local_points: np.ndarray) -> np.ndarray:
    """Pinhole intrinsics [S, 3, 3] of camera-frame point maps [S, H, W, 3] by least squares per axis.

    Solves u = fx·x/z + cx over all pixels (u = column index, v = row index: the `geometry.unproject_depth`
    convention), likewise for v; π³ outputs no intrinsics (reference_pi3.md §3).
    """
    S, H, W, _ = local_points.shape
    points = local_points.astype(np.float64)
    ratio = points[..., :2] / points[..., 2:3]
    u = np.broadcast_to(np.arange(W, dtype=np.float64)[None, :], (H, W)).reshape(-1)
    v = np.broadcast_to(np.arange(H, dtype=np.float64)[:, None], (H, W)).reshape(-1)
    intrinsics = np.tile(np.eye(3), (S, 1, 1))
    for s in range(S):
        for axis, pixel in ((0, u), (1, v)):
            design = np.stack([ratio[s, ..., axis].reshape(-1), np.ones_like(pixel)], axis=-1)
            (focal, centre), *_ = np.linalg.lstsq(design, pixel, rcond=None)
            intrinsics[s, axis, axis] = focal
            intrinsics[s, axis, 2] = centre
    return intrinsics


def pi3_outputs_to_prediction(out: dict, image_hw: tuple[int, int]) -> dict[str, np.ndarray | None]:
    """π³: camera_poses are camera-to-world (OpenCV) in π³'s canonical frame, as released; batch item 0.

    Intrinsics are fitted to the decoded views' local point maps; views not decoded this call (dense_frames)
    get the mean of the fitted ones (one camera per stream). Confidences are sigmoid(logit) in (0, 1).
    """
    world_from_cam = out["camera_poses"][0].double().cpu().numpy()
    local_points = _np(out["local_points"][0])
    dense = _dense_index(out, len(world_from_cam))
    fitted = fit_intrinsics(local_points)
    intrinsics = np.broadcast_to(fitted.mean(axis=0), (len(world_from_cam), 3, 3)).copy()
    intrinsics[dense] = fitted
    conf = torch.sigmoid(out["conf"][0, ..., 0].float())
    return {
        "world_from_cam": world_from_cam,
        "intrinsics": intrinsics,
        "depth": local_points[..., 2],
        "depth_conf": _np(conf),
        "world_points": _np(out["points"][0]),
        "points_conf": _np(conf),
    }


def da3_outputs_to_prediction(out: dict, image_hw: tuple[int, int]) -> dict[str, np.ndarray | None]:
    """DA3: official extrinsics are world-to-camera (OpenCV), world = as the network returns it; batch item 0.

    World points unproject the depth with the predicted intrinsics (`geometry.unproject_depth`) and map them by
    camera-to-world, as the official API does; depth_conf is the official exp(.)+1 (≥ 1). The nested net's depth and
    translations are already in metres. The monocular nets (no `extrinsics`): identity poses, their depth in metres
    when the metric net had intrinsics (`depth_metres`), no confidence; world points only with known intrinsics.
    """
    intrinsics = out["intrinsics"][0].double().cpu().numpy()
    if "extrinsics" in out:
        world_from_cam = cam_from_world_to_world_from_cam(out["extrinsics"][0].double().cpu().numpy())
    else:
        world_from_cam = np.tile(np.eye(4), (len(intrinsics), 1, 1))
    depth = _np(out.get("depth_metres", out["depth"])[0])
    dense = _dense_index(out, len(world_from_cam))
    world_points = None
    if np.isfinite(intrinsics).all():
        points_cam = unproject_depth(depth, intrinsics[dense])
        rotation, translation = world_from_cam[dense, :3, :3], world_from_cam[dense, :3, 3]
        world_points = np.einsum("sij,shwj->shwi", rotation, points_cam) + translation[:, None, None, :]
        world_points = world_points.astype(np.float32)
    conf = _np(out["depth_conf"][0]) if "depth_conf" in out else None
    sky = out.get("sky")
    return {
        "world_from_cam": world_from_cam,
        "intrinsics": intrinsics,
        "depth": depth,
        "depth_conf": conf,
        "world_points": world_points,
        "points_conf": conf,
        "sky": None if sky is None else sky[0].detach().cpu().numpy() >= SKY_THRESHOLD,
    }


CONVERTERS: dict[str, Callable[[dict, tuple[int, int]], dict[str, np.ndarray | None]]] = {
    "vggt": vggt_outputs_to_prediction,
    "pi3": pi3_outputs_to_prediction,
    "da3": da3_outputs_to_prediction,
}


def autocast_for(device: torch.device, cpu_bf16: bool = False) -> torch.autocast:
    """bf16 autocast on CUDA, and on the CPU with `cpu_bf16` (heads stay float32 inside the models); plain float32
    elsewhere."""
    enabled = device.type == "cuda" or (cpu_bf16 and device.type == "cpu")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


@functools.cache  # read once: the Spark3R matching asks in every layer
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (avx512_bf16 or AMX flags in /proc/cpuinfo; False where unreadable)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def predict(
    model: nn.Module,
    images: torch.Tensor,
    *,
    dense_frames: torch.Tensor | None = None,
    patch_tokens: torch.Tensor | None = None,
    first_block: torch.Tensor | None = None,
    query_points: torch.Tensor | np.ndarray | None = None,
    intrinsics: torch.Tensor | np.ndarray | None = None,
    cpu_bf16: bool = False,
) -> Prediction:
    """Run `model` on one scene.

    Args:
        images: [S, 3, H, W] in [0, 1] (moved to the model's device).
        dense_frames: frames whose depth/points to decode (default all); cameras are always predicted for all.
        patch_tokens: cached encoder outputs [1, S, h*w, C] (growing windows).
        first_block: cached outputs of VGGT's frame block 0 [1, S, P, C] (growing windows; see
            `Aggregator.first_frame_block`).
        query_points: [N, 2] pixels (x = column, y = row) in frame 0 of `images`: tracks them through every frame
            with VGGT's track head (`Prediction.tracks`, `track_vis`, `track_conf`); a model without one refuses.
        intrinsics: [S, 3, 3] pixels of `images`, for the monocular DA3 nets, which predict no camera:
            da3-metric-large needs them for depth in metres (metres = focal · output / 300).
        cpu_bf16: bf16 autocast on a CPU device too (worth it only where the CPU has avx512_bf16 or AMX; see
            `cpu_has_bf16`); float32 by default.
    """
    device = next(model.parameters()).device
    images = images.to(device)
    if images.dim() != 4:
        raise ValueError(f"predict expects images [S, 3, H, W], got shape {tuple(images.shape)}")
    monocular = isinstance(getattr(model, "config", None), DA3MonoConfig)
    if intrinsics is not None and not monocular:
        raise ValueError(f"predict intrinsics: model {model.spec.name!r} predicts its own cameras (only the monocular "
                         "DA3 nets take intrinsics)")  # fmt: skip
    if monocular and model.config.metric and intrinsics is None:
        raise ValueError(f"predict: model {model.spec.name!r} gives depth in metres only from the focal length; pass "
                         "intrinsics [S, 3, 3] (pixels of the network input)")  # fmt: skip
    if query_points is not None:
        if getattr(model, "track_head", None) is None:
            raise ValueError(f"predict query_points: model {model.spec.name!r} has no track head to track them")
        query_points = torch.as_tensor(query_points, dtype=torch.float32, device=device)
        if query_points.dim() != 2 or query_points.shape[-1] != 2:
            raise ValueError(f"predict query_points: expected [N, 2] pixels, got shape {tuple(query_points.shape)}")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start = time.perf_counter()
    with torch.inference_mode(), autocast_for(device, cpu_bf16):
        kwargs: dict[str, Any] = {}
        if dense_frames is not None:
            kwargs["dense_frames"] = dense_frames.to(device)
        if patch_tokens is not None:
            kwargs["patch_tokens"] = patch_tokens.to(device)
        if first_block is not None:
            kwargs["first_block"] = first_block.to(device)
        if query_points is not None:
            kwargs["query_points"] = query_points[None]
        if intrinsics is not None:
            intrinsics = torch.as_tensor(intrinsics, dtype=torch.float32, device=device)
            if intrinsics.shape != (len(images), 3, 3):
                raise ValueError(f"predict intrinsics: expected [{len(images)}, 3, 3], got {tuple(intrinsics.shape)}")
            kwargs["intrinsics"] = intrinsics[None]
        out = model(images, **kwargs)
        sync()
    forward_ms = (time.perf_counter() - start) * 1e3
    image_hw = (int(images.shape[-2]), int(images.shape[-1]))
    fields = CONVERTERS[model.spec.family](out, image_hw)
    S = images.shape[0]
    dense = np.arange(S) if dense_frames is None else dense_frames.cpu().numpy()
    metadata: dict[str, Any] = {"num_frames": S}
    plan = getattr(model, "last_reduction_plan", None)
    if plan is not None:
        metadata["reduction_plan"] = plan
    for key in ("is_metric", "scale_factor"):  # DA3 metric / nested
        if key in out:
            metadata[key] = out[key]
    tracks = {}
    if query_points is not None:
        tracks = {"tracks": _np(out["track"][0]), "track_vis": _np(out["vis"][0]), "track_conf": _np(out["conf"][0])}
    return Prediction(
        model=model.spec.name,
        image_hw=image_hw,
        dense_frames=dense,
        timings_ms={"forward": round(forward_ms, 3)},
        metadata=metadata,
        **fields,
        **tracks,
    )
