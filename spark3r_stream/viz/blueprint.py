"""The default Rerun layout: the 3-D map beside the newest keyframe's depth."""

from __future__ import annotations

import rerun.blueprint as rrb

from spark3r_stream.viz.rerun_logger import EntityPaths


def default_blueprint() -> rrb.Blueprint:
    """3-D view of the map frame (keyframes, trajectory, fused map) and a 2-D view of the latest depth."""
    return rrb.Blueprint(
        rrb.Horizontal(
            rrb.Spatial3DView(origin=EntityPaths.WORLD, name="Map"),
            rrb.Spatial2DView(origin=EntityPaths.LATEST_DEPTH, name="Newest keyframe depth"),
            column_shares=[3, 1],
        ),
        collapse_panels=False,
    )
