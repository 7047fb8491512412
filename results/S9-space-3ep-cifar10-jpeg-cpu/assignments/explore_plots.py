"""The explorer's pictures of one image: a Grad-CAM overlay at display size, and its attention."""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure


def overlay(image32: np.ndarray, cam: np.ndarray, opacity: float, scale: int = 8) -> np.ndarray:
    """``image32`` (32, 32, 3) uint8 with ``cam`` (32, 32) in [0, 1] laid over it at ``opacity`` (0: the image,
    1: the map), both enlarged ``scale`` x by repeating pixels, so the map stays aligned with the image."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    if not 0 <= float(opacity) <= 1:
        raise ValueError(f"opacity must be 0 to 1; got {opacity!r}")
    img = image32.astype(np.float32) / 255
    mixed = show_cam_on_image(img, cam, use_rgb=True, image_weight=1 - float(opacity))  # (32, 32, 3) uint8
    return mixed.repeat(scale, 0).repeat(scale, 1)


def enlarge(image32: np.ndarray, scale: int = 8) -> np.ndarray:
    return image32.repeat(scale, 0).repeat(scale, 1)


def ultimus_figure(blocks: list[str], matrices: np.ndarray) -> Figure:
    """S9: the image's attention matrix (d, d) in each Ultimus block, one colour scale."""
    fig = Figure(figsize=(2.4 * len(blocks) + 0.8, 3.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(blocks)))
    for ax, name, m in zip(axes, blocks, matrices):
        im = ax.imshow(m, vmin=0, vmax=float(matrices.max()), cmap="viridis")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("key feature", fontsize=8)
        ax.set_ylabel("query feature", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.colorbar(im, ax=list(axes), shrink=0.8)
    fig.suptitle("attention matrix per block: query feature x key feature, rows sum to 1", fontsize=9)
    return fig


def class_token_figure(layers: list[str], grids: np.ndarray) -> Figure:
    """A ViT: the class token's attention on the patch grid (g, g) per layer, mean over heads."""
    n = len(layers)
    cols = min(n, 6)
    rows = -(-n // cols)
    fig = Figure(figsize=(1.7 * cols, 1.9 * rows + 0.4), layout="constrained")
    axes = np.array(fig.subplots(rows, cols)).reshape(-1)
    for ax in axes:
        ax.axis("off")
    for ax, name, g in zip(axes, layers, grids):
        ax.imshow(g, cmap="viridis")
        ax.set_title(name.replace(".attn", ""), fontsize=8)
    fig.suptitle("the class token's attention on the patch grid per layer, mean over heads", fontsize=9)
    return fig
