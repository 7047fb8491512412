"""The pieces a :class:`assignments.run.Run` is built from: its data loaders, the module that steps (DDP,
torch.compile), and the lines that name the device and the command."""
from __future__ import annotations

import copy
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from utils import distributed
from utils.recipe import Recipe

from .config import RunConfig
from .model_source import required_arguments


def place(config: RunConfig) -> tuple[torch.device, distributed.World]:
    """The device a run trains on and, under torchrun, this process's rank (its GPU); options the device cannot
    take are one line."""
    from utils.seed import pick_device

    device = pick_device(config.device)
    world = distributed.init(device.type)  # torchrun: this process's rank; else a single process
    if device.type == "cuda" and world.size > 1:
        device = torch.device("cuda", world.local_rank)
    if config.precision == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 runs on CUDA only (on the CPU it measured ~100x slower than fp32); "
                         "use bf16 or fp32 there")
    if config.sync_bn and not (world.size > 1 and device.type == "cuda"):
        raise ValueError("--sync-bn needs torchrun with more than one process on CUDA")
    return device, world


def batch_size(config: RunConfig, recipe: Recipe, train_images: int, state: dict | None) -> tuple[int, str | None]:
    """The run's batch and why it is not the recipe's: ``--batch-size``; on ``--resume`` the one the checkpoint
    trained with (the recipe's for a checkpoint that does not say); else :meth:`Recipe.batch_for`, which gives a
    small subset enough steps per epoch."""
    if config.batch_size:
        return config.batch_size, None
    if state:
        return (state["extra"].get("identity") or {}).get("batch_size") or recipe.batch_size, None
    return recipe.batch_for(train_images)


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


def start_lines(run, data, subset: int | None, instance: bool) -> list[str]:
    """The log's first lines for a built :class:`assignments.run.Run`: model, device, data and its statistics,
    what the run ignored or used instead of what was asked, the model check."""
    c, res, world = run.config, run.result, run.world
    lines = [f"{res.name}: {res.model} ({res.params:,} parameters) | device {run.device} ({res.device}) | "
             f"precision {run.precision}{' | torch.compile' if c.compile else ''} | out {run.out}"]
    hint = cpu_hint(run)
    if hint:
        lines.append(hint)
    if world.size > 1:
        lines.append(f"torchrun: {world.size} processes ({'nccl' if run.device.type == 'cuda' else 'gloo'}), "
                     f"{run.batch_size // world.size} images per process per step (global batch {run.batch_size}); "
                     f"the last short batch of an epoch is dropped" + ("; SyncBatchNorm" if c.sync_bn else ""))
    lines.append(f"data: {res.data}: {len(run.train_split)} train / {len(run.test_split)} test images; "
                 f"mean {tuple(round(m, 4) for m in run.mean)} std {tuple(round(s, 4) for s in run.std)}")
    lines += [f"data: {note}" for note in data.notes]
    if c.subset and not subset:
        lines.append(f"--subset {c.subset}: the data has {len(data.train)} training images; all of them are used")
    if run.batch_note:
        lines.append(run.batch_note)
    if run.resumed.ignored:
        lines.append(f"resume: ignored {', '.join(run.resumed.ignored)}: a resumed run keeps the options it was "
                     f"started with")
    if instance and not c.resume:
        lines.append("model: an instance was passed, so its weights were drawn before the run's seed; pass the class "
                     "or a function that builds it (model=MyNet) for weights that --seed fixes")
    lines.append(f"model check: an image's outputs alone vs in a batch of 64 differ by "
                 f"{res.checks['batch_independence']:.1e} (relative)"
                 + ("; the model returns log-probabilities" if res.checks["log_probs"] else ""))
    return lines


def cpu_hint(run, images: int = 32) -> str | None:
    """In Colab on the CPU: how to get a GPU, and what this run would cost here, from one timed training step
    (forward and backward) of ``images`` random images on a copy of the model; None elsewhere."""
    if "google.colab" not in sys.modules or run.device.type != "cpu":
        return None
    probe = copy.deepcopy(run.model).train()
    x, y = torch.randn(images, 3, 32, 32), torch.randint(0, 10, (images,))
    start = time.perf_counter()
    torch.nn.functional.cross_entropy(probe(x).float(), y).backward()
    seconds = time.perf_counter() - start
    hours = seconds * len(run.train_split) / images * run.epochs * 1.2 / 3600  # 1.2: the test passes and loading
    return (f"no GPU in this runtime: Runtime -> Change runtime type -> T4 GPU (free) and Run all again; on this CPU "
            f"one step of {images} images took {seconds:.2f} s, so the {run.epochs} epochs would take about "
            f"{hours:.1f} h")


def build_model(source: nn.Module | Callable[[], nn.Module]) -> nn.Module:
    """The model from ``model=``: an ``nn.Module`` as it is, else ``source()``; a class or function that needs
    arguments is one line naming them and how to pass them."""
    if isinstance(source, nn.Module):
        return source
    if not callable(source):
        raise ValueError(f"Run: model must be an nn.Module or a class or function that builds one; got "
                         f"{type(source).__name__}")
    needed = required_arguments(source) or []  # None: no signature to read (a builtin): call it and see
    name = getattr(source, "__name__", type(source).__name__)
    if needed:
        args = ", ".join(f"{n}=..." for n in needed)
        raise ValueError(f"Run: model={name} needs the arguments {', '.join(needed)}; pass "
                         f"model=functools.partial({name}, {args}) (the app can rebuild that) or an instance {name}(...)")
    built = source()
    if not isinstance(built, nn.Module):
        raise ValueError(f"Run: model={name}() returned a {type(built).__name__}, not an nn.Module")
    return built
