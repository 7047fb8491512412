"""What a vision transformer's self-attention looks at: the class token's attention per layer and head on the
patch grid, attention rollout, and the mean row entropy per layer.

Fused attention (``F.scaled_dot_product_attention`` in timm's ``Attention`` and torch's ``nn.MultiheadAttention``)
does not return its weights, so :func:`recording` recomputes them from each layer's input with the layer's
own projections: softmax(q kᵀ / sqrt(head dim)) per head, in a forward pre-hook that returns nothing (the
model's outputs are unchanged). Supported: timm's ``Attention`` (``qkv``, ``q_norm``, ``k_norm``, ``scale``)
and ``nn.MultiheadAttention`` with ``batch_first`` and one shared input projection (torchvision's ViT).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .softmax_attention import softmax_attention


def _is_timm_attention(m: nn.Module) -> bool:
    return all(hasattr(m, a) for a in ("qkv", "num_heads", "scale", "q_norm", "k_norm")) and \
        isinstance(m.qkv, nn.Linear)


def _is_torch_mha(m: nn.Module) -> bool:
    return isinstance(m, nn.MultiheadAttention) and m.batch_first and m.in_proj_weight is not None


def attention_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every self-attention layer whose weights :func:`recording` can recompute, in order."""
    return [(name, m) for name, m in model.named_modules() if name and (_is_timm_attention(m) or _is_torch_mha(m))]


def attention_weights(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's attention weights for input tokens ``x`` (B, T, D): (B, heads, T, T), rows sum to 1."""
    B, T, D = x.shape
    h = layer.num_heads
    if _is_timm_attention(layer):
        qkv = layer.qkv(x).reshape(B, T, 3, h, D // h).permute(2, 0, 3, 1, 4)  # (3, B, h, T, hd)
        q, k = layer.q_norm(qkv[0]), layer.k_norm(qkv[1])  # (B, h, T, hd)
        scores = (q * layer.scale) @ k.transpose(-2, -1)  # (B, h, T, T)
    else:
        w_q, w_k, _ = layer.in_proj_weight.chunk(3)  # (D, D) each
        b_q, b_k, _ = layer.in_proj_bias.chunk(3) if layer.in_proj_bias is not None else (None, None, None)
        q = F.linear(x, w_q, b_q).reshape(B, T, h, D // h).transpose(1, 2)  # (B, h, T, hd)
        k = F.linear(x, w_k, b_k).reshape(B, T, h, D // h).transpose(1, 2)  # (B, h, T, hd)
        scores = q @ k.transpose(-2, -1) / math.sqrt(D // h)  # (B, h, T, T)
    return scores.float().softmax(-1)


@contextlib.contextmanager
def recording(model: nn.Module):
    """Within the block, every forward pass appends each attention layer's weights (B, heads, T, T), detached,
    fp32, on the CPU, to the yielded list of lists (one per layer). The hooks return nothing; removed on exit."""
    layers = attention_layers(model)
    maps: list[list[torch.Tensor]] = [[] for _ in layers]

    def hook(i):
        def save(layer, args, kwargs):
            x = args[0] if args else kwargs["query"]
            with torch.no_grad():
                maps[i].append(attention_weights(layer, x.detach()).cpu())
        return save

    handles = [layer.register_forward_pre_hook(hook(i), with_kwargs=True) for i, (_, layer) in enumerate(layers)]
    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()


def _record(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Each attention call's weights (N, heads, T, T) for ``images``, in eval mode without gradients (mode
    restored), found by :func:`utils.softmax_attention.softmax_attention`."""
    return softmax_attention(model, images)[1]


def row_entropy(weights: torch.Tensor) -> float:
    """Mean entropy (nats) of the attention rows of (N, heads, T, T) weights; ln T is uniform."""
    return float(-(weights * weights.clamp_min(1e-30).log()).sum(-1).mean())


def entropy_per_layer(model: nn.Module, images: torch.Tensor) -> list[float]:
    """Mean attention row entropy of each layer on ``images`` (normalised, B x 3 x H x W)."""
    return [round(row_entropy(w), 5) for w in _record(model, images)]


def rollout(weights: list[torch.Tensor]) -> torch.Tensor:
    """Attention rollout (Abnar and Zuidema, 2020): per layer the head-mean weights plus the identity (the
    residual path), rows renormalised, multiplied through the layers. (N, T, T) for a list of (N, h, T, T)."""
    n, _, t, _ = weights[0].shape
    out = torch.eye(t).expand(n, t, t)
    for w in weights:
        a = w.mean(1) + torch.eye(t)  # (N, T, T)
        out = (a / a.sum(-1, keepdim=True)) @ out
    return out


@dataclass
class ViTAttention:
    """The class token's attention on the patch grid: per layer and head the mean over the images ``cls``
    (layers, heads, g, g), each layer's row entropy, and the rollout of the class token per image (N, g, g)."""

    layers: list[str]
    cls: torch.Tensor  # (layers, heads, g, g), mean over images
    entropy: list[float]  # per layer, nats
    tokens: int  # T (1 class token + g*g patches)
    images: int

    def table(self) -> str:
        lines = [f"attention over {self.images} test images (row entropy: ln {self.tokens} = "
                 f"{math.log(self.tokens):.3f} is uniform)", f"{'layer':<40} {'row entropy':>11}"]
        return "\n".join(lines + [f"{n:<40} {h:>11.3f}" for n, h in zip(self.layers, self.entropy)])

    def to_dict(self) -> dict:
        return {"layers": self.layers, "images": self.images, "entropy": self.entropy}


def query_grid(w: torch.Tensor) -> torch.Tensor:
    """What the image's positions receive, on their square grid: (..., T, T) -> (..., g, g). With a class token
    (T = 1 + g*g) its row over the patches; without one (T = g*g: attention over a feature map's positions) the
    mean row. Other token counts raise ValueError saying so."""
    t = w.shape[-1]
    g = math.isqrt(t - 1)
    if g * g == t - 1:
        return w[..., 0, 1:].reshape(*w.shape[:-2], g, g)
    g = math.isqrt(t)
    if g * g == t:
        return w.mean(-2).reshape(*w.shape[:-2], g, g)
    raise ValueError(f"{t} tokens are neither a square grid of positions nor a class token and such a grid")


def vit_attention(model: nn.Module, images: torch.Tensor) -> ViTAttention:
    """:class:`ViTAttention` of ``model`` over ``images`` (normalised, N x 3 x H x W)."""
    names, weights = softmax_attention(model, images)  # per attention call (N, h, T, T)
    if not names:
        raise ValueError(f"{type(model).__name__} has no softmax attention (F.scaled_dot_product_attention, "
                         f"nn.MultiheadAttention, a softmax over (T, T) scores)")
    cls = [query_grid(w).mean(0) for w in weights]  # per layer (h, g, g)
    if len({c.shape for c in cls}) > 1:
        raise ValueError("its attention layers have different numbers of heads or tokens: "
                         + ", ".join(f"{n} {tuple(w.shape[1:])}" for n, w in zip(names, weights)))
    return ViTAttention(names, torch.stack(cls), [round(row_entropy(w), 5) for w in weights], weights[0].shape[-1],
                        len(images))


def rollout_maps(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The attention rollout on the grid of positions for each image (the class token's row, or the mean row
    without one): (N, g, g), each map sums to 1."""
    grid = query_grid(rollout(_record(model, images)))  # (N, g, g)
    return grid / grid.sum((1, 2), keepdim=True)
