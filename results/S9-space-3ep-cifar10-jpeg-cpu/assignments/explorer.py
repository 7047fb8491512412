"""One trained model, asked about one image at a time: top-k classes, Grad-CAM on a chosen layer, the image's
attention, and the run's most confident mistakes. Inference only: :func:`assignments.explore.open_run` makes one
from a run folder, a Space's ``app.py`` from its ``model.safetensors`` and ``config.json``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from utils.gradcam import gradcam_maps
from utils.images import CLASSES, ImageSplit
from utils.model_attention import SelfAttention, UltimusAttention, model_attention


@dataclass
class Explorer:
    model: nn.Module  # eval mode, on the CPU unless asked otherwise
    name: str  # the recipe's name
    mean: tuple[float, ...]
    std: tuple[float, ...]
    log_probs: bool  # the model returns log-probabilities (Grad-CAM targets the score before them)
    layers: list[str]  # Grad-CAM's candidate layers, in forward order
    default_layer: str | None  # the run's own Grad-CAM layer
    epochs_done: int
    test_acc: float | None
    example_images: list[np.ndarray] = field(default_factory=list)  # one 32x32 RGB uint8 image per class
    known_mistakes: list[tuple[np.ndarray, str]] = field(default_factory=list)  # (image, "actual / predicted p=")

    def __post_init__(self):
        self.device = next(self.model.parameters()).device
        self.attention_kind = model_attention(self.model)  # found once: it may take a forward pass

    # --- one image ----------------------------------------------------------------------------------
    def prepare(self, image) -> tuple[np.ndarray, str]:
        """Any image (PIL, or an array H x W or H x W x 1|3|4 of uint8, of 16-bit integers, or of floats in
        [0, 1]) as 32x32 RGB uint8, and a note saying what was changed. 16-bit and float images are scaled to
        8 bits (Pillow's own conversion would clip a 16-bit photo to white); anything else is a ValueError."""
        from PIL import Image

        notes = []
        if isinstance(image, Image.Image) and image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            image = np.asarray(image)  # 16/32-bit integers or floats: scaled below
        if not isinstance(image, Image.Image):
            arr = np.asarray(image)
            if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)) or arr.size == 0:
                raise ValueError(f"an image is H x W or H x W x 1, 3 or 4 values; got shape {arr.shape}")
            arr = arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr
            if arr.dtype.kind == "f":
                if not np.isfinite(arr).all():
                    raise ValueError("the image has values that are not finite (NaN or inf)")
                top = 1.0 if arr.max() <= 1.0 else 255.0
                arr = (arr.clip(0, top) * (255.0 / top)).round().astype(np.uint8)
                notes.append(f"scaled from floats in [0, {top:g}] to 8 bits")
            elif arr.dtype.kind in "iu" and arr.dtype != np.uint8:
                bits = 16 if arr.max(initial=0) <= 65535 else 32
                arr = (arr.clip(0, 2 ** bits - 1) >> (bits - 8)).astype(np.uint8) if arr.max(initial=0) > 255 \
                    else arr.clip(0, 255).astype(np.uint8)
                notes.append(f"scaled from {bits}-bit values to 8 bits")
            elif arr.dtype != np.uint8:
                raise ValueError(f"an image has integer or float values; got {arr.dtype}")
            pil = Image.fromarray(arr)
        else:
            pil = image
        if pil.mode != "RGB":
            notes.append(f"converted from {pil.mode} to RGB")
            pil = pil.convert("RGB")
        if pil.size != (32, 32):
            notes.append(f"resized from {pil.size[0]}x{pil.size[1]} to 32x32, the size the model was trained on")
            pil = pil.resize((32, 32), Image.BILINEAR)
        return np.asarray(pil, dtype=np.uint8), "; ".join(notes)

    def tensor(self, image32: np.ndarray) -> torch.Tensor:
        """A 32x32 RGB uint8 image as the test loaders give it: (1, 3, 32, 32), ``(x / 255 - mean) / std``."""
        return ImageSplit(image32[None], np.zeros(1, dtype=np.int64)).normalized([0], self.mean, self.std)

    @torch.no_grad()
    def probabilities(self, image32: np.ndarray) -> np.ndarray:
        """Class probabilities (10,) of one prepared image (softmax of the logits; for a model returning
        log-probabilities softmax gives the same probabilities)."""
        out = self.model(self.tensor(image32).to(self.device)).float()
        return torch.softmax(out, 1)[0].cpu().numpy()

    def top_k(self, image32: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The ``k`` most probable classes with their probabilities, most probable first."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(CLASSES):
            raise ValueError(f"k (how many top classes) must be 1 to {len(CLASSES)}; got {k!r}")
        p = self.probabilities(image32)
        order = np.argsort(-p, kind="stable")[:k]
        return [(CLASSES[i], float(p[i])) for i in order]

    def gradcam(self, image32: np.ndarray, target: int | str, layer: str | None = None) -> np.ndarray:
        """Grad-CAM map (32, 32) in [0, 1] of class ``target`` (an index or a class name) at ``layer`` (default:
        the run's; one of ``layers``)."""
        if isinstance(target, str):
            if target not in CLASSES:
                raise ValueError(f"Grad-CAM class must be one of {', '.join(CLASSES)}; got {target!r}")
            target = CLASSES.index(target)
        if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or not 0 <= target < len(CLASSES):
            raise ValueError(f"Grad-CAM class must be 0 to {len(CLASSES) - 1} or a class name; got {target!r}")
        if layer is not None and layer not in self.layers:
            raise ValueError(f"Grad-CAM layer must be one of {', '.join(self.layers)}; got {layer!r}")
        return gradcam_maps(self.model, self.tensor(image32), [target], layer or self.default_layer,
                            self.log_probs)[0]

    def attention(self, image32: np.ndarray):
        """The image's attention as a figure: S9's four 8x8 matrices, or a ViT's class-token attention on the
        patch grid per layer (mean over heads); None for a model without attention."""
        from .explore_plots import class_token_figure, ultimus_figure

        kind = self.attention_kind
        x = self.tensor(image32)
        if isinstance(kind, UltimusAttention):
            stats = kind.stats([(x, torch.zeros(1, dtype=torch.long))], x, len(CLASSES))
            return ultimus_figure(stats.blocks, stats.mean_am.numpy())
        if isinstance(kind, SelfAttention):
            stats = kind.stats(None, x, len(CLASSES))
            return class_token_figure(stats.layers, stats.cls.mean(1).numpy())
        return None

    # --- what the run saw ---------------------------------------------------------------------------
    def mistakes(self, n: int) -> list[tuple[np.ndarray, str]]:
        """The ``n`` most confident mistakes on the run's test split, most confident first: image and
        "actual / predicted p=..." for each."""
        return self.known_mistakes[:n]

    def examples(self) -> list[np.ndarray]:
        """One test image per class, airplane to truck."""
        return self.example_images
