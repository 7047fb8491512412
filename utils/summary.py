"""Model summary through torchinfo, in the reference's columns (layer with var names, params,
kernel shape, input and output shapes)."""
from __future__ import annotations

import copy
import re

from torch import nn


def model_summary(model: nn.Module, input_size=(1, 3, 32, 32), depth: int = 4):
    """torchinfo's summary (print it, or read ``.total_params``) of a copy of ``model`` on its CPU.

    Run on a deep copy: torchinfo's dummy forward would otherwise update BatchNorm statistics and
    can move the model between devices; the caller's model keeps its state and device.
    """
    from torchinfo import summary

    probe = copy.deepcopy(model).cpu()
    return summary(probe, input_size=input_size, depth=depth, device="cpu", verbose=0,
                   col_names=("num_params", "kernel_size", "input_size", "output_size"),
                   row_settings=("var_names",))


def summary_text(summary) -> str:
    """The summary as text, its mult-adds line spelled out per image (torchinfo 1.8 prints
    "Total mult-adds (Units.MEGABYTES): 19.32" on current Python)."""
    per_image = summary.total_mult_adds / summary.input_size[0][0]  # the summary's batch is its first dim
    return re.sub(r"^Total mult-adds.*$", f"Total mult-adds: {per_image / 1e6:.2f} M per image", str(summary),
                  flags=re.M)


def count_params(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
