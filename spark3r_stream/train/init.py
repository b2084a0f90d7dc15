"""Initialisation for training a VGGT-architecture model from scratch, and AdamW parameter groups.

Loading official weights never calls this: the modules are built with PyTorch's default initialisation and zeroed
tokens, which a checkpoint overwrites. From scratch, identical zero camera/register tokens give frame 0 nothing that
marks it as the reference. Linear layers keep PyTorch's default initialisation: on the 2-D shift sanity task it
learned faster than ViT-style truncated normal (std 0.02) with the tied query/key start below.
"""

from __future__ import annotations

import torch
from torch import nn

from spark3r_stream.models.layers.dinov2 import DinoVisionTransformer

TOKEN_STD = 0.02


@torch.no_grad()
def init_for_training(model: nn.Module, *, tie_global_qk: bool = True) -> nn.Module:
    """Re-initialise `model` (a VGGT) in place for training from scratch; returns it.

    Args:
        tie_global_qk: start each global-attention block with equal query and key projections, so attention begins
            peaked on similar-looking tokens in every frame: a prior for cross-view matching that the optimiser
            otherwise has to discover from a flat start (measured: a 2-D shift between two crops is learned within
            a few hundred steps either way once LayerScale starts at 1, about twice as fast with it).
    """
    for module in model.modules():
        if isinstance(module, DinoVisionTransformer):
            for token in (module.cls_token, module.register_tokens):
                if token is not None:
                    nn.init.normal_(token, std=TOKEN_STD)
    aggregator = model.aggregator
    for token in (aggregator.camera_token, aggregator.register_token):
        nn.init.normal_(token, std=TOKEN_STD)  # slot 0 (frame 0) and slot 1 (other frames) differ from the start
    if tie_global_qk:
        for block in aggregator.global_blocks:
            qkv = block.attn.qkv
            dim = qkv.weight.shape[1]
            qkv.weight[dim : 2 * dim] = qkv.weight[:dim]
            if qkv.bias is not None:
                qkv.bias[dim : 2 * dim] = qkv.bias[:dim]
    return model


def adamw_param_groups(modules: list[nn.Module], weight_decay: float) -> list[dict]:
    """Weight decay on matrices and conv kernels only: not on biases, norms, LayerScale gammas, tokens or position
    tables (decaying a LayerScale gamma shrinks its whole branch towards zero)."""
    decay, no_decay = [], []
    for module in modules:
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            is_table = name.endswith(("pos_embed", "_token", "register_tokens", "mask_token"))
            (no_decay if param.dim() < 2 or is_table else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
