"""A training recipe: everything about *how* a model is trained on CIFAR-10, as one dataclass.

The built-in assignments are instances (``assignments.recipes.recipe(name)``); a notebook for the next
assignment makes its own, e.g. ``Recipe("MyNet", epochs=20, optimizer="sgd", weight_decay=5e-4)``,
and passes it with its model to ``assignments.run.Run``. Every field carries its unit and reason; the
recipe is saved with the run (metrics.json, checkpoint).
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

import torch
from torch import nn

from .augment import AugmentSpec

OPTIMIZERS = ("adam", "adamw", "sgd")
QUICK_STEPS = 30  # steps per epoch a subset gets at least (with a batch no smaller than QUICK_MIN_BATCH)
QUICK_MIN_BATCH = 32
QUICK_LR_MARGIN = 3  # a quick check's max LR is at most the range test's loss-minimum LR / this
# ... or this, where the curve's steepest descent is its minimum (no descent before the edge of instability): a
# 32-step test of that shape, 1/3 of its minimum diverged (tests/test_colab.py's quick check: 20% then NaN), 1/10 trained
QUICK_LR_MARGIN_NO_DESCENT = 10
RANGE_TEST_MIN = 17  # range-test steps the suggestion needs: 10 left out at the start, 5 at the end, 2 to compare


@dataclass
class Recipe:
    name: str  # the run's name in the log, metrics.json and report.md (e.g. "MyNet")
    epochs: int = 24  # passes over the training set
    batch_size: int = 128  # images per step
    optimizer: str = "adam"  # "adam" | "adamw" (decoupled weight decay) | "sgd" (SGD with Nesterov momentum)
    weight_decay: float = 0.0  # passed to the optimizer (L2 for adam and sgd; Adam + L2 can collapse a net)
    momentum: float = 0.9  # SGD only
    label_smoothing: float = 0.0  # CrossEntropyLoss(label_smoothing=...)
    peak_epoch: int = 5  # one-cycle reaches max LR at the end of this epoch ("peak at epoch 5")
    div_factor: float = 25.0  # one-cycle starts at max_lr / div_factor (torch's default)
    lr_scale: float = 1.0  # max LR = range-test suggestion x lr_scale (with lr "auto")
    lr_max: float | None = None  # measured max LR taken with lr "auto" instead of suggestion x lr_scale (test still runs)
    lr_unstable: float | None = None  # LR past which the range-test loss was measured to rise; a max LR above: a finding
    lr_iters: int = 100  # LR range test steps (upstream: >= 100 for a stable suggestion)
    lr_end: float = 10.0  # LR range test upper bound
    augment: AugmentSpec = field(default_factory=AugmentSpec)  # crop/flip/cutout of training images
    channels_last: bool = False  # NHWC memory format for model and batches (faster for conv nets on our CPU)
    model: Callable[[], nn.Module] | None = field(default=None, repr=False)  # a factory; or pass the model to Run
    advice: dict[str, str] = field(default_factory=dict)  # what the doctor adds to a finding of a kind (an option of this recipe)
    notes: str = ""  # why these choices (the built-ins say; goes into metrics.json)

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Recipe.optimizer must be one of {OPTIMIZERS}; got {self.optimizer!r}")
        for name in ("epochs", "batch_size", "peak_epoch", "lr_iters"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"Recipe.{name} must be a positive integer; got {value!r}")
        for name in ("lr_max", "lr_unstable"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value <= 0):
                raise ValueError(f"Recipe.{name} must be a positive number or None; got {value!r}")
        if not isinstance(self.augment, AugmentSpec):
            raise ValueError(f"Recipe.augment must be a utils.augment.AugmentSpec; got {type(self.augment).__name__}")

    def make_optimizer(self, params, lr: float) -> torch.optim.Optimizer:
        """The recipe's optimizer over ``params`` at ``lr`` (also used by the LR range test)."""
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=self.weight_decay)
        if self.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=lr, momentum=self.momentum, nesterov=True, weight_decay=self.weight_decay)

    def batch_for(self, train_images: int) -> tuple[int, str | None]:
        """The batch size for ``train_images``: the recipe's, or, when that gives fewer than ``QUICK_STEPS`` steps
        per epoch, the largest power of two (not below ``QUICK_MIN_BATCH``) that gives that many. A quick check on
        a subset at the full run's batch trains for a handful of steps and stays at chance (ResNet18, 2,000 images at
        512: 8 steps, 9.40% on CIFAR-10 (JPEG copy): results/README.md). Returns (batch, why it was made smaller)."""
        if train_images // self.batch_size >= QUICK_STEPS:
            return self.batch_size, None
        batch = max(QUICK_MIN_BATCH, 1 << max(0, (train_images // QUICK_STEPS).bit_length() - 1))
        if batch >= self.batch_size:
            return self.batch_size, None
        steps = lambda b: -(-train_images // b)  # noqa: E731  (the loader keeps the last short batch)
        return batch, (f"batch {batch}, not the recipe's {self.batch_size}: {train_images} training images make "
                       f"{steps(self.batch_size)} step(s) per epoch at {self.batch_size}, {steps(batch)} at {batch} "
                       f"(a subset gets at least {QUICK_STEPS} per epoch, or a batch of {QUICK_MIN_BATCH}; "
                       f"--batch-size sets it)")

    def lr_scale_taken(self, suggested_lr: float, min_loss_lr: float, steps: int) -> float:
        """The scale :meth:`max_lr` applied to the suggestion: ``lr_scale``, or 1 where a quick check changed it."""
        return self.lr_scale if self.max_lr(suggested_lr, min_loss_lr, steps)[1] is None else 1.0

    def max_lr(self, suggested_lr: float, min_loss_lr: float, steps: int) -> tuple[float, str | None]:
        """The one-cycle max LR with lr "auto": the recipe's measured ``lr_max`` where it has one, else
        ``suggested_lr x lr_scale``. A run of fewer ``steps`` than the range test takes (a quick check) gets no
        scale above 1 (chosen on full runs) and no more than 1 / ``QUICK_LR_MARGIN`` of the loss minimum (where the
        sweep turns unstable; 1 / ``QUICK_LR_MARGIN_NO_DESCENT`` where the suggestion is that minimum). Returns
        (max LR, what a quick check changed)."""
        full = self.lr_max or suggested_lr * self.lr_scale
        if steps >= self.lr_iters:
            return full, None
        unscaled = self.lr_max or suggested_lr * min(self.lr_scale, 1.0)
        margin = QUICK_LR_MARGIN_NO_DESCENT if math.isclose(suggested_lr, min_loss_lr, rel_tol=1e-6) else QUICK_LR_MARGIN
        lr = min(unscaled, min_loss_lr / margin)
        if lr >= full:
            return full, None
        takes = [f"the suggestion without the recipe's lr_scale {self.lr_scale:.3g} (chosen on full runs)"] \
            if self.lr_scale > 1 and not self.lr_max else []
        if lr < unscaled:
            takes.append(f"at most 1/{margin:g} of the loss minimum {min_loss_lr:.3e}"
                         + (" (the steepest descent is the minimum itself)" if margin != QUICK_LR_MARGIN else ""))
        return lr, (f"max LR {lr:.3e}, not the recipe's {full:.3e}: this run has {steps} training steps, fewer than "
                    f"the recipe's {self.lr_iters} range-test steps, so a quick check takes {', and '.join(takes)}")

    def range_test_steps(self, steps_per_epoch: int, total_steps: int) -> tuple[int, str | None]:
        """Steps of the LR range test: the recipe's ``lr_iters``, or for a run with fewer training steps than
        that (a quick check) one epoch of it, but not fewer than the test's curve needs (``RANGE_TEST_MIN``).
        Returns (steps, why it was made shorter)."""
        if total_steps >= self.lr_iters:
            return self.lr_iters, None
        steps = min(self.lr_iters, max(RANGE_TEST_MIN, steps_per_epoch))
        if steps == self.lr_iters:
            return steps, None
        return steps, (f"{steps} steps, not the recipe's {self.lr_iters}: this run has {total_steps} training steps, "
                       f"so the range test takes one epoch (at least {RANGE_TEST_MIN})")

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
