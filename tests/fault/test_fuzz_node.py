"""CI-sized fuzz of a real keyframes node process (benchmarks/bench_faults.py at 3,000 messages): no crash, every
message accounted for by reason, the valid frames afterwards all processed, memory bounded."""

from __future__ import annotations

import pytest

from benchmarks import bench_faults

pytestmark = pytest.mark.fault

NUM_MESSAGES = 3000  # ~1 s of fuzzing on 2 shared cores; the benchmark sends 100,000
PEAK_RSS_MB = 400  # the node idles near 90 MB; a resize of a thin giant image used to take GBs


def test_fuzzed_keyframes_node_survives_and_accounts_for_every_message():
    result = bench_faults.run(NUM_MESSAGES, num_valid=10, seed=1)
    assert bench_faults.check(result) == []
    assert result["crashes"] == 0 and result["returncode"] == 0 and result["status"] == "ok"
    assert result["accounted"] == result["messages"] == NUM_MESSAGES + 10 + 1
    assert result["valid_processed"] == 10 and result["lost"] == 0
    dropped = result["dropped_before_handling"]
    for reason in ("too_deep", "bad_number", "bad_header", "too_large", "truncated", "unknown_sender"):
        assert dropped.get(f"dropped.{reason}", 0) > 0, reason
    counters = result["counters"]
    assert counters["cleared.frame.world_from_cam"] > 0 and counters.get("from_unknown.frames", 0) == 0
    assert result["by_kind"]["unknown_sender_frame"] > 0  # their frames are among the unknown_sender drops
    assert result["dropped_in_handler"]["dropped.bad_image"] > 0
    assert result["tracebacks_in_log"] == 0  # every drop is an expected one (no handler_failed / decode_failed)
    assert result["peak_rss_mb"] < PEAK_RSS_MB
