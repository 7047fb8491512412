"""Grad-CAM on misclassified images through the grad-cam package (the library the course uses).

S7: "use GradCAM on a layer that is not smaller than about 5px": by default the last
convolution whose output is at least 8x8. Any layer can be named (``"layer3"``, ``"convs.2.0"``).
"""
from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from .data import CLASSES


def conv_output_sizes(model: nn.Module, input_size=(1, 3, 32, 32)) -> list[tuple[str, int, int]]:
    """(name, H, W) of every Conv2d output in forward order, from one dummy pass.

    The model's mode, device and BatchNorm statistics are left as they were (eval + no_grad).
    """
    device = next(model.parameters()).device
    sizes, hooks = [], []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(lambda _m, _i, out, name=name: sizes.append((name, *out.shape[-2:]))))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(input_size, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return sizes


def default_target_layer(model: nn.Module, min_size: int = 8, input_size=(1, 3, 32, 32)) -> str:
    """Name of the last convolution whose output is at least ``min_size`` x ``min_size``."""
    big = [name for name, h, w in conv_output_sizes(model, input_size) if min(h, w) >= min_size]
    if not big:
        raise ValueError(f"{type(model).__name__} has no convolution with an output of at least {min_size}x{min_size}")
    return big[-1]


def gradcam_maps(model: nn.Module, images: torch.Tensor, classes: list[int], layer: str | None = None) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1] of ``images`` (normalised, N x 3 x H x W) for one class each.

    grad-cam switches the model to eval mode and leaves it there: the previous mode is restored.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = layer or default_target_layer(model)
    target = model.get_submodule(layer)
    device = next(model.parameters()).device
    was_training = model.training
    try:
        with GradCAM(model=model, target_layers=[target]) as cam:
            maps = cam(input_tensor=images.to(device), targets=[ClassifierOutputTarget(int(c)) for c in classes])
    finally:
        model.train(was_training)
    return np.nan_to_num(maps.astype(np.float32)).clip(0, 1)


def gradcam_figure(images: np.ndarray, predicted_maps: np.ndarray, actual_maps: np.ndarray, actual: list[int],
                   predicted: list[int], layer: str, classes=CLASSES) -> Figure:
    """Per image a column: the image, the CAM of the predicted class, the CAM of the actual class."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    n = len(images)
    fig = Figure(figsize=(1.7 * max(n, 1), 5.6), layout="constrained")
    axes = np.array(fig.subplots(3, max(n, 1))).reshape(3, -1)
    for ax in axes.ravel():
        ax.axis("off")
    for j in range(n):
        img = images[j].astype(np.float32)
        axes[0, j].imshow(img)
        axes[0, j].set_title(f"{classes[actual[j]]} / {classes[predicted[j]]}", fontsize=8)
        axes[1, j].imshow(show_cam_on_image(img, predicted_maps[j], use_rgb=True))
        axes[1, j].set_title(f"CAM: {classes[predicted[j]]}", fontsize=8)
        axes[2, j].imshow(show_cam_on_image(img, actual_maps[j], use_rgb=True))
        axes[2, j].set_title(f"CAM: {classes[actual[j]]}", fontsize=8)
    fig.suptitle(f"Grad-CAM at {layer}: actual / predicted; predicted class's map, then the actual class's")
    return fig
