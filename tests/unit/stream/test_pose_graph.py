"""The keyframe pose graph (gtsam, Sim(3)): a known loop closes a drifting chain, a wrong loop is dropped, the chain
alone stays as it is, and a failing optimiser leaves the poses alone."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from spark3r_stream.geometry import se3_matrix
from spark3r_stream.stream.pose_graph import PoseGraph, Sim3, relative_sim3


def circle(num=40, radius=2.0):
    """Cameras on a circle, each looking at the centre: the last is one step before the first."""
    poses = []
    for k in range(num):
        angle = 2 * np.pi * k / num
        rotation = Rotation.from_euler("y", -angle).as_matrix()
        poses.append(Sim3(rotation, np.array([radius * np.sin(angle), 0.0, -radius * np.cos(angle)])))
    return poses


def drifted(truth, yaw_deg=0.4, scale_step=1.01):
    """Chain the true relative motions with a small yaw and scale error per step (odometry drift)."""
    error = Sim3(Rotation.from_euler("y", yaw_deg, degrees=True).as_matrix(), np.zeros(3), scale_step)
    chain = [truth[0]]
    for a, b in zip(truth[:-1], truth[1:], strict=True):
        chain.append(chain[-1] @ relative_sim3(a, b) @ error)
    return chain


def ate(nodes, truth):
    return float(
        np.sqrt(np.mean([np.sum((n.translation - t.translation) ** 2) for n, t in zip(nodes, truth, strict=True)]))
    )


def test_sim3_algebra_matches_4x4_matrices():
    rng = np.random.default_rng(0)
    a = Sim3(Rotation.random(random_state=1).as_matrix(), rng.normal(size=3), 1.7)
    b = Sim3(Rotation.random(random_state=2).as_matrix(), rng.normal(size=3), 0.6)

    def matrix(s):
        return se3_matrix(s.scale * s.rotation, s.translation)

    np.testing.assert_allclose(matrix(a @ b), matrix(a) @ matrix(b), atol=1e-12)
    np.testing.assert_allclose(matrix(a.inverse()), np.linalg.inv(matrix(a)), atol=1e-12)
    import gtsam

    back = Sim3.from_gtsam(a.to_gtsam(gtsam))
    np.testing.assert_allclose(matrix(back), matrix(a), atol=1e-12)


def test_a_known_loop_closes_the_drifted_chain():
    truth = circle()
    chain = drifted(truth)
    graph = PoseGraph()
    graph.add_window(dict(enumerate(chain)))
    # the loop: the last camera seen from the first, measured exactly (in the first's units)
    graph.add_loop(0, len(truth) - 1, relative_sim3(truth[0], truth[-1]))
    result = graph.optimize(dict(enumerate(chain)))

    assert result.applied and result.num_loops == 1 and not result.dropped_loops
    optimised = [result.nodes[k] for k in range(len(truth))]
    gap = np.linalg.norm(optimised[-1].translation - optimised[0].translation)
    true_gap = np.linalg.norm(truth[-1].translation - truth[0].translation)
    drift_before = abs(np.linalg.norm(chain[-1].translation - chain[0].translation) - true_gap)
    assert abs(gap - true_gap) < drift_before / 20
    assert ate(optimised, truth) < ate(chain, truth) / 5
    assert result.error_after < result.error_before


def test_the_chain_alone_is_its_own_optimum():
    truth = circle()
    graph = PoseGraph()
    graph.add_window(dict(enumerate(truth)))
    result = graph.optimize(dict(enumerate(truth)))
    assert result.applied
    assert max(np.linalg.norm(result.nodes[k].translation - t.translation) for k, t in enumerate(truth)) < 1e-6


def test_a_wrong_loop_is_dropped_and_a_true_one_kept():
    truth = circle()
    chain = drifted(truth, yaw_deg=0.2, scale_step=1.0)
    graph = PoseGraph()
    graph.add_window(dict(enumerate(chain)))
    graph.add_loop(0, 39, relative_sim3(truth[0], truth[39]))
    # a false closure: camera 20 (the far side) claimed to stand beside camera 5
    graph.add_loop(5, 20, relative_sim3(truth[5], truth[6]))
    result = graph.optimize(dict(enumerate(chain)))
    assert result.applied and result.dropped_loops == [(5, 20)]
    assert graph.loops == [(0, 39)]
    assert ate([result.nodes[k] for k in range(40)], truth) < ate(chain, truth) / 3


def test_a_failing_optimiser_keeps_the_poses(monkeypatch):
    import gtsam

    def fail(self):
        raise RuntimeError("indeterminant linear system")

    monkeypatch.setattr(gtsam.LevenbergMarquardtOptimizer, "optimize", fail)
    truth = circle(10)
    graph = PoseGraph()
    graph.add_window(dict(enumerate(truth)))
    graph.add_loop(0, 9, relative_sim3(truth[0], truth[9]))
    result = graph.optimize(dict(enumerate(truth)))
    assert not result.applied and "optimiser failed" in result.reason and result.nodes == {}


@pytest.mark.parametrize("num", [0, 1])
def test_too_few_keyframes_is_not_an_error(num):
    result = PoseGraph().optimize({k: Sim3(np.eye(3), np.zeros(3)) for k in range(num)})
    assert not result.applied and result.reason
