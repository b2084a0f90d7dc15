"""Keyframe selection: parallax from sparse LK optical flow against the last keyframe, a blur gate, min/max intervals.

No torch here: the keyframes node starts without it (tested via `sys.modules`).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from spark3r_stream.config import check_field
from spark3r_stream.errors import InputError
from spark3r_stream.input_size import PRESET_INPUTS, keyframe_hw

log = logging.getLogger(__name__)

__all__ = ["Keyframe", "KeyframeSelector", "KeyframeSelectorConfig", "resize_for_model"]

KeyframeReason = Literal["first", "parallax", "tracking_lost", "max_interval"]


@dataclass(frozen=True, kw_only=True)
class KeyframeSelectorConfig:
    """When a frame becomes a keyframe.

    Parallax is the median LK flow of corners tracked from the last keyframe, divided by the image diagonal, so
    the threshold does not depend on the resolution (VGGT-SLAM's 50 px mean disparity at 640x480 is 0.0625).
    """

    parallax_threshold: float = 0.05  # median flow / image diagonal that makes a keyframe
    min_interval: int = 1  # frames after a keyframe before the next may be taken (1: the very next frame may)
    max_interval: int = 30  # frames after which a (sharp) frame is a keyframe whatever its parallax
    blur_ratio: float = 0.35  # reject a frame whose Laplacian variance is below this x the running median
    blur_history: int = 30  # frames in the running median of the Laplacian variance
    blur_min_history: int = 5  # the blur gate is off until this many frames were seen
    max_corners: int = 300  # Shi-Tomasi corners detected on each keyframe
    min_corners: int = 12  # fewer corners on a keyframe (textureless): parallax unknown, max_interval only
    min_tracked_fraction: float = 0.3  # fewer corners tracked than this fraction: the view changed, a keyframe
    flow_width: int = 320  # images are downscaled to this width for flow and blur (cost, not accuracy)
    model_hw: tuple[int, int] | None = None  # when set, keyframe images are resized to the model input (H, W)
    # else, when set, to this preset's input for the source's frame size (the launcher sets it from reconstruction)
    model: str | None = None
    # Frames outside these limits are rejected before anything is computed or resized on them: a schema-valid
    # 1,000,000 x 8 image upscaled to the model size took the keyframes node to 4.7 GB (issue 15).
    max_pixels: int = 12_000_000  # H * W; 4000 x 3000 still passes
    max_aspect_ratio: float = 4.0  # long side / short side; 32:9 ultra-wide (3.6) still passes

    def __post_init__(self):
        check_field(self, "parallax_threshold", self.parallax_threshold > 0, "float > 0")
        check_field(self, "min_interval", self.min_interval >= 1, "int >= 1")
        check_field(self, "max_interval", self.max_interval >= self.min_interval, "int >= min_interval")
        check_field(self, "blur_ratio", 0 <= self.blur_ratio < 1, "float in [0, 1)")
        check_field(self, "blur_history", self.blur_history >= 1, "int >= 1")
        check_field(self, "blur_min_history", self.blur_min_history >= 1, "int >= 1")
        check_field(self, "max_corners", self.max_corners >= self.min_corners, "int >= min_corners")
        check_field(self, "min_corners", self.min_corners >= 1, "int >= 1")
        check_field(self, "min_tracked_fraction", 0 <= self.min_tracked_fraction <= 1, "float in [0, 1]")
        check_field(self, "flow_width", self.flow_width >= 32, "int >= 32")
        check_field(
            self,
            "model_hw",
            self.model_hw is None or (len(self.model_hw) == 2 and min(self.model_hw) >= 1),
            "null or [height, width] >= 1",
        )
        check_field(
            self, "model", self.model is None or self.model in PRESET_INPUTS, f"null or one of {sorted(PRESET_INPUTS)}"
        )
        check_field(self, "max_pixels", self.max_pixels >= 64, "int >= 64")
        check_field(self, "max_aspect_ratio", self.max_aspect_ratio >= 1, "float >= 1")


@dataclass(frozen=True, kw_only=True)
class Keyframe:
    """A selected keyframe, emitted once; `image` is at model resolution when the config sets `model_hw`."""

    keyframe_id: int
    frame_seq: int
    t_capture: float
    image: np.ndarray  # uint8 [H, W, 3] RGB
    reason: KeyframeReason
    parallax: float | None  # median flow / image diagonal against the previous keyframe; None if unknown
    sharpness: float  # variance of the Laplacian of the downscaled grey image


class KeyframeSelector:
    """Offer every frame in order; a frame that qualifies comes back as a `Keyframe` (ids 0, 1, 2, ...).

    `counts` tracks what happened to every offered frame: `keyframes`, `blurry`, `min_interval`, `low_parallax`.
    """

    def __init__(self, config: KeyframeSelectorConfig | None = None):
        self.config = config or KeyframeSelectorConfig()
        self.counts = {"offered": 0, "keyframes": 0, "blurry": 0, "min_interval": 0, "low_parallax": 0}
        self._sharpness_history: deque[float] = deque(maxlen=self.config.blur_history)
        self._last_frame_seq: int | None = None
        self._keyframe_seq: int | None = None
        self._keyframe_gray: np.ndarray | None = None
        self._keyframe_corners: np.ndarray | None = None  # [N, 1, 2] float32, OpenCV's layout for LK
        self.last_was_blurry = False  # the last offered frame was rejected as blurry

    @property
    def num_keyframes(self) -> int:
        return self.counts["keyframes"]

    def offer(self, frame_seq: int, t_capture: float, image: np.ndarray) -> Keyframe | None:
        """Decide on one frame (`image` uint8 [H, W, 3] RGB); frames must come in increasing `frame_seq`."""
        _check_image(image, frame_seq, self.config)
        if self._last_frame_seq is not None and frame_seq <= self._last_frame_seq:
            raise InputError(
                f"keyframe selector frame {frame_seq}: frame_seq must increase (previous {self._last_frame_seq})"
            )
        self._last_frame_seq = frame_seq
        self.counts["offered"] += 1
        cfg = self.config
        gray = _small_gray(image, cfg.flow_width)
        sharpness = float(cv2.Laplacian(gray, cv2.CV_64F).var())
        is_blurry = self.last_was_blurry = self._is_blurry(sharpness)
        self._sharpness_history.append(sharpness)
        if is_blurry:
            self.counts["blurry"] += 1
            log.debug("frame %d rejected as blurry (sharpness %.1f)", frame_seq, sharpness)
            return None

        if self._keyframe_seq is None:
            return self._emit(frame_seq, t_capture, image, gray, sharpness, "first", None)
        since = frame_seq - self._keyframe_seq
        if since < cfg.min_interval:
            self.counts["min_interval"] += 1
            return None
        parallax, tracked_fraction = self._parallax(gray)
        if parallax is not None and tracked_fraction < cfg.min_tracked_fraction:
            return self._emit(frame_seq, t_capture, image, gray, sharpness, "tracking_lost", parallax)
        if parallax is not None and parallax >= cfg.parallax_threshold:
            return self._emit(frame_seq, t_capture, image, gray, sharpness, "parallax", parallax)
        if since >= cfg.max_interval:
            return self._emit(frame_seq, t_capture, image, gray, sharpness, "max_interval", parallax)
        self.counts["low_parallax"] += 1
        return None

    def _is_blurry(self, sharpness: float) -> bool:
        history = self._sharpness_history
        if len(history) < self.config.blur_min_history:
            return False
        # relative to the running median: absolute Laplacian variance depends on the scene's texture
        return sharpness < self.config.blur_ratio * float(np.median(history))

    def _parallax(self, gray: np.ndarray) -> tuple[float | None, float]:
        """(median flow / diagonal of the tracked corners, fraction of corners tracked); None if untrackable."""
        corners = self._keyframe_corners
        if corners is None or len(corners) < self.config.min_corners or self._keyframe_gray is None:
            return None, 0.0
        if gray.shape != self._keyframe_gray.shape:
            return None, 0.0  # resolution changed mid-stream: parallax unknown
        tracked, status, _ = cv2.calcOpticalFlowPyrLK(self._keyframe_gray, gray, corners, None)
        back, back_status, _ = cv2.calcOpticalFlowPyrLK(gray, self._keyframe_gray, tracked, None)
        # forward-backward check: a corner that does not track back to within 1 px is a mismatch
        is_good = (status[:, 0] == 1) & (back_status[:, 0] == 1) & (np.linalg.norm(back - corners, axis=-1)[:, 0] < 1.0)
        fraction = float(is_good.mean())
        if not is_good.any():
            return float("inf"), 0.0
        flow = np.linalg.norm((tracked - corners)[is_good, 0], axis=-1)
        diagonal = float(np.hypot(*gray.shape))
        return float(np.median(flow)) / diagonal, fraction

    def _emit(
        self,
        frame_seq: int,
        t_capture: float,
        image: np.ndarray,
        gray: np.ndarray,
        sharpness: float,
        reason: KeyframeReason,
        parallax: float | None,
    ) -> Keyframe:
        keyframe_id = self.counts["keyframes"]
        self.counts["keyframes"] += 1
        self._keyframe_seq = frame_seq
        self._keyframe_gray = gray
        self._keyframe_corners = cv2.goodFeaturesToTrack(
            gray, maxCorners=self.config.max_corners, qualityLevel=0.01, minDistance=7
        )
        if self.config.model_hw is not None:
            image = resize_for_model(image, self.config.model_hw)
        elif self.config.model is not None:
            image = resize_for_model(image, keyframe_hw(self.config.model, image.shape[:2]))
        log.debug("keyframe %d = frame %d (%s, parallax %s)", keyframe_id, frame_seq, reason, parallax)
        return Keyframe(
            keyframe_id=keyframe_id,
            frame_seq=frame_seq,
            t_capture=t_capture,
            image=image,
            reason=reason,
            parallax=parallax,
            sharpness=sharpness,
        )


def _check_image(image: np.ndarray, frame_seq: int, cfg: KeyframeSelectorConfig) -> None:
    """InputError (reason `bad_image`) for anything but a uint8 [H, W, 3] image within the size limits."""
    where = f"keyframe selector frame {frame_seq}"
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise InputError(f"{where}: expected a uint8 [H, W, 3] image, got {dtype} {shape}", "bad_image")
    height, width = image.shape[:2]
    if min(height, width) < 8:
        raise InputError(f"{where}: image {height}x{width} is too small (< 8 px)", "bad_image")
    if height * width > cfg.max_pixels:
        raise InputError(f"{where}: image {height}x{width} has {height * width} pixels > max_pixels", "bad_image")
    if max(height, width) > cfg.max_aspect_ratio * min(height, width):
        raise InputError(
            f"{where}: image {height}x{width} has aspect ratio {max(height, width) / min(height, width):.1f} > "
            f"max_aspect_ratio {cfg.max_aspect_ratio:g}",
            "bad_image",
        )


def _small_gray(image: np.ndarray, width: int) -> np.ndarray:
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if gray.shape[1] > width:
        height = max(8, round(gray.shape[0] * width / gray.shape[1]))
        gray = cv2.resize(gray, (width, height), interpolation=cv2.INTER_AREA)
    return gray


def model_from_source(source_hw: tuple[int, int], target_hw: tuple[int, int]) -> tuple[float, int, int]:
    """(scale, top, left) of `resize_for_model`: model pixel = scale * source pixel - (left, top)."""
    (height, width), (target_h, target_w) = source_hw, target_hw
    scale = max(target_h / height, target_w / width)
    new_h, new_w = max(target_h, round(height * scale)), max(target_w, round(width * scale))
    return scale, (new_h - target_h) // 2, (new_w - target_w) // 2


def resize_for_model(image: np.ndarray, target_hw: tuple[int, int]) -> np.ndarray:
    """Resize an image to the model input size without distortion: scale to cover, then centre crop.

    The image is scaled by `max(H_t / H, W_t / W)` (so both sides reach the target; aspect ratio kept) with area
    interpolation when shrinking and bilinear when enlarging, then the excess of the longer side is cropped
    equally from both ends. Intrinsics of the result: focal lengths times the scale, principal point shifted by
    the crop offset.

    Args:
        image: uint8 [H, W, 3].
        target_hw: (H_t, W_t) of the model input, e.g. (294, 518) for VGGT's crop mode on 4:3 video.

    Returns:
        uint8 [H_t, W_t, 3], C-contiguous.
    """
    target_h, target_w = (int(side) for side in target_hw)
    if target_h < 1 or target_w < 1:
        raise InputError(f"resize_for_model target_hw: expected positive (height, width), got {target_hw}")
    height, width = image.shape[:2]
    if (height, width) == (target_h, target_w):
        return np.ascontiguousarray(image)
    scale = max(target_h / height, target_w / width)
    new_h, new_w = max(target_h, round(height * scale)), max(target_w, round(width * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    top, left = (new_h - target_h) // 2, (new_w - target_w) // 2
    return np.ascontiguousarray(resized[top : top + target_h, left : left + target_w])
