"""Figures for the assignment page: augmented samples, LR curve, loss/accuracy, class accuracy,
confusion matrix, misclassified gallery.

It draws what ``utils.metrics`` and ``utils.lr`` compute. Every function returns a ``matplotlib.figure.Figure`` built without pyplot, so nothing stays
open in pyplot's registry (no memory growth over many figures, no ``plt.show()``); a notebook
displays the returned figure inline, :func:`save` writes it as a PNG.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .data import CLASSES
from .lr import noisy_ends


def save(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG and return the path; an OSError (a full disk) names the file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None
    return path


def denormalize(x: torch.Tensor, mean, std) -> np.ndarray:
    """Normalised (N, 3, H, W) tensor -> (N, H, W, 3) float RGB in [0, 1] for imshow / grad-cam overlays."""
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x.detach().float().cpu() * s + m).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def _grid(n: int, cols: int, scale: float = 1.6) -> tuple[Figure, np.ndarray]:
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(cols * scale, rows * scale * 1.15), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    return fig, axes


def image_grid(images: np.ndarray, titles: list[str], cols: int = 8, title: str | None = None) -> Figure:
    """Images (N, H, W, 3) in [0, 1] with one short title each."""
    fig, axes = _grid(len(images), min(cols, len(images)) or 1)
    for ax, img, t in zip(axes, images, titles):
        ax.imshow(img)
        ax.set_title(t, fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def augmented_samples(loader, mean, std, n: int = 16, classes=CLASSES) -> Figure:
    """The first ``n`` training images of ``loader`` after augmentation, de-normalised, class over each."""
    x, y = next(iter(loader))
    n = min(n, len(y))
    return image_grid(denormalize(x[:n], mean, std), [classes[int(c)] for c in y[:n]], title="Training images after augmentation")


def lr_figure(search, max_lr: float | None = None) -> Figure:
    """Range-test loss against LR (log axis, the loss up to 1.25x its start) with the suggested LR and the
    loss-minimum LR marked, and the run's ``max_lr`` where it is not the suggestion (a recipe's scale or measured
    value, a quick check's cap)."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    start, end = noisy_ends(len(search.lrs), search.steps or len(search.lrs))
    keep = slice(start, len(search.lrs) - end)
    lrs, losses = search.lrs[keep] or search.lrs, search.losses[keep] or search.losses
    ax.plot(lrs, losses)
    ax.set_xscale("log")
    ax.set_ylim(top=min(max(losses), 1.25 * losses[0]))  # the descent, not the diverged end, fills the axis
    ax.axvline(search.suggested_lr, color="tab:red", ls="--", label=f"suggested (steepest) {search.suggested_lr:.2e}")
    ax.axvline(search.min_loss_lr, color="grey", ls=":", label=f"loss minimum {search.min_loss_lr:.2e}")
    if max_lr and not math.isclose(max_lr, search.suggested_lr, rel_tol=1e-2):
        ax.axvline(max_lr, color="tab:green", label=f"this run's max LR {max_lr:.2e}")
    ax.set(xlabel="learning rate", ylabel="smoothed training loss", title="LR range test")
    ax.legend(fontsize=8)
    return fig


def curves(history: list[dict]) -> Figure:
    """Loss and accuracy by epoch, train and test on the same axes per metric."""
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    ep = [h["epoch"] for h in history]
    for ax, key, label in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy (%)")):
        ax.plot(ep, [h[f"train_{key}"] for h in history], "o-", label="train")
        ax.plot(ep, [h[f"test_{key}"] for h in history], "s-", label="test")
        ax.set(xlabel="epoch", ylabel=label, title=f"{label.split()[0].capitalize()} by epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs only, also for short runs
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def class_accuracy_figure(rows: list[dict]) -> Figure:
    """Bar chart of the ten per-class accuracies."""
    fig = Figure(figsize=(8, 3.5), layout="constrained")
    ax = fig.subplots()
    bars = ax.bar([r["class"] for r in rows], [r["acc"] for r in rows], color="tab:blue")
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set(ylim=(0, 105), ylabel="test accuracy (%)", title="Accuracy per class")
    ax.tick_params(axis="x", rotation=30)
    return fig


def confusion_figure(cm: np.ndarray, classes=CLASSES) -> Figure:
    """Counts in each cell, coloured by the row-normalised share (each actual class sums to 1)."""
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig = Figure(figsize=(7, 6), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i, j in np.ndindex(cm.shape):
        ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7, color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="actual", title="Confusion matrix (colour: share of the actual class)")
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def misclassified_figure(images: np.ndarray, logits: torch.Tensor, targets: torch.Tensor, indices: list[int],
                         classes=CLASSES, cols: int = 5) -> Figure:
    """Gallery of test items ``indices``; ``images`` (k, H, W, 3) are those items, in the same order."""
    probs = torch.softmax(logits.float(), 1)
    titles = [f"{classes[int(targets[i])]} / {classes[int(probs[i].argmax())]}\np={float(probs[i].max()):.2f}" for i in indices]
    if not indices:
        fig = Figure(figsize=(4, 1))
        fig.text(0.5, 0.5, "no misclassified images", ha="center")
        return fig
    return image_grid(images, titles, cols=cols, title="Misclassified: actual / predicted")
