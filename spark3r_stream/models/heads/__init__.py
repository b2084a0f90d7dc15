"""Prediction heads shared by the backbones: DPT / DualDPT (dense), camera heads, π³'s decoders, VGGT's track head,
DA3's Gaussian adapter."""

from spark3r_stream.models.heads.camera import CameraDecoder, CameraEncoder, CameraHead, Pi3CameraHead
from spark3r_stream.models.heads.decoder import LinearPts3d, TransformerDecoder
from spark3r_stream.models.heads.dpt import DPTHead, DualDPTHead
from spark3r_stream.models.heads.gaussians import GaussianAdapter, Gaussians
from spark3r_stream.models.heads.track import TrackHead

__all__ = [
    "CameraDecoder",
    "CameraEncoder",
    "CameraHead",
    "DPTHead",
    "DualDPTHead",
    "GaussianAdapter",
    "Gaussians",
    "LinearPts3d",
    "Pi3CameraHead",
    "TrackHead",
    "TransformerDecoder",
]
