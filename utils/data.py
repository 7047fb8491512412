"""CIFAR-10 from torchvision's download, a local ``cifar-10-batches-py``, or a class-per-folder tree.

Every source ends as two :class:`ImageSplit` (uint8 NHWC images + int64 labels) so that the
albumentations loader and the GPU-resident fast loader see exactly the same pixels.
Bad input raises :class:`DataError` with one line that says what is wrong and what works.
"""
from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .images import CLASSES, ImageSplit  # noqa: F401  (re-exported: utils.data is where loaders look)

IMAGE_SHAPE = (32, 32, 3)
LAYOUTS = ("DIR/cifar-10-batches-py/{data_batch_1..5,test_batch} (torchvision's files) or "
           "DIR/train/<class>/*.jpg|png and DIR/test/<class>/*.jpg|png with the ten CIFAR-10 class names")


class DataError(Exception):
    """A data problem the user can fix; its message is one line."""


@dataclass
class CifarData:
    """Both splits and a line naming where they came from (goes into metrics.json and the report); ``notes``
    are what the loader saw but did not use (logged by the run)."""

    train: ImageSplit
    test: ImageSplit
    source: str
    notes: list[str] = field(default_factory=list)


def fingerprint(*splits: ImageSplit) -> str:
    """A short hash of the splits' labels and of every 97th image: equal for the same data wherever it lies,
    different when a resume would continue on other images."""
    h = hashlib.sha1()
    for split in splits:
        h.update(np.int64(len(split)).tobytes())
        h.update(np.ascontiguousarray(split.labels).tobytes())
        h.update(np.ascontiguousarray(split.images[::97]).tobytes())
    return h.hexdigest()[:16]


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
        (train, train_notes), (test, test_notes) = _from_folder(d / "train"), _from_folder(d / "test")
        return CifarData(train, test, f"CIFAR-10 ({'JPEG copy' if jpeg else 'image folders'}) in {d}",
                         train_notes + test_notes)
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


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch (a dict of bytes, lists, ints and numpy arrays) and nothing else: any other
    global a pickle names (``os.system``, a class of ours ...) is refused before it is looked up, so a
    tampered file cannot run code."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
               ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: a CIFAR-10 batch holds only arrays and lists")


def _load_batch(f) -> dict:
    return _BatchUnpickler(f, encoding="latin1").load()


def _from_batches(batches: Path) -> CifarData:
    # Read the pickles directly (torchvision re-checks each file's md5 even with download=False, which rejects
    # any copy that is not byte-identical) with an unpickler that admits only what a batch holds; shapes and
    # labels are checked after.
    def read(names: list[str]) -> ImageSplit:
        images, labels = [], []
        for name in names:
            path = batches / name
            try:
                with open(path, "rb") as f:
                    entry = _load_batch(f)
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


def _from_folder(split_dir: Path) -> tuple[ImageSplit, list[str]]:
    """One split of a class-per-folder tree and notes on what it skipped (files in nested folders)."""
    from PIL import Image, UnidentifiedImageError

    entries = {p.name: p for p in split_dir.iterdir()}
    unknown = [n for n, p in sorted(entries.items()) if p.is_dir() and n not in CLASSES]
    if unknown:
        raise DataError(f"{split_dir}: unknown class folder(s) {unknown}; expected names from {list(CLASSES)}")
    for name in CLASSES:
        if name not in entries:
            raise DataError(f"{split_dir}: no folder for class {name!r}; expected one folder per class {list(CLASSES)}")
        if not entries[name].is_dir():
            raise DataError(f"{split_dir / name}: a file, not a folder of {name} images")
    images, labels, nested = [], [], 0
    for name in CLASSES:
        class_dir = entries[name]
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and not p.name.startswith("."))
        nested += sum(1 for p in class_dir.rglob("*") if p.is_file() and p.parent != class_dir)
        if not files:
            raise DataError(f"{class_dir}: no images of class {name!r}")
        for path in files:
            try:
                with Image.open(path) as im:  # reads the header only: size and mode before any pixel is decoded
                    if im.mode != "RGB" or im.size != (32, 32):
                        raise DataError(f"{path}: expected a 32x32 RGB image; got {im.size[0]}x{im.size[1]} {im.mode}")
                    arr = np.asarray(im.convert("RGB"))
            except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
                raise DataError(f"{path}: cannot be decoded as an image ({e})") from None
            images.append(arr)
            labels.append(CLASSES.index(name))
    notes = [f"{split_dir}: {nested} file(s) in folders below the class folders were not read (only "
             f"<class>/<image> is)"] if nested else []
    return _checked(ImageSplit(np.stack(images), np.asarray(labels, dtype=np.int64)), str(split_dir)), notes


def _checked(split: ImageSplit, where: str) -> ImageSplit:
    if len(split) == 0:
        raise DataError(f"{where}: empty split")
    if split.labels.min() < 0 or split.labels.max() >= len(CLASSES):
        raise DataError(f"{where}: labels must lie in [0, {len(CLASSES)}); got {split.labels.min()}..{split.labels.max()}")
    return split
