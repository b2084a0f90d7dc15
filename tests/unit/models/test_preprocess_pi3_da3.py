"""Official π³ and DA3 preprocessing: the size rules of reference_pi3.md §3.1 / reference_da3.md §7.1, resampling,
mixed sizes, and the per-family dispatch."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from spark3r_stream.errors import InputError
from spark3r_stream.models.preprocess import (
    PI3_PIXEL_LIMIT,
    da3_target_size,
    list_images,
    load_and_preprocess,
    load_and_preprocess_images_da3,
    load_and_preprocess_images_pi3,
    pi3_target_size,
)
from tests.conftest import fixture_path


def real_frames() -> list:
    return list_images([fixture_path("images")])  # three 640x480 SUN3D frames


def as_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array)).permute(2, 0, 1).float() / 255


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((1920, 1080), (672, 378)),  # the spec's example: k, m = 48, 27 fit the budget at once
        ((640, 480), (574, 434)),  # k, m = 42, 31 exceed it; k/m > 4/3, so k -> 41
        ((480, 640), (434, 574)),  # portrait: m is the side that shrinks
        ((224, 224), (504, 504)),  # small images are enlarged to the budget
        ((518, 518), (504, 504)),
    ],
)
def test_pi3_target_size_follows_the_pixel_budget(size, expected):
    assert pi3_target_size(*size) == expected


def test_pi3_target_sizes_are_multiples_of_14_within_the_budget():
    for width in range(100, 4000, 97):
        for height in (width // 3, width // 2, width, width * 2):
            w, h = pi3_target_size(width, height)
            assert w % 14 == 0 and h % 14 == 0 and w * h <= PI3_PIXEL_LIMIT
            assert abs(w / h - width / height) / (width / height) < 0.06  # aspect kept up to one patch


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((1920, 1080), (504, 280)),  # the spec's example: 504x284 (283.5 rounds to 284), then 284 -> 280
        ((640, 480), (504, 378)),  # 378 = 27 patches already
        ((480, 640), (378, 504)),
        ((504, 287), (504, 294)),  # long side already 504; 287 is half-way between 280 and 294: ties go up
        ((100, 50), (504, 252)),  # enlarged
    ],
)
def test_da3_target_size_long_side_504_then_nearest_multiple_of_14(size, expected):
    assert da3_target_size(*size) == expected


def test_pi3_resizes_every_frame_with_lanczos_to_the_first_frames_size():
    paths = real_frames()
    images = load_and_preprocess_images_pi3(paths)
    assert images.shape == (3, 3, 434, 574) and images.dtype == torch.float32
    expected = np.asarray(Image.open(paths[1]).convert("RGB").resize((574, 434), Image.Resampling.LANCZOS))
    assert torch.equal(images[1], as_tensor(expected))
    mixed = load_and_preprocess_images_pi3([np.zeros((480, 640, 3), np.uint8), np.zeros((300, 1000, 3), np.uint8)])
    assert mixed.shape == (2, 3, 434, 574)  # no crop, no pad: the second frame is stretched to the first's size


def test_da3_shrinks_with_area_and_enlarges_with_cubic():
    paths = real_frames()
    images = load_and_preprocess_images_da3(paths)
    assert images.shape == (3, 3, 378, 504)
    frame = np.asarray(Image.open(paths[0]).convert("RGB"))
    assert torch.equal(images[0], as_tensor(cv2.resize(frame, (504, 378), interpolation=cv2.INTER_AREA)))
    small = np.random.default_rng(0).integers(0, 256, (50, 100, 3), dtype=np.uint8)
    enlarged = load_and_preprocess_images_da3([small])
    assert torch.equal(enlarged[0], as_tensor(cv2.resize(small, (504, 252), interpolation=cv2.INTER_CUBIC)))


def test_da3_mixed_sizes_are_centre_cropped_to_the_smallest():
    landscape = np.zeros((480, 640, 3), np.uint8)
    landscape[:, :, 0] = (np.arange(640) % 256)[None]
    images = load_and_preprocess_images_da3([landscape, np.zeros((640, 480, 3), np.uint8)])
    assert images.shape == (2, 3, 378, 378)  # 504x378 and 378x504 -> both 378x378
    alone = load_and_preprocess_images_da3([landscape])[0]
    assert torch.equal(images[0], alone[:, :, 63 : 63 + 378])  # (504 - 378) / 2 = 63 columns off each side


def test_load_and_preprocess_picks_the_family():
    paths = real_frames()[:1]
    assert load_and_preprocess("vggt", paths).shape == (1, 3, 392, 518)
    assert load_and_preprocess("vggt", paths, target_size=112).shape == (1, 3, 84, 112)
    assert load_and_preprocess("pi3", paths, target_size=518).shape == (1, 3, 434, 574)  # pixel budget only
    assert load_and_preprocess("da3", paths).shape == (1, 3, 378, 504)
    assert load_and_preprocess("da3", paths, target_size=280).shape == (1, 3, 210, 280)


def test_alpha_is_dropped_by_pi3_and_da3_but_composited_on_white_by_vggt():
    transparent = Image.new("RGBA", (28, 28), (0, 0, 0, 0))
    assert torch.all(load_and_preprocess("vggt", [transparent], target_size=28) == 1.0)
    assert torch.all(load_and_preprocess_images_pi3([transparent]) == 0.0)
    assert torch.all(load_and_preprocess_images_da3([transparent]) == 0.0)


def test_bad_family_mode_and_inputs_name_the_culprit():
    with pytest.raises(InputError, match="family 'dust3r': unknown"):
        load_and_preprocess("dust3r", real_frames())
    with pytest.raises(InputError, match="mode 'pad': only VGGT has modes; pi3"):
        load_and_preprocess("pi3", real_frames(), mode="pad")
    for family in ("pi3", "da3"):
        with pytest.raises(InputError, match="none given"):
            load_and_preprocess(family, [])
