"""Feature tracks across keyframes: ids persist, positions follow the image, mismatches are dropped."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from spark3r_stream.errors import ConfigError
from spark3r_stream.stream.tracks import KeyframeTracker, TrackerConfig


def textured(height: int = 240, width: int = 320, seed: int = 0) -> np.ndarray:
    """Smooth random texture (blurred noise): corners everywhere, trackable by LK."""
    noise = np.random.default_rng(seed).integers(0, 256, (height // 4, width // 4), dtype=np.uint8)
    gray = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.repeat(gray[..., None], 3, axis=-1)


def shifted(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(image, matrix, image.shape[1::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def test_tracks_keep_their_ids_and_follow_a_known_shift():
    tracker = KeyframeTracker(TrackerConfig(max_tracks=200))
    image = textured()
    first = tracker.add(image)
    assert len(first.track_ids) > 100 and first.uv.dtype == np.float32
    second = tracker.add(shifted(image, 9.3, -5.6))
    common, i, j = np.intersect1d(first.track_ids, second.track_ids, return_indices=True)
    assert len(common) > 0.8 * len(first.track_ids)  # most survive; new ones were added to top up
    interior = (first.uv[i, 0] > 20) & (first.uv[i, 0] < 300) & (first.uv[i, 1] > 20) & (first.uv[i, 1] < 220)
    motion = second.uv[j][interior] - first.uv[i][interior]
    np.testing.assert_allclose(np.median(motion, axis=0), [9.3, -5.6], atol=0.1)
    assert len(second.track_ids) == len(set(second.track_ids.tolist())) <= 200
    assert second.track_ids.max() >= first.track_ids.max()  # top-up ids are new, never reused


def test_tracks_follow_the_frames_between_keyframes():
    """A 60 px motion between two keyframes, in 4 px steps: followed frame by frame, the tracks arrive; LK straight
    from one keyframe to the next (a 21 px window, as many pyramid levels as the default) loses most of them."""
    image = textured()
    followed, direct = KeyframeTracker(), KeyframeTracker()
    first, first_direct = followed.add(image), direct.add(image)
    for step in range(1, 15):
        followed.follow(shifted(image, 4.0 * step, 0.0))
    last = followed.add(shifted(image, 60.0, 0.0))
    last_direct = direct.add(shifted(image, 60.0, 0.0))
    common, i, j = np.intersect1d(first.track_ids, last.track_ids, return_indices=True)
    assert len(common) > 0.6 * len(first.track_ids)
    interior = (first.uv[i, 0] > 20) & (first.uv[i, 0] < 240) & (first.uv[i, 1] > 20) & (first.uv[i, 1] < 220)
    np.testing.assert_allclose(np.median(last.uv[j][interior] - first.uv[i][interior], axis=0), [60.0, 0.0], atol=0.2)
    assert len(np.intersect1d(first_direct.track_ids, last_direct.track_ids)) < len(common)


def test_forward_backward_check_drops_tracks_into_an_unrelated_image():
    tracker = KeyframeTracker()
    first = tracker.add(textured(seed=0))
    second = tracker.add(textured(seed=1))  # nothing in common
    survivors = np.intersect1d(first.track_ids, second.track_ids)
    assert len(survivors) < 0.1 * len(first.track_ids)


def test_wide_sources_are_tracked_downscaled_and_reported_in_source_pixels():
    tracker = KeyframeTracker(TrackerConfig(max_width=320))
    image = textured(480, 640)
    first = tracker.add(image)
    second = tracker.add(shifted(image, 12.0, 8.0))
    common, i, j = np.intersect1d(first.track_ids, second.track_ids, return_indices=True)
    assert first.uv[:, 0].max() > 400  # source pixels, not the 320-wide tracking image's
    np.testing.assert_allclose(np.median(second.uv[j] - first.uv[i], axis=0), [12.0, 8.0], atol=0.3)


def test_config_is_checked():
    with pytest.raises(ConfigError, match="window_px: expected odd int >= 5"):
        TrackerConfig(window_px=20)


def test_keyframe_messages_carry_the_tracks_at_source_resolution():
    from spark3r_stream.stream.keyframes import KeyframeSelectorConfig
    from spark3r_stream.stream.pipeline import KeyframesConfig, KeyframeStep
    from spark3r_stream.transport import Frame, Keyframe, decode, encode

    step = KeyframeStep(KeyframesConfig(selector=KeyframeSelectorConfig(model_hw=(56, 56), max_interval=1)))
    k = np.array([[300.0, 0, 160], [0, 300.0, 120], [0, 0, 1]])
    image = textured()
    keyframes = []
    for seq, dx in enumerate((0.0, 6.0, 12.0)):
        frame = Frame(frame_seq=seq, t_capture=seq / 30, image=shifted(image, dx, 0.0), source_id="t", intrinsics=k)
        keyframes += [m for m in step.on_frame(frame) if isinstance(m, Keyframe)]
    assert [kf.keyframe_id for kf in keyframes] == [0, 1, 2]
    last, _ = decode(encode(keyframes[-1], 0))  # the tracks survive the wire
    assert last.image.shape == (56, 56, 3) and last.source_hw == (240, 320)
    np.testing.assert_array_equal(last.source_intrinsics, k)
    common, i, j = np.intersect1d(keyframes[0].track_ids, last.track_ids, return_indices=True)
    assert len(common) > 50
    inner = keyframes[0].track_uv[i, 0] < 280
    np.testing.assert_allclose(
        np.median(last.track_uv[j][inner] - keyframes[0].track_uv[i][inner], axis=0), [12.0, 0.0], atol=0.2
    )
