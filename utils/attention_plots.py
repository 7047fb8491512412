"""Figures of :mod:`utils.attention` (Ultimus blocks): the mean attention matrices per block and class, and the
attention entropy by epoch beside each block output's spectrum. Built without pyplot, like ``utils.plots``."""
from __future__ import annotations

import math

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .attention import AttentionStats
from .data import CLASSES


def attention_maps_figure(stats: AttentionStats, classes=CLASSES) -> Figure:
    """Blocks x (all images + one column per actual class) heatmaps of the mean AM, one colour scale."""
    mats = np.concatenate([stats.mean_am.numpy()[:, None], stats.class_am.numpy()], axis=1)  # (blocks, 1 + C, d, d)
    rows, cols = mats.shape[:2]
    fig = Figure(figsize=(1.25 * cols + 1, 1.35 * rows + 0.9), layout="constrained")
    axes = np.array(fig.subplots(rows, cols)).reshape(rows, cols)
    vmin, vmax = np.nanmin(mats), np.nanmax(mats)
    for i, j in np.ndindex(rows, cols):
        ax = axes[i, j]
        im = ax.imshow(mats[i, j], cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_xticks([])
        ax.set_yticks([])
        if i == 0:
            ax.set_title("all images" if j == 0 else classes[j - 1], fontsize=8)
        if j == 0:
            ax.set_ylabel(stats.blocks[i], fontsize=8)
    d = mats.shape[-1]
    row_sum = float(stats.mean_am.sum(-1).mean())  # the variant's: 1/sqrt(d) (spec: softmax, then / sqrt d) or 1
    fig.colorbar(im, ax=axes, shrink=0.8, label="AM value")
    fig.suptitle(f"Mean attention matrix AM ({d}x{d}: row = query feature, column = key feature) per block, over "
                 f"{stats.images} test images and per actual class; rows sum to {row_sum:.3f}: a uniform row is "
                 f"{row_sum / d:.4f} each, a one-hot row {row_sum:.3f} in one place",
                 fontsize=9)
    return fig


def attention_entropy_figure(history: list[dict], stats: AttentionStats, start: list[float] | None = None) -> Figure:
    """Left: each block's mean AM row entropy by epoch (``history[i]["attention_entropy"]``; ``start``, the
    untrained weights', at epoch 0), ln d dashed. Right: each block output's variance share per principal
    direction over the test set, effective rank in the legend."""
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    ax_h, ax_s = fig.subplots(1, 2)
    d = stats.mean_am.shape[-1]
    measured = ([{"epoch": 0, "attention_entropy": start}] if start else []) + \
        [h for h in history if h.get("attention_entropy")]
    for b, name in enumerate(stats.blocks):
        ax_h.plot([h["epoch"] for h in measured], [h["attention_entropy"][b] for h in measured], "o-", ms=3, label=name)
    ax_h.axhline(math.log(d), color="grey", ls="--", label=f"uniform (ln {d})")
    if not measured:
        ax_h.text(0.5, 0.3, "not measured during training", transform=ax_h.transAxes, ha="center")
    ax_h.set(xlabel="epoch", ylabel="mean row entropy (nats)", title="Attention entropy, fixed test batch spread over the classes")
    ax_h.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_h.legend(fontsize=7)
    ax_h.grid(alpha=0.3)
    floor = 1e-9  # shares below it are rounding: Z = V * AM has at most d directions
    for name, shares, rank in [("GAP features (input of the first block)", stats.spectrum_in, stats.rank_in[0])] + \
            list(zip(stats.blocks, stats.spectra_out, stats.rank_out)):
        kept = [s for s in shares if s > floor]
        style = {"color": "grey", "ls": "--"} if name.startswith("GAP") else {"ls": "-"}
        ax_s.plot(range(1, len(kept) + 1), kept, marker=".", label=f"{name}: effective rank {rank:.2f}", **style)
    ax_s.set_yscale("log")
    ax_s.set(xlabel="principal direction", ylabel="share of variance", ylim=(floor, 1.5),
             title=f"Block outputs over {stats.images} test images")
    ax_s.legend(fontsize=7)
    ax_s.grid(alpha=0.3)
    return fig


def vit_attention_figure(stats) -> Figure:
    """Layers x heads heatmaps of the class token's mean attention on the patch grid
    (:class:`utils.vit_attention.ViTAttention`), one colour scale per layer."""
    cls = stats.cls.numpy()  # (layers, heads, g, g)
    rows, cols = cls.shape[:2]
    fig = Figure(figsize=(1.3 * cols + 1.2, 1.3 * rows + 0.9), layout="constrained")
    axes = np.array(fig.subplots(rows, cols)).reshape(rows, cols)
    for i, j in np.ndindex(rows, cols):
        ax = axes[i, j]
        im = ax.imshow(cls[i, j], cmap="viridis", vmin=0, vmax=cls[i].max())
        ax.set_xticks([])
        ax.set_yticks([])
        if i == 0:
            ax.set_title(f"head {j}", fontsize=8)
        if j == 0:
            ax.set_ylabel(f"{stats.layers[i]}\nH {stats.entropy[i]:.2f}", fontsize=7)
        if j == cols - 1:
            fig.colorbar(im, ax=ax, shrink=0.8)
    g = cls.shape[-1]
    fig.suptitle(f"Class token's attention on the {g}x{g} patch grid per layer and head, mean over {stats.images} "
                 f"test images (uniform: {1 / stats.tokens:.4f} per token; H: row entropy, ln {stats.tokens} = "
                 f"{math.log(stats.tokens):.2f} uniform)", fontsize=9)
    return fig


def rollout_figure(images: np.ndarray, maps: np.ndarray, actual: list[int], predicted: list[int],
                   classes=CLASSES) -> Figure:
    """Per misclassified image: the image, and the class token's attention rollout (g x g, upsampled) over it."""
    n = len(images)
    fig = Figure(figsize=(1.7 * max(n, 1), 3.9), layout="constrained")
    axes = np.array(fig.subplots(2, max(n, 1))).reshape(2, -1)
    for ax in axes.ravel():
        ax.axis("off")
    size = images.shape[1]
    for j in range(n):
        axes[0, j].imshow(images[j])
        axes[0, j].set_title(f"{classes[actual[j]]} / {classes[predicted[j]]}", fontsize=8)
        axes[1, j].imshow(images[j])
        axes[1, j].imshow(maps[j], cmap="jet", alpha=0.5, extent=(-0.5, size - 0.5, size - 0.5, -0.5),
                          interpolation="bilinear")
    fig.suptitle("Attention rollout of the class token (head mean + identity, multiplied through the layers) on the "
                 "misclassified images: actual / predicted", fontsize=9)
    return fig


def layer_entropy_figure(history: list[dict], layers: list[str], tokens: int,
                         start: list[float] | None = None) -> Figure:
    """Each attention layer's mean row entropy by epoch (``history[i]["attention_entropy"]``, ``start`` at 0)."""
    fig = Figure(figsize=(6.5, 3.8), layout="constrained")
    ax = fig.subplots()
    measured = ([{"epoch": 0, "attention_entropy": start}] if start else []) + \
        [h for h in history if h.get("attention_entropy")]
    colours = colormaps["viridis"](np.linspace(0, 0.9, len(layers)))  # one colour per layer, in depth order
    for i, name in enumerate(layers):
        ax.plot([h["epoch"] for h in measured], [h["attention_entropy"][i] for h in measured], "o-", ms=3,
                color=colours[i], label=name)
    ax.axhline(math.log(tokens), color="grey", ls="--", label=f"uniform (ln {tokens})")
    ax.set(xlabel="epoch", ylabel="mean row entropy (nats)",
           title="Attention entropy per layer, fixed test batch spread over the classes")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig
