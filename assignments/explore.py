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
        self._logits = None

    # --- one image ----------------------------------------------------------------------------------
    def prepare(self, image) -> tuple[np.ndarray, str]:
        """Any image (array H x W x C or PIL) as 32x32 RGB uint8, and a note saying what was changed."""
        from PIL import Image

        pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
        notes = []
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
        p = self.probabilities(image32)
        order = np.argsort(-p, kind="stable")[:k]
        return [(CLASSES[i], float(p[i])) for i in order]

    def gradcam(self, image32: np.ndarray, target: int, layer: str | None = None) -> np.ndarray:
        """Grad-CAM map (32, 32) in [0, 1] of class ``target`` at ``layer`` (default: the run's)."""
        return gradcam_maps(self.model, self.tensor(image32), [target], layer or self.default_layer,
                            self.log_probs)[0]

    def attention(self, image32: np.ndarray):
        """The image's attention as a figure: S9's four 8x8 matrices, or a ViT's class-token attention on the
        patch grid per layer (mean over heads); None for a model without attention."""
        from .explore_plots import class_token_figure, ultimus_figure

        kind = model_attention(self.model)
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
    test = data.test.subset(config.get("subset"), config.get("seed", 1))  # the run's own test split
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
        return builtin_recipe(config["assignment"], config.get("variant", "spec")).model()
    try:
        return rebuild(extra.get("model_source"), model_name)
    except ModelSourceError as e:
        raise RunFolderError(f"{path}: {e}") from None
