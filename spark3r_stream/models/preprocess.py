"""The official preprocessing: images -> [N, 3, H, W] float in [0, 1] at the network's input size.

`load_and_preprocess_images` matches facebookresearch/vggt@44b3afb vggt/utils/load_fn.py (reference_vggt.md §3.2):
PIL bicubic resize to width 518 (crop) or long side 518 (pad), sides rounded to multiples of 14, centre crop / white pad.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from spark3r_stream.errors import InputError

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def open_image(path: str | Path) -> Image.Image:
    """An RGB PIL image; RGBA is composited onto white as the official loader does."""
    path = Path(path)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        raise InputError(
            f"image {path}: this is a video file; pass it as a video source (e.g. `spark3r demo` / "
            "launch/replay_video.yaml) or extract frames first"
        )
    if not path.is_file():
        raise InputError(f"image {path}: no such file")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"image {path}: cannot be read as an image ({exc})") from exc
    return _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGBA":
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img)
    return img.convert("RGB")


def _pad_to(img: torch.Tensor, height: int, width: int) -> torch.Tensor:
    dh, dw = height - img.shape[1], width - img.shape[2]
    if dh <= 0 and dw <= 0:
        return img
    return F.pad(img, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), mode="constant", value=1.0)


def preprocess_image(
    img: Image.Image, mode: Literal["crop", "pad"] = "crop", target_size: int = 518, patch_size: int = 14
) -> torch.Tensor:
    """One RGB PIL image -> [3, H, W] in [0, 1]."""
    if mode not in ("crop", "pad"):
        raise InputError(f"preprocessing mode {mode!r}: expected 'crop' or 'pad'")
    width, height = img.size
    if mode == "pad" and height > width:
        new_h = target_size
        new_w = round(width * (new_h / height) / patch_size) * patch_size
    else:
        new_w = target_size
        new_h = round(height * (new_w / width) / patch_size) * patch_size
    img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    tensor = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    if mode == "crop" and new_h > target_size:
        top = (new_h - target_size) // 2
        tensor = tensor[:, top : top + target_size]
    if mode == "pad":
        tensor = _pad_to(tensor, target_size, target_size)
    return tensor


def stack_padded(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack [3, H, W] images; different sizes are padded white to the largest, centred (official behaviour)."""
    shapes = {tuple(t.shape[1:]) for t in images}
    if len(shapes) > 1:
        height = max(s[0] for s in shapes)
        width = max(s[1] for s in shapes)
        log.warning(
            "images have %d different sizes after preprocessing; padding all to %dx%d", len(shapes), height, width
        )
        images = [_pad_to(t, height, width) for t in images]
    return torch.stack(list(images))


def load_and_preprocess_images(
    images: Sequence[str | Path | Image.Image | np.ndarray],
    mode: Literal["crop", "pad"] = "crop",
    target_size: int = 518,
    patch_size: int = 14,
) -> torch.Tensor:
    """Paths, PIL images or uint8 [H, W, 3] arrays -> [N, 3, H, W] float32 in [0, 1]."""
    if len(images) == 0:
        raise InputError("images: none given")
    tensors = []
    for item in images:
        if isinstance(item, np.ndarray):
            img = _to_rgb(Image.fromarray(item))
        elif isinstance(item, Image.Image):
            img = _to_rgb(item)
        else:
            img = open_image(item)
        tensors.append(preprocess_image(img, mode, target_size, patch_size))
    return stack_padded(tensors)


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand folders into their image files (natural order); files are kept as given."""
    import re

    def natural(p: Path):
        return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", p.name)]

    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted((p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=natural)
            if not found:
                raise InputError(f"image folder {item}: contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths.extend(found)
        elif not item.exists():
            raise InputError(f"input {item}: no such file or folder")
        else:
            paths.append(item)
    if not paths:
        raise InputError("inputs: no images given")
    return paths
