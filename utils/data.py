"""CIFAR-10 from torchvision's download, a local ``cifar-10-batches-py``, or a class-per-folder tree.

Every source ends as two :class:`ImageSplit` (uint8 NHWC images + int64 labels) so that the
albumentations loader and the GPU-resident fast loader see exactly the same pixels.
Bad input raises :class:`DataError` with one line that says what is wrong and what works.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SHAPE = (32, 32, 3)
LAYOUTS = ("DIR/cifar-10-batches-py/{data_batch_1..5,test_batch} (torchvision's files) or "
           "DIR/train/<class>/*.jpg|png and DIR/test/<class>/*.jpg|png with the ten CIFAR-10 class names")


class DataError(Exception):
    """A data problem the user can fix; its message is one line."""


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


@dataclass
class CifarData:
    """Both splits and a line naming where they came from (goes into metrics.json and the report)."""

    train: ImageSplit
    test: ImageSplit
    source: str


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 NHWC images, in [0, 1] units.

    Accumulated in float64: a float32 sum over one channel's 51M values stops growing at 2^24
    (we measured a bogus 0.328 in every channel that way).
    """
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise DataError(f"channel_stats needs (N, H, W, 3) images with N > 0; got {images.shape}")
    mean = tuple(float(images[..., c].mean(dtype=np.float64) / 255) for c in range(3))
    std = tuple(float(images[..., c].std(dtype=np.float64) / 255) for c in range(3))
    return mean, std


def load_cifar10(data_dir: str | os.PathLike | None = None, download: bool = True, root: str = "./data") -> CifarData:
    """Load CIFAR-10 from ``data_dir`` (either layout in ``LAYOUTS``) or torchvision's download into ``root``."""
    if data_dir is None:
        return _download(root, download)
    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"--data-dir {d}: no such directory; expected {LAYOUTS}")
    batches = d / "cifar-10-batches-py" if (d / "cifar-10-batches-py").is_dir() else d
    if (batches / "test_batch").is_file():
        return _from_batches(batches)
    if (d / "train").is_dir() and (d / "test").is_dir():
        jpeg = any((d / "train").glob("*/*.jp*g"))
        return CifarData(_from_folder(d / "train"), _from_folder(d / "test"),
                         f"CIFAR-10 ({'JPEG copy' if jpeg else 'image folders'}) in {d}")
    raise DataError(f"--data-dir {d}: unrecognised layout; expected {LAYOUTS}")


def _download(root: str, download: bool) -> CifarData:
    from torchvision.datasets import CIFAR10  # imported here: only this source needs it

    try:
        train, test = (CIFAR10(root, train=t, download=download) for t in (True, False))
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        hint = "drop --no-download" if not download else "check the files"
        raise DataError(f"CIFAR-10 not found in {root} ({e}); {hint}, or use --data-dir with {LAYOUTS}") from None
    except OSError as e:  # URLError and socket errors are OSErrors
        raise DataError(f"could not download CIFAR-10 into {root} (offline? {e}); use --data-dir with {LAYOUTS}") from None
    split = lambda ds: ImageSplit(np.asarray(ds.data, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64))  # noqa: E731
    return CifarData(split(train), split(test), f"CIFAR-10 (torchvision download in {root})")


def _from_batches(batches: Path) -> CifarData:
    # Read the pickles directly: torchvision re-checks each file's md5 even with download=False,
    # which rejects any copy that is not byte-identical; we check shapes and labels instead.
    def read(names: list[str]) -> ImageSplit:
        images, labels = [], []
        for name in names:
            path = batches / name
            try:
                with open(path, "rb") as f:
                    entry = pickle.load(f, encoding="latin1")
                data = np.asarray(entry["data"], dtype=np.uint8)
                lab = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
            except FileNotFoundError:
                raise DataError(f"{path}: missing; expected {LAYOUTS}") from None
            except Exception as e:  # noqa: BLE001 - any unreadable pickle is the user's file, not our bug
                raise DataError(f"{path}: not a CIFAR-10 batch file ({type(e).__name__}: {e})") from None
            if data.ndim != 2 or data.shape[1] != 3072 or len(lab) != len(data):
                raise DataError(f"{path}: expected 'data' (N, 3072) and N labels; got {data.shape} and {lab.shape}")
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(lab)
        return _checked(ImageSplit(np.concatenate(images), np.concatenate(labels)), str(batches))

    train = read([f"data_batch_{i}" for i in range(1, 6)])
    return CifarData(train, read(["test_batch"]), f"cifar-10-batches-py in {batches.parent}")


def _from_folder(split_dir: Path) -> ImageSplit:
    from PIL import Image, UnidentifiedImageError

    class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir())
    unknown = [p.name for p in class_dirs if p.name not in CLASSES]
    if unknown:
        raise DataError(f"{split_dir}: unknown class folder(s) {unknown}; expected names from {list(CLASSES)}")
    images, labels = [], []
    for class_dir in class_dirs:
        for path in sorted(p for p in class_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
            try:
                with Image.open(path) as im:
                    mode, size = im.mode, im.size
                    arr = np.asarray(im.convert("RGB"))
            except (UnidentifiedImageError, OSError) as e:
                raise DataError(f"{path}: cannot be decoded as an image ({e})") from None
            if mode != "RGB" or size != (32, 32):
                raise DataError(f"{path}: expected a 32x32 RGB image; got {size[0]}x{size[1]} {mode}")
            images.append(arr)
            labels.append(CLASSES.index(class_dir.name))
    if not images:
        raise DataError(f"{split_dir}: empty split (no images in any class folder)")
    return _checked(ImageSplit(np.stack(images), np.asarray(labels, dtype=np.int64)), str(split_dir))


def _checked(split: ImageSplit, where: str) -> ImageSplit:
    if len(split) == 0:
        raise DataError(f"{where}: empty split")
    if split.labels.min() < 0 or split.labels.max() >= len(CLASSES):
        raise DataError(f"{where}: labels must lie in [0, {len(CLASSES)}); got {split.labels.min()}..{split.labels.max()}")
    return split
