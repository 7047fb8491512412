"""Grad-CAM on misclassified images through the grad-cam package (the library the course uses).

S7: "use GradCAM on a layer that is not smaller than about 5px": by default the output of the last
block whose output is at least 8x8. Any layer can be named (``"layer3"``, ``"convs.2.0"``).
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from .checks import eval_outputs, logits_view
from .data import CLASSES


def block_output_sizes(model: nn.Module, input_size=(1, 3, 32, 32)) -> list[tuple[str, int, int]]:
    """(name, H, W) of every module with a 4-D output, in the order the outputs are produced (a block
    after the layers inside it), from one dummy pass; mode, device and BatchNorm statistics are left alone."""
    device = next(model.parameters()).device
    sizes, hooks = [], []
    for name, m in model.named_modules():
        if name:
            hooks.append(m.register_forward_hook(
                lambda _m, _i, out, name=name: sizes.append((name, *out.shape[-2:]))
                if isinstance(out, torch.Tensor) and out.dim() == 4 else None))
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
    """The output of the last block (a module with sub-modules) whose output is at least ``min_size`` x
    ``min_size``: ResNet18's ``layer3`` (after its skip connections), not a convolution inside it. A model
    built of single layers only (one ``nn.Sequential``) gets its last such layer."""
    sizes = [(name, h, w) for name, h, w in block_output_sizes(model, input_size) if min(h, w) >= min_size]
    blocks = [name for name, _, _ in sizes if any(True for _ in model.get_submodule(name).children())]
    names = blocks or [name for name, _, _ in sizes]
    if not names:
        raise ValueError(f"{type(model).__name__} has no layer with an output of at least {min_size}x{min_size}")
    return names[-1]


def cam_target(model: nn.Module, log_probs: bool) -> str:
    """What Grad-CAM targets for ``model``: its class score, or for a model returning log-probabilities the
    class score before its ``log_softmax`` (bypassed) or, when none can be bypassed, the log-probability."""
    if not log_probs:
        return "class score (logit)"
    with logits_view() as mode:
        eval_outputs(model, torch.zeros(1, 3, 32, 32, device=next(model.parameters()).device))
    return ("class score before the model's log_softmax" if mode.skipped else
            "log-probability (the model's log_softmax could not be bypassed)")


def gradcam_maps(model: nn.Module, images: torch.Tensor, classes: list[int], layer: str | None = None,
                 log_probs: bool = False) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1] of ``images`` (normalised, N x 3 x H x W) for one class each.

    With ``log_probs`` (a model ending in ``log_softmax``) the target is the class score before the
    softmax (:func:`utils.checks.logits_view`), so the maps equal those of the same net returning logits.
    grad-cam switches the model to eval mode and leaves it there: the previous mode is restored.
    """
    return gradcam_maps_and_weights(model, images, classes, layer, log_probs)[0]


def gradcam_maps_and_weights(model: nn.Module, images: torch.Tensor, classes: list[int], layer: str | None = None,
                             log_probs: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """:func:`gradcam_maps` and Grad-CAM's channel weights (N, K): the target's gradient at ``layer``
    averaged over H, W (grad-cam keeps the last gradients it recorded; the weights are their mean)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = layer or default_target_layer(model)
    target = model.get_submodule(layer)
    device = next(model.parameters()).device
    was_training = model.training
    scores = logits_view() if log_probs else contextlib.nullcontext()
    try:
        with GradCAM(model=model, target_layers=[target]) as cam, scores:
            maps = cam(input_tensor=images.to(device), targets=[ClassifierOutputTarget(int(c)) for c in classes])
            grads = cam.activations_and_grads.gradients[0]  # (N, K, h, w)
            weights = grads.float().mean((2, 3)).cpu().numpy()  # (N, K), as GradCAM.get_cam_weights
    finally:
        model.train(was_training)
    return np.nan_to_num(maps.astype(np.float32)).clip(0, 1), weights


def weight_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine (N,) between two classes' Grad-CAM weights per image. Near 1, the two maps are the same
    map (each is ReLU of the same channel sum, scaled); near -1, one is where the other is zero."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(norms, 1e-30)


PARALLEL = 0.99  # weight cosine from which two classes' maps are called the same map


def gradcam_figure(images: np.ndarray, predicted_maps: np.ndarray, actual_maps: np.ndarray, actual: list[int],
                   predicted: list[int], layer: str, classes=CLASSES, target: str = "class score (logit)",
                   cosines: np.ndarray | None = None) -> Figure:
    """Per image a column: the image, the CAM of the predicted class, the CAM of the actual class.
    A map that is zero everywhere (nothing in the layer raises the target) says so on its panel; with
    ``cosines`` (:func:`weight_cosines`), an actual-class map whose weights are parallel to the predicted
    class's (the same map) says so too, and the title counts those columns."""
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
        for row, maps, c in ((1, predicted_maps, predicted[j]), (2, actual_maps, actual[j])):
            axes[row, j].imshow(show_cam_on_image(img, maps[j], use_rgb=True))
            axes[row, j].set_title(f"CAM: {classes[c]}", fontsize=8)
            if not maps[j].any():
                axes[row, j].text(16, 16, "all-zero\nmap", ha="center", va="center", fontsize=8, color="white",
                                  bbox={"facecolor": "black", "alpha": 0.6, "lw": 0})
        if cosines is not None and cosines[j] >= PARALLEL:
            axes[2, j].text(16, 28, f"same map\ncos {cosines[j]:.3f}", ha="center", va="bottom", fontsize=7,
                            color="white", bbox={"facecolor": "black", "alpha": 0.6, "lw": 0})
    title = f"Grad-CAM at {layer} of the {target}: actual / predicted; predicted class's map, then the actual class's"
    if cosines is not None and (same := int((cosines[:n] >= PARALLEL).sum())):
        title += (f"\n{same} of {n} columns: the two classes' gradients at {layer} are parallel (cosine >= {PARALLEL}),"
                  " so their maps are the same map")
    fig.suptitle(title, fontsize=9)
    return fig
