"""What to do to a training image, as plain data: read by the albumentations pipelines (utils.transforms)
and by the device-resident loader (utils.fast_loader). Importing it loads neither albumentations nor OpenCV.

S7: "RandomCrop 32, padding 4 + CutOut 16x16"; S8 and S9: "RandomCrop 32 (padding 4) -> FlipLR -> CutOut 8x8".
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


AUGMENTS = {
    "S7": AugmentSpec(pad=4, flip=False, cutout=16),
    "S8": AugmentSpec(pad=4, flip=True, cutout=8),
    "S9": AugmentSpec(pad=4, flip=True, cutout=8),
}


def mean_pixel(mean: tuple[float, ...]) -> tuple[int, ...]:
    """The dataset mean in 0..255 pixel units, the fill albumentations applies before Normalize."""
    return tuple(int(round(m * 255)) for m in mean)
