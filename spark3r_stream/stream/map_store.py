"""Fusion's state on disk, so a respawned fusion node goes on where the killed one stopped (issue 15, part C).

Layout under `<out>/state/fusion/` (`MapStore.for_run`):

    index.json            the last consistent state: keyframe poses and scalars, block and chunk file names, the
                          FusionStep counters (frames, windows, plans) and the node's input accounting (seqs seen
                          per sender, NodeLoop.export_input_state); written to a temporary file and renamed last
    kf_<id>_<rev>.npz     a map block: one keyframe's points (camera frame), colours, confidence, pixel index and
                          cached image, written once per points revision (a pose change rewrites only index.json)
    msg_<id>.npz          a keyframe message's track data and image, re-fed to the back end on reload; only for
                          keyframes a window can still hold (from the newest run's first keyframe on), at most
                          `keep_keyframe_messages`
    frames_<n>.npz        frame records (seq, time, ground truth) that arrived since the previous save, append-only
    graph_<n>.npz         the back end's pose graph (its edges, PoseGraph.export_state), rewritten when it changed
    loop_<n>.npz          loop-closure features (thumbnail, ORB keypoints and descriptors) of the keyframes added
                          since the previous save, append-only: a reloaded back end still closes loops to any keyframe

Blocks and chunks are written before the index that names them, and replaced ones are deleted after it, so a kill at
any moment leaves the previous index and everything it names (ZeroMQ's "Titanic" pattern keeps messages on disk for
the same reason). The senders keep what came after the last save in their replay buffers; the input accounting in
the index makes the receiver drop what the state already holds. Only JSON and numpy arrays (loaded with
allow_pickle=False) are written: a state directory can hold no code.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from spark3r_stream.stream.loop_closure import KeyframeFeatures
from spark3r_stream.transport.messages import Keyframe

log = logging.getLogger(__name__)

__all__ = ["MapStore"]

INDEX = "index.json"
STATE_VERSION = 2  # 2: the back end's pose graph, loop-closure features and report rows
READS_VERSIONS = (1, 2)  # a version-1 state reloads without them
GRAPH_FIELDS = ("pairs", "rotation", "translation", "scale", "is_loop")
BACKEND_ROWS = ("refinements", "loop_candidates", "graph_runs", "failures")  # BackEnd's report lists
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
        self._graph: str | None = None  # pose-graph file in the last index
        self._graph_state: dict[str, np.ndarray] | None = None
        self._loop_chunks: list[str] = []
        self._saved_features: set[int] = set()

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
        """Keep a keyframe message's back-end data until the next save writes it (the newest
        `keep_keyframe_messages` of them: a save would not write older ones, so memory stays bounded when saves
        do not come, e.g. no window result for a long time)."""
        self._pending_messages[keyframe.keyframe_id] = keyframe
        while len(self._pending_messages) > self.keep_keyframe_messages:
            del self._pending_messages[min(self._pending_messages)]

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
            if keyframe_id < step.window_start:  # no window holds it any more: the back end needs none of it
                continue
            name = f"msg_{keyframe_id:06d}.npz"
            arrays = {"image": msg.image, "source_hw": np.array(msg.source_hw or (0, 0), np.int64)}
            arrays |= {f: getattr(msg, f) for f in TRACK_FIELDS if getattr(msg, f) is not None}
            _write_npz(self.path / name, arrays)
            messages[keyframe_id] = name
        for keyframe_id in sorted(messages)[: -self.keep_keyframe_messages or None]:
            messages.pop(keyframe_id)
        for keyframe_id in [k for k in messages if k < step.window_start]:
            messages.pop(keyframe_id)  # its loop features are in the loop chunks, its tracks are not needed
        graph, loop_chunks, new_features = self._save_backend(step.backend)
        index = {
            "version": STATE_VERSION,
            "keyframes": keyframes,
            "frame_chunks": chunks,
            "keyframe_messages": {str(k): v for k, v in messages.items()},
            "pose_graph": graph,
            "loop_chunks": loop_chunks,
            "backend": {name: getattr(step.backend, name) for name in BACKEND_ROWS},
            "num_windows": state["num_windows"],
            "step": {
                "num_frames": step.num_frames,
                "newest": step.newest,
                "windows": step.windows,
                "plans": step.plans,
                "window_start": step.window_start,
            },
            "inputs": input_state,
        }
        tmp = self.path / (INDEX + ".tmp")
        tmp.write_text(json.dumps(index, default=_plain))
        tmp.replace(self.path / INDEX)  # the commit point
        for stale in (
            (set(self._blocks.values()) - set(blocks.values()))
            | (set(self._messages.values()) - set(messages.values()))
            | ({self._graph} - {graph, None})
        ):
            (self.path / stale).unlink(missing_ok=True)
        self._blocks, self._chunks, self._messages = blocks, chunks, messages
        self._graph, self._loop_chunks = graph, loop_chunks
        self._saved_frames.update(new_frames)
        self._saved_features.update(new_features)
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
        if index.get("version") not in READS_VERSIONS:
            log.warning(
                "fusion state %s has version %s, this build reads %s: ignored",
                path,
                index.get("version"),
                ", ".join(map(str, READS_VERSIONS)),
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
        step.window_start = saved.get("window_start", 0)  # version 1 did not save it
        self._load_backend(step.backend, index)  # before the messages: loop features keep their keyframe order
        messages = {int(k): v for k, v in index["keyframe_messages"].items()}
        for keyframe_id in sorted(messages):  # the back end's tracks (their loop features are computed again)
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
            "fusion state reloaded from %s: %d keyframes (%d posed), %d frames, %d windows, %d pose-graph edges, "
            "loop features of %d keyframes",
            self.path,
            len(keyframes),
            len(step.gmap.keyframe_ids),
            len(frame_times),
            index["num_windows"],
            len(step.backend.pose_graph.edges),
            len(step.backend.loop_detector.features),
        )
        return index["inputs"]

    # ------------------------------------------------------------------------------------------------ back end

    def _save_backend(self, backend: Any) -> tuple[str | None, list[str], set[int]]:
        """Write the pose graph if it changed and the loop features added since the last save (before the index
        names them); returns (graph file, loop chunk files, keyframe ids of the new features)."""
        graph = self._graph
        state = backend.pose_graph.export_state()
        if self._graph_state is None or any(not np.array_equal(state[f], self._graph_state[f]) for f in GRAPH_FIELDS):
            graph = f"graph_{self.num_saves:06d}.npz"
            _write_npz(self.path / graph, state)
            self._graph_state = state
        chunks = list(self._loop_chunks)
        features = backend.loop_detector.features
        new = [k for k in features if k not in self._saved_features]
        if new:
            name = f"loop_{len(chunks):06d}.npz"
            _write_npz(self.path / name, _features_arrays(new, features))
            chunks.append(name)
        return graph, chunks, set(new)

    def _load_backend(self, backend: Any, index: dict[str, Any]) -> None:
        """Restore the pose graph, loop-closure features and report rows a version-2 state holds."""
        if index.get("pose_graph"):
            path = self.path / index["pose_graph"]
            with np.load(path, allow_pickle=False) as data:
                state = {f: data[f] for f in GRAPH_FIELDS}
            backend.pose_graph.import_state(state, source=str(path))
            self._graph, self._graph_state = index["pose_graph"], state
        size = backend.loop_detector.config.thumbnail_size
        for name in index.get("loop_chunks", []):
            with np.load(self.path / name, allow_pickle=False) as data:
                for keyframe_id, features in _features_from_arrays(data, size, self.path / name):
                    backend.loop_detector.add_features(keyframe_id, features)
                    self._saved_features.add(keyframe_id)
        self._loop_chunks = list(index.get("loop_chunks", []))
        for name, rows in index.get("backend", {}).items():
            if name in BACKEND_ROWS:
                setattr(backend, name, rows)


def _features_arrays(keyframe_ids: list[int], features: dict[int, KeyframeFeatures]) -> dict[str, np.ndarray]:
    """Loop-closure features of several keyframes as flat arrays (keypoints and descriptors concatenated)."""
    chosen = [features[k] for k in keyframe_ids]
    return {
        "keyframe_ids": np.array(keyframe_ids, np.int64),
        "thumbnails": np.stack([f.thumbnail for f in chosen]).astype(np.float32),
        "image_hw": np.array([f.image_hw for f in chosen], np.int64).reshape(-1, 2),
        "intrinsics": np.stack([np.full((3, 3), np.nan) if f.intrinsics is None else f.intrinsics for f in chosen]),
        "num_keypoints": np.array([len(f.keypoints) for f in chosen], np.int64),
        "keypoints": np.concatenate([f.keypoints for f in chosen]).astype(np.float32).reshape(-1, 2),
        "descriptors": np.concatenate([f.descriptors for f in chosen]).astype(np.uint8).reshape(-1, 32),
    }


def _features_from_arrays(data: Any, thumbnail_size: int, source: Path) -> list[tuple[int, KeyframeFeatures]]:
    ids, counts = data["keyframe_ids"], data["num_keypoints"]
    keypoints, descriptors, thumbnails = data["keypoints"], data["descriptors"], data["thumbnails"]
    if (
        thumbnails.shape != (len(ids), thumbnail_size**2)
        or len(counts) != len(ids)
        or (counts < 0).any()
        or len(keypoints) != counts.sum()
        or len(descriptors) != counts.sum()
    ):
        raise ValueError(
            f"loop-closure features {source}: arrays do not fit each other or thumbnail_size {thumbnail_size}"
        )
    ends = np.cumsum(counts)
    out = []
    for i, keyframe_id in enumerate(ids.tolist()):
        part = slice(ends[i] - counts[i], ends[i])
        intrinsics = data["intrinsics"][i]
        out.append(
            (
                keyframe_id,
                KeyframeFeatures(
                    thumbnails[i],
                    keypoints[part],
                    descriptors[part],
                    tuple(int(v) for v in data["image_hw"][i]),
                    None if np.isnan(intrinsics).any() else np.asarray(intrinsics, np.float64),
                ),
            )
        )
    return out


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
