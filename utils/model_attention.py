"""A model's attention, whichever kind it has, behind one interface for the run: Ultimus blocks
(:mod:`utils.attention`) or standard self-attention layers, a ViT's (:mod:`utils.vit_attention`).

:func:`model_attention` returns the adapter for a model, or None for a model without attention; the run measures
its entropy every epoch on a fixed test batch (``probe``), and draws its figures after training.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .attention import attention_stats, entropy_per_block, ultimus_blocks
from .softmax_attention import has_softmax_attention, softmax_attention
from .vit_attention import attention_layers, entropy_per_layer, rollout_maps, vit_attention


class UltimusAttention:
    """Ultimus blocks: each block's 8x8 attention matrix (:class:`utils.attention.AttentionStats`)."""
    unit = "block"

    def __init__(self, model: nn.Module):
        self.model = model

    def uniform(self, probe: torch.Tensor) -> str:
        return f"ln 8 = {math.log(8):.3f}"  # the block's 8-dimensional queries and keys: 8 columns per row

    def entropy(self, probe: torch.Tensor) -> list[float]:
        return entropy_per_block(self.model, probe)

    def stats(self, test_loader, probe: torch.Tensor, num_classes: int):
        device = next(self.model.parameters()).device
        return attention_stats(self.model, test_loader, device, num_classes)  # the whole test set

    def map_figures(self, stats, mistakes) -> dict:
        from .attention_plots import attention_maps_figure

        return {"attention_maps": attention_maps_figure(stats)}

    def entropy_figure(self, stats, history: list[dict], start: list[float] | None):
        from .attention_plots import attention_entropy_figure

        return attention_entropy_figure(history, stats, start)


class SelfAttention:
    """Softmax self-attention (timm ``Attention``, ``nn.MultiheadAttention``, a block calling
    ``F.scaled_dot_product_attention`` or a softmax over (T, T) scores): what the grid of positions receives, the
    class token's row or without one the mean row (:class:`utils.vit_attention.ViTAttention`), and its rollout
    on given images."""
    unit = "layer"

    def __init__(self, model: nn.Module):
        self.model = model

    def uniform(self, probe: torch.Tensor) -> str:
        tokens = softmax_attention(self.model, probe[:2])[1][0].shape[-1]
        return f"ln {tokens} = {math.log(tokens):.3f}"

    def entropy(self, probe: torch.Tensor) -> list[float]:
        return entropy_per_layer(self.model, probe)

    def stats(self, test_loader, probe: torch.Tensor, num_classes: int):
        return vit_attention(self.model, probe)

    def map_figures(self, stats, mistakes) -> dict:
        """``mistakes``: (images (N, 3, H, W) normalised, shown (N, H, W, 3) in [0, 1], actual, predicted) or None."""
        from .attention_plots import rollout_figure, vit_attention_figure

        figs = {"attention_maps": vit_attention_figure(stats)}
        if mistakes is not None:
            x, shown, actual, predicted = mistakes
            maps = rollout_maps(self.model, x).numpy()  # (N, g, g)
            figs["attention_rollout"] = rollout_figure(np.asarray(shown), maps, actual, predicted)
        return figs

    def entropy_figure(self, stats, history: list[dict], start: list[float] | None):
        from .attention_plots import layer_entropy_figure

        return layer_entropy_figure(history, stats.layers, stats.tokens, start)


def model_attention(model: nn.Module) -> UltimusAttention | SelfAttention | None:
    """The adapter for ``model``'s attention: Ultimus blocks first, then known self-attention layers, then any
    softmax attention a forward pass of two images makes; else None."""
    if ultimus_blocks(model):
        return UltimusAttention(model)
    if attention_layers(model) or has_softmax_attention(model):
        return SelfAttention(model)
    return None


LOOKED_FOR = ("softmax attention: timm/torchvision attention layers, nn.MultiheadAttention, "
              "F.scaled_dot_product_attention calls and softmax over square (T, T) scores")
