"""The images every part of the lab shares: CIFAR-10's class names and :class:`ImageSplit`, a split as uint8
NHWC images and int64 labels, normalized the way the test loaders normalize it. Nothing here reads files."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass
class ImageSplit:
    """One split: ``images`` (N, 32, 32, 3) uint8 RGB, ``labels`` (N,) int64 in [0, 10)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def normalized(self, indices: list[int], mean, std):
        """Items ``indices`` as the test loaders give them: float (k, 3, 32, 32), ``(x / 255 - mean) / std``."""
        import torch

        x = torch.from_numpy(self.images[list(indices)]).permute(0, 3, 1, 2).float() / 255  # (k, 3, 32, 32)
        return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)

    def spread(self, n: int) -> list[int]:
        """``n`` indices taken round-robin over the classes (each class's first items in split order), so a
        fixed probe covers every class evenly however the split is sorted (a class-per-folder copy is sorted
        by class, torchvision's test batch is not)."""
        order = np.argsort(self.labels, kind="stable")  # (N,) grouped by class, split order kept inside a class
        grouped = self.labels[order]
        rank = np.empty(len(self), dtype=np.int64)  # each item's position among the items of its class
        rank[order] = np.arange(len(self)) - np.searchsorted(grouped, grouped, side="left")
        return np.sort(np.lexsort((self.labels, rank))[:n]).tolist()

    def subset(self, n: int | None, seed: int = 0) -> "ImageSplit":
        """A random (seeded) subset of ``n`` items; the whole split when ``n`` is None or too large."""
        if n is None or n >= len(self):
            return self
        idx = np.sort(np.random.default_rng(seed).permutation(len(self))[:n])
        return ImageSplit(self.images[idx], self.labels[idx])
