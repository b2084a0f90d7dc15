"""Feature tracks across keyframes at the source's resolution: the observations a back end checks poses against.

Computed in the keyframes node, which sees every frame at full resolution and already runs optical flow: each
keyframe message then carries its observations (a track id and a pixel per point, a few kB), so fusion needs no
images beyond the model-resolution ones it already gets, and the tracking cost stays off the reconstruction and
fusion paths. The tracks follow every frame, not only the keyframes: OpenCV pyramidal Lucas-Kanade between
consecutive frames, where motions are a few pixels, with a forward-backward check (a point that does not track back
to within `fb_threshold_px` is dropped). Measured on the demo: tracked from keyframe to keyframe (6-10° apart at
112 px) up to 41 % of a window's observations were more than 3 px off the true geometry. At each keyframe, RANSAC
on the fundamental matrix against the previous keyframe drops tracks off their epipolar line (LK on smooth texture
can converge to the same wrong place both ways, measured: 12 % of tracks into an unrelated image passed the
forward-backward check alone), then new Shi-Tomasi corners are added where the tracks have thinned out, with new
ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from spark3r_stream.config import check_field


@dataclass(frozen=True, kw_only=True)
class TrackerConfig:
    max_tracks: int = 400  # live tracks kept per keyframe (new corners top them up)
    min_distance_px: float = 12.0  # between corners, in tracking pixels
    fb_threshold_px: float = 1.0  # forward-backward error above which a tracked point is dropped
    epipolar_px: float = 1.0  # RANSAC threshold of the fundamental-matrix check
    min_inliers: int = 15  # fewer tracks consistent with one epipolar geometry: tracking lost, all dropped
    window_px: int = 21  # LK search window
    pyramid_levels: int = 4  # LK pyramid: keyframes are tens of pixels apart
    max_width: int = 640  # sources wider than this are tracked downscaled (positions still in source pixels)

    def __post_init__(self):
        check_field(self, "max_tracks", self.max_tracks >= 8, "int >= 8")
        check_field(self, "min_distance_px", self.min_distance_px > 0, "float > 0")
        check_field(self, "fb_threshold_px", self.fb_threshold_px > 0, "float > 0")
        check_field(self, "epipolar_px", self.epipolar_px > 0, "float > 0")
        check_field(self, "min_inliers", self.min_inliers >= 8, "int >= 8 (the fundamental matrix needs 8)")
        check_field(self, "window_px", self.window_px >= 5 and self.window_px % 2 == 1, "odd int >= 5")
        check_field(self, "pyramid_levels", 0 <= self.pyramid_levels <= 8, "int in [0, 8]")
        check_field(self, "max_width", self.max_width >= 64, "int >= 64")


@dataclass(frozen=True)
class TrackObservations:
    """The tracks one keyframe sees: `track_ids[i]` at pixel `uv[i]` (x, y) of the source image."""

    track_ids: np.ndarray  # [N] int64
    uv: np.ndarray  # [N, 2] float32


class KeyframeTracker:
    """`follow(image)` for every frame that is not a keyframe, `add(image)` for every keyframe, in order; `add`
    returns the keyframe's observations.

    A track id names one scene point across keyframes: ids of tracks that survive from the previous keyframe are
    kept, new corners get new ids (never reused).
    """

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self.next_id = 0
        self._gray: np.ndarray | None = None
        self._points: np.ndarray = np.zeros((0, 1, 2), np.float32)  # tracking pixels, OpenCV's LK layout
        self._ids: np.ndarray = np.zeros(0, np.int64)
        self._scale = 1.0  # tracking pixels per source pixel
        self._keyframe_points: dict[int, np.ndarray] = {}  # track id -> its position on the last keyframe

    def follow(self, image: np.ndarray) -> None:
        """Carry the live tracks into `image` (uint8 [H, W, 3] RGB, source resolution), a frame between keyframes."""
        gray, scale = self._tracking_gray(image)
        self._follow(gray, scale)

    def add(self, image: np.ndarray) -> TrackObservations:
        """Carry the live tracks into the keyframe `image`, drop those off the epipolar geometry of the previous
        keyframe, start new ones; the keyframe's observations."""
        gray, scale = self._tracking_gray(image)
        self._follow(gray, scale)
        if len(self._ids):
            before = np.stack([self._keyframe_points[int(t)] for t in self._ids])
            keep = self._epipolar_inliers(before, self._points[:, 0])
            self._points, self._ids = self._points[keep], self._ids[keep]
        self._top_up(gray)
        self._keyframe_points = {int(t): p for t, p in zip(self._ids, self._points[:, 0], strict=True)}
        return TrackObservations(self._ids.copy(), (self._points[:, 0] / scale).astype(np.float32))

    def _follow(self, gray: np.ndarray, scale: float) -> None:
        if self._gray is not None and self._gray.shape == gray.shape and scale == self._scale and len(self._ids):
            self._points, self._ids = self._track(self._gray, gray, self._points, self._ids)
        else:  # first frame, or the resolution changed: tracks cannot continue
            self._points, self._ids = np.zeros((0, 1, 2), np.float32), np.zeros(0, np.int64)
        self._gray, self._scale = gray, scale

    def _tracking_gray(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        width = gray.shape[1]
        if width <= self.config.max_width:
            return gray, 1.0
        scale = self.config.max_width / width
        size = (self.config.max_width, max(1, round(gray.shape[0] * scale)))
        return cv2.resize(gray, size, interpolation=cv2.INTER_AREA), scale

    def _track(self, previous: np.ndarray, gray: np.ndarray, points: np.ndarray, ids: np.ndarray):
        cfg = self.config
        lk = {"winSize": (cfg.window_px, cfg.window_px), "maxLevel": cfg.pyramid_levels}
        tracked, status, _ = cv2.calcOpticalFlowPyrLK(previous, gray, points, None, **lk)
        back, back_status, _ = cv2.calcOpticalFlowPyrLK(gray, previous, tracked, None, **lk)
        height, width = gray.shape
        inside = (tracked[:, 0, 0] >= 0) & (tracked[:, 0, 0] <= width - 1)
        inside &= (tracked[:, 0, 1] >= 0) & (tracked[:, 0, 1] <= height - 1)
        error = np.linalg.norm(back - points, axis=-1)[:, 0]
        keep = (status[:, 0] == 1) & (back_status[:, 0] == 1) & (error < cfg.fb_threshold_px) & inside
        return tracked[keep].astype(np.float32), ids[keep]

    def _epipolar_inliers(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """Which correspondences one fundamental matrix explains (RANSAC); none if too few do."""
        if len(before) < self.config.min_inliers:
            return np.zeros(len(before), bool)
        _, mask = cv2.findFundamentalMat(before, after, cv2.FM_RANSAC, self.config.epipolar_px, 0.999)
        inliers = np.zeros(len(before), bool) if mask is None else mask[:, 0].astype(bool)
        return inliers if inliers.sum() >= self.config.min_inliers else np.zeros(len(before), bool)

    def _top_up(self, gray: np.ndarray) -> None:
        cfg = self.config
        wanted = cfg.max_tracks - len(self._ids)
        if wanted <= 0:
            return
        mask = np.full(gray.shape, 255, np.uint8)
        for x, y in self._points[:, 0]:  # no new corner next to a live track
            cv2.circle(mask, (int(round(x)), int(round(y))), int(cfg.min_distance_px), 0, -1)
        corners = cv2.goodFeaturesToTrack(
            gray, maxCorners=wanted, qualityLevel=0.01, minDistance=cfg.min_distance_px, mask=mask
        )
        if corners is None:
            return
        new_ids = np.arange(self.next_id, self.next_id + len(corners), dtype=np.int64)
        self.next_id += len(corners)
        self._points = np.concatenate([self._points, corners.astype(np.float32)])
        self._ids = np.concatenate([self._ids, new_ids])
