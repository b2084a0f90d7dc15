"""Fusion's state on disk, so a respawned fusion node goes on where the killed one stopped (issue 15, part C).

Layout under `<out>/state/fusion/` (`MapStore.for_run`):

    index.json            the last consistent state: keyframe poses and scalars, block and chunk file names, the
                          FusionStep counters (frames, windows, plans) and the node's input accounting (seqs seen
                          per sender, NodeLoop.export_input_state); written to a temporary file and renamed last
    kf_<id>_<rev>.npz     a map block: one keyframe's points (camera frame), colours, confidence, pixel index and
                          cached image, written once per points revision (a pose change rewrites only index.json)
    msg_<id>.npz          a keyframe message's track data and image, re-fed to the back end on reload
    frames_<n>.npz        frame records (seq, time, ground truth) that arrived since the previous save, append-only

Blocks and chunks are written before the index that names them, and replaced ones are deleted after it, so a kill at
any moment leaves the previous index and everything it names (ZeroMQ's "Titanic" pattern keeps messages on disk for
the same reason). The senders keep what came after the last save in their replay buffers; the input accounting in
the index makes the receiver drop what the state already holds.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from spark3r_stream.transport.messages import Keyframe

log = logging.getLogger(__name__)

__all__ = ["MapStore"]

INDEX = "index.json"
STATE_VERSION = 1
POINT_FIELDS = ("points_cam", "colors", "confidence", "pixel_index")
SCALAR_FIELDS = ("frame_seq", "t_capture", "window_id", "points_scale", "pose_revision", "points_revision")
TRACK_FIELDS = ("track_ids", "track_uv", "source_intrinsics")


class MapStore:
    """Saves and reloads a FusionStep (its GlobalMap, back-end keyframes and counters) in a directory."""

    def __init__(self, path: str | os.PathLike, keep_keyframe_messages: int = 256) -> None:
        self.path = Path(path)
        self.keep_keyframe_messages = keep_keyframe_messages  # newest keyframe messages kept for the back end
        self.num_saves = 0
        self.save_s = 0.0
        self._blocks: dict[int, str] = {}  # keyframe id -> block file in the last index
        self._chunks: list[str] = []
        self._saved_frames: set[int] = set()
        self._messages: dict[int, str] = {}  # keyframe id -> message file
        self._pending_messages: dict[int, Keyframe] = {}

    @classmethod
    def for_run(cls, out: str | os.PathLike, node: str = "fusion") -> MapStore:
        return cls(Path(out) / "state" / node)

    # ------------------------------------------------------------------------------------------------- saving

    def start_fresh(self) -> None:
        """A first start: whatever an earlier run left in the directory is not this run's state."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True, exist_ok=True)

    def remove(self) -> None:
        """After a normal end: the outputs are written, the state is not needed any more."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self.path.parent.name == "state" and not any(self.path.parent.iterdir()):
            self.path.parent.rmdir()

    def add_keyframe(self, keyframe: Keyframe) -> None:
        """Keep a keyframe message's back-end data until the next save writes it."""
        self._pending_messages[keyframe.keyframe_id] = keyframe

    def save(self, step: Any, input_state: dict[str, Any]) -> None:
        """Write the state of `step` (a stream.pipeline.FusionStep) and the node's input accounting."""
        import time

        start = time.perf_counter()
        self.path.mkdir(parents=True, exist_ok=True)
        state = step.gmap.export_state()
        blocks, keyframes = {}, {}
        for keyframe_id, entry in state["keyframes"].items():
            name = f"kf_{keyframe_id:06d}_{entry['points_revision']}_{int(entry['image'] is not None)}.npz"
            if self._blocks.get(keyframe_id) != name:
                arrays = {f: entry[f] for f in POINT_FIELDS}
                if entry["image"] is not None:
                    arrays["image"] = entry["image"]
                _write_npz(self.path / name, arrays)
            blocks[keyframe_id] = name
            keyframes[str(keyframe_id)] = {
                **{f: _plain(entry[f]) for f in SCALAR_FIELDS},
                "world_from_cam": _plain(entry["world_from_cam"]),
                "intrinsics": _plain(entry["intrinsics"]),
                "image_hw": _plain(entry["image_hw"]),
                "block": name,
            }
        chunks = list(self._chunks)
        new_frames = sorted(set(state["frame_times"]) - self._saved_frames)
        if new_frames:
            gt = state["ground_truth"]
            with_gt = [s for s in new_frames if s in gt]
            name = f"frames_{len(chunks):06d}.npz"
            _write_npz(
                self.path / name,
                {
                    "frame_seq": np.array(new_frames, np.int64),
                    "t_capture": np.array([state["frame_times"][s] for s in new_frames], np.float64),
                    "gt_frame_seq": np.array(with_gt, np.int64),
                    "gt_world_from_cam": np.stack([gt[s] for s in with_gt]) if with_gt else np.zeros((0, 4, 4)),
                },
            )
            chunks.append(name)
        messages = dict(self._messages)
        for keyframe_id, msg in self._pending_messages.items():
            name = f"msg_{keyframe_id:06d}.npz"
            arrays = {"image": msg.image, "source_hw": np.array(msg.source_hw or (0, 0), np.int64)}
            arrays |= {f: getattr(msg, f) for f in TRACK_FIELDS if getattr(msg, f) is not None}
            _write_npz(self.path / name, arrays)
            messages[keyframe_id] = name
        for keyframe_id in sorted(messages)[: -self.keep_keyframe_messages or None]:
            messages.pop(keyframe_id)
        index = {
            "version": STATE_VERSION,
            "keyframes": keyframes,
            "frame_chunks": chunks,
            "keyframe_messages": {str(k): v for k, v in messages.items()},
            "num_windows": state["num_windows"],
            "step": {
                "num_frames": step.num_frames,
                "newest": step.newest,
                "windows": step.windows,
                "plans": step.plans,
            },
            "inputs": input_state,
        }
        tmp = self.path / (INDEX + ".tmp")
        tmp.write_text(json.dumps(index, default=_plain))
        tmp.replace(self.path / INDEX)  # the commit point
        for stale in (set(self._blocks.values()) - set(blocks.values())) | (
            set(self._messages.values()) - set(messages.values())
        ):
            (self.path / stale).unlink(missing_ok=True)
        self._blocks, self._chunks, self._messages = blocks, chunks, messages
        self._saved_frames.update(new_frames)
        self._pending_messages.clear()
        self.num_saves += 1
        self.save_s += time.perf_counter() - start

    # ------------------------------------------------------------------------------------------------ loading

    def load(self, step: Any) -> dict[str, Any] | None:
        """Restore `step` from the last index; returns the saved input accounting, or None without a state."""
        path = self.path / INDEX
        if not path.is_file():
            return None
        index = json.loads(path.read_text())
        if index.get("version") != STATE_VERSION:
            log.warning(
                "fusion state %s has version %s, this build writes %d: ignored",
                path,
                index.get("version"),
                STATE_VERSION,
            )
            return None
        keyframes = {}
        for key, entry in index["keyframes"].items():
            with np.load(self.path / entry["block"]) as block:
                arrays = {f: block[f] for f in POINT_FIELDS}
                image = block["image"] if "image" in block.files else None
            keyframes[int(key)] = {
                "keyframe_id": int(key),
                **{f: entry[f] for f in SCALAR_FIELDS},
                "world_from_cam": None if entry["world_from_cam"] is None else np.array(entry["world_from_cam"]),
                "intrinsics": None if entry["intrinsics"] is None else np.array(entry["intrinsics"]),
                "image_hw": entry["image_hw"],
                "image": image,
                **arrays,
            }
        frame_times, ground_truth = {}, {}
        for name in index["frame_chunks"]:
            with np.load(self.path / name) as chunk:
                frame_times.update(zip(chunk["frame_seq"].tolist(), chunk["t_capture"].tolist(), strict=True))
                ground_truth.update(zip(chunk["gt_frame_seq"].tolist(), chunk["gt_world_from_cam"], strict=True))
        step.gmap.import_state(
            {
                "frame_times": frame_times,
                "ground_truth": ground_truth,
                "keyframes": keyframes,
                "num_windows": index["num_windows"],
            }
        )
        saved = index["step"]
        step.num_frames, step.newest = saved["num_frames"], saved["newest"]
        step.windows, step.plans = saved["windows"], saved["plans"]
        messages = {int(k): v for k, v in index["keyframe_messages"].items()}
        for keyframe_id in sorted(messages):  # the back end's tracks and loop-closure features
            with np.load(self.path / messages[keyframe_id]) as data:
                fields = {f: data[f] for f in TRACK_FIELDS if f in data.files}
                source_hw = tuple(int(v) for v in data["source_hw"])
                record = keyframes.get(keyframe_id, {})
                step.backend.on_keyframe(
                    Keyframe(
                        keyframe_id=keyframe_id,
                        frame_seq=int(record.get("frame_seq") or 0),
                        t_capture=float(record.get("t_capture") or 0.0),
                        image=data["image"],
                        source_hw=source_hw if any(source_hw) else None,
                        **fields,
                    )
                )
        self._blocks = {int(k): e["block"] for k, e in index["keyframes"].items()}
        self._chunks = list(index["frame_chunks"])
        self._saved_frames = set(frame_times)
        self._messages = messages
        log.info(
            "fusion state reloaded from %s: %d keyframes (%d posed), %d frames, %d windows",
            self.path,
            len(keyframes),
            len(step.gmap.keyframe_ids),
            len(frame_times),
            index["num_windows"],
        )
        return index["inputs"]


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    tmp.replace(path)


def _plain(value: Any) -> Any:
    """JSON-able: numpy arrays and scalars to lists and Python numbers, tuples to lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    return value
