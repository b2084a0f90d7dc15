"""Spark3R reduction presets (YAML)."""
