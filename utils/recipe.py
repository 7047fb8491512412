"""A training recipe: everything about *how* a model is trained on CIFAR-10, as one dataclass.

The built-in assignments are instances (``assignments.recipes.recipe("S9")``); a notebook for the next
assignment makes its own, e.g. ``Recipe("S10 MyNet", epochs=20, optimizer="sgd", weight_decay=5e-4)``,
and passes it with its model to ``assignments.run.Run``. Every field carries its unit and reason; the
recipe is saved with the run (metrics.json, checkpoint).
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

import torch
from torch import nn

from .augment import AugmentSpec

OPTIMIZERS = ("adam", "sgd")


@dataclass
class Recipe:
    name: str  # the run's name in the log, metrics.json and report.md (e.g. "S10 MyNet")
    epochs: int = 24  # passes over the training set
    batch_size: int = 128  # images per step
    optimizer: str = "adam"  # "adam" | "sgd" (SGD with Nesterov momentum)
    weight_decay: float = 0.0  # L2 factor passed to the optimizer (Adam + weight decay can collapse a net)
    momentum: float = 0.9  # SGD only
    label_smoothing: float = 0.0  # CrossEntropyLoss(label_smoothing=...)
    peak_epoch: int = 5  # one-cycle reaches max LR at the end of this epoch ("peak at epoch 5")
    div_factor: float = 25.0  # one-cycle starts at max_lr / div_factor (torch's default)
    lr_scale: float = 1.0  # max LR = range-test suggestion x lr_scale (with lr "auto")
    lr_iters: int = 100  # LR range test steps (upstream: >= 100 for a stable suggestion)
    lr_end: float = 10.0  # LR range test upper bound
    augment: AugmentSpec = field(default_factory=AugmentSpec)  # crop/flip/cutout of training images
    channels_last: bool = False  # NHWC memory format for model and batches (faster for conv nets on our CPU)
    model: Callable[[], nn.Module] | None = field(default=None, repr=False)  # a factory; or pass the model to Run
    notes: str = ""  # why these choices (the built-ins say; goes into metrics.json)

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Recipe.optimizer must be one of {OPTIMIZERS}; got {self.optimizer!r}")
        for name in ("epochs", "batch_size", "peak_epoch", "lr_iters"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"Recipe.{name} must be a positive integer; got {value!r}")
        if not isinstance(self.augment, AugmentSpec):
            raise ValueError(f"Recipe.augment must be a utils.augment.AugmentSpec; got {type(self.augment).__name__}")

    def make_optimizer(self, params, lr: float) -> torch.optim.Optimizer:
        """The recipe's optimizer over ``params`` at ``lr`` (also used by the LR range test)."""
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=lr, momentum=self.momentum, nesterov=True, weight_decay=self.weight_decay)

    def max_lr(self, suggested_lr: float, steps: int) -> tuple[float, str | None]:
        """The one-cycle max LR from the range test's suggestion: ``suggested_lr x lr_scale``; a run of fewer
        ``steps`` than the range test takes the suggestion itself when ``lr_scale`` > 1 (a scale above 1 is
        chosen on full runs; a quick check diverges with it). Returns (max LR, why the scale was dropped)."""
        if self.lr_scale > 1 and steps < self.lr_iters:
            return suggested_lr, (f"max LR {suggested_lr:.3e}, the range test's suggestion without the recipe's "
                                  f"lr_scale {self.lr_scale:.3g}: this run has {steps} training steps, fewer than the "
                                  f"range test's {self.lr_iters}, and the scale was chosen on full runs (a quick check "
                                  f"diverges with it)")
        return suggested_lr * self.lr_scale, None

    def criterion(self) -> nn.Module:
        return nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)

    def to_dict(self) -> dict:
        """Plain data for metrics.json and the checkpoint; the model factory as its description."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["augment"] = asdict(self.augment)
        d["model"] = describe_factory(self.model)
        return d


def describe_factory(factory) -> str | None:
    """``TransformerUltimus(residual=False, scale='after_softmax')`` for a partial of a class; else its name."""
    if factory is None:
        return None
    if isinstance(factory, functools.partial):
        args = [repr(a) for a in factory.args] + [f"{k}={v!r}" for k, v in factory.keywords.items()]
        return f"{getattr(factory.func, '__name__', repr(factory.func))}({', '.join(args)})"
    return getattr(factory, "__name__", type(factory).__name__)
