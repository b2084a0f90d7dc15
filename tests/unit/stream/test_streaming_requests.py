"""ReconstructionStep under a busy backbone: newer window requests supersede waiting ones (never keyframes), every
keyframe still gets a pose and a dense decode; `on_request` (the single-process Pipeline) still runs every request."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spark3r_stream.models import load_weights, model_from_official_config
from spark3r_stream.stream.pipeline import ReconstructionStep
from spark3r_stream.stream.reconstructor import ReconstructionConfig, WindowReconstructor
from spark3r_stream.stream.windows import WindowScheduler, WindowSchedulerConfig
from spark3r_stream.transport import Keyframe, WindowRequest
from tests.conftest import fixture_path

NUM_KEYFRAMES = 30
REFRESH_BUDGET = 1


@pytest.fixture(scope="module")
def model():
    cfg = json.loads(fixture_path("vggt_tiny", "config.json").read_text())["config"]
    return load_weights(model_from_official_config("vggt", cfg), fixture_path("vggt_tiny", "weights.safetensors"))


def make_step(model) -> ReconstructionStep:
    return ReconstructionStep(WindowReconstructor(model, ReconstructionConfig(refresh_budget=REFRESH_BUDGET)))


def keyframe(keyframe_id: int) -> Keyframe:
    image = np.random.default_rng(keyframe_id).integers(0, 256, (28, 42, 3), dtype=np.uint8)
    return Keyframe(keyframe_id=keyframe_id, frame_seq=2 * keyframe_id, t_capture=keyframe_id / 15, image=image)


def stream(step: ReconstructionStep, run_every: int, *, latest: bool) -> tuple[list, int]:
    """Keyframes with stride-2 requests in windows of up to 8 (overlap 2); the backbone is free again after every
    `run_every`-th request (latest: one run of what waits) or runs each request at once."""
    scheduler = WindowScheduler(WindowSchedulerConfig(stride=2, max_window=8, overlap=2))
    results, num_requests = [], 0
    for keyframe_id in range(NUM_KEYFRAMES):
        step.on_keyframe(keyframe(keyframe_id))
        run = scheduler.add(keyframe_id)
        if run is None:
            continue
        num_requests += 1
        request = WindowRequest(window_id=run.window_id, keyframe_ids=run.keyframe_ids)
        if not latest:
            results.append(step.on_request(request))
            continue
        step.offer(request)
        if num_requests % run_every == 0:
            results.append(step.run_pending())
        if results:  # memory ~ window: the last run's keyframes and the ones that came after it
            last = results[-1].keyframe_ids
            assert set(step.reconstructor.images) <= set(last) | set(range(last[-1] + 1, keyframe_id + 1))
    while step.pending:  # end of stream
        results.append(step.run_pending())
    return results, num_requests


def test_superseded_requests_still_pose_and_decode_every_keyframe(model):
    step = make_step(model)
    results, num_requests = stream(step, run_every=3, latest=True)
    assert step.counters["superseded.window_request"] == num_requests - len(results) > 0
    assert sum(row["superseded"] for row in step.runs) == num_requests - len(results)
    posed: set[int] = set()
    for result in results:
        ids = set(result.keyframe_ids)
        if posed:  # fusion aligns each run on keyframes an earlier run posed
            assert ids & posed, (result.window_id, sorted(ids))
        new = ids - posed
        assert len(result.dense_keyframe_ids) <= len(new) + REFRESH_BUDGET
        assert new <= set(result.dense_keyframe_ids)  # dense heads: every new keyframe, plus the refresh budget
        posed |= ids
    assert posed == set(range(NUM_KEYFRAMES))  # latest-wins on requests, never on keyframes
    assert max(len(r.keyframe_ids) for r in results) == 8  # every window still gets its full-size run
    first_pose = dict(step.summary()["keyframe_first_pose_s"])
    assert sorted(first_pose) == list(range(NUM_KEYFRAMES))


def test_on_request_runs_every_request_in_order(model):
    step = make_step(model)
    results, num_requests = stream(step, run_every=1, latest=False)
    scheduler = WindowScheduler(WindowSchedulerConfig(stride=2, max_window=8, overlap=2))
    expected = [r.keyframe_ids for k in range(NUM_KEYFRAMES) if (r := scheduler.add(k)) is not None]
    assert [r.keyframe_ids for r in results] == expected and len(results) == num_requests
    assert step.counters["superseded.window_request"] == 0


def test_a_closed_window_keeps_its_last_run(model):
    step = make_step(model)
    for keyframe_id in range(12):
        step.on_keyframe(keyframe(keyframe_id))
    requests = [
        WindowRequest(window_id=0, keyframe_ids=tuple(range(6))),
        WindowRequest(window_id=1, keyframe_ids=tuple(range(8))),  # window 0 full: its last run
        WindowRequest(window_id=2, keyframe_ids=(6, 7, 8, 9)),  # window 1, overlap 2
        WindowRequest(window_id=3, keyframe_ids=(6, 7, 8, 9, 10, 11)),
    ]
    for request in requests:
        step.offer(request)
    assert [(r.window_id, n) for r, n in step.pending] == [(1, 1), (3, 1)]
    assert [step.run_pending().window_id, step.run_pending().window_id, step.run_pending()] == [1, 3, None]
    assert [row["superseded"] for row in step.runs] == [1, 1]
    assert sorted(step.reconstructor.images) == list(range(6, 12))  # window 0's own keyframes are forgotten


def test_a_request_that_waited_too_long_is_overdue(model):
    """A busy input (never empty) must not starve the backbone: the node runs a request once it is overdue."""
    now = [100.0]
    step = ReconstructionStep(WindowReconstructor(model, ReconstructionConfig()), clock=lambda: now[0])
    for keyframe_id in range(6):
        step.on_keyframe(keyframe(keyframe_id))
    assert not step.is_overdue(2.0)
    step.offer(WindowRequest(window_id=0, keyframe_ids=(0, 1, 2, 3)))
    now[0] += 1.5
    step.offer(WindowRequest(window_id=1, keyframe_ids=(0, 1, 2, 3, 4, 5)))  # supersedes, keeps the first wait
    assert not step.is_overdue(2.0)
    now[0] += 0.5
    assert step.is_overdue(2.0)
    assert step.run_pending().window_id == 1 and not step.is_overdue(0.1)  # nothing waits after the run


def test_after_a_long_run_a_request_is_overdue_only_once_it_waited_as_long_as_that_run(model):
    """A busy input must not re-trigger a long run back to back: the keyframes that came during it get as much intake."""
    now = [100.0]
    step = ReconstructionStep(WindowReconstructor(model, ReconstructionConfig()), clock=lambda: now[0])
    run = step.reconstructor.run

    def slow_run(*args):  # a 5 s run on the injected clock
        now[0] += 5.0
        return run(*args)

    step.reconstructor.run = slow_run
    for keyframe_id in range(8):
        step.on_keyframe(keyframe(keyframe_id))
    step.offer(WindowRequest(window_id=0, keyframe_ids=(0, 1, 2, 3)))
    now[0] += 2.0
    assert step.is_overdue(2.0)  # no run yet: the configured wait alone
    step.run_pending()
    step.offer(WindowRequest(window_id=0, keyframe_ids=(0, 1, 2, 3, 4, 5)))
    now[0] += 4.9
    assert not step.is_overdue(2.0)  # waited past max_wait_s, not yet as long as the 5 s run
    now[0] += 0.1
    assert step.is_overdue(2.0)
    step.run_pending()
    step.reconstructor.run = run  # a short run: the configured wait applies again
    step.offer(WindowRequest(window_id=0, keyframe_ids=tuple(range(8))))
    now[0] += 2.0
    assert not step.is_overdue(2.0)  # the last run still took 5 s
    step.run_pending()
    step.offer(WindowRequest(window_id=1, keyframe_ids=(6, 7)))
    now[0] += 2.0
    assert step.is_overdue(2.0)
