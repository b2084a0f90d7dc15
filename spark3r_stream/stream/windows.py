"""Growing-window scheduling: which keyframes the reconstruction node re-runs, and when (DESIGN.md §5).

No torch here: the keyframes node starts without it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from spark3r_stream.config import check_field
from spark3r_stream.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["ScheduledWindow", "WindowScheduler", "WindowSchedulerConfig"]


@dataclass(frozen=True, kw_only=True)
class WindowSchedulerConfig:
    """Growing windows: re-run the whole window every `stride` new keyframes, up to `max_window` keyframes.

    A full window is closed (its last keyframes get a final run even when fewer than `stride` are new) and the
    next window starts with the last `overlap` keyframes of the closed one, which fusion uses to align the two.
    """

    stride: int = 4  # new keyframes between two runs of the current window
    max_window: int = 1000  # keyframes in one window at most (the default suits official models on a GPU)
    overlap: int = 8  # keyframes a new window shares with the previous one (>= 1: the alignment needs them)

    def __post_init__(self):
        check_field(self, "stride", self.stride >= 1, "int >= 1")
        check_field(self, "max_window", self.max_window >= 2, "int >= 2")
        check_field(self, "overlap", 1 <= self.overlap < self.max_window, "int in [1, max_window)")


@dataclass(frozen=True)
class ScheduledWindow:
    """One run of the backbone on `keyframe_ids` (in keyframe order); the node maps it to a WindowRequest."""

    window_id: int  # counts runs, not windows: every re-run of a growing window gets a new id
    keyframe_ids: tuple[int, ...]
    window_index: int  # which window (0, 1, ...) the run belongs to; runs of one window share its first keyframe
    num_new: int  # keyframes not in any earlier run


class WindowScheduler:
    """Feed keyframe ids in order with `add`; a returned `ScheduledWindow` is a run to request. `flush` at the end."""

    def __init__(self, config: WindowSchedulerConfig | None = None):
        self.config = config or WindowSchedulerConfig()
        self._window: list[int] = []
        self._window_index = 0
        self._num_new = 0  # keyframes added since the last run
        self._num_runs = 0
        self._last_id: int | None = None

    @property
    def current_keyframe_ids(self) -> tuple[int, ...]:
        return tuple(self._window)

    @property
    def num_runs(self) -> int:
        return self._num_runs

    def add(self, keyframe_id: int) -> ScheduledWindow | None:
        """Add the next keyframe; returns the run it triggers, if any."""
        if self._last_id is not None and keyframe_id <= self._last_id:
            raise InputError(f"window scheduler: keyframe ids must increase, got {keyframe_id} after {self._last_id}")
        self._last_id = keyframe_id
        cfg = self.config
        if len(self._window) >= cfg.max_window:
            # the closed window had its final run when it filled up; the new one re-uses its tail as anchors
            self._window = self._window[-cfg.overlap :]
            self._window_index += 1
            log.info("window %d starts with keyframes %s", self._window_index, self._window)
        self._window.append(keyframe_id)
        self._num_new += 1
        if self._num_new >= cfg.stride or len(self._window) >= cfg.max_window:
            return self._run()
        return None

    def flush(self) -> ScheduledWindow | None:
        """End of stream: a last run if some keyframes are not in any run yet."""
        return self._run() if self._num_new > 0 else None

    def _run(self) -> ScheduledWindow:
        run = ScheduledWindow(
            window_id=self._num_runs,
            keyframe_ids=tuple(self._window),
            window_index=self._window_index,
            num_new=self._num_new,
        )
        self._num_runs += 1
        self._num_new = 0
        return run
