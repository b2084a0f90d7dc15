"""Offline reconstruction of a set of images (`spark3r infer`): one forward pass, everything written to a folder."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

from spark3r_stream.models import Prediction, predict
from spark3r_stream.models.loading import load_model as models_load_model
from spark3r_stream.models.loading import resolve_device
from spark3r_stream.models.preprocess import list_images, load_and_preprocess
from spark3r_stream.models.registry import get_preset
from spark3r_stream.report import RunReport, Stopwatch
from spark3r_stream.spark3r.plan import Spark3RConfig, load_config_file
from spark3r_stream.stream.global_map import GlobalMap, GlobalMapConfig
from spark3r_stream.viz.rerun_logger import MapLogger, RerunConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class InferOptions:
    model: str = "vggt-tiny"
    weights: str | None = None
    random_weights: bool = False
    spark3r: bool = True
    spark3r_config: str | None = None
    mode: str = "crop"
    device: str = "auto"


def load_model(options: InferOptions, device: torch.device | str | None = None) -> torch.nn.Module:
    """The model of `options` (models.load_model), with the Spark3R config file it names."""
    spark3r: Spark3RConfig | bool = options.spark3r
    if options.spark3r and options.spark3r_config:
        spark3r = load_config_file(options.spark3r_config)
    return models_load_model(
        options.model,
        weights=options.weights,
        random_weights=options.random_weights,
        device=options.device if device is None else device,
        spark3r=spark3r,
    )


def write_depth(out_dir: Path, names: Sequence[str], prediction: Prediction) -> float:
    """16-bit PNG per frame (depth = png / scale) and an npz with depth and confidence; returns the scale."""
    depth_dir = out_dir / "depth"
    depth_dir.mkdir(parents=True, exist_ok=True)
    scale = float(np.floor(65535 / max(float(prediction.depth.max()), 1e-6)))
    for name, depth, conf in zip(names, prediction.depth, prediction.depth_conf, strict=True):
        stem = Path(name).stem
        cv2.imwrite(str(depth_dir / f"{stem}.png"), np.clip(np.round(depth * scale), 0, 65535).astype(np.uint16))
        np.savez_compressed(depth_dir / f"{stem}.npz", depth=depth, confidence=conf)
    return scale


def write_cameras(out_dir: Path, names: Sequence[str], prediction: Prediction, depth_scale: float) -> None:
    cameras = [
        {"image": name, "world_from_cam": pose.tolist(), "intrinsics": K.tolist()}
        for name, pose, K in zip(names, prediction.world_from_cam, prediction.intrinsics, strict=True)
    ]
    (out_dir / "cameras.json").write_text(
        json.dumps(
            {
                "model": prediction.model,
                "image_hw": prediction.image_hw,
                "convention": "OpenCV, camera-to-world",
                "depth_png_scale": depth_scale,
                "frames": cameras,
            },
            indent=1,
        )
    )


def fuse(prediction: Prediction, images: torch.Tensor, names: Sequence[str]) -> GlobalMap:
    """The prediction as one window of a GlobalMap: the same fusion (confidence filter, voxels) as the pipeline."""
    global_map = GlobalMap(GlobalMapConfig())
    colors = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    for i in range(prediction.num_frames):
        global_map.add_keyframe(i, i, float(i), colors[i])
    ids = list(range(prediction.num_frames))
    global_map.integrate_window(
        0,
        ids,
        prediction.world_from_cam,
        prediction.intrinsics,
        dense_keyframe_ids=[ids[i] for i in prediction.dense_frames],
        depth=prediction.depth,
        confidence=prediction.depth_conf,
    )
    return global_map


def run_inference(
    inputs: Sequence[str], out_dir: Path, options: InferOptions, viewer: RerunConfig | None = None
) -> dict:
    """Preprocess the images, run the model once, and write depth, cameras, a PLY, report.json and the recording
    (`viewer`: default out_dir/recording.rrd)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = RunReport("infer", out_dir / "report.json")
    report.set("config", asdict(options))
    watch = Stopwatch()
    try:
        paths = list_images(inputs)
        device = resolve_device(options.device)
        preset = get_preset(options.model)
        with watch("load_images"):  # the family's official preprocessing
            images = load_and_preprocess(preset.family, paths, mode=options.mode, target_size=preset.input_size)
        with watch("load_model"):
            model = load_model(options, device)
        log.info("%d images %s -> %s on %s", len(paths), tuple(images.shape[-2:]), options.model, device)
        prediction = predict(model, images)
        names = [p.name for p in paths]
        with watch("write"):
            scale = write_depth(out_dir, names, prediction)
            write_cameras(out_dir, names, prediction, scale)
            global_map = fuse(prediction, images, names)
            exports = global_map.export(out_dir)
            viewer = RerunConfig(rrd_path=out_dir / "recording.rrd") if viewer is None else viewer
            if viewer.spawn or viewer.connect_url or viewer.rrd_path:
                logger = MapLogger.open(viewer)
                logger.log_run_config(
                    yaml.safe_dump({"infer": asdict(options), "inputs": list(inputs)}, sort_keys=False)
                )
                logger.finish(global_map, prediction.num_frames - 1, float(prediction.num_frames - 1))
                if viewer.rrd_path:
                    report.output("recording.rrd", viewer.rrd_path)
        report.data["timings_ms"] = watch.as_dict() | prediction.timings_ms
        report.count("frames", len(paths))
        report.count("map_points", len(global_map.fused().points))
        report.set("metadata", prediction.metadata)
        for name, path in {**exports, "cameras.json": out_dir / "cameras.json", "depth": out_dir / "depth"}.items():
            report.output(name, path)
        report.finish("ok")
    except Exception as exc:
        report.finish("error", str(exc))
        raise
    finally:
        report.write()
    return report.data
