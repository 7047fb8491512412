"""A run's options, defined once: :class:`RunConfig` holds every default, checks every value (from a
notebook or the command line, with the same one-line message naming the option), and
``python -m assignments`` builds its argparse options from it. :func:`resolve_out` picks the out
directory and, for ``--resume``, returns the config the checkpoint's run was started with.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from utils.checkpoint import load_checkpoint
from utils.precision import PRECISIONS

from .recipes import ASSIGNMENTS, S9_VARIANTS

CHECKPOINT = "checkpoint.pt"
# what a resumed run takes from its checkpoint (the schedule and data it started with)
RESUMED = ("assignment", "variant", "epochs", "batch_size", "seed", "subset", "lr", "loader", "precision", "compile")


def positive_int(value) -> int:
    number = int(value)
    if number <= 0 or str(number) != str(value).strip():
        raise ValueError(f"must be a positive integer; got {value!r}")
    return number


def non_negative_int(value) -> int:
    number = int(value)
    if number < 0 or str(number) != str(value).strip():
        raise ValueError(f"must be a non-negative integer; got {value!r}")
    return number


def lr_value(value) -> str:
    """'auto' or a positive, finite number (kept as text, as the command line gives it)."""
    if value == "auto":
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"must be 'auto' or a positive finite number; got {value!r}")
    return str(value)


def option(default, help: str, *, check=None, choices=None, flag: str | None = None, cli: bool = True):
    """A RunConfig field with what the command line needs to know about it."""
    return field(default=default, metadata={"help": help, "check": check, "choices": choices, "flag": flag, "cli": cli})


@dataclass(frozen=True)
class RunConfig:
    """What the command line (or a notebook's parameters cell) chooses; None means the recipe's value."""

    assignment: str | None = option(None, "S7, S8 or S9 (a built-in recipe)", choices=ASSIGNMENTS, cli=False)
    variant: str = option("spec", "S9's Ultimus block", choices=tuple(S9_VARIANTS))
    epochs: int | None = option(None, "default: the recipe's (S7 20, S8 24, S9 24)", check=positive_int)
    batch_size: int | None = option(None, "default: the recipe's (S7/S8 512, S9 128)", check=positive_int)
    lr: str = option("auto", "max LR of the one-cycle; 'auto' runs the LR range test", check=lr_value)
    data_dir: str | None = option(None, "local CIFAR-10: DIR/cifar-10-batches-py or DIR/{train,test}/<class>/*.jpg")
    download: bool = option(True, "never download (use ./data or --data-dir)", flag="--no-download")
    out: str | None = option(None, "output directory (default runs/<name>-<timestamp>)")
    overwrite: bool = option(False, "write into an --out that already holds a run (its files are replaced)")
    device: str = option("auto", "where to train", choices=("auto", "cpu", "cuda"))
    precision: str = option("auto", "autocast of the forward pass; auto: bf16 where the device runs it natively "
                                    "(AVX-512 BF16/AMX CPU, CUDA 8.0+), fp16 + grad scaler on older GPUs, else fp32",
                            choices=PRECISIONS)
    compile: bool = option(False, "torch.compile the model for training and testing")
    seed: int = option(1, "seed of weights, shuffling and augmentation", check=non_negative_int)
    subset: int | None = option(None, "use N training and N test images (quick checks)", check=positive_int)
    resume: bool = option(False, "continue the run in --out (default: the latest with a checkpoint) to its end")
    strict: bool = option(False, "stop at the training doctor's first finding")
    workers: int | None = option(None, "DataLoader workers for --loader classic (default 0 on CPU, 2 on CUDA)",
                                 check=non_negative_int)
    loader: str = option("auto", "classic: albumentations in a DataLoader; fast: the split on the device, "
                                 "augmented per batch; auto: fast on CUDA, classic on the CPU",
                         choices=("auto", "classic", "fast"))
    sync_bn: bool = option(False, "under torchrun on CUDA: SyncBatchNorm, BatchNorm statistics over all processes")
    gallery: int = option(10, "misclassified images in the gallery and Grad-CAM", check=positive_int)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if value is None or value == f.default:
                continue
            name = meta["flag"] or "--" + f.name.replace("_", "-")
            if meta["choices"] and value not in meta["choices"]:
                raise ValueError(f"{name} must be one of {', '.join(meta['choices'])}; got {value!r}")
            if meta["check"]:
                try:
                    object.__setattr__(self, f.name, meta["check"](value))
                except ValueError as e:
                    raise ValueError(f"{name} {e}") from None


def add_options(parser: argparse.ArgumentParser) -> None:
    """One argparse option per RunConfig field (``--batch-size`` for ``batch_size``), same checks and help."""
    for f in dataclasses.fields(RunConfig):
        meta = f.metadata
        if not meta["cli"]:
            continue
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            parser.add_argument(flag, dest=f.name, action="store_false" if f.default else "store_true",
                                help=meta["help"])
            continue
        kwargs = {"choices": meta["choices"]} if meta["choices"] else {}
        if meta["check"]:
            kwargs["type"] = _argparse_type(meta["check"])
        default = f" (default {f.default})" if f.default is not None else ""
        parser.add_argument(flag, dest=f.name, default=f.default, help=meta["help"] + default, **kwargs)


def _argparse_type(check):
    def parse(text):
        try:
            return check(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = check.__name__
    return parse


def slug(name: str) -> str:
    """A folder-friendly form of a run's name: 'S9 (spec)' -> 'S9-spec'."""
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") or "run"


def resolve_out(config: RunConfig, name: str) -> tuple[RunConfig, Path, dict | None, list[str]]:
    """The config to run with, its out directory, the checkpoint's saved state (a resume) and the options
    a resume ignores. Nothing is created here; the caller's config is not changed."""
    if not config.resume:
        out = Path(config.out or f"runs/{slug(name)}-{dt.datetime.now():%Y%m%d-%H%M%S}")
        _check_out(out, config.overwrite)
        return config, out, None, []
    out = Path(config.out) if config.out else latest_run(slug(name))
    saved = load_checkpoint(out / CHECKPOINT)["extra"]
    started = saved.get("config", {})
    keep = {k: started[k] for k in RESUMED if k in started}
    defaults = RunConfig()
    ignored = [f"{k}={getattr(config, k)!r}" for k, v in keep.items() if getattr(config, k) not in (getattr(defaults, k), v)]
    return dataclasses.replace(config, **keep), out, saved, ignored


def _check_out(out: Path, overwrite: bool) -> None:
    for parent in [out, *out.parents]:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"--out {out}: {parent} is a file, not a directory; choose another --out")
    if not overwrite and any((out / f).exists() for f in (CHECKPOINT, "metrics.json")):
        raise ValueError(f"--out {out} already holds a run; continue it with --resume, choose another --out, "
                         f"or pass --overwrite to replace its files")


def latest_run(prefix: str) -> Path:
    """The newest ``runs/<prefix>-*`` folder that holds a checkpoint."""
    runs = sorted((p for p in Path("runs").glob(f"{prefix}-*") if (p / CHECKPOINT).is_file()),
                  key=lambda p: (p / CHECKPOINT).stat().st_mtime)
    if not runs:
        raise FileNotFoundError(f"--resume: no runs/{prefix}-* folder with a {CHECKPOINT}; pass --out DIR of the "
                                f"run to resume")
    return runs[-1]
