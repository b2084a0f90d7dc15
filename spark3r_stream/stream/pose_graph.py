"""The keyframe pose graph: one Sim(3) node per keyframe, edges from every window run and from loop closures (gtsam).

A node is a keyframe's camera-to-map transform with the scale of its points: a map point is
`scale * R @ p_cam + t` (GlobalMap keeps `R, t` as the rigid pose and `scale` as the keyframe's points scale).
Edges are relative Sim(3)s `inv(S_i) @ S_j` measured when they were made:
- "window": consecutive keyframes of a window run, from the map right after the run (and its refinement) was
  integrated; a newer run replaces an older one's edge between the same keyframes;
- "loop": a verified loop closure between an old and a new keyframe (stream/loop_closure.py); one the optimised
  graph still disagrees with (chi-square test) is dropped, so a wrong closure cannot fold the map.
Between loop closures the window edges form a chain that the map already satisfies exactly, so the graph is only
optimised (Levenberg-Marquardt) when a loop closure is added; monocular scale drift is what Sim(3) nodes are for.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from spark3r_stream.config import check_field

log = logging.getLogger(__name__)

__all__ = ["PoseGraph", "PoseGraphConfig", "PoseGraphResult", "Sim3", "relative_sim3"]


@dataclass(frozen=True)
class Sim3:
    """x_map = scale * rotation @ x_cam + translation."""

    rotation: np.ndarray  # [3, 3]
    translation: np.ndarray  # [3]
    scale: float = 1.0

    @classmethod
    def from_pose(cls, world_from_cam: np.ndarray, scale: float = 1.0) -> Sim3:
        world_from_cam = np.asarray(world_from_cam, np.float64)
        return cls(world_from_cam[:3, :3].copy(), world_from_cam[:3, 3].copy(), float(scale))

    @property
    def pose(self) -> np.ndarray:
        """[4, 4] the rigid part."""
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = self.rotation, self.translation
        return pose

    def inverse(self) -> Sim3:
        rotation = self.rotation.T
        return Sim3(rotation, -rotation @ self.translation / self.scale, 1.0 / self.scale)

    def __matmul__(self, other: Sim3) -> Sim3:
        return Sim3(
            self.rotation @ other.rotation,
            self.scale * self.rotation @ other.translation + self.translation,
            self.scale * other.scale,
        )

    def to_gtsam(self, gtsam):
        # gtsam's Similarity3 maps x -> s (R x + t)
        return gtsam.Similarity3(gtsam.Rot3(self.rotation), self.translation / self.scale, self.scale)

    @classmethod
    def from_gtsam(cls, similarity) -> Sim3:
        scale = float(similarity.scale())
        return cls(similarity.rotation().matrix(), scale * np.asarray(similarity.translation()), scale)


def relative_sim3(from_i: Sim3, from_j: Sim3) -> Sim3:
    """inv(S_i) @ S_j: keyframe j in keyframe i's camera frame and units."""
    return from_i.inverse() @ from_j


@dataclass(frozen=True, kw_only=True)
class PoseGraphConfig:
    window_rotation_deg: float = 1.0  # trust in a window run's relative rotation between consecutive keyframes
    window_translation: float = 0.05  # ... and translation, a fraction of their distance (floor: `min_translation`)
    window_log_scale: float = 0.02  # ... and relative scale (a window has one scale)
    min_translation: float = 0.01  # translation sigma floor, in the first keyframe's units
    loop_rotation_deg: float = 2.0  # trust in a verified loop closure (PnP on matched features)
    loop_translation: float = 0.05  # a fraction of the two keyframes' distance plus `min_translation`
    loop_log_scale: float = 0.05
    # a loop edge whose chi-square after the optimisation is above this is dropped (7 dof, p = 0.999); a robust kernel
    # instead let the chain's many edges win against a true loop that had a large gap to close (measured: no effect)
    loop_chi2: float = 24.3
    max_iterations: int = 50

    def __post_init__(self):
        for name in (
            "window_rotation_deg",
            "window_translation",
            "window_log_scale",
            "min_translation",
            "loop_rotation_deg",
            "loop_translation",
            "loop_log_scale",
            "loop_chi2",
        ):
            check_field(self, name, getattr(self, name) > 0, "float > 0")
        check_field(self, "max_iterations", self.max_iterations >= 1, "int >= 1")


