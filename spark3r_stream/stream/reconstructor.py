"""WindowReconstructor: the reconstruction node's library side — keyframe store, encoder cache, one model call per window.

Growing windows re-run the backbone on every keyframe of the window; two savings keep that cheap:
- each keyframe's encoder output is cached across re-runs (the encoder is per frame, so this is exact);
- the dense heads (linear in S) decode only the keyframes that need geometry: the new ones plus a small refresh
  budget of the oldest-decoded ones; fusion keeps points per keyframe in its camera frame, so a pose update
  needs no new depth.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from spark3r_stream.config import check_field
from spark3r_stream.errors import InputError
from spark3r_stream.input_size import DEFAULT_MODEL
from spark3r_stream.models.outputs import cpu_has_bf16
from spark3r_stream.spark3r.plan import Spark3RConfig, load_config_file
from spark3r_stream.stream.model_tracks import TrackQueryConfig, TracksMode, WindowTracks, track_window, tracks_enabled

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ReconstructionConfig:
    model: str = DEFAULT_MODEL
    weights: str | None = None  # checkpoint path or hub id; None = the preset's shipped weights
    random_weights: bool = False  # smoke tests only
    device: str = "auto"
    # The reduction: Spark3RConfig fields (`{}` = the paper's), false/null = the dense model; true means `{}`.
    spark3r: Spark3RConfig | bool | None = field(default_factory=Spark3RConfig)
    spark3r_config: str | None = None  # a configs/spark3r/*.yaml file used instead of `spark3r`'s fields
    encoder_cache: bool = True
    refresh_budget: int = 2  # older keyframes whose depth is re-decoded per run (oldest decode first)
    num_threads: int = 0  # torch CPU threads; 0 = torch's default
    # bf16 autocast for the backbone on a CPU device (heads stay float32); ignored on CPUs without avx512_bf16/AMX.
    # Off by default: see benchmarks/results/bench_profile_window.md for its speed and output change.
    cpu_bf16: bool = False
    # glibc malloc keeps up to this much freed memory for reuse (keep_freed_memory); 0 = glibc's defaults. The kernel
    # zeroes every fresh page: at 1,000 keyframes a run spent ~25 % of its time there (bench_profile --window).
    malloc_keep_mb: int = 1024
    # Window requests in the node: "every" runs each one in order (a lossless replay as fast as the pipeline takes
    # it: reproducible, the single-process run's map); "latest" lets a newer request supersede one still waiting while
    # the backbone is busy (paced or live streams: keyframe lag bounded whatever the run time; every keyframe is still
    # stored and posed, see stream.pipeline.ReconstructionStep).
    requests: Literal["every", "latest"] = "every"
    # "latest": a request waiting this long, and at least as long as the last run took, runs even while messages keep
    # arriving (ReconstructionStep.is_overdue)
    max_request_wait_s: float = 2.0
    # A keyframe arrives at model resolution (<= 518 x 518 for every preset); anything far beyond that, or more
    # stored keyframes than any window holds, is refused before it is stored (issue 15: no message takes the memory).
    max_keyframe_pixels: int = 1_000_000
    max_stored_keyframes: int = 4096  # windows hold at most max_window (1000) keyframes plus the next stride
    # The model's tracks for fusion's back end (stream/model_tracks.py, issue 17): "auto" sends them when the model
    # has a track head with weights from a checkpoint (VGGT-1B; vggt-tiny has none), "on" whenever it has a track head
    # (an error without one), "off" never; YAML reads a bare on/off as true/false, taken the same way. `track_query`:
    # which points, through which keyframes.
    tracks: TracksMode | bool = "auto"
    track_query: TrackQueryConfig = field(default_factory=TrackQueryConfig)

    def __post_init__(self) -> None:
        check_field(self, "refresh_budget", self.refresh_budget >= 0, "int >= 0")
        check_field(self, "malloc_keep_mb", 0 <= self.malloc_keep_mb <= 2047, "int in [0, 2047]")
        check_field(self, "requests", self.requests in ("every", "latest"), "'every' or 'latest'")
        check_field(self, "max_request_wait_s", self.max_request_wait_s > 0, "float > 0")
        check_field(self, "max_keyframe_pixels", self.max_keyframe_pixels >= 64, "int >= 64")
        check_field(self, "max_stored_keyframes", self.max_stored_keyframes >= 1, "int >= 1")
        if isinstance(self.tracks, bool):
            object.__setattr__(self, "tracks", "on" if self.tracks else "off")
        check_field(self, "tracks", self.tracks in ("auto", "on", "off"), "'auto', 'on' or 'off'")
        if self.spark3r is True or (self.spark3r_config and self.spark3r not in (None, False)):
            spark3r = load_config_file(self.spark3r_config) if self.spark3r_config else Spark3RConfig()
            object.__setattr__(self, "spark3r", spark3r)
        elif self.spark3r is False:
            object.__setattr__(self, "spark3r", None)


@dataclass
class WindowOutput:
    """One run's result in the model's own world frame for the window (VGGT, DA3: about the first keyframe's camera;
    π³: its canonical frame); fusion aligns it by Sim(3), so no frame is assumed. Fields mirror WindowResult."""

    window_id: int
    keyframe_ids: tuple[int, ...]
    world_from_cam: np.ndarray  # [K, 4, 4] float64
    intrinsics: np.ndarray  # [K, 3, 3] in model-input pixels
    dense_keyframe_ids: tuple[int, ...]
    depth: np.ndarray  # [K', H, W] float32
    depth_conf: np.ndarray  # [K', H, W] float32
    timings: dict[str, float] = field(default_factory=dict)
    plan: dict[str, Any] | str = field(default_factory=dict)
    model: str = ""
    track_keyframe_ids: np.ndarray | None = None  # the model's tracks (ReconstructionConfig.tracks), see WindowResult
    track_ids: np.ndarray | None = None
    track_uv: np.ndarray | None = None


class WindowReconstructor:
    def __init__(self, model: torch.nn.Module, config: ReconstructionConfig) -> None:
        self.model = model
        self.config = config
        self.device = next(model.parameters()).device
        self.images: dict[int, torch.Tensor] = {}  # keyframe_id -> [3, H, W] float in [0, 1]
        self.encoded: OrderedDict[int, torch.Tensor] = OrderedDict()  # keyframe_id -> [h*w, C]
        # keyframe_id -> (computed as the reference frame, frame block 0 output [P, C]) (VGGT: Aggregator.first_frame_block)
        self.first_block: dict[int, tuple[bool, torch.Tensor]] = {}
        self.last_decoded: dict[int, int] = {}  # keyframe_id -> run counter when its depth was last decoded
        self.num_runs = 0
        self.stats = {"encoder_cache_hits": 0, "encoder_cache_misses": 0}
        self.cpu_bf16 = config.cpu_bf16 and cpu_has_bf16()
        self.sends_tracks = tracks_enabled(model, config.tracks)  # ConfigError for "on" without a track head
        self.track_stats = {"runs": 0, "observations": 0, "failures": 0}  # the report's reconstruction.model_tracks

    @classmethod
    def from_config(cls, config: ReconstructionConfig) -> WindowReconstructor:
        from spark3r_stream.models.loading import load_model
        from spark3r_stream.spark3r.plan import load_config_file

        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        if config.malloc_keep_mb and not keep_freed_memory(config.malloc_keep_mb << 20):
            log.info("reconstruction: malloc_keep_mb ignored (not glibc malloc)")
        spark3r = (
            load_config_file(config.spark3r_config) if config.spark3r and config.spark3r_config else config.spark3r
        )
        model = load_model(
            config.model,
            weights=config.weights,
            random_weights=config.random_weights,
            device=config.device,
            spark3r=spark3r,
        )
        return cls(model, config)

    def add_keyframe(self, keyframe_id: int, image: np.ndarray) -> None:
        """Store a keyframe (uint8 [H, W, 3] at model resolution); sent once, kept until it leaves every window.
        InputError (reason `bad_image`) for an image beyond max_keyframe_pixels or a store already full."""
        height, width = image.shape[:2]
        if height * width > self.config.max_keyframe_pixels:
            raise InputError(
                f"keyframe {keyframe_id}: image {height}x{width} has {height * width} pixels > max_keyframe_pixels "
                f"{self.config.max_keyframe_pixels}",
                "bad_image",
            )
        if keyframe_id not in self.images and len(self.images) >= self.config.max_stored_keyframes:
            raise InputError(
                f"keyframe {keyframe_id}: {len(self.images)} keyframes stored already (max_stored_keyframes)",
                "store_full",
            )
        # channel-first and contiguous: stacking 1,000 channels-last views copies element by element (seconds);
        # torch.tensor copies, as a message's read-only buffer needs
        self.images[keyframe_id] = torch.tensor(image).permute(2, 0, 1).contiguous().float() / 255.0

    def forget(self, keep: set[int]) -> None:
        """Drop stored images and cached encodings of keyframes outside `keep` (memory bounded by the window)."""
        for store in (self.images, self.encoded, self.first_block, self.last_decoded):
            for keyframe_id in [k for k in store if k not in keep]:
                del store[keyframe_id]

    def _encode(self, keyframe_ids: tuple[int, ...]) -> bool:
        """Encode the keyframes not in the cache yet; False where the cache is off or the model has no VGGT aggregator."""
        if not self.config.encoder_cache or not hasattr(self.model, "aggregator"):
            return False
        missing = [i for i, k in enumerate(keyframe_ids) if k not in self.encoded]
        self.stats["encoder_cache_hits"] += len(keyframe_ids) - len(missing)
        self.stats["encoder_cache_misses"] += len(missing)
        if missing:
            images = torch.stack([self.images[keyframe_ids[i]] for i in missing])
            with torch.inference_mode():
                fresh = self.model.aggregator.encode(images[None].to(self.device))[0]
            for i, tokens in zip(missing, fresh, strict=True):
                self.encoded[keyframe_ids[i]] = tokens
        return True

    def _first_block(self, keyframe_ids: tuple[int, ...]) -> torch.Tensor:
        """Frame block 0 outputs [1, S, P, C] of the window, computed only for keyframes new to it or whose role (the
        window's reference frame 0 or not) changed: the frame blocks are per frame, so this is exact like the encoder
        cache, and it takes one of the VGGT aggregator's frame blocks off every re-run."""
        height, width = self.images[keyframe_ids[0]].shape[1:]
        patch = self.model.aggregator.patch_size
        for reference in (True, False):
            missing = [
                i
                for i, k in enumerate(keyframe_ids)
                if (i == 0) == reference and self.first_block.get(k, (None,))[0] is not reference
            ]
            if missing:
                with torch.inference_mode():
                    patch_tokens = torch.stack([self.encoded[keyframe_ids[i]] for i in missing])[None].to(self.device)
                    fresh = self.model.aggregator.first_frame_block(
                        patch_tokens, (height // patch, width // patch), reference=reference
                    )[0]
                for i, tokens in zip(missing, fresh, strict=True):
                    self.first_block[keyframe_ids[i]] = (reference, tokens)
        return torch.stack([self.first_block[k][1] for k in keyframe_ids])[None]

    def dense_selection(self, keyframe_ids: tuple[int, ...]) -> list[int]:
        """Window positions to decode densely: never-decoded keyframes, then the `refresh_budget` stalest others."""
        new = [i for i, k in enumerate(keyframe_ids) if k not in self.last_decoded]
        old = sorted(
            (i for i, k in enumerate(keyframe_ids) if k in self.last_decoded),
            key=lambda i: self.last_decoded[keyframe_ids[i]],
        )
        return sorted(new + old[: self.config.refresh_budget])

    def run(self, window_id: int, keyframe_ids: tuple[int, ...]) -> WindowOutput:
        from spark3r_stream.models import predict

        unknown = [k for k in keyframe_ids if k not in self.images]
        if unknown:
            raise KeyError(f"window {window_id}: keyframes {unknown[:5]} were never received")
        self.num_runs += 1
        start = time.perf_counter()
        cached = self._encode(keyframe_ids)
        first_block = self._first_block(keyframe_ids) if cached else None
        encode_ms = (time.perf_counter() - start) * 1e3  # the encoder and frame block 0 of the keyframes not cached
        patch_tokens = (
            torch.stack([self.encoded[k] for k in keyframe_ids])[None] if cached and self.sends_tracks else None
        )
        if not cached or self.sends_tracks:
            images = torch.stack([self.images[k] for k in keyframe_ids])
        else:  # with cached patch tokens the forward reads only the images' shape (Aggregator.forward): no 1,000-frame copy
            images = self.images[keyframe_ids[0]].expand(len(keyframe_ids), -1, -1, -1)
        dense = self.dense_selection(keyframe_ids)
        prediction = predict(
            self.model,
            images,
            dense_frames=torch.tensor(dense),
            first_block=first_block,
            cpu_bf16=self.cpu_bf16,
        )
        for i in dense:
            self.last_decoded[keyframe_ids[i]] = self.num_runs
        timings = {
            "encode_ms": round(encode_ms, 3),
            "forward_ms": prediction.timings_ms["forward"],
            "num_keyframes": float(len(keyframe_ids)),
            "num_dense": float(len(dense)),
        }
        tracks = self._tracks(window_id, keyframe_ids, images, patch_tokens, timings) if self.sends_tracks else None
        return WindowOutput(
            window_id=window_id,
            keyframe_ids=tuple(keyframe_ids),
            world_from_cam=prediction.world_from_cam,
            intrinsics=prediction.intrinsics,
            dense_keyframe_ids=tuple(keyframe_ids[i] for i in dense),
            depth=prediction.depth.astype(np.float32),
            depth_conf=prediction.depth_conf.astype(np.float32),
            timings=timings,
            plan=_jsonable(prediction.metadata.get("reduction_plan", {})),
            model=prediction.model,
            **({} if tracks is None else vars(tracks)),
        )

    def _tracks(self, window_id, keyframe_ids, images, patch_tokens, timings) -> WindowTracks | None:
        """The track head on the window's newest keyframes; a failure is counted and logged, the window's poses and
        depth still go out (the back end then uses the optical-flow tracks alone)."""
        start = time.perf_counter()
        try:
            tracks = track_window(self.model, images, keyframe_ids, self.config.track_query, patch_tokens)
        except (RuntimeError, ValueError) as exc:
            self.track_stats["failures"] += 1
            log.warning("window %d: the track head failed (%s); the result goes out without tracks", window_id, exc)
            return None
        timings["track_ms"] = round((time.perf_counter() - start) * 1e3, 3)
        if tracks is not None:
            self.track_stats["runs"] += 1
            self.track_stats["observations"] += len(tracks.track_ids)
        return tracks


def keep_freed_memory(max_bytes: int) -> bool:
    """glibc malloc: serve allocations up to `max_bytes` from the heap and keep up to `max_bytes` of freed memory for
    reuse instead of returning it to the OS (process-wide).

    A window run allocates gigabytes of short-lived activations (tens to hundreds of MB each at 1,000 keyframes);
    by default glibc maps each one afresh and unmaps it on free, so the kernel zeroes every page again: the run
    measured 14.4 s with that and 10.6 s with the memory kept (RSS +0.65 GB). False where the C library has no
    `mallopt` (not glibc): nothing changes.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, max_bytes)) and bool(mallopt(m_trim_threshold, max_bytes))


def _jsonable(plan: Any) -> dict[str, Any] | str:
    if hasattr(plan, "to_dict"):
        return plan.to_dict()
    if hasattr(plan, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(plan)
    return plan if isinstance(plan, dict | str) else str(plan)
