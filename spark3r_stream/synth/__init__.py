"""Procedural scenes with exact ground truth: rendering, camera paths, correspondences and TUM export."""

from spark3r_stream.synth.export import export_tum_folder
from spark3r_stream.synth.paths import PATH_KINDS, PathKind
from spark3r_stream.synth.render import SyntheticSequence, pixel_correspondences, render_sequence

__all__ = [
    "PATH_KINDS",
    "PathKind",
    "SyntheticSequence",
    "export_tum_folder",
    "pixel_correspondences",
    "render_sequence",
]
