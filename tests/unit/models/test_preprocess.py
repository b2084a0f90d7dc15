"""Official VGGT preprocessing: sizes, crop/pad, RGBA/greyscale, mixed sizes, bad inputs (real SUN3D frames)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from spark3r_stream.errors import InputError
from spark3r_stream.models.preprocess import list_images, load_and_preprocess_images
from tests.conftest import fixture_path


def real_frames() -> list:
    return list_images([fixture_path("images")])


def test_real_640x480_frames_crop_to_518x392():
    paths = real_frames()
    assert [p.name for p in paths] == ["000935.png", "000936.png", "000937.png"]
    images = load_and_preprocess_images(paths)
    assert images.shape == (3, 3, 392, 518)
    assert images.dtype == torch.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    # the resize is PIL bicubic of the whole frame, as the official loader does
    expected = np.asarray(Image.open(paths[0]).convert("RGB").resize((518, 392), Image.Resampling.BICUBIC))
    assert torch.equal(images[0], torch.from_numpy(expected.copy()).permute(2, 0, 1).float() / 255)


def test_pad_mode_pads_white_to_a_square():
    images = load_and_preprocess_images(real_frames()[:1], mode="pad")
    assert images.shape == (1, 3, 518, 518)
    pad = (518 - 392) // 2
    assert torch.all(images[0, :, :pad] == 1.0) and torch.all(images[0, :, -pad:] == 1.0)
    assert not torch.all(images[0, :, pad : pad + 5] == 1.0)


def test_portrait_crop_is_a_centre_square():
    portrait = np.zeros((640, 480, 3), np.uint8)
    portrait[:, :, 0] = np.arange(640)[:, None] % 256
    images = load_and_preprocess_images([portrait])
    assert images.shape == (1, 3, 518, 518)  # new height round(640·518/480/14)·14 = 686 > 518, centre rows kept


def test_portrait_pad_keeps_the_long_side():
    images = load_and_preprocess_images([np.zeros((640, 480, 3), np.uint8)], mode="pad")
    assert images.shape == (1, 3, 518, 518)
    assert torch.all(images[0, :, :, :20] == 1.0)  # new width round(480·518/640/14)·14 = 392, padded left and right


def test_rgba_is_composited_on_white_and_grey_becomes_rgb():
    rgba = Image.new("RGBA", (28, 28), (0, 0, 0, 0))
    grey = Image.new("L", (28, 28), 128)
    images = load_and_preprocess_images([rgba, grey], target_size=28)
    assert torch.allclose(images[0], torch.ones(3, 28, 28))
    assert torch.allclose(images[1], torch.full((3, 28, 28), 128 / 255))


def test_mixed_sizes_are_padded_to_the_largest():
    images = load_and_preprocess_images([np.zeros((480, 640, 3), np.uint8), np.zeros((300, 1000, 3), np.uint8)])
    assert images.shape == (2, 3, 392, 518)
    assert torch.all(images[1, :, :100] == 1.0)


def test_bad_inputs_name_the_culprit(tmp_path):
    with pytest.raises(InputError, match="none given"):
        load_and_preprocess_images([])
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG not really")
    with pytest.raises(InputError, match="broken.png: cannot be read as an image"):
        load_and_preprocess_images([corrupt])
    with pytest.raises(InputError, match="clip.mp4: this is a video file"):
        load_and_preprocess_images([tmp_path / "clip.mp4"])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(InputError, match="empty: contains no images"):
        list_images([empty])
    with pytest.raises(InputError, match="missing.png: no such file"):
        list_images([tmp_path / "missing.png"])
