"""LR range test (torch-lr-finder) and the assignments' one-cycle schedule.

The range test runs on a copy of the model and a fresh optimizer, so the model to be trained is
untouched. It suggests the LR at the steepest descent of the smoothed loss (before its minimum); the LR at the loss
minimum is recorded too, because taking it (0.83 for one course solution's attention network, with Adam and weight decay
1e-2) collapsed the network to constant outputs.
"""
from __future__ import annotations

import contextlib
import copy
import io
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch


SKIP_START, SKIP_END = 10, 5  # torch-lr-finder's plot() defaults for its 100 steps: the curve's noisy ends, left out


def noisy_ends(points: int, asked: int) -> tuple[int, int]:
    """Points left out at the start and the end of a range test's curve of ``points`` points out of ``asked`` steps:
    SKIP_START and SKIP_END (torch-lr-finder's plot), but of a test that stopped early, the loss having diverged,
    only its last point (the divergence itself) at the end, so that a short test still has a curve."""
    return SKIP_START, SKIP_END if points >= asked else 1


@dataclass
class LRSearch:
    """What the range test found: the suggested max LR, the LR at the lowest loss, and the curve."""

    suggested_lr: float
    min_loss_lr: float
    lrs: list[float] = field(repr=False)
    losses: list[float] = field(repr=False)
    steps: int | None = None  # the steps asked for (the curve is shorter when the loss diverged); None: its length


def find_lr(model, make_optimizer, criterion, loader, device, start_lr: float = 1e-7, end_lr: float = 10.0,
            num_iter: int = 100, precision=None) -> LRSearch:
    """Run torch-lr-finder on the *training* ``loader`` with a deep copy of ``model``.

    ``make_optimizer(params, lr)`` builds the optimizer the run will use (e.g. Adam with its weight
    decay) so the test measures the same update rule; ``precision`` (a :class:`utils.precision.Precision`)
    the same autocast. Returns an :class:`LRSearch`; ``utils.plots.lr_figure`` draws it.
    """
    with warnings.catch_warnings():  # tqdm.autonotebook's "experimental" warning on import inside Jupyter
        warnings.simplefilter("ignore")
        from torch_lr_finder import LRFinder
    from .progress import bars_enabled

    probe = copy.deepcopy(model).to(device)
    amp = {}
    if precision is not None and precision.dtype is not None:
        amp = {"amp_backend": "torch", "amp_config": {"device_type": precision.device.type, "dtype": precision.dtype},
               "grad_scaler": torch.amp.GradScaler(precision.device.type, enabled=precision.scaler is not None)}
        loss_fn = criterion
        criterion = lambda out, y: loss_fn(out.float(), y)  # noqa: E731  (the loss in fp32, as in training)
    finder = LRFinder(probe, make_optimizer(probe.parameters(), start_lr), criterion, device=device, **amp)
    quiet_bar = contextlib.nullcontext() if bars_enabled() else contextlib.redirect_stderr(io.StringIO())
    with contextlib.redirect_stdout(io.StringIO()), quiet_bar:  # it prints "Learning rate search finished"
        finder.range_test(loader, start_lr=start_lr, end_lr=end_lr, num_iter=num_iter)  # and always draws a bar
    lrs, losses = finder.history["lr"], finder.history["loss"]
    finder.reset()
    skip_start, skip_end = noisy_ends(len(losses), num_iter)
    lowest = int(np.argmin(losses))
    # finder.plot()'s rule (steepest descent of the smoothed loss), searched only up to the loss
    # minimum: past it a noisy dip on the way up can look steeper (seen on an attention network: 1.2e-2 vs minimum 8.5e-3).
    # If the loss never fell (noise, a tiny subset), fall back to finder.plot()'s whole-curve rule.
    stop = min(lowest + 1, len(losses) - skip_end)
    if stop - skip_start < 2:
        stop = len(losses) - skip_end
    if stop - skip_start < 2:
        raise ValueError(f"the range test stopped after {len(lrs)} steps (loss diverged); it needs at least "
                         f"{skip_start + skip_end + 2} to find a descent: lower start_lr or raise num_iter")
    descent = np.gradient(np.array(losses[skip_start:stop]))
    suggested = float(lrs[skip_start + int(descent.argmin())])
    min_loss = float(lrs[lowest])
    del probe, finder
    return LRSearch(suggested, min_loss, list(map(float, lrs)), list(map(float, losses)), num_iter)


def check_one_cycle_length(epochs: int, steps_per_epoch: int) -> int:
    """The run's step count, or one line when it is too short for :func:`one_cycle` (fewer than 3 steps)."""
    total = epochs * steps_per_epoch
    if total < 3:
        raise ValueError(f"one-cycle needs at least 3 training steps; this run has {total} ({epochs} epoch(s) x "
                         f"{steps_per_epoch} batch(es)): use more images (--subset), more --epochs or a smaller "
                         f"--batch-size")
    return total


def warmup_fraction(peak_epoch: int, epochs: int, total_steps: int) -> float:
    """The share of the run's steps :func:`one_cycle` warms up for: the end of ``peak_epoch``, or the middle of a run
    shorter than twice that, but at least two steps and leaving one to anneal."""
    return min(max(min(peak_epoch / epochs, 0.5), 2 / total_steps), (total_steps - 1) / total_steps)


def one_cycle(optimizer, max_lr: float, epochs: int, steps_per_epoch: int, peak_epoch: int = 5,
              div_factor: float = 25.0) -> torch.optim.lr_scheduler.OneCycleLR:
    """The assignments' one-cycle: linear warm-up from max_lr/div_factor to ``max_lr`` at ``peak_epoch`` (see
    :func:`warmup_fraction`), then linear anneal; two phases ("no annihilation", ``three_phase=False``). Step it
    every batch (torch's OneCycleLR divides by each phase's length, hence the fraction's bounds)."""
    total = check_one_cycle_length(epochs, steps_per_epoch)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                               pct_start=warmup_fraction(peak_epoch, epochs, total),
                                               anneal_strategy="linear", div_factor=div_factor, three_phase=False)


def one_cycle_line(max_lr: float, div_factor: float, peak_epoch: int, epochs: int, steps_per_epoch: int) -> str:
    """The log's line for :func:`one_cycle`'s schedule."""
    peak = warmup_fraction(peak_epoch, epochs, epochs * steps_per_epoch) * epochs
    return (f"one-cycle: {max_lr / div_factor:.3e} -> {max_lr:.3e} at epoch {peak:.3g} -> linear anneal over "
            f"{epochs} epochs")
