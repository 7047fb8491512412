"""Softmax attention inside any model, found by watching its forward pass: every call of
``F.scaled_dot_product_attention`` (its weights recomputed as softmax(q kᵀ * scale + mask)), every
``nn.MultiheadAttention`` (asked for its per-head weights) and every softmax over the last dim of a square
(..., T, T) score tensor (hand-written attention).

Used for models whose attention layers :mod:`utils.vit_attention` does not know by class (a block of a student's
own that calls ``F.scaled_dot_product_attention``, explicit matmul-softmax attention, MHA over a CNN's feature map).
The mode only reads: outputs are unchanged. Each call is named by the innermost module that made it.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

MIN_TOKENS = 4  # a square softmax of fewer rows is not attention over positions (e.g. a 2x2 gate)
_SOFTMAX = {F.softmax, torch.softmax, torch.Tensor.softmax}


def _sdpa_weights(q: torch.Tensor, k: torch.Tensor, mask=None, is_causal: bool = False, scale=None) -> torch.Tensor:
    """softmax(q kᵀ * scale + mask) for (..., T, d) queries and (..., S, d) keys: (..., T, S)."""
    scale = scale if scale is not None else 1 / math.sqrt(q.shape[-1])
    scores = (q.float() @ k.float().transpose(-2, -1)) * scale  # (..., T, S)
    if is_causal:
        t, s = scores.shape[-2:]
        scores = scores.masked_fill(torch.ones(t, s, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
    return scores.softmax(-1)


class _Watch(TorchFunctionMode):
    """Appends (module name, weights (..., T, T) fp32 on the CPU) for each attention call in the forward pass."""

    def __init__(self, where: list[str]):
        super().__init__()
        self.where, self.calls = where, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.multi_head_attention_forward:  # its softmax runs inside, unseen: ask for the weights
            asked, average = kwargs.get("need_weights", True), kwargs.get("average_attn_weights", True)
            out, weights = func(*args, **{**kwargs, "need_weights": True, "average_attn_weights": False})
            self.calls.append((self.where[-1], weights.detach().float().cpu()))  # (B, heads, T, S)
            return out, (weights.mean(1) if average else weights) if asked else None
        out = func(*args, **kwargs)
        with torch._C.DisableTorchFunction():
            if func is F.scaled_dot_product_attention:
                q, k = args[0], args[1]
                mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
                causal = args[5] if len(args) > 5 else kwargs.get("is_causal", False)
                weights = _sdpa_weights(q.detach(), k.detach(), mask, causal, kwargs.get("scale"))
                self.calls.append((self.where[-1], weights.cpu()))
            elif func in _SOFTMAX and isinstance(out, torch.Tensor) and out.dim() >= 2:
                dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
                t = out.shape[-1]
                if dim in (-1, out.dim() - 1) and out.shape[-2] == t and t >= MIN_TOKENS:
                    self.calls.append((self.where[-1], out.detach().float().cpu()))
        return out


@contextlib.contextmanager
def watching(model: nn.Module):
    """Within the block, the yielded list receives (module name, weights) for each softmax attention call of
    ``model``'s forward passes, in call order; ``nn.MultiheadAttention``'s fused fast path is off meanwhile (it
    would hide its softmax)."""
    where = [type(model).__name__]

    def enter(name):
        def hook(*_):  # returns None: the module's input is unchanged
            where.append(name)
        return hook

    def leave(*_):  # returns None: the module's output is unchanged
        where.pop()

    handles = []
    for name, m in model.named_modules():
        if name:
            handles.append(m.register_forward_pre_hook(enter(name)))
            handles.append(m.register_forward_hook(leave))
    fast_path = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    watch = _Watch(where)
    try:
        with watch:
            yield watch.calls
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)
        for h in handles:
            h.remove()


def softmax_attention(model: nn.Module, images: torch.Tensor) -> tuple[list[str], list[torch.Tensor]]:
    """Each attention call's module name and weights (N, heads, T, T) for ``images``, in eval mode without
    gradients (mode restored). A call whose weights do not split by image (a block that mixes the batch) is
    kept as one map shared by every image, (1, heads, T, T)."""
    was_training = model.training
    try:
        model.eval()
        with watching(model) as calls, torch.no_grad():
            model(images.to(next(model.parameters()).device))
    finally:
        model.train(was_training)
    n, names, weights = len(images), [], []
    for name, w in calls:
        t = w.shape[-1]
        per_image = w.numel() // (t * t)
        w = w.reshape(n, per_image // n, t, t) if per_image % n == 0 else w.reshape(1, per_image, t, t)
        names.append(name)
        weights.append(w)
    return names, weights


def has_softmax_attention(model: nn.Module) -> bool:
    """Whether a forward pass of two zero images makes any softmax attention call."""
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):
        return bool(softmax_attention(model, torch.zeros(2, 3, 32, 32, device=device))[0])
