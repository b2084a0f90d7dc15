"""Library side of the streaming nodes: keyframe selection, window scheduling, window alignment, the global map."""
