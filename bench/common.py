"""Shared set-up for the benchmarks: data (the CIFAR-10 JPEG copy or synthetic) and timing."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402

from utils.data import CifarData, ImageSplit, load_cifar10  # noqa: E402


def bench_data(data_dir: str | None, n_train: int, n_test: int = 1000) -> CifarData:
    """``n_train`` images of the data in ``data_dir``, or random synthetic images when it is None."""
    if data_dir:
        d = load_cifar10(data_dir)
        return CifarData(d.train.subset(n_train), d.test.subset(n_test), d.source)
    rng = np.random.default_rng(0)
    split = lambda n: ImageSplit(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.arange(n) % 10)  # noqa: E731
    return CifarData(split(n_train), split(n_test), "synthetic random images")


def timed(fn, sync=lambda: None) -> float:
    """Seconds ``fn()`` takes, synchronising the device before and after."""
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def bench_parser(doc: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: data, number of images, device, repeats."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="a --data-dir layout (e.g. local/cifar10-jpeg); default: random images")
    p.add_argument("--images", type=int, default=12_800, help="training images per timed epoch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=2, help="timed epochs per path, interleaved; the best counts")
    return p
