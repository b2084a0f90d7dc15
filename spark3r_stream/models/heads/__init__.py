"""Prediction heads shared by the backbones: DPT (dense), camera heads, VGGT's track head."""

from spark3r_stream.models.heads.camera import CameraHead
from spark3r_stream.models.heads.dpt import DPTHead
from spark3r_stream.models.heads.track import TrackHead

__all__ = ["CameraHead", "DPTHead", "TrackHead"]
