"""A trained run, reopened as an :class:`assignments.explorer.Explorer`: :func:`open_run` rebuilds the model
from the run's recipe (or a factory you pass), loads ``checkpoint.pt`` with ``weights_only=True`` and uses the
run's own mean/std and test split; ``assignments.app`` puts a browser page on top, ``assignments.space`` writes
it out as a Space.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from utils.checkpoint import CHECKPOINT
from utils.checks import returns_log_probs
from utils.data import CLASSES, ImageSplit, channel_stats, load_cifar10
from utils.gradcam import candidate_layers, default_target_layer
from utils.metrics import misclassified

from .config import RunConfig
from .explorer import Explorer
from .model_source import ModelSourceError, rebuild
from .recipes import recipe as builtin_recipe


class RunFolderError(ValueError):
    """A run folder the explorer cannot open; the message is one line."""


class RunExplorer(Explorer):
    """An :class:`Explorer` over a run folder: examples and mistakes come from the run's test split."""

    def __init__(self, *args, test_split: ImageSplit, **kwargs):
        super().__init__(*args, **kwargs)
        self.test_split = test_split  # the run's test images (its --subset, if it had one)
        self._logits = None

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
    subset, seed = config.get("subset"), config.get("seed", RunConfig.seed)
    if not (subset is None or type(subset) is int and subset > 0) or type(seed) is not int:
        raise RunFolderError(f"{path}: its config's subset {subset!r} or seed {seed!r} is not a positive whole number")
    test = data.test.subset(subset, seed)  # the run's own test split
    with torch.random.fork_rng(devices=[]):
        log_probs = returns_log_probs(net)
    h = state["history"]
    return RunExplorer(net, recipe["name"], tuple(mean), tuple(std), log_probs,
                       [layer.name for layer in candidate_layers(net)], default_target_layer(net), len(h),
                       h[-1]["test_acc"] if h else None, test_split=test)


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
