"""Config presets (YAML): package data of `spark3r_stream.configs`, found with importlib.resources."""
