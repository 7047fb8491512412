"""Checks a run makes on any model, built-in or a student's: does an image's output depend on the rest of
its batch, and does the model return log-probabilities instead of logits.

A batch-mixing block (``Q.T @ K`` over the batch, as one course solution had it) trains, but its test
predictions change with the batch they are computed in; ``batch_independence`` measures that. Models
that end in ``log_softmax`` are common in course code; Grad-CAM should still target the class score
before the softmax, which ``logits_view`` recovers without touching the model.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode


class ModelContractError(ValueError):
    """A model whose output is not one (B, num_classes) tensor; the message is one line saying what to return."""


def check_contract(model: nn.Module, num_classes: int = 10, batch: int = 4) -> None:
    """The model contract every later step relies on: ``model(x)`` for x (B, 3, 32, 32) returns one tensor of
    shape (B, num_classes), logits or log-probabilities. Checked on ``batch`` zero images in eval mode; anything
    else raises :class:`ModelContractError` with what to return instead."""
    name = type(model).__name__
    device = next(model.parameters()).device
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = model(torch.zeros(batch, 3, 32, 32, device=device))
    except Exception as e:  # noqa: BLE001  (the student's forward; its error is theirs, said in one line)
        first = (str(e).strip().splitlines() or [""])[0]
        raise ModelContractError(f"{name} fails on a batch of {batch} images of 3x32x32: {type(e).__name__}: "
                                 f"{first}") from None
    finally:
        model.train(was_training)
    want = f"one tensor of shape (B, {num_classes}) (logits or log-probabilities)"
    if isinstance(out, (tuple, list)):
        raise ModelContractError(f"{name} returns a {type(out).__name__} of {len(out)}; return {want}, e.g. the "
                                 f"logits only: out[0]")
    if isinstance(out, dict):
        keys = ", ".join(map(repr, list(out)[:4]))
        raise ModelContractError(f"{name} returns a dict ({keys}); return {want}, e.g. out['logits']")
    if not isinstance(out, torch.Tensor):
        raise ModelContractError(f"{name} returns a {type(out).__name__}; return {want}")
    if out.dim() != 2 or out.shape[0] != batch:
        raise ModelContractError(f"{name} returns shape {tuple(out.shape)} for a batch of {batch}; return {want} "
                                 f"(pool or flatten the features before the last layer)")
    if out.shape[1] != num_classes:
        raise ModelContractError(f"{name} returns {out.shape[1]} scores per image; CIFAR-10 has {num_classes} "
                                 f"classes: give its last layer {num_classes} outputs (timm: num_classes={num_classes})")
    if not out.is_floating_point():
        raise ModelContractError(f"{name} returns {out.dtype} values; return {want}")


def eval_outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` in eval mode without gradients; the model's mode is restored."""
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            return model(x).float()
    finally:
        model.train(was_training)


def batch_independence(model: nn.Module, images: torch.Tensor | None = None, batch: int = 64, probes: int = 4,
                       seed: int = 0) -> float:
    """Largest difference between an image's outputs computed alone and computed within a batch, relative to
    the outputs' size (a fresh attention network without a residual path has logits of ~1e-8, so an absolute tolerance would pass anything).
    Measured on the class scores: a model's final ``log_softmax`` is bypassed (:func:`logits_view`).

    ``images`` (B, 3, H, W) default to ``batch`` random images; ``probes`` of them are also run one at a
    time, in eval mode (the model's mode is restored). A per-image model gives ~1e-7 (float rounding);
    the batch-mixing Ultimus block gives 1e-2 or more.
    """
    device = next(model.parameters()).device
    if images is None:
        images = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    images = images.to(device)
    with logits_view():  # on the scores before a final log_softmax, whose normalisation hides small mixing
        together = eval_outputs(model, images)  # (B, C)
        picks = torch.linspace(0, len(images) - 1, min(probes, len(images))).long().tolist()
        alone = torch.cat([eval_outputs(model, images[i:i + 1]) for i in picks])  # (probes, C)
    size = together.abs().max().clamp_min(torch.finfo(torch.float32).tiny)
    return ((together[picks] - alone).abs().max() / size).item()


def returns_log_probs(model: nn.Module, images: torch.Tensor | None = None, tol: float = 1e-3) -> bool:
    """Whether ``model``'s outputs are log-probabilities: all <= 0 and ``exp`` of each row sums to 1."""
    device = next(model.parameters()).device
    if images is None:
        images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = eval_outputs(model, images.to(device))  # (B, C)
    ones = torch.ones(len(out), device=out.device)
    return bool((out <= tol).all() and torch.allclose(out.exp().sum(1), ones, atol=tol))


