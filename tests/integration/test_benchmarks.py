"""CI smoke runs of the benchmarks (`--quick`: tiny S, one repeat, no result files, no speed assertions)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import bench_backbone, bench_encoder_cache
from benchmarks.bench_attention import RESULTS

pytestmark = pytest.mark.integration

QUICK_FRAMES = [4, 24]  # what --quick runs
STAGE_KEYS = ("d_encoder", "d_frame", "d_core", "d_camera", "d_dpt", "s_encoder", "s_frame", "s_attn", "s_dpt")


@pytest.mark.parametrize("model", sorted(bench_backbone.FIXTURES_OF))
def test_bench_backbone_quick_times_every_stage(model, capsys):
    before = sorted(RESULTS.iterdir())
    assert bench_backbone.main(["--model", model, "--quick", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [row["frames"] for row in rows] == QUICK_FRAMES
    for row in rows:
        for key in STAGE_KEYS:  # a stage whose hooks matched no module would read 0
            assert row[key] > 0, (model, row["frames"], key)
        dense_split = sum(row[k] for k in ("d_encoder", "d_frame", "d_core", "d_attn_rest", "d_global_rest"))
        assert dense_split + row["d_camera"] <= row["dense_s"] + row["d_dpt"]  # the split is inside the forward
    assert f"Speed (without {bench_backbone.DENSE_HEADS[model]} unless marked e2e)" in out
    assert sorted(RESULTS.iterdir()) == before  # --quick writes no result files


def test_bench_profile_ops_quick_splits_the_spark3r_global_attention(capsys):
    from benchmarks import bench_profile

    assert bench_profile.main(["--ops", "--quick", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "| dense (ms) | Spark3R (ms) |" in out
    for phase in ("SDPA (M queries x kept keys)", "matching (similarity, argmax, ranking)", "RoPE"):
        assert f"| {phase} |" in out


def test_bench_profile_window_quick_splits_the_window_run(capsys):
    from benchmarks import bench_profile

    before = sorted(RESULTS.iterdir())
    assert bench_profile.main(["--window", "--quick", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for stage in (
        "frame blocks 1+ (block 0 is cached)",
        "global attention",
        "camera head",
        "depth head",
        "**window run (wall)**",
    ):
        assert f"| {stage} |" in out
    assert sorted(RESULTS.iterdir()) == before  # --quick writes no result files


def test_stage_modules_cover_every_block_once():
    for family in bench_backbone.FIXTURES_OF:
        model = bench_backbone.build_bench_model(family)
        stages = bench_backbone.stage_modules(model)
        for path in stages:
            model.get_submodule(path)  # raises on a wrong path
        blocks = {"vggt": None, "pi3": "decoder.", "da3": "backbone.pretrained.blocks."}[family]
        if blocks is not None:
            depth = model.config.depth
            assert sorted(p for p in stages if p.startswith(blocks)) == sorted(f"{blocks}{i}" for i in range(depth))
        assert set(stages.values()) == {"encoder", "frame blocks", "global blocks", "camera head", "dense heads"}


CACHE_EXACT = 1e-5  # the encoder is per frame; only a different batch composition could change float rounding


def test_bench_encoder_cache_quick_encodes_only_the_new_keyframes(capsys):
    before = sorted(RESULTS.iterdir())
    assert bench_encoder_cache.main(["--quick"]) == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    # windows of 4 and 8 keyframes (stride 4): the second run encodes its 4 new keyframes and reuses 4
    assert [(r["keyframes"], r["new"], r["cache_misses"], r["cache_hits"]) for r in rows] == [
        (4, 4, 4, 0),
        (8, 4, 4, 4),
    ]
    for row in rows:
        assert row["no_cache_ms"] > 0 and row["cache_ms"] > 0 and row["encode_all_ms"] > 0
        assert row["max_pose_diff"] <= CACHE_EXACT and row["max_depth_diff"] <= CACHE_EXACT
    assert "Total over 2 windows" in out
    assert sorted(RESULTS.iterdir()) == before  # --quick writes no result files


def test_bench_quality_quick_scores_model_baselines_and_spark3r(capsys):
    from benchmarks import bench_quality

    before = sorted(RESULTS.iterdir())
    assert bench_quality.main(["--quick", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["setting"] for r in rows] == ["dense", "paper", "dense", "Q-only r_Q=2", "Q-only r_Q=3"]
    assert all(0 < r["depth_abs_rel_median"] < 1 and r["ate_over_extent"] > 0 for r in rows)
    for method in ("| vggt-tiny |", "| identity |", "| constant-velocity |", "| constant-depth |"):
        assert method in out
    assert "| handheld |" in out and "| orbit |" in out and "## Held-out pairs" in out
    assert sorted(RESULTS.iterdir()) == before


def test_bench_pipeline_memory_sweep_runs_the_pipeline_steps_with_bounded_stores():
    from benchmarks.bench_pipeline import memory_sweep

    (row,) = memory_sweep(100)
    assert row["keyframes"] == 100 and row["map_points"] > 0
    assert row["stored_images"] <= 20 and row["cached_encodings"] <= 20  # bounded by the window, not the stream


def test_bench_backend_quick_runs_every_back_end(capsys, tmp_path):
    from benchmarks import bench_backend

    before = sorted(RESULTS.iterdir())
    assert bench_backend.main(["--quick"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["back end"] for r in rows] == list(bench_backend.VARIANTS)
    assert rows[1]["refined"].split("/")[0] != "0" and rows[0]["ate_constant_baseline_m"] > 0
    assert rows[0]["loops"] == "–" and rows[2]["loops"].count("/") == 2 and rows[2]["backend_failures"] == 0
    assert sorted(RESULTS.iterdir()) == before
    centres = {"estimate": np.zeros((3, 3)), "truth": np.eye(3)}
    bench_backend.plot("demo", {"a": centres}, tmp_path / "demo.png")
    assert (tmp_path / "demo.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_streaming_quick_poses_every_frame_with_spark3r_and_dense(capsys):
    from benchmarks import bench_streaming

    before = sorted(RESULTS.iterdir())
    assert bench_streaming.main(["--quick"]) == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    isolated = rows.pop()["window_run"]  # one window alone: the stride's 4 new keyframes + refresh budget 2 decoded
    assert isolated["num_keyframes"] == bench_streaming.QUICK["max_window"] and isolated["num_dense"] == 6
    assert [r["setting"] for r in rows] == ["Spark3R", "dense"]
    for row in rows:
        assert row["frames_lost"] == "0 / 0 / 0" and not row["capped"]
        assert row["frames_posed"] == row["frames"] == bench_streaming.QUICK["frames"]  # every frame posed
        assert row["num_posed"] == row["num_selected"] > 0  # every keyframe reached a window run
        assert row["max_window"] <= bench_streaming.QUICK["max_window"] + 8  # + a superseded run's unposed keyframes
        assert set(row["rss_mb"]) == set(bench_streaming.NODES) and all(v > 0 for v in row["rss_mb"].values())
    for section in ("## Keyframe lag over time", "## Per-run latency against window size", "## Peak RSS per node"):
        assert section in out
    assert sorted(RESULTS.iterdir()) == before  # --quick writes no result files


def test_bench_streaming_tables_the_live_stream_figures(monkeypatch, tmp_path):
    """--live calls benchmarks/live_stream.py's live_stream_figures (with quick for --quick) and tables them."""
    import argparse
    import sys
    import types

    from benchmarks import bench_streaming

    calls = []

    def live_stream_figures(out, quick=False):
        calls.append((out, quick))
        return {"frames_offered": 300, "frames_processed": 120, "frames_dropped_stale": 180, "lag": {"p95_s": 0.4}}

    monkeypatch.setitem(
        sys.modules, "benchmarks.live_stream", types.SimpleNamespace(live_stream_figures=live_stream_figures)
    )
    figures = bench_streaming.live_figures(argparse.Namespace(quick=True), tmp_path)
    assert calls == [(tmp_path / "live", True)] and figures["frames_dropped_stale"] == 180
    assert "| lag.p95_s | 0.4 |" in bench_streaming.live_table(figures)
