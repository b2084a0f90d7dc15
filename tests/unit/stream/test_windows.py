"""Window scheduling: ids, stride, max_window rollover with overlap, flush, coverage."""

from __future__ import annotations

import pytest

from spark3r_stream.errors import ConfigError, InputError
from spark3r_stream.stream.windows import WindowScheduler, WindowSchedulerConfig


def _runs(config: WindowSchedulerConfig, num_keyframes: int):
    scheduler = WindowScheduler(config)
    runs = [run for kf in range(num_keyframes) if (run := scheduler.add(kf)) is not None]
    final = scheduler.flush()
    return runs, final


def test_growing_window_reruns_every_stride():
    runs, final = _runs(WindowSchedulerConfig(stride=2, max_window=100, overlap=1), 7)
    assert [run.window_id for run in runs] == [0, 1, 2]
    assert [run.keyframe_ids for run in runs] == [(0, 1), (0, 1, 2, 3), (0, 1, 2, 3, 4, 5)]
    assert final.window_id == 3 and final.keyframe_ids == tuple(range(7)) and final.num_new == 1


def test_full_window_rolls_over_with_overlap():
    runs, final = _runs(WindowSchedulerConfig(stride=3, max_window=5, overlap=2), 11)
    assert [(run.window_index, run.keyframe_ids) for run in runs] == [
        (0, (0, 1, 2)),
        (0, (0, 1, 2, 3, 4)),  # full at 5 keyframes: a final run with only 2 new ones
        (1, (3, 4, 5, 6, 7)),  # starts with the last 2 of window 0, full again
        (2, (6, 7, 8, 9, 10)),
    ]
    assert [run.num_new for run in runs] == [3, 2, 3, 3]
    assert final is None  # everything was covered


def test_flush_without_new_keyframes_returns_none():
    scheduler = WindowScheduler(WindowSchedulerConfig(stride=2, max_window=10, overlap=1))
    assert scheduler.flush() is None
    scheduler.add(0)
    assert scheduler.add(1).keyframe_ids == (0, 1)
    assert scheduler.flush() is None


@pytest.mark.parametrize(("stride", "max_window", "overlap"), [(1, 2, 1), (4, 10, 3), (7, 9, 8), (5, 5, 2)])
def test_every_keyframe_is_covered_and_windows_stay_bounded(stride, max_window, overlap):
    runs, final = _runs(WindowSchedulerConfig(stride=stride, max_window=max_window, overlap=overlap), 40)
    runs = runs + ([final] if final else [])
    covered = set().union(*(run.keyframe_ids for run in runs))
    assert covered == set(range(40))
    assert max(len(run.keyframe_ids) for run in runs) <= max_window
    assert [run.window_id for run in runs] == list(range(len(runs)))
    for previous, run in zip(runs, runs[1:], strict=False):
        if run.window_index != previous.window_index:  # a new window shares `overlap` keyframes with the last run
            assert run.keyframe_ids[:overlap] == previous.keyframe_ids[-overlap:]


def test_config_and_order_errors():
    with pytest.raises(ConfigError, match=r"^overlap: expected int in \[1, max_window\), got 5$"):
        WindowSchedulerConfig(max_window=5, overlap=5)
    scheduler = WindowScheduler(WindowSchedulerConfig())
    scheduler.add(3)
    with pytest.raises(InputError, match="keyframe ids must increase, got 3 after 3"):
        scheduler.add(3)
