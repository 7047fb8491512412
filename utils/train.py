"""Train and test loops, and ``fit``: epochs with logging, a checkpoint per epoch and resume.

History entries are plain floats (the reference kept loss tensors, and with them every graph).
The test loss is the true mean over the test set (the reference printed the last batch's, divided by N).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import atomic_save, load_run_checkpoint, unwrap
from .distributed import all_reduce_sum, all_reduce_tensor, current
from .doctor import Doctor, Finding, TrainingStopped, batch_stats
from .precision import Precision
from .progress import progress

SYNC_EVERY = 10  # train steps between reads of the device's numbers (the progress bar's refresh too)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`fit`: where it hit (``epoch``, ``step``) and the last epoch checkpointed."""

    def __init__(self, epoch: int | None = None, step: int | None = None, saved_epoch: int | None = None):
        super().__init__(epoch, step, saved_epoch)
        self.epoch, self.step, self.saved_epoch = epoch, step, saved_epoch


def train_one_epoch(model: nn.Module, loader, optimizer, criterion, device, scheduler=None,
                    doctor: Doctor | None = None, step0: int = 0, desc: str = "train",
                    precision: Precision | None = None, sync_every: int = SYNC_EVERY) -> dict:
    """One pass over ``loader``; the one-cycle ``scheduler`` steps every batch. Returns loss (plain
    cross-entropy), accuracy in %, the last LR and the global step count.

    ``precision`` (default fp32) runs the forward pass under autocast; the loss is computed in fp32.
    No step waits for the device: each step's loss and counts stay on it (:func:`utils.doctor.batch_stats`)
    and are read every ``sync_every`` steps, in one transfer, by the sums, the progress bar and the doctor,
    which sees every step's numbers in order (a NaN stops the run at most ``sync_every`` - 1 steps later).
    """
    model.train()
    precision = precision or Precision("fp32", device)
    world = current()
    total_loss, correct, seen, step = 0.0, 0, 0, step0
    lr = optimizer.param_groups[0]["lr"]
    # report plain cross-entropy, comparable with the test loss even when training uses label smoothing
    smoothed = getattr(criterion, "label_smoothing", 0.0) > 0
    held = []  # under torchrun: a stop of rank 0's doctor, held until every rank stops at the same point
    pending = []  # (step, stats on the device) not read yet

    def watch(check, *args):
        try:
            check(*args)
        except TrainingStopped as stop:
            if world.size == 1:
                raise
            held.append(stop)

    def read():
        nonlocal total_loss, correct, seen
        stats = torch.stack([t for _, t in pending])  # (k, 5) on the device
        if world.size > 1:  # the global batches' loss and counts (sums over ranks), and any held stop
            stats[:, 0] *= stats[:, 4]
            stop_row = stats.new_tensor([[len(held), 0, 0]])  # (1, 3): rank 0's held stops
            summed = all_reduce_tensor(torch.cat([stats[:, [0, 1, 4]], stop_row]))  # (k + 1, 3)
            stats[:, 0], stats[:, 1], stats[:, 4] = summed[:-1, 0] / summed[:-1, 2], summed[:-1, 1], summed[:-1, 2]
            if summed[-1, 0].item():
                raise _stop(held, step)
        loss = math.nan
        for (at, _), (loss, hits, top, spread, n) in zip(pending, stats.tolist()):  # the one host read
            total_loss += loss * int(n)
            correct += int(hits)
            seen += int(n)
            if doctor:
                watch(doctor.observe, at, loss, hits, top, spread, int(n))
        pending.clear()
        if doctor and precision.hopeless():
            watch(doctor.non_finite, step, f"gradients overflow even unscaled (fp16 scale {precision.scaler.get_scale():g})")
        health = {"doctor": ",".join(f.kind for f in doctor.findings)} if doctor and doctor.findings else {}
        bar.set_postfix(loss=f"{loss:.4f}", acc=f"{100 * correct / max(seen, 1):.2f}", lr=f"{lr:.2e}",
                        **health, refresh=False)

    bar = progress(loader, desc=desc, leave=False)
    try:
        for x, y in bar:
            x, y = precision.inputs(x), y.to(device, non_blocking=True)
            step += 1
            optimizer.zero_grad(set_to_none=True)
            with precision.autocast():
                logits = model(x).float()  # (B, C), fp32 whatever the autocast dtype
            loss = criterion(logits, y)
            pending.append((step, batch_stats(F.cross_entropy(logits.detach(), y) if smoothed else loss, logits, y)))
            if len(pending) == sync_every:  # before backward: the doctor sees steps in order, before their gradients
                read()
            precision.backward(loss)  # under torchrun, DistributedDataParallel averages the gradients here
            precision.unscale(optimizer)
            if doctor:
                watch(doctor.check_gradients, step, model, precision.overflow_expected)
            precision.step(optimizer)
            lr = optimizer.param_groups[0]["lr"]
            if scheduler is not None:
                scheduler.step()
        if pending:
            read()
    except KeyboardInterrupt:
        raise Interrupted(step=step) from None
    if world.size > 1 and all_reduce_sum([len(held)], device)[0]:  # a stop held at the epoch's last read
        raise _stop(held, step)
    return {"loss": total_loss / max(seen, 1), "acc": 100 * correct / max(seen, 1), "lr": lr, "steps": step}


def _stop(held: list[TrainingStopped], step: int) -> TrainingStopped:
    """Under torchrun, what each rank raises when rank 0's doctor stopped the run: rank 0 its own finding."""
    return held[0] if held else TrainingStopped(f"stopped at step {step} by rank 0's training doctor")


