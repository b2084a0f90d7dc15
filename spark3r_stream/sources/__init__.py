"""Frame sources: camera, video, image folder, TUM RGB-D, EuRoC, 7-Scenes, synthetic; `open_source(spec)`."""

from spark3r_stream.sources.base import FrameSource, Pacer, SourceOptions
from spark3r_stream.sources.camera import CameraSource, VideoSource
from spark3r_stream.sources.euroc import EurocSource
from spark3r_stream.sources.factory import SOURCES, detect_format, open_source, parse_spec
from spark3r_stream.sources.folder import FolderSource
from spark3r_stream.sources.seven_scenes import SevenScenesSource
from spark3r_stream.sources.synthetic import SyntheticSource
from spark3r_stream.sources.tum import TumSource

__all__ = [
    "SOURCES",
    "CameraSource",
    "EurocSource",
    "FolderSource",
    "FrameSource",
    "Pacer",
    "SevenScenesSource",
    "SourceOptions",
    "SyntheticSource",
    "TumSource",
    "VideoSource",
    "detect_format",
    "open_source",
    "parse_spec",
]
