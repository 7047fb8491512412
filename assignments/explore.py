"""A trained run, reopened to ask about one image: top-k classes, Grad-CAM on a chosen layer, the run's most
confident mistakes, and the image's attention. :func:`open_run` rebuilds the model from the run's recipe (or a
factory you pass), loads ``checkpoint.pt`` with ``weights_only=True`` and uses the run's own mean/std and test
split; ``assignments.app`` puts a browser page on top.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from utils.checks import returns_log_probs
from utils.data import CLASSES, ImageSplit, channel_stats, load_cifar10
from utils.gradcam import candidate_layers, default_target_layer, gradcam_maps
from utils.metrics import misclassified
from utils.model_attention import SelfAttention, UltimusAttention, model_attention

from .model_source import ModelSourceError, rebuild
from .outdir import CHECKPOINT
from .recipes import recipe as builtin_recipe


class RunFolderError(ValueError):
    """A run folder the explorer cannot open; the message is one line."""


@dataclass
class Explorer:
    model: nn.Module  # eval mode, on the CPU unless asked otherwise
    name: str  # the recipe's name
    mean: tuple[float, ...]
    std: tuple[float, ...]
    test_split: ImageSplit  # the run's test images (its --subset, if it had one)
    log_probs: bool  # the model returns log-probabilities (Grad-CAM targets the score before them)
    layers: list[str]  # Grad-CAM's candidate layers, in forward order
    default_layer: str | None  # the run's own Grad-CAM layer
    epochs_done: int
    test_acc: float | None

    def __post_init__(self):
        self.device = next(self.model.parameters()).device
        self.attention_kind = model_attention(self.model)  # found once: it may take a forward pass
        self._logits = None

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

    # --- the run's test split -------------------------------------------------------------------------
    def test_logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (N, 10) and labels (N,) of the run's test split (cached)."""
        if self._logits is None:
            from utils.train import predict

            x = [(self.test_split.normalized(range(i, min(i + 512, len(self.test_split))), self.mean, self.std),
                  torch.from_numpy(self.test_split.labels[i:i + 512])) for i in range(0, len(self.test_split), 512)]
            self._logits = predict(self.model, x)
        return self._logits

    def mistakes(self, n: int) -> list[tuple[np.ndarray, str]]:
        """The ``n`` most confident mistakes on the test split (the run's gallery): image and
        "actual / predicted p=..." for each."""
        logits, y = self.test_logits()
        p = torch.softmax(logits, 1)
        return [(self.test_split.images[i], f"{CLASSES[int(y[i])]} / {CLASSES[int(p[i].argmax())]} "
                                            f"p={float(p[i].max()):.2f}") for i in misclassified(logits, y, n)]

    def examples(self) -> list[np.ndarray]:
        """One test image per class (each class's first in the split), airplane to truck."""
        labels = self.test_split.labels
        return [self.test_split.images[int(np.flatnonzero(labels == c)[0])] for c in range(len(CLASSES))
                if (labels == c).any()]


def open_run(run_dir: str | Path, model: nn.Module | Callable[[], nn.Module] | None = None,
             data_dir: str | None = None, device: str = "cpu", model_name: str | None = None) -> Explorer:
    """The :class:`Explorer` of the run in ``run_dir``: its model rebuilt (the built-in recipe it names, or
    ``model``: a class, factory or instance of your own; else the factory the run recorded, or ``model_name``,
    ``module:factory``), its checkpoint's weights, its mean/std and test split
    (from the data it trained on; ``data_dir`` points elsewhere). Anything missing or foreign is one line."""
    from utils.checkpoint import load_run_checkpoint

    out = Path(run_dir)
    path = out / CHECKPOINT
    if not out.is_dir():
        raise RunFolderError(f"{out}: no such run folder")
    if not path.is_file():
        raise RunFolderError(f"{out}: no {CHECKPOINT} (a run writes it after its first epoch)")
    try:
        state = load_run_checkpoint(path)
    except RuntimeError as e:
        raise RunFolderError(str(e)) from None
    extra = state["extra"]
    config, recipe = extra.get("config") or {}, extra.get("recipe") or {}
    if not recipe.get("name"):
        raise RunFolderError(f"{path}: not a checkpoint of this repository's runs (no recipe in it)")
    net = _build(model, model_name, config, extra, path)
    try:
        net.load_state_dict(state["model"])
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise RunFolderError(f"{path} does not fit {type(net).__name__}: {first}") from None
    net = net.to(device).eval()
    try:
        data = load_cifar10(data_dir or config.get("data_dir"), download=False)
    except Exception as e:  # DataError: one line already
        raise RunFolderError(f"{out}: the run's data: {e} (pass --data-dir)") from None
    mean, std = extra.get("mean"), extra.get("std")
    if mean is None:  # a checkpoint without them: computed as the run computed them, from its training split
        mean, std = channel_stats(data.train.images)
    subset, seed = config.get("subset"), config.get("seed", 1)
    if not (subset is None or type(subset) is int and subset > 0) or type(seed) is not int:
        raise RunFolderError(f"{path}: its config's subset {subset!r} or seed {seed!r} is not a positive whole number")
    test = data.test.subset(subset, seed)  # the run's own test split
    with torch.random.fork_rng(devices=[]):
        log_probs = returns_log_probs(net)
    h = state["history"]
    return Explorer(net, recipe["name"], tuple(mean), tuple(std), test, log_probs,
                    [layer.name for layer in candidate_layers(net)], default_target_layer(net), len(h),
                    h[-1]["test_acc"] if h else None)


def _build(model, model_name: str | None, config: dict, extra: dict, path: Path) -> nn.Module:
    """The run's model: ``model`` as given (an instance, or a class or factory called with no arguments), a
    built-in recipe's, or what the checkpoint recorded (:mod:`assignments.model_source`; ``model_name``:
    ``--model module:factory``)."""
    if isinstance(model, nn.Module):
        return model
    if model is not None:
        return model()
    if config.get("assignment") and model_name is None:
        try:
            return builtin_recipe(config["assignment"], config.get("variant", "spec")).model()
        except ValueError as e:  # a checkpoint whose config names no built-in recipe
            raise RunFolderError(f"{path}: its config is not one of this repository's runs: {e}") from None
    try:
        return rebuild(extra.get("model_source"), model_name)
    except ModelSourceError as e:
        raise RunFolderError(f"{path}: {e}") from None