@torch.no_grad()
def predict(model: nn.Module, loader, device, precision: Precision | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C, fp32) and targets (N,) on the CPU for a whole loader, in eval mode."""
    model.eval()
    precision = precision or Precision("fp32", device)
    outputs, targets = [], []
    for x, y in loader:
        with precision.autocast():
            outputs.append(model(precision.inputs(x)).float().cpu())
        targets.append(y)
    return torch.cat(outputs), torch.cat(targets)


def evaluate(model: nn.Module, loader, device, precision: Precision | None = None) -> dict:
    """Mean cross-entropy over the whole test set, correct count, total, accuracy in % and predictions per class
    (under torchrun ``loader`` is this rank's shard and the sums are all-reduced)."""
    logits, y = predict(model, loader, device, precision)
    preds = logits.argmax(1)  # (N,)
    sums = [F.cross_entropy(logits, y, reduction="sum").item(), int((preds == y).sum()), len(y),
            *torch.bincount(preds, minlength=logits.shape[1]).tolist()]
    loss_sum, correct, total, *counts = all_reduce_sum(sums, device)  # under torchrun: over every rank's shard
    correct, total, counts = int(correct), int(total), [int(c) for c in counts]
    return {"loss": loss_sum / total, "correct": correct, "total": total, "acc": 100 * correct / total,
            "pred_counts": counts}


def format_test_line(metrics: dict) -> str:
    """The reference's log line, with the true mean loss."""
    return (f"Test set: Average loss: {metrics['loss']:.4f}, Accuracy: {metrics['correct']}/{metrics['total']} "
            f"({metrics['acc']:.2f}%)")


def fit(model, train_loader, test_loader, optimizer, criterion, device, epochs: int, scheduler=None,
        checkpoint: str | Path | None = None, resume: bool | dict = False, doctor: Doctor | None = None,
        log=print, extra=None, precision: Precision | None = None, measure=None,
        history: list | None = None) -> list[dict]:
    """Train ``epochs`` epochs, test after each, checkpoint atomically each epoch; returns the history.

    With ``resume`` (True, or the checkpoint already loaded by :func:`utils.checkpoint.load_run_checkpoint`)
    the model, optimizer, scheduler, history and doctor findings come back from ``checkpoint`` and training
    continues to the same final epoch. ``extra`` (plain data, or a function returning it, called at each save)
    is saved alongside. ``history`` (optional) is the list filled epoch by epoch, so a caller sees the epochs
    done even when training stops early; Ctrl-C raises :class:`Interrupted` saying where.
    ``precision`` (default fp32) is used for training and testing; an fp16 scaler's state is checkpointed.
    ``measure`` (optional) is called after each epoch's test; its dict joins that epoch's history entry.
    """
    precision = precision or Precision("fp32", device)
    world = current()  # under torchrun only rank 0 writes the checkpoint
    history = [] if history is None else history
    start = 0
    if resume:
        state = resume if isinstance(resume, dict) else load_run_checkpoint(checkpoint, map_location=device)
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        if state.get("precision"):
            precision.load_state_dict(state["precision"])
        history[:], start = state["history"], state["epoch"]
        if doctor:
            doctor.findings = [Finding(**f) for f in state.get("health", [])]
        log(f"resumed from {checkpoint} after epoch {start}")
    step = history[-1]["step"] if history else 0
    epoch = start
    try:
        for epoch in range(start + 1, epochs + 1):
            step = _epoch(model, train_loader, test_loader, optimizer, criterion, device, epoch, epochs, scheduler,
                          checkpoint, doctor, log, extra, precision, measure, history, step, world)
    except Interrupted as e:
        raise Interrupted(epoch, e.step, history[-1]["epoch"] if history else None) from None
    except KeyboardInterrupt:  # during the test pass or the checkpoint
        raise Interrupted(epoch, step, history[-1]["epoch"] if history else None) from None
    return history


def _epoch(model, train_loader, test_loader, optimizer, criterion, device, epoch, epochs, scheduler, checkpoint,
           doctor, log, extra, precision, measure, history, step, world) -> int:
    """One epoch of :func:`fit`: train, test, log, append to ``history``, checkpoint; returns the step count."""
    t0 = time.perf_counter()
    if hasattr(train_loader, "set_epoch"):
        train_loader.set_epoch(epoch)
    log(f"EPOCH: {epoch}")
    tr = train_one_epoch(model, train_loader, optimizer, criterion, device, scheduler, doctor, step,
                         desc=f"epoch {epoch}/{epochs}", precision=precision)
    step = tr["steps"]
    te = evaluate(model, test_loader, device, precision)
    entry = {"epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"], "test_loss": te["loss"],
             "test_acc": te["acc"], "lr": tr["lr"], "step": step, "pred_counts": te["pred_counts"],
             "seconds": round(time.perf_counter() - t0, 2), **(measure() if measure else {})}
    log(f"Train: Loss={tr['loss']:.4f} Accuracy={tr['acc']:.2f}% LR={tr['lr']:.3e}")
    log(format_test_line(te))
    if checkpoint and world.main:
        atomic_save({"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict() if scheduler is not None else None,
                     "precision": precision.state_dict(), "epoch": epoch, "history": history + [entry],
                     "health": doctor.report() if doctor else [],
                     "extra": (extra() if callable(extra) else extra) or {}}, checkpoint)
    previous = history[-1]["test_loss"] if history else None
    history.append(entry)  # after the checkpoint: the history holds exactly the epochs on disk
    if doctor:
        doctor.check_test_loss(step, te["loss"], previous)
    if doctor and epoch == epochs:  # early epochs may crowd (a fresh S9 does); the end may not
        doctor.check_predictions(step, te["pred_counts"])
    return step