@dataclass(frozen=True)
class _Edge:
    measured: Sim3  # inv(S_i) @ S_j
    kind: Literal["window", "loop"]


@dataclass(frozen=True)
class PoseGraphResult:
    nodes: dict[int, Sim3] = field(default_factory=dict)  # keyframe_id -> optimised node (empty when not applied)
    applied: bool = False
    reason: str = ""
    error_before: float = float("nan")  # the graph's total (robust) error at the current map and after
    error_after: float = float("nan")
    num_loops: int = 0
    dropped_loops: list[tuple[int, int]] = field(default_factory=list)  # loop edges the solution disagreed with


class PoseGraph:
    """Edges between keyframes; `optimize` takes the current nodes (from the map) and returns better ones."""

    def __init__(self, config: PoseGraphConfig | None = None):
        self.config = config or PoseGraphConfig()
        self.edges: dict[tuple[int, int], _Edge] = {}

    @property
    def loops(self) -> list[tuple[int, int]]:
        """The (old, new) keyframe pairs of the loop edges."""
        return [pair for pair, edge in self.edges.items() if edge.kind == "loop"]

    def add_window(self, nodes: Mapping[int, Sim3]) -> None:
        """Edges between consecutive keyframes of one window run (`nodes`: its keyframes as the map has them now)."""
        ids = sorted(nodes)
        for i, j in zip(ids[:-1], ids[1:], strict=True):
            if (i, j) not in self.edges or self.edges[(i, j)].kind == "window":  # never over a loop edge
                self.edges[(i, j)] = _Edge(relative_sim3(nodes[i], nodes[j]), "window")

    def add_loop(self, old: int, new: int, new_in_old: Sim3) -> None:
        """A loop closure: keyframe `new` in keyframe `old`'s camera frame and units."""
        self.edges[(old, new)] = _Edge(new_in_old, "loop")

    def forget(self, keyframe_ids: Sequence[int]) -> None:
        """Drop every edge touching these keyframes (they left the map)."""
        gone = set(keyframe_ids)
        self.edges = {pair: edge for pair, edge in self.edges.items() if not gone & set(pair)}

    def export_state(self) -> dict[str, np.ndarray]:
        """The edges as plain arrays (stream/map_store.py saves them with numpy, never pickle): `pairs` [E, 2],
        `rotation` [E, 3, 3], `translation` [E, 3], `scale` [E], `is_loop` [E], in insertion order."""
        edges = list(self.edges.items())
        return {
            "pairs": np.array([pair for pair, _ in edges], np.int64).reshape(-1, 2),
            "rotation": np.array([e.measured.rotation for _, e in edges], np.float64).reshape(-1, 3, 3),
            "translation": np.array([e.measured.translation for _, e in edges], np.float64).reshape(-1, 3),
            "scale": np.array([e.measured.scale for _, e in edges], np.float64),
            "is_loop": np.array([e.kind == "loop" for _, e in edges], bool),
        }

    def import_state(self, state: Mapping[str, np.ndarray], source: str = "<state>") -> None:
        """Replace the edges with those of `export_state`; ValueError naming `source` for arrays that do not fit."""
        pairs = np.asarray(state["pairs"])
        count = len(pairs)
        shapes = {"pairs": (count, 2), "rotation": (count, 3, 3), "translation": (count, 3), "scale": (count,),
                  "is_loop": (count,)}  # fmt: skip
        for name, shape in shapes.items():
            if np.shape(state[name]) != shape:
                raise ValueError(
                    f"pose graph state {source}: {name} has shape {np.shape(state[name])}, expected {shape}"
                )
        values = [np.asarray(state[n], np.float64) for n in ("rotation", "translation", "scale")]
        if not all(np.isfinite(v).all() for v in values) or (values[2] <= 0).any():
            raise ValueError(f"pose graph state {source}: non-finite edges or a scale <= 0")
        self.edges = {
            (int(i), int(j)): _Edge(Sim3(rotation, translation, float(scale)), "loop" if is_loop else "window")
            for (i, j), rotation, translation, scale, is_loop in zip(pairs, *values, state["is_loop"], strict=True)
        }

    def optimize(self, nodes: Mapping[int, Sim3]) -> PoseGraphResult:
        """Levenberg-Marquardt over every edge whose keyframes are in `nodes`, from `nodes`; the oldest keyframe is
        held fixed (the gauge). A loop edge the solution cannot agree with (chi-square above `loop_chi2`) is
        dropped, the worst first, and the graph solved again. Not applied (the result says why) when it fails or
        does not lower the error."""
        import gtsam

        ids = sorted(nodes)
        if len(ids) < 2:
            return PoseGraphResult(reason="fewer than two keyframes")
        key = {k: gtsam.symbol("s", k) for k in ids}
        values = gtsam.Values()
        for k in ids:
            values.insert(key[k], nodes[k].to_gtsam(gtsam))
        dropped: list[tuple[int, int]] = []
        while True:
            edges = {pair: edge for pair, edge in self.edges.items() if pair[0] in nodes and pair[1] in nodes}
            graph, loop_factors = self._graph(gtsam, edges, key, nodes[ids[0]])
            before = graph.error(values)
            num_loops = len(loop_factors)
            try:
                params = gtsam.LevenbergMarquardtParams()
                params.setMaxIterations(self.config.max_iterations)
                result = gtsam.LevenbergMarquardtOptimizer(graph, values, params).optimize()
            except RuntimeError as exc:  # an indeterminate system: keep the chained poses
                return PoseGraphResult(
                    reason=f"optimiser failed: {exc}", error_before=before, num_loops=num_loops, dropped_loops=dropped
                )
            chi2 = {pair: 2 * factor.error(result) for pair, factor in loop_factors.items()}
            worst = max(chi2, key=chi2.get, default=None)
            if worst is None or chi2[worst] <= self.config.loop_chi2:
                break
            log.info("pose graph: loop %s disagrees with the rest (chi2 %.1f): dropped", worst, chi2[worst])
            del self.edges[worst]
            dropped.append(worst)
        after = graph.error(result)
        if not np.isfinite(after) or after > before:
            reason = f"no improvement ({before:.3g} -> {after:.3g})"
            return PoseGraphResult(
                reason=reason, error_before=before, error_after=after, num_loops=num_loops, dropped_loops=dropped
            )
        optimised = {k: Sim3.from_gtsam(result.atSimilarity3(key[k])) for k in ids}
        log.info("pose graph: %d keyframes, %d loop edges, error %.3g -> %.3g", len(ids), num_loops, before, after)
        return PoseGraphResult(optimised, True, "ok", before, after, num_loops, dropped)

    def _graph(self, gtsam, edges: dict[tuple[int, int], _Edge], key: dict[int, int], gauge: Sim3):
        """(the factor graph, {loop pair: its factor})."""
        cfg = self.config
        graph = gtsam.NonlinearFactorGraph()
        graph.add(gtsam.NonlinearEqualitySimilarity3(key[min(key)], gauge.to_gtsam(gtsam)))
        loop_factors = {}
        for (i, j), edge in edges.items():
            distance = float(np.linalg.norm(edge.measured.translation))
            if edge.kind == "window":
                sigmas = (cfg.window_rotation_deg, cfg.window_translation, cfg.window_log_scale)
            else:
                sigmas = (cfg.loop_rotation_deg, cfg.loop_translation, cfg.loop_log_scale)
            noise = gtsam.noiseModel.Diagonal.Sigmas(
                np.r_[
                    np.full(3, np.radians(sigmas[0])), np.full(3, sigmas[1] * distance + cfg.min_translation), sigmas[2]
                ]
            )
            factor = gtsam.BetweenFactorSimilarity3(key[i], key[j], edge.measured.to_gtsam(gtsam), noise)
            graph.add(factor)
            if edge.kind == "loop":
                loop_factors[(i, j)] = factor
        return graph, loop_factors
