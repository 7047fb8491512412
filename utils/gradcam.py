"""Grad-CAM on misclassified images through the grad-cam package (the library the course uses).

The course asks for "GradCAM on a layer that is not smaller than about 5px". The default layer is a real feature map or a
token map, never an arbitrary 4-D tensor:
- conv nets: the output of the last block (a module with sub-modules) whose output is a feature map (the
  channels of the convolution before it) of at least 8x8 (ResNet18's ``layer3``);
- token models (timm's and torchvision's ViTs): the first LayerNorm of the last transformer block (timm
  ``blocks.11.norm1``, torchvision ``encoder.layers.encoder_layer_11.ln_1``), whose (B, 1 + N, D) output is
  folded into its sqrt(N) x sqrt(N) patch grid with the class token dropped, as pytorch-grad-cam's
  documentation does for ViTs (the attention and second norm give zero gradients there);
- whichever of the two the forward pass reaches later; a model with neither (an MLP) has no default.
Any layer can be named (``"layer3"``, ``"convs.2.0"``, ``"blocks.11.norm1"``).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from .checks import eval_outputs, logits_view
from .images import CLASSES



@dataclass(frozen=True)
class CamLayer:
    """A layer Grad-CAM can read: its name, ``kind`` ("feature map" (B, C, H, W) or "tokens" (B, T, D)), its
    grid (H, W), and for tokens whether the first token is a class token (dropped when folding)."""

    name: str
    kind: str
    grid: tuple[int, int]
    class_token: bool = False

    def reshape_transform(self):
        """grad-cam's ``reshape_transform``: None for a feature map; for tokens (B, T, D) -> (B, D, g, g)."""
        if self.kind != "tokens":
            return None
        h, w, skip = *self.grid, int(self.class_token)

        def fold(t: torch.Tensor) -> torch.Tensor:
            return t[:, skip:].reshape(t.shape[0], h, w, t.shape[-1]).permute(0, 3, 1, 2)  # (B, D, h, w)
        return fold

    def describe(self) -> str:
        return f"{self.name} ({self.grid[0]}x{self.grid[1]} {'token grid' if self.kind == 'tokens' else 'map'})"


def _square(n: int) -> int | None:
    g = math.isqrt(n)
    return g if g >= 2 and g * g == n else None


def layer_outputs(model: nn.Module, input_size=(1, 3, 32, 32)) -> list[tuple[str, nn.Module, tuple]]:
    """(name, module, output shape) of every module whose output is one tensor, in the order the outputs are
    produced (a block after the layers inside it), from one dummy pass; mode, device and BatchNorm statistics
    are left alone."""
    device = next(model.parameters()).device
    seen, hooks = [], []
    for name, m in model.named_modules():
        if name:
            hooks.append(m.register_forward_hook(
                lambda m, _i, out, name=name: seen.append((name, m, tuple(out.shape)))
                if isinstance(out, torch.Tensor) else None))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(input_size, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    first = {}
    for name, m, shape in seen:  # a module called twice: its first output
        first.setdefault(name, (name, m, shape))
    return list(first.values())


def block_output_sizes(model: nn.Module, input_size=(1, 3, 32, 32)) -> list[tuple[str, int, int]]:
    """(name, H, W) of every module with a 4-D output, in the order the outputs are produced."""
    return [(name, *shape[-2:]) for name, _, shape in layer_outputs(model, input_size) if len(shape) == 4]


def _as_cam_layer(name: str, module: nn.Module, shape: tuple) -> CamLayer | None:
    if len(shape) == 4:
        return CamLayer(name, "feature map", (shape[2], shape[3]))
    if len(shape) == 3 and isinstance(module, nn.LayerNorm):
        if g := _square(shape[1] - 1):
            return CamLayer(name, "tokens", (g, g), class_token=True)
        if g := _square(shape[1]):
            return CamLayer(name, "tokens", (g, g))
    return None


def candidate_layers(model: nn.Module, min_size: int = 8, input_size=(1, 3, 32, 32)) -> list[CamLayer]:
    """Every layer Grad-CAM can read, in forward order: feature maps of at least ``min_size`` x ``min_size``
    and the token outputs of LayerNorms whose tokens fold into a square grid. A 4-D output is a feature map when
    it has the channels of a convolution (or BatchNorm2d) before it: a block that gates a feature map (CBAM's
    1-channel spatial attention inside it) is one, a ViT's (B, heads, T, head dim) tensors inside its attention
    are not."""
    layers, channels = [], set()
    for name, module, shape in layer_outputs(model, input_size):
        if isinstance(module, nn.Conv2d):
            channels.add(module.out_channels)
        elif isinstance(module, nn.BatchNorm2d):
            channels.add(module.num_features)
        layer = _as_cam_layer(name, module, shape)
        if layer is None or (layer.kind == "feature map" and (shape[1] not in channels or min(layer.grid) < min_size)):
            continue
        layers.append(layer)
    return layers


def default_layer(model: nn.Module, min_size: int = 8, input_size=(1, 3, 32, 32)) -> CamLayer | None:
    """The layer the run's Grad-CAM uses (module docstring), or None when the model has no feature map of at
    least ``min_size`` x ``min_size`` and no token grid."""
    layers = candidate_layers(model, min_size, input_size)
    order = {layer.name: i for i, layer in enumerate(layers)}
    maps = [x for x in layers if x.kind == "feature map"]
    blocks = [x for x in maps if any(True for _ in model.get_submodule(x.name).children())]
    conv = (blocks or maps or [None])[-1]
    tokens = [x for x in layers if x.kind == "tokens"]
    token = None
    if tokens:  # the first norm of the last block (the parent holding two or more token norms)
        parents = [x.name.rpartition(".")[0] for x in tokens]
        last_block = next((p for p in reversed(parents) if parents.count(p) >= 2), None)
        token = next((x for x in tokens if x.name.rpartition(".")[0] == last_block), tokens[-1])
    found = [x for x in (conv, token) if x is not None]
    return max(found, key=lambda x: order[x.name]) if found else None


def default_target_layer(model: nn.Module, min_size: int = 8, input_size=(1, 3, 32, 32)) -> str | None:
    """The name of :func:`default_layer` (None when the model has none)."""
    layer = default_layer(model, min_size, input_size)
    return layer.name if layer else None


def cam_layer(model: nn.Module, name: str, input_size=(1, 3, 32, 32)) -> CamLayer:
    """The :class:`CamLayer` of the module called ``name``; one line when Grad-CAM cannot read its output."""
    for layer_name, module, shape in layer_outputs(model, input_size):
        if layer_name == name:
            layer = _as_cam_layer(name, module, shape)
            if layer is None:
                raise ValueError(f"Grad-CAM layer {name!r}: its output {shape} is neither a 4-D feature map "
                                 f"(B, C, H, W) nor tokens (B, 1 + N, D) of a LayerNorm with a square grid")
            return layer
    raise ValueError(f"Grad-CAM layer {name!r}: no such module with a tensor output in {type(model).__name__}")


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
    if layer is None:
        raise ValueError(f"{type(model).__name__} has no feature map of at least 8x8 and no token grid for Grad-CAM")
    info = cam_layer(model, layer, (1, *images.shape[1:]))
    target = model.get_submodule(layer)
    device = next(model.parameters()).device
    was_training = model.training
    scores = logits_view() if log_probs else contextlib.nullcontext()
    try:
        with GradCAM(model=model, target_layers=[target], reshape_transform=info.reshape_transform()) as cam, scores:
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
