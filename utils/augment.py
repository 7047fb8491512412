"""What to do to a training image, as plain data: read by the albumentations pipelines (utils.transforms)
and by the device-resident loader (utils.fast_loader). Importing it loads neither albumentations nor OpenCV.
Each recipe (assignments.recipes) names its own.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AugmentSpec:
    """What to do to a training image, shared by the albumentations and the fast GPU loader."""

    pad: int = 4  # pixels of mean-coloured border before the 32x32 random crop
    flip: bool = True  # horizontal flip with probability 0.5
    cutout: int = 8  # side of the square hole in pixels, 0 = none
    cutout_p: float = 0.5  # probability of one hole per image (the course's CoarseDropout p)


def mean_pixel(mean: tuple[float, ...]) -> tuple[int, ...]:
    """The dataset mean in 0..255 pixel units, the fill albumentations applies before Normalize."""
    return tuple(int(round(m * 255)) for m in mean)