class _SkipLogSoftmax(TorchFunctionMode):
    """Turns every ``log_softmax`` over the last dim of a (B, C) tensor into the identity, and counts them."""

    LOG_SOFTMAX = {F.log_softmax, torch.log_softmax, torch.Tensor.log_softmax}

    def __init__(self):
        super().__init__()
        self.skipped = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.LOG_SOFTMAX and args and isinstance(args[0], torch.Tensor) and args[0].dim() == 2:
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if dim in (-1, 1):
                self.skipped += 1
                return args[0]
        return func(*args, **kwargs)


@contextlib.contextmanager
def logits_view():
    """Within the block, a model's final ``log_softmax`` (F.log_softmax, torch.log_softmax, Tensor.log_softmax,
    nn.LogSoftmax) is skipped, so the model returns the class scores before it. Yields the mode; its
    ``skipped`` says how many calls it bypassed (0: there were none, outputs are as they were)."""
    with _SkipLogSoftmax() as mode:
        yield mode


# --- checks before training: each returns (kind, what) of a finding for the training doctor, or None ----------
def schedule_check(max_lr: float, suggested_lr: float | None, min_loss_lr: float | None = None,
                   lr_scale: float = 1.0) -> tuple[str, str] | None:
    """Before training: is the one-cycle max LR far above the range test's suggestion, or is the suggestion the loss
    minimum itself (a curve with no descent before it) and taken as it is? Returns (kind, what) of a finding,
    ("note", text) for a choice the recipe made on purpose, or None."""
    if not suggested_lr:
        return None
    if min_loss_lr and math.isclose(suggested_lr, min_loss_lr, rel_tol=1e-6):
        what = (f"the range test's steepest descent falls on its loss minimum (suggestion = minimum = "
                f"{suggested_lr:.3g}): the LR where the loss stops falling, at the edge of instability")
        if lr_scale < 1:
            return "note", f"{what}; the recipe takes {lr_scale:.3g} of it (lr_scale): {max_lr:.3g}"
        if max_lr >= 0.8 * suggested_lr:
            return "no_descent", f"{what}, and the run uses it as it is ({max_lr:.3g})"
    if lr_scale > 1:  # the recipe's own choice (measured, like any lr_scale); the checks during training still watch
        past = f", past its loss minimum {min_loss_lr:.3g}" if min_loss_lr and max_lr > min_loss_lr else ""
        return "note", (f"max LR {max_lr:.3g} is the recipe's {lr_scale:.3g} x the range test's suggestion "
                        f"{suggested_lr:.3g} (lr_scale){past}")
    if min_loss_lr and max_lr >= 0.8 * min_loss_lr and min_loss_lr > 3 * suggested_lr:
        return "schedule", (f"max LR {max_lr:.3g} sits at the range test's loss minimum ({min_loss_lr:.3g}), "
                            f"{max_lr / suggested_lr:.0f}x its suggestion {suggested_lr:.3g}")
    if max_lr > 10 * suggested_lr:
        return "schedule", f"max LR {max_lr:.3g} is {max_lr / suggested_lr:.0f}x the range test's suggestion {suggested_lr:.3g}"
    return None


def unstable_lr_check(max_lr: float, lr_unstable: float | None) -> tuple[str, str] | None:
    """Before training, with or without a range test (a given max LR too): is ``max_lr`` above ``lr_unstable``, the
    LR past which the recipe's range-test loss rose when it was measured (:attr:`utils.recipe.Recipe.lr_unstable`)?
    Returns (kind, what) of a "schedule" finding, or None."""
    if lr_unstable is None or max_lr <= lr_unstable:
        return None
    return "schedule", (f"max LR {max_lr:.3g} is above {lr_unstable:.3g}, where this recipe's range-test loss was "
                        f"measured to rise (Recipe.lr_unstable)")


BATCH_DEPENDENCE = 1e-3  # relative difference of an image's outputs alone vs in a batch above which it is a finding


def batch_dependence_check(difference: float, threshold: float = BATCH_DEPENDENCE) -> tuple[str, str] | None:
    """``difference``: :func:`utils.checks.batch_independence` of the model (relative); above ``threshold`` an
    image's outputs depend on the rest of its batch. Returns (kind, what) or None."""
    if difference > threshold:
        return "batch_dependence", (f"an image's outputs alone and in a batch of 64 differ by {difference:.1e} "
                                    f"(relative; a per-image model: ~1e-7)")
    return None
