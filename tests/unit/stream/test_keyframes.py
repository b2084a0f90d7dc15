"""Keyframe selection on a synthetic translated texture: static, big shift, blur, intervals, resize."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

from spark3r_stream.errors import ConfigError, InputError
from spark3r_stream.stream.keyframes import KeyframeSelector, KeyframeSelectorConfig, resize_for_model

HEIGHT, WIDTH = 120, 160  # diagonal 200 px


def _texture(seed: int = 0) -> np.ndarray:
    # noise at several scales, like a real scene: fine detail for corners, coarse structure for LK's pyramid
    rng = np.random.default_rng(seed)
    shape = (HEIGHT + 200, WIDTH + 400, 3)
    layers = [cv2.GaussianBlur(rng.normal(0, 1, shape), (0, 0), sigma) * sigma for sigma in (1.5, 4, 10)]
    texture = sum(layers)
    texture = (texture - texture.min()) / (texture.max() - texture.min()) * 255
    return texture.astype(np.uint8)


def _view(texture: np.ndarray, shift_px: int) -> np.ndarray:
    return np.ascontiguousarray(texture[100 : 100 + HEIGHT, 100 + shift_px : 100 + shift_px + WIDTH])


def test_static_frames_make_no_keyframe_until_max_interval():
    texture = _texture()
    selector = KeyframeSelector(KeyframeSelectorConfig(max_interval=10))
    ids = [selector.offer(seq, seq / 30, _view(texture, 0)) for seq in range(25)]
    emitted = {seq: kf for seq, kf in enumerate(ids) if kf is not None}
    assert sorted(emitted) == [0, 10, 20]
    assert [kf.keyframe_id for kf in emitted.values()] == [0, 1, 2]
    assert [kf.reason for kf in emitted.values()] == ["first", "max_interval", "max_interval"]
    assert emitted[10].parallax == pytest.approx(0.0, abs=1e-3)
    assert selector.counts["low_parallax"] == 22


def test_big_shift_makes_a_keyframe_with_the_measured_parallax():
    texture = _texture()
    selector = KeyframeSelector(KeyframeSelectorConfig(parallax_threshold=0.05, max_interval=100))
    assert selector.offer(0, 0.0, _view(texture, 0)).reason == "first"
    assert selector.offer(1, 0.1, _view(texture, 4)) is None  # 4 px / 200 px = 0.02 < 0.05
    keyframe = selector.offer(2, 0.2, _view(texture, 14))  # 14 px / 200 px = 0.07
    assert keyframe is not None and keyframe.reason == "parallax" and keyframe.keyframe_id == 1
    assert keyframe.parallax == pytest.approx(14 / 200, rel=0.05)
    assert keyframe.frame_seq == 2 and keyframe.t_capture == 0.2
    # parallax is now measured against the new keyframe
    assert selector.offer(3, 0.3, _view(texture, 16)) is None


def test_blurred_frame_is_rejected_and_the_next_sharp_one_taken():
    texture = _texture()
    selector = KeyframeSelector(KeyframeSelectorConfig(max_interval=100))
    for seq in range(6):
        selector.offer(seq, seq, _view(texture, 0))
    blurred = cv2.GaussianBlur(_view(texture, 20), (0, 0), 3.0)
    assert selector.offer(6, 6.0, blurred) is None
    assert selector.counts["blurry"] == 1
    keyframe = selector.offer(7, 7.0, _view(texture, 20))
    assert keyframe is not None and keyframe.reason == "parallax"


def test_min_interval_holds_back_fast_motion():
    texture = _texture()
    selector = KeyframeSelector(KeyframeSelectorConfig(min_interval=3, max_interval=100))
    picked = [selector.offer(seq, seq, _view(texture, 12 * seq)) for seq in range(7)]
    assert [seq for seq, kf in enumerate(picked) if kf is not None] == [0, 3, 6]
    assert selector.counts["min_interval"] == 4


def test_textureless_frames_fall_back_to_max_interval():
    flat = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
    selector = KeyframeSelector(KeyframeSelectorConfig(max_interval=4))
    picked = [selector.offer(seq, seq, flat) for seq in range(9)]
    assert [seq for seq, kf in enumerate(picked) if kf is not None] == [0, 4, 8]


def test_model_resolution_and_bad_input():
    texture = _texture()
    selector = KeyframeSelector(KeyframeSelectorConfig(model_hw=(28, 42)))
    assert selector.offer(0, 0.0, _view(texture, 0)).image.shape == (28, 42, 3)
    with pytest.raises(InputError, match="frame_seq must increase"):
        selector.offer(0, 0.0, _view(texture, 0))
    with pytest.raises(InputError, match=r"frame 5: expected a uint8 \[H, W, 3\] image, got float32 \(4, 4\)"):
        selector.offer(5, 0.0, np.zeros((4, 4), np.float32))
    with pytest.raises(ConfigError, match=r"^max_interval: expected int >= min_interval, got 2$"):
        KeyframeSelectorConfig(min_interval=3, max_interval=2)


def test_resize_for_model_scales_to_cover_and_centre_crops():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, 50:150] = 255  # the centre half is white
    out = resize_for_model(image, (50, 50))  # scale 0.5 -> 50 x 100, crop 25 px each side
    assert out.shape == (50, 50, 3) and out.flags.c_contiguous
    assert (out == 255).all()
    up = resize_for_model(image, (300, 300))  # scale 3 -> 300 x 600, crop 150 each side
    assert up.shape == (300, 300, 3) and (up[:, 5:-5] == 255).all()
    assert resize_for_model(image, (100, 200)) is not None
    with pytest.raises(InputError, match="target_hw"):
        resize_for_model(image, (0, 10))


def test_keyframes_module_does_not_import_torch():
    import subprocess

    code = (
        "import sys; import spark3r_stream.stream.keyframes, spark3r_stream.stream.windows; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
