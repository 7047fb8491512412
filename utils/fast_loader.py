"""GPU-resident loader (``--loader fast``): the whole split as one uint8 tensor on the training device,
augmented a batch at a time with the same operations, probabilities and fill as the albumentations
recipe (pad -> random crop 32 -> flip -> cutout -> normalise).

Written by hand (about 40 lines of tensor code, after airbench) rather than with kornia.augmentation:
see bench/loader_speed.py for the measured comparison. Iterating yields (float (B, 3, 32, 32), int64 (B,)).
"""
from __future__ import annotations

import math

import torch

from .data import ImageSplit
from .augment import AugmentSpec, mean_pixel
from .distributed import World, shard_range


def augment_batch(x: torch.Tensor, spec: AugmentSpec, fill: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Pad, random-crop, flip and cut out a uint8 batch ``x`` (B, 3, H, W); ``fill`` (3,) uint8 is the mean pixel."""
    b, c, h, w = x.shape
    dev = x.device
    rand = lambda *shape, high: torch.randint(0, high, shape, generator=gen, device=dev)  # noqa: E731
    if spec.pad:
        p = spec.pad
        padded = fill.view(1, c, 1, 1).expand(b, c, h + 2 * p, w + 2 * p).clone()  # (B, 3, H+2p, W+2p)
        padded[:, :, p:p + h, p:p + w] = x
        dy, dx = rand(b, high=2 * p + 1), rand(b, high=2 * p + 1)  # (B,) offsets, uniform over (2p+1)^2 positions
        rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # (B, 1, H, 1)
        cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # (B, 1, 1, W)
        x = padded[torch.arange(b, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
                   rows, cols]  # (B, 3, H, W)
    if spec.flip:
        flip = torch.rand(b, generator=gen, device=dev) < 0.5  # (B,)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if spec.cutout:
        s = spec.cutout
        apply = torch.rand(b, generator=gen, device=dev) < spec.cutout_p  # (B,)
        y0, x0 = rand(b, high=h - s + 1), rand(b, high=w - s + 1)  # hole fully inside, as CoarseDropout places it
        r, q = torch.arange(h, device=dev), torch.arange(w, device=dev)
        in_rows = (r[None, :] >= y0[:, None]) & (r[None, :] < y0[:, None] + s)  # (B, H)
        in_cols = (q[None, :] >= x0[:, None]) & (q[None, :] < x0[:, None] + s)  # (B, W)
        hole = (in_rows[:, :, None] & in_cols[:, None, :] & apply[:, None, None])[:, None]  # (B, 1, H, W)
        x = torch.where(hole, fill.view(1, c, 1, 1), x)
    return x


class GpuLoader:
    """Batches of a split held on ``device``; ``train`` shuffles and augments, otherwise in order and plain.

    ``set_epoch(e)`` reseeds shuffling and augmentation from (seed, epoch), as :class:`EpochLoader` does.
    """

    def __init__(self, split: ImageSplit, spec: AugmentSpec | None, mean, std, batch_size: int, device,
                 train: bool = True, seed: int = 0, world: World = World()):
        if world.size > 1 and not train:  # under torchrun: this rank's contiguous shard of the test set
            share = shard_range(len(split), world)
            split = ImageSplit(split.images[share.start:share.stop], split.labels[share.start:share.stop])
        if world.size > 1 and batch_size % world.size:
            raise ValueError(f"--batch-size {batch_size} is not divisible by the {world.size} processes")
        self.world = world
        self.device = torch.device(device)
        self.images = torch.from_numpy(split.images).to(self.device).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32)
        self.labels = torch.from_numpy(split.labels).to(self.device)  # (N,)
        self.spec, self.batch_size, self.train, self.seed = spec, batch_size, train, seed
        self.fill = torch.tensor(mean_pixel(mean), dtype=torch.uint8, device=self.device)  # (3,)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1) * 255
        self.gen = torch.Generator(device=self.device)  # the permutation: the same on every rank
        # augmentation draws: each rank its own (one process: the permutation's generator, as before)
        self.aug_gen = torch.Generator(device=self.device) if world.size > 1 else self.gen
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.gen.manual_seed(self.seed * 1_000_003 + epoch)
        if self.aug_gen is not self.gen:
            self.aug_gen.manual_seed(self.seed * 1_000_003 + epoch + 7_919 * self.world.rank)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std  # uint8 pixels -> (x / 255 - mean) / std

    def __len__(self) -> int:
        if self.train and self.world.size > 1:  # whole global batches only: a short last one has no equal slices
            return len(self.labels) // self.batch_size
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self):
        n = len(self.labels)
        order = torch.randperm(n, generator=self.gen, device=self.device) if self.train else torch.arange(n, device=self.device)
        per_rank = self.batch_size // self.world.size if self.train else self.batch_size
        start = self.world.rank * per_rank if self.train else 0
        for k in range(len(self)):
            idx = order[k * self.batch_size + start:k * self.batch_size + start + per_rank]  # this rank's slice
            x = self.images[idx]
            if self.train and self.spec is not None:
                x = augment_batch(x, self.spec, self.fill, self.aug_gen)
            yield self.normalise(x), self.labels[idx]


def make_fast_loaders(train: ImageSplit, test: ImageSplit, spec: AugmentSpec, mean, std, batch_size: int, device,
                      seed: int = 0, eval_batch_size: int | None = None, world: World = World()):
    """(train_loader, test_loader) held on ``device``: the fast counterpart of ``make_loaders`` (also under torchrun)."""
    return (GpuLoader(train, spec, mean, std, batch_size, device, train=True, seed=seed, world=world),
            GpuLoader(test, None, mean, std, eval_batch_size or batch_size, device, train=False, seed=seed, world=world))
