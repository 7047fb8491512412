"""Model summary through torchinfo, in the reference's columns (layer with var names, params,
kernel shape, input and output shapes)."""
from __future__ import annotations

import copy
import re

import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode


def model_summary(model: nn.Module, input_size=(1, 3, 32, 32), depth: int = 4):
    """torchinfo's summary (print it, or read ``.total_params``) of a copy of ``model`` on its CPU.

    Run on a deep copy: torchinfo's dummy forward would otherwise update BatchNorm statistics and
    can move the model between devices; the caller's model keeps its state and device.
    """
    from torchinfo import summary

    probe = copy.deepcopy(model).cpu()
    result = summary(probe, input_size=input_size, depth=depth, device="cpu", verbose=0,
                     col_names=("num_params", "kernel_size", "input_size", "output_size"),
                     row_settings=("var_names",))
    result.mult_adds_per_image = mult_adds(probe, (max(2, input_size[0]), *input_size[1:]))  # torchinfo: eval mode
    return result


def mult_adds(model: nn.Module, input_size=(2, 3, 32, 32)) -> float:
    """Multiply-adds of one image's forward pass, counted by ``torch.utils.flop_counter``: every matmul, linear
    layer (once per token) and convolution, plus the two products (q k^T and weights x v) of every
    ``F.scaled_dot_product_attention`` call, which the flop counter does not see inside the CPU's fused kernel.
    torchinfo counts a Linear layer once per image, not once per token, so it gives a ViT a small fraction of its
    work (5.9 M); on conv nets both agree (ResNet18: 555.4 M). Counted in eval mode on a batch of 2 (BatchNorm in
    train mode refuses one value per channel: torchvision's resnet18 reaches 1x1 at 32x32) with
    ``nn.MultiheadAttention``'s fused fast path off, so its products are counted; the model's mode is restored."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training, fast_path = model.training, torch.backends.mha.get_fastpath_enabled()
    try:
        model.eval()
        torch.backends.mha.set_fastpath_enabled(False)
        with torch.no_grad(), FlopCounterMode(display=False) as counter, _FusedAttentionCount() as fused:
            model(torch.zeros(input_size))
    finally:
        model.train(was_training)
        torch.backends.mha.set_fastpath_enabled(fast_path)
    return (counter.get_total_flops() / 2 + fused.mult_adds) / input_size[0]


class _FusedAttentionCount(TorchFunctionMode):
    """Counts the mult-adds of ``F.scaled_dot_product_attention`` calls: (..., L, E) queries against (..., S, E)
    keys and (..., S, Ev) values make L x S x (E + Ev) per leading index; and of ``nn.MultiheadAttention``'s
    attention without weights (its fused call runs inside ``F.multi_head_attention_forward``, out of this mode's
    sight): (L, N, E) queries against S keys make N x L x S x 2E. With weights its products are matmuls, which the
    flop counter sees."""

    def __init__(self):
        super().__init__()
        self.mult_adds = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, v = (args + tuple(kwargs.get(n) for n in ("query", "key", "value")[len(args):]))[:3]
            self.mult_adds += q.shape[:-2].numel() * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
        elif func is F.multi_head_attention_forward and not kwargs.get("need_weights", len(args) <= 15 or args[15]):
            q, k = args[0], args[1]  # (L, N, E) and (S, N, E), or unbatched (L, E) and (S, E)
            self.mult_adds += (q.shape[1] if q.dim() == 3 else 1) * q.shape[0] * k.shape[0] * 2 * q.shape[-1]
        return func(*args, **kwargs)


def summary_text(summary) -> str:
    """The summary as text, its mult-adds line spelled out per image (torchinfo 1.8 prints
    "Total mult-adds (Units.MEGABYTES): 19.32" on current Python), from :func:`mult_adds` when measured."""
    per_image = getattr(summary, "mult_adds_per_image", None)
    if per_image is None:
        per_image = summary.total_mult_adds / summary.input_size[0][0]  # the summary's batch is its first dim
    note = " (convolutions, matmuls and attention)" if hasattr(summary, "mult_adds_per_image") else ""
    return re.sub(r"^Total mult-adds.*$", f"Total mult-adds: {per_image / 1e6:.2f} M per image{note}", str(summary),
                  flags=re.M)


def count_params(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
