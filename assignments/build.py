"""The pieces a :class:`assignments.run.Run` is built from: the device and process placement, the checked model
and the module that steps it (DDP, torch.compile), the data and its loaders, and the log's first lines."""
from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from utils import distributed
from utils.checks import batch_independence, check_contract, returns_log_probs
from utils.data import CLASSES, ImageSplit, channel_stats, fingerprint, load_cifar10
from utils.precision import Precision
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


@dataclass
class RunData:
    """The run's images: the splits (a subset when asked), their mean/std, the batch, and the loaders (under
    torchrun ``train_loader`` and ``eval_loader`` are this rank's shards; ``test_loader`` is whole, for the
    figures). ``source`` names the data; ``notes`` are its log lines."""
    source: str
    notes: list[str]
    train_split: ImageSplit
    test_split: ImageSplit
    mean: tuple
    std: tuple
    batch_size: int
    batch_note: str | None  # why the batch is not the recipe's, or None
    train_loader: object
    eval_loader: object
    test_loader: object

    def identity(self, recipe: str, model: str) -> dict:
        """What a checkpoint records of the run, for ``--resume`` to compare (:mod:`assignments.resume`)."""
        return {"recipe": recipe, "model": model, "data": self.source, "batch_size": self.batch_size,
                "train_images": len(self.train_split), "test_images": len(self.test_split),
                "data_fingerprint": fingerprint(self.train_split, self.test_split)}


def load_data(config: RunConfig, recipe: Recipe, device: torch.device, world: distributed.World,
              state: dict | None) -> RunData:
    """CIFAR-10 from ``--data-dir`` (or torchvision's download: rank 0 first, then the others read), the subset,
    the batch (:func:`batch_size`) and the loaders."""
    with distributed.main_first():
        data = load_cifar10(config.data_dir, download=config.download)
    mean, std = channel_stats(data.train.images)
    subset = config.subset if config.subset and config.subset < len(data.train) else None  # larger: everything
    train, test = data.train.subset(subset, config.seed), data.test.subset(subset, config.seed)
    batch, note = batch_size(config, recipe, len(train), state)
    train_loader, eval_loader = make_loaders(config, recipe, train, test, mean, std, batch, device, world)
    test_loader = make_loaders(config, recipe, train, test, mean, std, batch, device)[1] if world.size > 1 \
        else eval_loader
    notes = list(data.notes)
    if config.subset and not subset:
        notes.append(f"--subset {config.subset}: the data has {len(data.train)} training images; all of them are used")
    return RunData(data.source + (f", subset of {subset}" if subset else ""), notes, train, test, mean, std, batch,
                   note, train_loader, eval_loader, test_loader)


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


def start_lines(result, config: RunConfig, data: RunData, *, device: torch.device, precision: Precision, out: Path,
                world: distributed.World, ignored: list[str], instance: bool, hint: str | None,
                rebuildable: bool = True) -> list[str]:
    """The log's first lines: model, device, data and its statistics, what the run ignored or used instead of what
    was asked, the model check."""
    c, res = config, result
    lines = [f"{res.name}: {res.model} ({res.params:,} parameters) | device {device} ({res.device}) | "
             f"precision {precision}{' | torch.compile' if c.compile else ''} | out {out}"]
    if hint:
        lines.append(hint)
    if world.size > 1:
        lines.append(f"torchrun: {world.size} processes ({'nccl' if device.type == 'cuda' else 'gloo'}), "
                     f"{data.batch_size // world.size} images per process per step (global batch {data.batch_size}); "
                     f"the last short batch of an epoch is dropped" + ("; SyncBatchNorm" if c.sync_bn else ""))
    lines.append(f"data: {data.source}: {len(data.train_split)} train / {len(data.test_split)} test images; "
                 f"mean {tuple(round(m, 4) for m in data.mean)} std {tuple(round(s, 4) for s in data.std)}")
    lines += [f"data: {note}" for note in data.notes]
    if data.batch_note:
        lines.append(data.batch_note)
    if ignored:
        lines.append(f"resume: ignored {', '.join(ignored)}: a resumed run keeps the options it was started with")
    if instance and not c.resume:
        lines.append("model: an instance was passed, so its weights were drawn before the run's seed; pass the class "
                     "or a function that builds it (model=MyNet) for weights that --seed fixes")
    lines.append(f"model check: an image's outputs alone vs in a batch of 64 differ by "
                 f"{res.checks['batch_independence']:.1e} (relative)"
                 + ("; the model returns log-probabilities" if res.checks["log_probs"] else ""))
    if not rebuildable:
        lines.append(f"the app cannot rebuild {res.model} from this run by itself (a lambda, a class made in a notebook "
                     f"cell, or an instance with arguments): reopen it with run.app(), or app(out, model=...) / "
                     f"python -m assignments.app OUT --model module:factory")
    return lines


def cpu_hint(model: nn.Module, device: torch.device, train_images: int, epochs: int, images: int = 32) -> str | None:
    """In Colab on the CPU: how to get a GPU, and what this run would cost here, from one timed training step
    (forward and backward) of ``images`` random images on a copy of the model; None elsewhere."""
    if "google.colab" not in sys.modules or device.type != "cpu":
        return None
    probe = copy.deepcopy(model).train()
    x, y = torch.randn(images, 3, 32, 32), torch.randint(0, 10, (images,))
    start = time.perf_counter()
    torch.nn.functional.cross_entropy(probe(x).float(), y).backward()
    seconds = time.perf_counter() - start
    hours = seconds * train_images / images * epochs * 1.2 / 3600  # 1.2: the test passes and loading
    return (f"no GPU in this runtime: Runtime -> Change runtime type -> T4 GPU (free) and Run all again; on this CPU "
            f"one step of {images} images took {seconds:.2f} s, so the {epochs} epochs would take about "
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


def checked_model(source: nn.Module | Callable[[], nn.Module], precision: Precision, sync_bn: bool
                  ) -> tuple[nn.Module, dict]:
    """The model built (weights drawn in float64 under ``--precision fp64``) and placed, and the checks every later
    step relies on: one (B, 10) output (refused in one line otherwise), whether an image's outputs depend on its
    batch, whether it returns log-probabilities. The checks draw no numbers from the run's RNG."""
    with precision.building():
        built = build_model(source)
    model = precision.place(nn.SyncBatchNorm.convert_sync_batchnorm(built) if sync_bn else built)
    with torch.random.fork_rng(devices=[]):
        check_contract(model, len(CLASSES))
        checks = {"batch_independence": batch_independence(model), "log_probs": returns_log_probs(model)}
    return model, checks
