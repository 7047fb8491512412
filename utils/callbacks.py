"""What :func:`utils.train.fit` calls while it trains: a :class:`Callback` overrides the events it needs.

Events, in the order of one epoch (``state`` is the :class:`FitState` every event gets):

- ``on_fit_start(state)``: once, after a resume has loaded the model, optimizer and history;
- ``on_epoch_start(state)``;
- ``on_steps(state, rows)``: each time the loop reads the device's numbers (every ``SYNC_EVERY`` steps),
  ``rows`` = one :class:`StepRow` per step since the last read, in order;
- ``after_backward(state)``: every step, gradients unscaled, before the optimizer step;
- ``on_test(state, entry)``: after the epoch's test, before its checkpoint: a callback may add keys to ``entry``;
- ``on_epoch_end(state, entry)``: after the checkpoint, ``entry`` is the last of ``state.history``;
- ``state_dict()`` / ``load_state_dict(data)``: a callback with a ``state_key`` saves plain data under that key
  in every checkpoint and gets it back on resume.

The built-in ones: the training doctor's watching (:class:`utils.doctor.Doctor`), the log lines
(:class:`EpochLog`), the progress bar (:class:`ProgressBar`), a per-epoch measurement (:class:`Measure`),
TensorBoard (:class:`utils.tensorboard.TensorBoard`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from torch import nn

from .precision import Precision
from .progress import progress


class StepRow(NamedTuple):
    """One training step's numbers as :func:`utils.train.batch_stats` computes them, read on the host."""
    step: int
    loss: float  # the batch's mean cross-entropy
    correct: float  # images predicted right
    top: float  # images given the batch's most common prediction
    spread: float  # the logits' std across the batch, averaged over classes
    size: int  # images in the batch
    lr: float  # the learning rate the step used


@dataclass
class FitState:
    """What :func:`utils.train.fit` is training, shared with every callback."""
    model: nn.Module  # the module that steps (under torchrun: the DistributedDataParallel wrapper)
    optimizer: object
    scheduler: object | None
    precision: Precision
    epochs: int  # the planned last epoch
    steps_per_epoch: int
    history: list[dict] = field(default_factory=list)  # one entry per epoch done (a resume starts with its own)
    epoch: int = 0  # the epoch in progress (the last one done between epochs)
    step: int = 0  # global optimizer steps so far


class TrainingStopped(RuntimeError):
    """A callback raises it to stop training (the doctor: non-finite loss or gradients, or any finding under
    ``strict``); :func:`utils.train.fit` keeps the last checkpoint."""


class Callback:
    state_key: str | None = None  # the checkpoint key of this callback's state_dict(), if it keeps one

    def on_fit_start(self, state: FitState) -> None: ...
    def on_epoch_start(self, state: FitState) -> None: ...
    def on_steps(self, state: FitState, rows: list[StepRow]) -> None: ...
    def after_backward(self, state: FitState) -> None: ...
    def on_test(self, state: FitState, entry: dict) -> None: ...
    def on_epoch_end(self, state: FitState, entry: dict) -> None: ...
    def state_dict(self): ...
    def load_state_dict(self, data) -> None: ...


class EpochLog(Callback):
    """The epoch lines of the log: ``EPOCH: n``, the train line and the test line."""

    def __init__(self, log: Callable[[str], None] = print):
        self.log = log

    def on_fit_start(self, state):
        if state.history:
            self.log(f"resumed from the checkpoint after epoch {state.epoch}")

    def on_epoch_start(self, state):
        self.log(f"EPOCH: {state.epoch}")

    def on_test(self, state, entry):
        self.log(f"Train: Loss={entry['train_loss']:.4f} Accuracy={entry['train_acc']:.2f}% LR={entry['lr']:.3e}")
        total = sum(entry["pred_counts"])
        correct = round(entry["test_acc"] * total / 100)  # test_acc is 100 * correct / total
        self.log(f"Test set: Average loss: {entry['test_loss']:.4f}, Accuracy: {correct}/{total} "
                 f"({entry['test_acc']:.2f}%)")


class ProgressBar(Callback):
    """A bar per epoch (:func:`utils.progress.progress`: widgets in a notebook, text in a terminal, none in a pipe),
    moved and labelled each time the loop reads its numbers."""

    def __init__(self):
        self.bar, self.loss_sum, self.correct, self.seen = None, 0.0, 0.0, 0

    def on_epoch_start(self, state):
        self.bar = progress(None, total=state.steps_per_epoch, desc=f"epoch {state.epoch}/{state.epochs}", leave=False)
        self.loss_sum, self.correct, self.seen = 0.0, 0.0, 0

    def on_steps(self, state, rows):
        for r in rows:
            self.loss_sum, self.correct, self.seen = self.loss_sum + r.loss * r.size, self.correct + r.correct, \
                self.seen + r.size
        self.bar.set_postfix(loss=f"{rows[-1].loss:.4f}", acc=f"{100 * self.correct / max(self.seen, 1):.2f}",
                             lr=f"{rows[-1].lr:.2e}", refresh=False)
        self.bar.update(len(rows))

    def on_test(self, state, entry):
        if self.bar is not None:
            self.bar.close()


class Measure(Callback):
    """``entry[name] = fn()`` after every epoch's test (e.g. the attention entropy on a fixed test batch)."""

    def __init__(self, name: str, fn: Callable[[], object]):
        self.name, self.fn = name, fn

    def on_test(self, state, entry):
        entry[self.name] = self.fn()


class Saved(Callback):
    """Plain data saved with every checkpoint under ``state_key`` (``fn()`` is called at each save)."""

    def __init__(self, state_key: str, fn: Callable[[], dict]):
        self.state_key, self.fn = state_key, fn

    def state_dict(self):
        return self.fn()


class History(Callback):
    """Keeps ``target`` (a list the caller holds) equal to the run's history, epoch by epoch: a caller sees the
    epochs done even when training stops early."""

    def __init__(self, target: list):
        self.target = target

    def on_fit_start(self, state):
        self.target[:] = state.history

    def on_epoch_end(self, state, entry):
        self.target.append(entry)
