"""The shared layer set of all backbones: attention (qk-norm, RoPE, SDPA), block, MLPs, DINOv2 encoder."""

from spark3r_stream.models.layers.attention import Attention, TokenLayout, TokenReducer, sdpa
from spark3r_stream.models.layers.block import Block, LayerScale
from spark3r_stream.models.layers.dinov2 import DinoVisionTransformer, PatchEmbed
from spark3r_stream.models.layers.mlp import Mlp, SwiGLUFFN
from spark3r_stream.models.layers.rope import RotaryEmbedding2D, grid_positions

__all__ = [
    "Attention",
    "Block",
    "DinoVisionTransformer",
    "LayerScale",
    "Mlp",
    "PatchEmbed",
    "RotaryEmbedding2D",
    "SwiGLUFFN",
    "TokenLayout",
    "TokenReducer",
    "grid_positions",
    "sdpa",
]
