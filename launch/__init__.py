"""Launch files (YAML): package data of `spark3r_stream.launch`, found with importlib.resources."""
