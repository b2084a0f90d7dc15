"""Loop closure on rendered synthetic views with their true depth: a revisit is found and measured, places that do
not overlap are rejected, and retrieval never proposes recent keyframes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from spark3r_stream.geometry import unproject_depth
from spark3r_stream.sources.factory import open_source
from spark3r_stream.stream.loop_closure import (
    KeyframeFeatures,
    KeyframeGeometry,
    LoopClosureConfig,
    LoopDetector,
    verify_loop,
)
from spark3r_stream.synth.render import render_sequence

CONFIG = LoopClosureConfig()


@pytest.fixture(scope="module")
def loop():
    return render_sequence(4, 120, path="loop")


def geometry(sequence, k, depth_scale=1.0):
    depth = sequence.depth[k] * depth_scale
    points = unproject_depth(depth, sequence.intrinsics).reshape(-1, 3)
    return KeyframeGeometry(points, np.arange(len(points)), depth.shape, sequence.intrinsics)


def check(sequence, old, new, depth_scale=(1.0, 1.0)):
    features = tuple(KeyframeFeatures.from_image(sequence.images[k], CONFIG) for k in (old, new))
    geometries = (geometry(sequence, old, depth_scale[0]), geometry(sequence, new, depth_scale[1]))
    return verify_loop(old, new, 1.0, features, geometries, CONFIG)


def test_the_synthetic_loop_path_closes_and_a_launch_file_can_ask_for_it():
    source = open_source({"type": "synth", "seed": 4, "frames": 120, "path": "loop"})  # `path` is the path kind
    poses = np.stack([frame.world_from_cam for frame in source])
    step = np.linalg.norm(poses[1, :3, 3] - poses[0, :3, 3])
    assert source.info["path"] == "loop"
    assert np.linalg.norm(poses[-1, :3, 3] - poses[0, :3, 3]) == pytest.approx(step, rel=0.05)


def test_a_revisit_is_accepted_with_its_true_relative_pose(loop):
    old, new = 0, 117
    candidate = check(loop, old, new)
    assert candidate.accepted, candidate.reason
    truth = np.linalg.inv(loop.world_from_cam[old]) @ loop.world_from_cam[new]
    measured = candidate.new_in_old
    rotation_error = np.degrees(Rotation.from_matrix(truth[:3, :3].T @ measured.rotation).magnitude())
    assert rotation_error < 1.0  # 1 px is 0.7° at this focal length (83 px)
    assert np.linalg.norm(measured.translation - truth[:3, 3]) < 0.2 * np.linalg.norm(truth[:3, 3])
    assert measured.scale == pytest.approx(1.0, abs=0.02)


def test_the_relative_scale_comes_from_the_two_depths(loop):
    # the new keyframe's map is 1.5x smaller than the old one's (scale drift): the edge says so
    candidate = check(loop, 0, 117, depth_scale=(1.0, 1 / 1.5))
    assert candidate.accepted and candidate.new_in_old.scale == pytest.approx(1.5, rel=0.03)


def test_places_that_do_not_overlap_are_rejected(loop):
    candidate = check(loop, 0, 60)  # the far side of the loop, looking the other way
    assert not candidate.accepted and candidate.new_in_old is None and candidate.reason


def test_retrieval_skips_recent_keyframes_and_ranks_by_similarity(loop):
    detector = LoopDetector(LoopClosureConfig(min_separation=30, top_k=2, min_score=-1.0))
    for k in range(0, 120, 4):
        detector.add_keyframe(k, loop.images[k])
    candidates = detector.candidates(116, eligible=set(range(0, 120, 4)))
    assert len(candidates) == 2 and all(k <= 116 - 30 for k, _ in candidates)
    assert candidates[0][1] >= candidates[1][1]
    assert candidates[0][0] in (0, 4)  # the start of the loop, where the camera is again
    assert detector.candidates(116, eligible=set()) == []
