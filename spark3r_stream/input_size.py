"""Network input sizes without torch: each family's official sizing rule, and what each preset is sized by.

The keyframes node (which runs without torch) sizes keyframes with `keyframe_hw`; models/preprocess.py resizes
with the same rules. `PRESET_INPUTS` mirrors the registry's presets (tests/unit/models/test_models.py checks it).
"""

from __future__ import annotations

import math

from spark3r_stream.errors import ConfigError

PI3_PIXEL_LIMIT = 255_000  # `load_images_as_tensor(PIXEL_LIMIT=255000)`
DA3_PROCESS_RES = 504  # `DepthAnything3.inference(process_res=504)`
DEFAULT_MODEL = "vggt-tiny"  # the reconstruction node's model when a launch file names none

# preset -> (family, input size): the registry's Preset.family / Preset.input_size
PRESET_INPUTS: dict[str, tuple[str, int]] = {
    "vggt-1b": ("vggt", 518),
    "vggt-tiny": ("vggt", 112),
    "pi3": ("pi3", 518),
    "da3-small": ("da3", DA3_PROCESS_RES),
    "da3-base": ("da3", DA3_PROCESS_RES),
    "da3-large": ("da3", DA3_PROCESS_RES),
    "da3-giant": ("da3", DA3_PROCESS_RES),
    "da3-metric-large": ("da3", DA3_PROCESS_RES),
    "da3-mono-large": ("da3", DA3_PROCESS_RES),
    "da3-nested-giant-large": ("da3", DA3_PROCESS_RES),
}


def pi3_target_size(
    width: int, height: int, pixel_limit: int = PI3_PIXEL_LIMIT, patch_size: int = 14
) -> tuple[int, int]:
    """π³'s input (width, height) for a width x height first frame: multiples of 14 near its aspect ratio whose
    area stays within the pixel budget (1920x1080 -> 672x378, 640x480 -> 574x434)."""
    scale = math.sqrt(pixel_limit / (width * height))
    target_w, target_h = width * scale, height * scale
    k, m = round(target_w / patch_size), round(target_h / patch_size)  # Python round (half to even), as official
    while (k * patch_size) * (m * patch_size) > pixel_limit:
        if k / m > target_w / target_h:
            k -= 1
        else:
            m -= 1
    return max(1, k) * patch_size, max(1, m) * patch_size


def da3_bound_size(width: int, height: int, process_res: int) -> tuple[int, int]:
    longest = max(width, height)
    if longest == process_res:
        return width, height
    scale = process_res / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def _nearest_multiple(x: int, patch_size: int) -> int:
    down = x // patch_size * patch_size
    return down + patch_size if down + patch_size - x <= x - down else down  # ties go up


def da3_target_size(
    width: int, height: int, process_res: int = DA3_PROCESS_RES, patch_size: int = 14
) -> tuple[int, int]:
    """DA3's input (width, height) for one image: long side to `process_res` (sides rounded), then each side to the
    nearest multiple of 14, ties up (1920x1080 -> 504x284 -> 504x280, 640x480 -> 504x378)."""
    w, h = da3_bound_size(width, height, process_res)
    return max(1, _nearest_multiple(w, patch_size)), max(1, _nearest_multiple(h, patch_size))


def keyframe_hw(model: str, frame_hw: tuple[int, int]) -> tuple[int, int]:
    """(H, W) that keyframes of a `frame_hw` (H, W) source are sized to for preset `model`.

    VGGT: a square of the input size (cover, then centre crop: the shape vggt-tiny trains on); π³: its pixel budget
    at the frame's aspect ratio; DA3: long side to its process resolution. π³ and DA3 are their official rules.
    """
    if model not in PRESET_INPUTS:
        raise ConfigError(f"model {model!r}: unknown preset; choose one of {', '.join(sorted(PRESET_INPUTS))}")
    family, size = PRESET_INPUTS[model]
    height, width = frame_hw
    if family == "pi3":
        w, h = pi3_target_size(width, height)
    elif family == "da3":
        w, h = da3_target_size(width, height, process_res=size)
    else:
        w, h = size, size
    return h, w
