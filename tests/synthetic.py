"""Tiny synthetic CIFAR-like data for tests: a learnable task and writers for both --data-dir layouts."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from utils.data import CLASSES, CifarData, ImageSplit

# Ten well separated colours: after GAP a 3-conv network can tell them apart, so a healthy
# recipe beats chance quickly while a collapsed one stays at 10%.
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [128, 128, 0], [128, 128, 128]], dtype=np.float64)


def colour_split(n: int, seed: int, noise: float = 45.0, classes: int = 10) -> ImageSplit:
    """``n`` 32x32 images whose class is their base colour (plus pixel noise and a random stripe)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    rng.shuffle(labels)
    img = PALETTE[labels][:, None, None, :] + rng.normal(0, noise, (n, 32, 32, 3))
    rows = rng.integers(0, 28, n)
    for i, r in enumerate(rows):  # a bright stripe at a random height, so augmentations have something to move
        img[i, r:r + 4] = 255
    return ImageSplit(img.clip(0, 255).astype(np.uint8), labels.astype(np.int64))


def colour_task(n_train: int = 2000, n_test: int = 500, seed: int = 0) -> CifarData:
    return CifarData(colour_split(n_train, seed), colour_split(n_test, seed + 1), "synthetic colour task")


def write_folders(root: Path, data: CifarData, ext: str = "png") -> Path:
    """DIR/train/<class>/NNNN.png and DIR/test/<class>/NNNN.png."""
    for name, split in (("train", data.train), ("test", data.test)):
        for i, (img, label) in enumerate(zip(split.images, split.labels)):
            d = root / name / CLASSES[label]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:04d}.{ext}")
    return root


def write_batches(root: Path, data: CifarData) -> Path:
    """DIR/cifar-10-batches-py/{data_batch_1..5, test_batch} as torchvision's pickles."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    as_rows = lambda s: s.images.transpose(0, 3, 1, 2).reshape(len(s), -1)  # noqa: E731  (N, 3072)
    chunks = np.array_split(np.arange(len(data.train)), 5)
    for i, idx in enumerate(chunks, 1):
        with open(d / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": as_rows(data.train)[idx], "labels": data.train.labels[idx].tolist()}, f)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({"data": as_rows(data.test), "labels": data.test.labels.tolist()}, f)
    return root
