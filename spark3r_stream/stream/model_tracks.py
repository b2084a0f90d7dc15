"""The model's own tracks for the back end: VGGT's track head on a window's newest keyframes (issue 17).

Reconstruction side (`track_window`): after a window run, corners of the window's newest keyframe are tracked through
it and the keyframes before it (`TrackQueryConfig.num_frames` in all) by one more model call on those frames, the
query keyframe first: VGGT's track head tracks points of frame 0, and its camera and depth outputs of that call are
not used (only the query keyframe is decoded, the least the heads allow). The encoder outputs come from the
reconstructor's cache, so the call costs the aggregator on `num_frames` frames plus the track head. Only visible and
confident observations travel, in WindowResult's `track_*` fields (model-input pixels).

Fusion side (`window_observations`): a keyframe's observations in the window result, moved to the pixels of the
source frame the keyframes node saw (those of the feature tracks and the source's intrinsics, stream/tracks.py), with
their own id space (negative ids) next to the optical-flow tracks' ids (>= 0).

No torch at import: fusion imports this module for `window_observations`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np

from spark3r_stream.config import check_field
from spark3r_stream.errors import ConfigError
from spark3r_stream.stream.tracks import TrackObservations

log = logging.getLogger(__name__)

__all__ = ["TrackQueryConfig", "WindowTracks", "track_window", "tracks_enabled", "window_observations"]

TracksMode = Literal["auto", "on", "off"]


@dataclass(frozen=True, kw_only=True)
class TrackQueryConfig:
    """Which points the track head follows, through which keyframes, and which observations are sent."""

    max_points: int = 256  # query corners in the newest keyframe (Shi-Tomasi, strongest first)
    num_frames: int = 8  # keyframes tracked through: the newest and the ones before it in the window
    min_distance_px: float = 4.0  # between query corners, in model-input pixels
    min_visibility: float = 0.5  # the track head's visibility probability an observation needs
    min_confidence: float = 0.5  # ... and its confidence probability

    def __post_init__(self):
        check_field(self, "max_points", 1 <= self.max_points <= 4096, "int in [1, 4096]")
        check_field(self, "num_frames", self.num_frames >= 2, "int >= 2")
        check_field(self, "min_distance_px", self.min_distance_px > 0, "float > 0")
        check_field(self, "min_visibility", 0 <= self.min_visibility <= 1, "float in [0, 1]")
        check_field(self, "min_confidence", 0 <= self.min_confidence <= 1, "float in [0, 1]")


@dataclass(frozen=True)
class WindowTracks:
    """One observation per entry: track `track_ids[i]` at `track_uv[i]` (x, y model-input pixels) of keyframe
    `track_keyframe_ids[i]` (WindowResult's v2 fields)."""

    track_keyframe_ids: np.ndarray  # [M] int64
    track_ids: np.ndarray  # [M] int64
    track_uv: np.ndarray  # [M, 2] float32


def has_trained_track_head(model: Any) -> bool:
    """A track head whose weights came from a checkpoint: loading is strict (models/checkpoint.py), so a model built
    with a track head and loaded from a file got every `track_head.*` key from it. vggt-tiny is built without one
    (its file has none), and `random_weights` leaves `model.spec.weights` None."""
    spec = getattr(model, "spec", None)
    return getattr(model, "track_head", None) is not None and spec is not None and spec.weights is not None


def tracks_enabled(model: Any, mode: TracksMode) -> bool:
    """Whether the reconstructor sends the model's tracks: `auto` when the model has a trained track head, `on`
    whenever it has one (ConfigError if it has none), `off` never."""
    if mode == "off":
        return False
    if mode == "on":
        if getattr(model, "track_head", None) is None:
            name = getattr(getattr(model, "spec", None), "name", type(model).__name__)
            raise ConfigError(
                f"reconstruction.tracks: 'on' needs a model with a track head, and {name!r} has none; "
                "use 'auto' or 'off' (a VGGT checkpoint with track_head.* keys brings one)"
            )
        return True
    return has_trained_track_head(model)


def query_corners(image: np.ndarray, config: TrackQueryConfig) -> np.ndarray:
    """[N, 2] float32 (x, y) corners of an RGB uint8 [H, W, 3] image, N <= max_points."""
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    corners = cv2.goodFeaturesToTrack(
        grey, maxCorners=config.max_points, qualityLevel=0.01, minDistance=config.min_distance_px
    )
    return np.zeros((0, 2), np.float32) if corners is None else corners[:, 0].astype(np.float32)


def track_window(
    model: Any,
    images: Any,
    keyframe_ids: tuple[int, ...],
    config: TrackQueryConfig,
    patch_tokens: Any = None,
) -> WindowTracks | None:
    """Track corners of the window's newest keyframe through it and the keyframes before it.

    Args:
        images: [S, 3, H, W] float in [0, 1], the window's keyframes in window order (torch).
        patch_tokens: the encoder outputs of the same frames [1, S, P, C] (the reconstructor's cache), or None.

    Returns:
        The visible, confident observations (the query keyframe's own points included), or None when the window has
        a single keyframe or the newest keyframe has no corner.
    """
    import torch

    from spark3r_stream.models import predict

    positions = list(range(len(keyframe_ids)))[-config.num_frames :]
    if len(positions) < 2:
        return None
    order = [positions[-1], *positions[:-1]]  # the query keyframe first
    query_image = (images[order[0]].permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
    query = query_corners(query_image, config)
    if not len(query):
        return None
    tokens = None if patch_tokens is None else patch_tokens[:, order]
    prediction = predict(
        model, images[order], dense_frames=torch.tensor([0]), patch_tokens=tokens, query_points=query
    )  # fmt: skip
    tracks = np.asarray(prediction.tracks, np.float32)  # [S', N, 2]
    height, width = images.shape[-2:]
    keep = (prediction.track_vis >= config.min_visibility) & (prediction.track_conf >= config.min_confidence)
    keep &= np.isfinite(tracks).all(-1)
    keep &= (
        (tracks[..., 0] >= 0) & (tracks[..., 0] <= width - 1) & (tracks[..., 1] >= 0) & (tracks[..., 1] <= height - 1)
    )
    keep[0] = True  # the query itself (the head returns it exactly)
    frame, point = np.nonzero(keep)
    window_ids = np.asarray(keyframe_ids, np.int64)[order]
    return WindowTracks(window_ids[frame], point.astype(np.int64), tracks[frame, point])


def window_observations(
    result: Any, keyframe_id: int, source_hw: tuple[int, ...] | None, model_hw: tuple[int, int]
) -> TrackObservations | None:
    """A keyframe's model-track observations in a WindowResult, in the source's pixels (None when it has none).

    Model pixels come from the source by `resize_for_model`: a resize to (new_h, new_w) that covers the model size,
    then a centre crop. OpenCV's resize maps pixel centres per axis, `model = (source + 0.5) * new / old - 0.5 -
    offset`; this inverts that exactly (the rounded size makes the two axes' scales differ slightly: one scale for both
    was 0.9 px off at x = 400 of a 640-pixel source). Ids are `-1 - track id`, apart from the optical-flow tracks'
    (>= 0); a window's model tracks only ever meet each other within that window.
    """
    from spark3r_stream.stream.keyframes import model_from_source

    if getattr(result, "track_keyframe_ids", None) is None:
        return None
    mine = np.asarray(result.track_keyframe_ids) == keyframe_id
    if not mine.any():
        return None
    uv = np.asarray(result.track_uv[mine], np.float64)
    if source_hw is not None and tuple(source_hw) != tuple(model_hw):
        (height, width), (target_h, target_w) = source_hw, model_hw
        scale, top, left = model_from_source((height, width), (target_h, target_w))
        new_h, new_w = max(target_h, round(height * scale)), max(target_w, round(width * scale))  # resize_for_model's
        uv = (uv + [left, top] + 0.5) / [new_w / width, new_h / height] - 0.5
    return TrackObservations(-1 - np.asarray(result.track_ids[mine], np.int64), uv.astype(np.float32))
