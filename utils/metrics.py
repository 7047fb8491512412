"""What the figures and tables show, computed from test-set predictions: accuracy per class, the
confusion matrix, the most confident mistakes. Plain tensors and lists in, plain data out;
``utils.plots`` draws them.
"""
from __future__ import annotations

import numpy as np
import torch

from .data import CLASSES


def class_accuracy(preds: torch.Tensor, targets: torch.Tensor, classes=CLASSES) -> list[dict]:
    """Per-class correct/total/accuracy (%) over every test item."""
    rows = []
    for c, name in enumerate(classes):
        mask = targets == c
        total, correct = int(mask.sum()), int((preds[mask] == c).sum())
        rows.append({"class": name, "correct": correct, "total": total, "acc": 100 * correct / total if total else float("nan")})
    return rows


def class_accuracy_table(rows: list[dict]) -> str:
    """The class table as aligned text (for the log and report)."""
    lines = [f"{'class':<12}{'correct':>8}{'total':>8}{'acc %':>8}"]
    lines += [f"{r['class']:<12}{r['correct']:>8}{r['total']:>8}{r['acc']:>8.2f}" for r in rows]
    return "\n".join(lines)


def confusion(preds: torch.Tensor, targets: torch.Tensor, num_classes: int = 10) -> np.ndarray:
    """(C, C) counts: rows are the actual class, columns the predicted one."""
    return np.bincount(targets.numpy() * num_classes + preds.numpy(), minlength=num_classes**2).reshape(num_classes, num_classes)


def misclassified(logits: torch.Tensor, targets: torch.Tensor, n: int = 10) -> list[int]:
    """Indices of up to ``n`` mistakes, most confident first (ties by index: deterministic)."""
    probs = torch.softmax(logits.float(), 1)  # also right for log-probabilities: softmax(log p) = p
    conf, preds = probs.max(1)
    wrong = torch.nonzero(preds != targets).flatten()
    order = sorted(wrong.tolist(), key=lambda i: (-float(conf[i]), i))
    return order[:n]
