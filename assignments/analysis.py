"""The figures and tables of a trained model over the test split: curves, accuracy per class, confusion, the most
confident mistakes, Grad-CAM and (for a model with attention) its attention maps and entropy.

An :class:`Analysis` holds the model, the test split with its mean/std, the run's result (where tables, checks and
figure paths are recorded) and a ``save`` function for the PNGs; predictions are computed once per trained state.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from utils import plots
from utils.data import CLASSES, ImageSplit
from utils.metrics import class_accuracy, class_accuracy_table, confusion, misclassified
from utils.model_attention import LOOKED_FOR, model_attention
from utils.precision import Precision
from utils.report import RunResult
from utils.train import predict

PROBE_IMAGES = 256  # the attention measurements (entropy per epoch, ViT maps): test images spread over the classes


class Analysis:
    def __init__(self, model: nn.Module, test_split: ImageSplit, test_loader, mean, std, precision: Precision,
                 result: RunResult, log: Callable[[str], None], save: Callable[[str, object], object],
                 log_probs: bool = False, gallery: int = 10):
        self.model, self.test_split, self.test_loader = model, test_split, test_loader
        self.gallery = gallery  # images in the mistakes, Grad-CAM and rollout figures unless a call says
        self.mean, self.std, self.precision = mean, std, precision
        self.result, self.log, self.save, self.log_probs = result, log, save, log_probs
        self.attention_kind = model_attention(model)  # None for a model without attention
        self._predictions = None
        self._attention = None  # the attention statistics, once measured

    def trained(self) -> None:
        """The weights changed: predictions and attention are computed again when next asked for."""
        self._predictions, self._attention = None, None

    def probe(self) -> torch.Tensor:
        """The fixed test batch of the attention measurements: PROBE_IMAGES spread evenly over the classes."""
        return self.test_split.normalized(self.test_split.spread(PROBE_IMAGES), self.mean, self.std)

    def predict(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (N, C) and targets (N,) over the whole test split (cached)."""
        if self._predictions is None:
            self._predictions = predict(self.model, self.test_loader, self.precision)
        return self._predictions

    def _mistakes(self, n: int):
        """The ``n`` most confident mistakes: indices, normalised images (n, 3, H, W), predicted and actual classes."""
        logits, y = self.predict()
        idx = misclassified(logits, y, n)
        x = self.test_split.normalized(idx, self.mean, self.std) if idx else None
        return idx, x, [int(logits[i].argmax()) for i in idx], [int(y[i]) for i in idx]

    def draw_all(self) -> None:
        """Every figure of the trained model, in the notebooks' order: curves, accuracy per class, confusion, the
        mistakes, Grad-CAM and, for a model with attention, its maps and entropy."""
        for figure in (self.curves, self.class_accuracy, self.confusion, self.misclassified, self.gradcam):
            figure()
        if self.attention_kind:
            self.attention()
            self.attention_entropy()

    def curves(self):
        if not self.result.history:
            raise ValueError("curves: no epoch trained yet; call train() first")
        return self.save("curves", plots.curves(self.result.history))

    def class_accuracy(self):
        """Logs the table over the whole test split; returns the bar chart."""
        logits, y = self.predict()
        rows = class_accuracy(logits.argmax(1), y)
        self.result.tables["class_accuracy"] = class_accuracy_table(rows)
        self.log(self.result.tables["class_accuracy"])
        return self.save("class_accuracy", plots.class_accuracy_figure(rows))

    def confusion(self):
        logits, y = self.predict()
        return self.save("confusion", plots.confusion_figure(confusion(logits.argmax(1), y)))

    def misclassified(self, n: int | None = None):
        """The ``n`` (default: the gallery size) most confident mistakes on the test split."""
        logits, y = self.predict()
        idx, x, _, _ = self._mistakes(n or self.gallery)
        images = plots.denormalize(x, self.mean, self.std) if idx else None
        return self.save("misclassified", plots.misclassified_figure(images, logits, y, idx))

    def gradcam(self, n: int | None = None, layer: str | None = None):
        """Grad-CAM of the predicted and the actual class on the ``n`` (default: the gallery size) most confident
        mistakes, at ``layer`` (default: the last feature map or token grid of at least 8x8)."""
        from utils.gradcam import (PARALLEL, cam_layer, cam_target, default_target_layer, gradcam_figure,
                                   gradcam_maps_and_weights, weight_cosines)

        idx, x, pred, actual = self._mistakes(n or self.gallery)
        if not idx:
            self.log("Grad-CAM: no misclassified images")
            return None
        layer = layer or default_target_layer(self.model)
        if layer is None:
            why = (f"{self.result.model} has no feature map of at least 8x8 (a conv layer's (B, C, H, W) output) and "
                   f"no token grid (a LayerNorm's (B, 1 + N, D) output)")
            self.result.checks["gradcam"] = f"skipped: {why}"
            self.log(f"Grad-CAM skipped: {why}")
            return None
        where = cam_layer(self.model, layer).describe()
        target = cam_target(self.model, self.log_probs)
        self.result.checks.update(gradcam_layer=layer, gradcam_grid=where, gradcam_target=target)
        (pred_maps, pred_w), (actual_maps, actual_w) = [
            gradcam_maps_and_weights(self.model, x, classes, layer, self.log_probs) for classes in (pred, actual)]
        cosines = weight_cosines(pred_w, actual_w)  # (n,): 1 = the two classes' maps are one map
        same = int((cosines >= PARALLEL).sum())
        self.result.checks["gradcam_same_map"] = f"{same} of {len(idx)}"
        if same:
            self.log(f"Grad-CAM: in {same} of {len(idx)} images the predicted and the actual class have parallel "
                     f"gradients at {layer} (cosine >= {PARALLEL}), so their maps are the same map: what follows "
                     f"{layer} moves both class scores along one direction of its output")
        fig = gradcam_figure(plots.denormalize(x, self.mean, self.std), pred_maps, actual_maps, actual, pred, where,
                             target=target, cosines=cosines)
        return self.save("gradcam", fig)

    def attention(self, n: int | None = None):
        """The model's attention, logged with its entropy; returns the heatmap figure (None without attention).
        S9: each Ultimus block's mean attention matrix over the test split and per class; a ViT: the class token's
        attention on the patch grid per layer and head, and its rollout on the ``n`` most confident mistakes
        (``attention_rollout.png``)."""
        stats = self._attention_stats()
        if stats is None:
            return None
        idx, x, pred, actual = self._mistakes(n or self.gallery)
        mistakes = (x, plots.denormalize(x, self.mean, self.std), actual, pred) if idx else None
        figs = {name: self.save(name, fig) for name, fig in self.attention_kind.map_figures(stats, mistakes).items()}
        return figs["attention_maps"]

    def attention_entropy(self):
        """Each block's (S9) or layer's (ViT) attention entropy by epoch, measured during training."""
        stats = self._attention_stats()
        if stats is None:
            return None
        start = self.result.checks.get("attention_entropy_start")
        return self.save("attention_entropy", self.attention_kind.entropy_figure(stats, self.result.history, start))

    def _attention_stats(self):
        if self.attention_kind is None:
            self.log(f"attention: none found in {self.result.model} (looked for {LOOKED_FOR})")
            return None
        if self.result.checks.get("attention_maps") is not None:  # skipped once: said once
            return None
        if self._attention is None:
            try:
                stats = self.attention_kind.stats(self.test_loader, self.probe(), len(CLASSES))
            except ValueError as e:  # e.g. tokens that are not a grid of positions: nothing to draw on the image
                self.result.checks["attention_maps"] = f"skipped: {e}"
                self.log(f"attention maps skipped: {e}")
                return None
            self.result.tables["attention_maps"] = stats.table()
            self.result.checks["attention"] = stats.to_dict()
            self.log(stats.table())
            self._attention = stats
        return self._attention
