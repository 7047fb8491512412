"""Albumentations pipelines from an :class:`utils.augment.AugmentSpec`, and the Dataset/DataLoader that apply them.

Pad, random 32x32 crop, horizontal flip, one square CutOut hole (as the spec says); padding and cutout fill with
the dataset mean; test split: Normalize + ToTensorV2 only.
Pipelines use ``strict=True`` so a misspelt (e.g. albumentations 1.x) argument raises.
"""
from __future__ import annotations

import os
import random
from contextlib import contextmanager


@contextmanager
def _no_update_check():
    """Within the block albumentations' import skips its online version check (it blocks without a network); the
    process's environment is as it was afterwards."""
    before = os.environ.get("NO_ALBUMENTATIONS_UPDATE")
    os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["NO_ALBUMENTATIONS_UPDATE"]
        else:
            os.environ["NO_ALBUMENTATIONS_UPDATE"] = before


with _no_update_check():
    import albumentations as A  # noqa: E402
    from albumentations.pytorch import ToTensorV2  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset, RandomSampler  # noqa: E402

from .augment import AugmentSpec, mean_pixel  # noqa: E402
from .data import ImageSplit  # noqa: E402
from .distributed import ShardBatchSampler, World, shard_range  # noqa: E402


def train_transform(spec: AugmentSpec, mean, std) -> A.Compose:
    """Pad -> random crop 32 [-> flip] [-> cutout] -> normalise -> CHW tensor."""
    fill = mean_pixel(mean)
    steps = [
        A.PadIfNeeded(32 + 2 * spec.pad, 32 + 2 * spec.pad, border_mode=cv2.BORDER_CONSTANT, fill=fill),
        A.RandomCrop(32, 32),
    ]
    if spec.flip:
        steps.append(A.HorizontalFlip(p=0.5))
    if spec.cutout:
        side = (spec.cutout, spec.cutout)
        steps.append(A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=side, hole_width_range=side,
                                     fill=fill, p=spec.cutout_p))
    return A.Compose([*steps, A.Normalize(mean=mean, std=std), ToTensorV2()], strict=True)


def eval_transform(mean, std) -> A.Compose:
    """Normalise -> CHW tensor, nothing random."""
    return A.Compose([A.Normalize(mean=mean, std=std), ToTensorV2()], strict=True)


class AugmentedSplit(Dataset):
    """An :class:`ImageSplit` seen through an albumentations pipeline; yields (float CHW tensor, int label)."""

    def __init__(self, split: ImageSplit, transform: A.Compose):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return self.transform(image=self.split.images[i])["image"], int(self.split.labels[i])


def _seed_worker(worker_id: int) -> None:
    # torch gives each worker initial_seed() = loader seed of this epoch + worker id: derive the rest from it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    torch.utils.data.get_worker_info().dataset.transform.set_random_seed(seed)


class EpochLoader(DataLoader):
    """A DataLoader whose shuffle order and augmentations are a function of (seed, epoch).

    Call ``set_epoch(e)`` before each epoch: a resumed run then sees the same batches as a straight one.

    Under torchrun (``world`` of more than one process, a shuffled loader) each rank loads its slice of every
    global batch of ``batch_size`` (:class:`utils.distributed.ShardBatchSampler`, same permutation as one process).
    """

    def __init__(self, dataset: AugmentedSplit, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0,
                 pin_memory: bool = False, world: World = World()):
        generator = torch.Generator()
        if world.size > 1 and shuffle:  # the generator draws the workers' base seed, then the permutation, as below
            batches = {"batch_sampler": ShardBatchSampler(RandomSampler(dataset, generator=generator), batch_size, world)}
        else:
            batches = {"batch_size": batch_size, "shuffle": shuffle}
        super().__init__(dataset, num_workers=num_workers, pin_memory=pin_memory, generator=generator,
                         worker_init_fn=_seed_worker, **batches)
        self.seed, self.rank = seed, world.rank
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        epoch_seed = self.seed * 1_000_003 + epoch
        self.generator.manual_seed(epoch_seed)
        # used as is when num_workers == 0; each rank augments its own images with its own draws
        self.dataset.transform.set_random_seed(epoch_seed + 7_919 * self.rank)


def default_workers(device_type: str) -> int:
    """DataLoader workers: 0 on CPU (workers would compete with the training threads), 2 on CUDA (Colab's cores)."""
    return 2 if device_type == "cuda" else 0


def make_loaders(train: ImageSplit, test: ImageSplit, spec: AugmentSpec, mean, std, batch_size: int,
                 seed: int = 0, num_workers: int = 0, pin_memory: bool = False, eval_batch_size: int | None = None,
                 world: World = World()):
    """(train_loader, test_loader): augmented and shuffled train, plain ordered test. Under torchrun each rank
    gets its slices of the global train batches and its contiguous shard of ``test``."""
    if world.size > 1:
        share = shard_range(len(test), world)
        test = ImageSplit(test.images[share.start:share.stop], test.labels[share.start:share.stop])
    train_ds = AugmentedSplit(train, train_transform(spec, mean, std))
    test_ds = AugmentedSplit(test, eval_transform(mean, std))
    return (EpochLoader(train_ds, batch_size, True, seed, num_workers, pin_memory, world),
            EpochLoader(test_ds, eval_batch_size or batch_size, False, seed, num_workers, pin_memory))
