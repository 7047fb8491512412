"""Train and test loops, and ``fit``: epochs, a checkpoint per epoch, resume, and callbacks for everything else.

History entries are plain floats; the test loss is the mean over the whole test set. What watches or
records the run (the doctor, the log lines, the progress bar, TensorBoard, a per-epoch measurement) is a
:class:`utils.callbacks.Callback`.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .callbacks import Callback, FitState, StepRow, TrainingStopped
from .checkpoint import Checkpoint, atomic_save, first_non_finite, load_run_checkpoint, unwrap
from .distributed import all_reduce_sum, all_reduce_tensor, current
from .precision import Precision

SYNC_EVERY = 10  # train steps between reads of the device's numbers (the progress bar's refresh too)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`fit`: where it hit (``epoch``, ``step``) and the last epoch checkpointed."""

    def __init__(self, epoch: int | None = None, step: int | None = None, saved_epoch: int | None = None):
        super().__init__(epoch, step, saved_epoch)
        self.epoch, self.step, self.saved_epoch = epoch, step, saved_epoch


def batch_stats(loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """What the callbacks read of one step (:class:`utils.callbacks.StepRow`), as one fp32 tensor (fp64 for fp64 logits) on the logits' device (no
    host read): [loss, correct count, count of the most common prediction, logits' std across the batch, batch size]."""
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    logits = logits.detach().to(dtype)  # (B, C)
    preds = logits.argmax(1)  # (B,)
    spread = logits.std(0).mean() if len(preds) > 1 else logits.new_ones(())
    return torch.stack([loss.detach().to(dtype).reshape(()), (preds == targets).sum().to(dtype),
                        torch.bincount(preds, minlength=logits.shape[1]).max().to(dtype), spread,
                        logits.new_tensor(float(len(preds)))])


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def train_one_epoch(model: nn.Module, loader, optimizer, criterion, scheduler=None, *,
                    precision: Precision | None = None, callbacks: list[Callback] = (), state: FitState | None = None,
                    sync_every: int = SYNC_EVERY) -> dict:
    """One pass over ``loader``; the one-cycle ``scheduler`` steps every batch. Returns loss (plain
    cross-entropy), accuracy in %, the last LR and the global step count.

    ``precision`` (default fp32 on the model's device) runs the forward pass under autocast; the loss is
    computed in fp32. No step waits for the device: each step's loss and counts stay on it
    (:func:`batch_stats`) and are read every ``sync_every`` steps, in one transfer, for the sums and
    the callbacks' ``on_steps``, which see every step's numbers in order (a NaN stops the run at most
    ``sync_every`` - 1 steps later).
    """
    precision = precision or Precision("fp32", _device_of(model))
    state = state or FitState(model, optimizer, scheduler, precision, epochs=1, steps_per_epoch=len(loader))
    model.train()
    world = current()
    total_loss, correct, seen = 0.0, 0, 0
    lr = optimizer.param_groups[0]["lr"]
    # report plain cross-entropy, comparable with the test loss even when training uses label smoothing
    smoothed = getattr(criterion, "label_smoothing", 0.0) > 0
    held = []  # under torchrun: a stop of rank 0's doctor, held until every rank stops at the same point
    pending = []  # (step, lr, stats on the device) not read yet

    def each(event, *args):
        for cb in callbacks:
            try:
                getattr(cb, event)(state, *args)
            except TrainingStopped as stop:
                if world.size == 1:
                    raise
                held.append(stop)

    def read():
        nonlocal total_loss, correct, seen
        stats = torch.stack([t for _, _, t in pending])  # (k, 5) on the device
        if world.size > 1:  # the global batches' loss and counts (sums over ranks), and any held stop
            stats[:, 0] *= stats[:, 4]
            stop_row = stats.new_tensor([[len(held), 0, 0]])  # (1, 3): rank 0's held stops
            summed = all_reduce_tensor(torch.cat([stats[:, [0, 1, 4]], stop_row]))  # (k + 1, 3)
            stats[:, 0], stats[:, 1], stats[:, 4] = summed[:-1, 0] / summed[:-1, 2], summed[:-1, 1], summed[:-1, 2]
            if summed[-1, 0].item():
                raise _stop(held, state.step)
        rows = [StepRow(at, *values[:4], int(values[4]), step_lr)
                for (at, step_lr, _), values in zip(pending, stats.tolist())]  # the one host read
        for r in rows:
            total_loss += r.loss * r.size
            correct += int(r.correct)
            seen += r.size
        pending.clear()
        each("on_steps", rows)

    try:
        for x, y in loader:
            x, y = precision.inputs(x), y.to(precision.device, non_blocking=True)
            state.step += 1
            optimizer.zero_grad(set_to_none=True)
            with precision.autocast():
                logits = model(x).to(precision.loss_dtype)  # (B, C), fp32 whatever the autocast dtype (fp64: fp64)
            loss = criterion(logits, y)
            stats = batch_stats(F.cross_entropy(logits.detach(), y) if smoothed else loss, logits, y)
            pending.append((state.step, lr, stats))
            if len(pending) == sync_every:  # before backward: the callbacks see steps in order, before their gradients
                read()
            precision.backward(loss)  # under torchrun, DistributedDataParallel averages the gradients here
            precision.unscale(optimizer)
            each("after_backward")
            precision.step(optimizer)
            lr = optimizer.param_groups[0]["lr"]
            if scheduler is not None:
                scheduler.step()
        if pending:
            read()
    except KeyboardInterrupt:
        raise Interrupted(step=state.step) from None
    if world.size > 1 and all_reduce_sum([len(held)], precision.device)[0]:  # a stop held at the epoch's last read
        raise _stop(held, state.step)
    return {"loss": total_loss / max(seen, 1), "acc": 100 * correct / max(seen, 1), "lr": lr, "steps": state.step}


def _stop(held: list[TrainingStopped], step: int) -> TrainingStopped:
    """Under torchrun, what each rank raises when rank 0's doctor stopped the run: rank 0 its own finding."""
    return held[0] if held else TrainingStopped(f"stopped at step {step} by rank 0's training doctor")


@torch.no_grad()
def predict(model: nn.Module, loader, precision: Precision | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C, fp32; fp64 under ``Precision("fp64")``) and targets (N,) on the CPU for a whole loader, in eval mode."""
    model.eval()
    precision = precision or Precision("fp32", _device_of(model))
    outputs, targets = [], []
    for x, y in loader:
        with precision.autocast():
            outputs.append(model(precision.inputs(x)).to(precision.loss_dtype).cpu())
        targets.append(y)
    return torch.cat(outputs), torch.cat(targets)


def evaluate(model: nn.Module, loader, precision: Precision | None = None) -> dict:
    """Mean cross-entropy over the whole test set, correct count, total, accuracy in % and predictions per class
    (under torchrun ``loader`` is this rank's shard and the sums are all-reduced)."""
    logits, y = predict(model, loader, precision)
    preds = logits.argmax(1)  # (N,)
    sums = [F.cross_entropy(logits, y, reduction="sum").item(), int((preds == y).sum()), len(y),
            *torch.bincount(preds, minlength=logits.shape[1]).tolist()]
    loss_sum, correct, total, *counts = all_reduce_sum(sums, _device_of(model))  # under torchrun: every shard's
    correct, total, counts = int(correct), int(total), [int(c) for c in counts]
    return {"loss": loss_sum / total, "correct": correct, "total": total, "acc": 100 * correct / total,
            "pred_counts": counts}


def fit(model, train_loader, test_loader, optimizer, criterion, epochs: int, scheduler=None, *,
        precision: Precision | None = None, callbacks: list[Callback] = (),
        checkpoint: str | Path | Checkpoint | None = None) -> list[dict]:
    """Train ``epochs`` epochs, test after each, checkpoint atomically each epoch; returns the history.

    ``checkpoint``: a path, saved after every epoch, or a :class:`utils.checkpoint.Checkpoint` that also says to
    resume: the model, optimizer, scheduler, precision state, history and each callback's state come back from it
    and training continues to the same final epoch. ``precision`` (default fp32 on the model's device) is used for
    training and testing. Ctrl-C raises :class:`Interrupted` saying where.
    """
    precision = precision or Precision("fp32", _device_of(model))
    state = FitState(model, optimizer, scheduler, precision, epochs, steps_per_epoch=len(train_loader))
    checkpoint = checkpoint if isinstance(checkpoint, Checkpoint) or checkpoint is None else Checkpoint(checkpoint)
    if checkpoint and checkpoint.resume:
        saved = checkpoint.resume if isinstance(checkpoint.resume, dict) else load_run_checkpoint(
            checkpoint.path, map_location=precision.device)
        _load(state, saved, callbacks)
    for cb in callbacks:
        cb.on_fit_start(state)
    try:
        for state.epoch in range(state.epoch + 1, epochs + 1):
            _epoch(state, train_loader, test_loader, criterion, callbacks, checkpoint)
    except KeyboardInterrupt as e:  # in a train step (Interrupted), the test pass or the checkpoint
        step = e.step if isinstance(e, Interrupted) else state.step
        raise Interrupted(state.epoch, step, state.history[-1]["epoch"] if state.history else None) from None
    return state.history


def _epoch(state: FitState, train_loader, test_loader, criterion, callbacks, checkpoint) -> None:
    """One epoch of :func:`fit`: train, test, callbacks' measurements, checkpoint, append to the history. An epoch
    that ends with a weight not finite raises :class:`TrainingStopped` and is not checkpointed."""
    t0 = time.perf_counter()
    if hasattr(train_loader, "set_epoch"):
        train_loader.set_epoch(state.epoch)
    for cb in callbacks:
        cb.on_epoch_start(state)
    tr = train_one_epoch(state.model, train_loader, state.optimizer, criterion, state.scheduler,
                         precision=state.precision, callbacks=callbacks, state=state)
    te = evaluate(state.model, test_loader, state.precision)
    entry = {"epoch": state.epoch, "train_loss": tr["loss"], "train_acc": tr["acc"], "test_loss": te["loss"],
             "test_acc": te["acc"], "lr": tr["lr"], "step": state.step, "pred_counts": te["pred_counts"],
             "seconds": round(time.perf_counter() - t0, 2)}
    for cb in callbacks:
        cb.on_test(state, entry)
    if bad := first_non_finite(unwrap(state.model).state_dict()):
        raise TrainingStopped(f"epoch {state.epoch} ended with weight {bad!r} not finite (NaN or inf), so it was not "
                              f"checkpointed")  # the checkpoint on disk stays the last good one
    if checkpoint and current().main:  # under torchrun only rank 0 writes the checkpoint
        atomic_save(_payload(state, entry, callbacks), checkpoint.path)
    state.history.append(entry)  # after the checkpoint: the history holds exactly the epochs on disk
    for cb in callbacks:
        cb.on_epoch_end(state, entry)


def _payload(state: FitState, entry: dict, callbacks) -> dict:
    """The checkpoint: weights, optimizer, scheduler, precision state, history and each callback's state."""
    payload = {"model": unwrap(state.model).state_dict(), "optimizer": state.optimizer.state_dict(),
               "scheduler": state.scheduler.state_dict() if state.scheduler is not None else None,
               "precision": state.precision.state_dict(), "epoch": state.epoch, "history": state.history + [entry],
               "extra": {}}
    payload.update({cb.state_key: cb.state_dict() for cb in callbacks if cb.state_key})
    return payload


def _load(state: FitState, saved: dict, callbacks) -> None:
    unwrap(state.model).load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    if state.scheduler is not None and saved.get("scheduler"):
        state.scheduler.load_state_dict(saved["scheduler"])
    if saved.get("precision"):
        state.precision.load_state_dict(saved["precision"])
    state.history[:], state.epoch = saved["history"], saved["epoch"]
    state.step = state.history[-1]["step"] if state.history else 0
    for cb in callbacks:
        if cb.state_key and cb.state_key in saved:
            cb.load_state_dict(saved[cb.state_key])
