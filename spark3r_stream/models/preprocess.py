"""The official preprocessing of each family: images -> [N, 3, H, W] float in [0, 1] at the network's input size.

`load_and_preprocess(family, images)` picks the family's. VGGT (`load_and_preprocess_images`):
facebookresearch/vggt@44b3afb vggt/utils/load_fn.py (reference_vggt.md §3.2), PIL bicubic resize to width 518 (crop)
or long side 518 (pad), sides rounded to multiples of 14, centre crop / white pad. π³: yyfz/Pi3 pi3/utils/basic.py
`load_images_as_tensor` (reference_pi3.md §3.1). DA3: ByteDance-Seed/Depth-Anything-3@2c21ea8
utils/io/input_processor.py, `upper_bound_resize` at process_res 504 (reference_da3.md §7.1); ImageNet normalisation
happens inside our models for every family.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from spark3r_stream.errors import InputError
from spark3r_stream.input_size import (  # noqa: F401 - the sizing rules are part of this module's API
    DA3_PROCESS_RES,
    PI3_PIXEL_LIMIT,
    da3_bound_size,
    da3_target_size,
    pi3_target_size,
)

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def open_image(path: str | Path) -> Image.Image:
    """An RGB PIL image; RGBA is composited onto white as the official VGGT loader does."""
    return _to_rgb(_read_image(path))


def _read_image(path: str | Path) -> Image.Image:
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
    return img


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


def preprocess_depth(depth: np.ndarray, target_size: int = 518, patch_size: int = 14) -> np.ndarray:
    """Ground-truth depth [S, H, W] onto the pixels of VGGT's "crop" preprocessing (`preprocess_image`): the same
    resize and centre crop, nearest-neighbour so that no depth is blended across an edge or with invalid zeros."""
    import cv2

    height, width = depth.shape[1:]
    new_w, new_h = target_size, round(height * (target_size / width) / patch_size) * patch_size
    out = np.stack([cv2.resize(d, (new_w, new_h), interpolation=cv2.INTER_NEAREST) for d in depth])
    if new_h > target_size:
        top = (new_h - target_size) // 2
        out = out[:, top : top + target_size]
    return out


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


# ---------------------------------------------------------------------------------------------------------------------
# π³ and DA3


def _pil_rgb(item: str | Path | Image.Image | np.ndarray) -> Image.Image:
    """π³ and DA3 load with a plain `.convert("RGB")` (alpha dropped, not composited)."""
    if isinstance(item, np.ndarray):
        return Image.fromarray(item).convert("RGB")
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    return _read_image(item).convert("RGB")


def _to_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0


def load_and_preprocess_images_pi3(
    images: Sequence[str | Path | Image.Image | np.ndarray], pixel_limit: int = PI3_PIXEL_LIMIT
) -> torch.Tensor:
    """π³: every frame resized (PIL Lanczos, no crop, no pad) to `pi3_target_size` of the first -> [N, 3, H, W]."""
    if len(images) == 0:
        raise InputError("images: none given")
    frames = [_pil_rgb(item) for item in images]
    size = pi3_target_size(*frames[0].size, pixel_limit=pixel_limit)
    return torch.stack([_to_tensor(frame.resize(size, Image.Resampling.LANCZOS)) for frame in frames])


def preprocess_image_da3(img: Image.Image, process_res: int = DA3_PROCESS_RES, patch_size: int = 14) -> torch.Tensor:
    """One RGB PIL image -> [3, H, W] in [0, 1]: OpenCV cubic when enlarging, area when shrinking, for both resizes."""
    width, height = img.size
    array = np.asarray(img)
    bound = da3_bound_size(width, height, process_res)
    if bound != (width, height):
        enlarge = process_res > max(width, height)
        array = cv2.resize(array, bound, interpolation=cv2.INTER_CUBIC if enlarge else cv2.INTER_AREA)
    target = da3_target_size(width, height, process_res, patch_size)
    if target != bound:
        enlarge = target[0] > bound[0] or target[1] > bound[1]
        array = cv2.resize(array, target, interpolation=cv2.INTER_CUBIC if enlarge else cv2.INTER_AREA)
    return _to_tensor(array)


def load_and_preprocess_images_da3(
    images: Sequence[str | Path | Image.Image | np.ndarray], process_res: int = DA3_PROCESS_RES, patch_size: int = 14
) -> torch.Tensor:
    """DA3 -> [N, 3, H, W]; frames of different sizes are centre-cropped to the smallest height and width."""
    if len(images) == 0:
        raise InputError("images: none given")
    tensors = [preprocess_image_da3(_pil_rgb(item), process_res, patch_size) for item in images]
    height = min(t.shape[1] for t in tensors)
    width = min(t.shape[2] for t in tensors)
    if any(t.shape[1:] != (height, width) for t in tensors):
        log.warning("images have different sizes after preprocessing; centre-cropping all to %dx%d", height, width)
    # torchvision CenterCrop, as official: offsets round((size - crop) / 2)
    return torch.stack(
        [
            t[:, round((t.shape[1] - height) / 2) :][:, :height, round((t.shape[2] - width) / 2) :][:, :, :width]
            for t in tensors
        ]
    )


def load_and_preprocess(
    family: str,
    images: Sequence[str | Path | Image.Image | np.ndarray],
    *,
    mode: Literal["crop", "pad"] = "crop",
    target_size: int | None = None,
) -> torch.Tensor:
    """The official preprocessing of model `family` ("vggt", "pi3", "da3") -> [N, 3, H, W] float32 in [0, 1].

    Args:
        mode: VGGT's crop or pad; π³ and DA3 have one official preprocessing each (only "crop", the default, passes).
        target_size: VGGT's width / long side (default 518), DA3's process_res (default 504); not used by π³, which
            sizes by its pixel budget (255,000), so a preset's `input_size` can be passed for every family.
    """
    if family == "vggt":
        return load_and_preprocess_images(images, mode, 518 if target_size is None else target_size)
    if family not in ("pi3", "da3"):
        raise InputError(f"preprocessing for family {family!r}: unknown; expected vggt, pi3 or da3")
    if mode != "crop":
        raise InputError(f"preprocessing mode {mode!r}: only VGGT has modes; {family} has one official preprocessing")
    if family == "pi3":
        return load_and_preprocess_images_pi3(images)
    return load_and_preprocess_images_da3(images, DA3_PROCESS_RES if target_size is None else target_size)


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
