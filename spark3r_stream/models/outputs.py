"""One prediction type for everything downstream: official output dicts -> `Prediction` (OpenCV, camera-to-world)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from spark3r_stream.models.pose_encoding import pose_encoding_to_extri_intri


@dataclass
class Prediction:
    """Per-frame geometry of one forward pass, in the model's world frame (VGGT: frame 0's camera).

    Shapes: world_from_cam [S,4,4] float64 camera-to-world (OpenCV axes: x right, y down, z forward);
    intrinsics [S,3,3] in network-input pixels; depth / depth_conf [S',H,W]; world_points [S',H,W,3];
    points_conf [S',H,W]. S' = len(dense_frames): the frames whose dense outputs were decoded (default all).
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


CONVERTERS: dict[str, Callable[[dict, tuple[int, int]], dict[str, np.ndarray | None]]] = {
    "vggt": vggt_outputs_to_prediction,
}


def autocast_for(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA (heads stay float32 inside the models), plain float32 elsewhere."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def predict(
    model: nn.Module,
    images: torch.Tensor,
    *,
    dense_frames: torch.Tensor | None = None,
    patch_tokens: torch.Tensor | None = None,
) -> Prediction:
    """Run `model` on one scene.

    Args:
        images: [S, 3, H, W] in [0, 1] (moved to the model's device).
        dense_frames: frames whose depth/points to decode (default all); cameras are always predicted for all.
        patch_tokens: cached encoder outputs [1, S, h*w, C] (growing windows).
    """
    device = next(model.parameters()).device
    images = images.to(device)
    if images.dim() != 4:
        raise ValueError(f"predict expects images [S, 3, H, W], got shape {tuple(images.shape)}")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start = time.perf_counter()
    with torch.inference_mode(), autocast_for(device):
        kwargs: dict[str, Any] = {}
        if dense_frames is not None:
            kwargs["dense_frames"] = dense_frames.to(device)
        if patch_tokens is not None:
            kwargs["patch_tokens"] = patch_tokens.to(device)
        out = model(images, **kwargs)
        sync()
    forward_ms = (time.perf_counter() - start) * 1e3
    image_hw = (int(images.shape[-2]), int(images.shape[-1]))
    fields = CONVERTERS[model.family](out, image_hw)
    S = images.shape[0]
    dense = np.arange(S) if dense_frames is None else dense_frames.cpu().numpy()
    metadata: dict[str, Any] = {"num_frames": S}
    plan = getattr(model, "last_reduction_plan", None)
    if plan is not None:
        metadata["reduction_plan"] = plan
    return Prediction(
        model=getattr(model, "preset_name", model.family),
        image_hw=image_hw,
        dense_frames=dense,
        timings_ms={"forward": round(forward_ms, 3)},
        metadata=metadata,
        **fields,
    )
