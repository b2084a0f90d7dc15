"""Rerun logging of the map (`rerun_logger.MapLogger`, the only module importing rerun)."""
