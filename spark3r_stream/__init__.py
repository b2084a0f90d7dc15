"""spark3r-stream: streaming 3D reconstruction with feed-forward transformers accelerated by Spark3R."""

__version__ = "0.1.0"
