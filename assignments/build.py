"""The pieces a :class:`assignments.run.Run` is built from: its data loaders, the module that steps (DDP,
torch.compile), and the lines that name the device and the command."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from utils import distributed
from utils.recipe import Recipe

from .config import RunConfig


def make_loaders(config: RunConfig, recipe: Recipe, train_split, test_split, mean, std, batch_size: int,
                 device: torch.device, world: distributed.World = distributed.World()):
    """(train loader, test loader): on CUDA (or ``--loader fast``) the split on the device, augmented per batch;
    else albumentations in a DataLoader. Under torchrun ``world`` gives each rank its shard."""
    eval_batch = max(batch_size, 2048 if device.type == "cuda" else 512)  # no gradients: large batches
    if config.loader == "fast" or (config.loader == "auto" and device.type == "cuda"):  # the GPU needs no workers
        from utils.fast_loader import make_fast_loaders
        return make_fast_loaders(train_split, test_split, recipe.augment, mean, std, batch_size, device,
                                 seed=config.seed, eval_batch_size=eval_batch, world=world)
    from utils.transforms import default_workers, make_loaders as classic_loaders
    workers = config.workers if config.workers is not None else default_workers(device.type)
    return classic_loaders(train_split, test_split, recipe.augment, mean, std, batch_size, seed=config.seed,
                           num_workers=workers, pin_memory=device.type == "cuda", eval_batch_size=eval_batch,
                           world=world)


def stepping_module(model: nn.Module, world: distributed.World, device: torch.device, compile: bool) -> nn.Module:
    """The module that trains: ``model`` itself, under torchrun wrapped in DistributedDataParallel, with
    ``compile`` compiled. It shares the model's parameters; figures and the range test use the plain model."""
    step = model
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        step = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(step) if compile else step


def command(world: distributed.World = distributed.World()) -> str:
    """The command line of this process (``python -m assignments ...`` or the notebook kernel's)."""
    launcher = f"torchrun --nproc_per_node {world.size} " if world.size > 1 else ""
    if sys.argv and Path(sys.argv[0]).parts[-2:] == ("assignments", "__main__.py"):
        return f"{launcher or 'python '}-m assignments " + " ".join(sys.argv[1:])
    return f"Python API (a notebook or script){' under ' + launcher.strip() if launcher else ''}"


def device_name(device: torch.device) -> str:
    n = torch.get_num_threads()
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({n} thread{'s' * (n != 1)})"
