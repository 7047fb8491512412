"""A run's options, defined once: :class:`RunConfig` holds every default, checks every value (from a
notebook or the command line, with the same one-line message naming the option), and
``python -m assignments`` builds its argparse options from it. :func:`resolve_out` picks the out
directory and, for ``--resume``, returns the config the checkpoint's run was started with.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from utils.checkpoint import CHECKPOINT, load_run_checkpoint
from utils.precision import PRECISIONS

from .outdir import OutError, check_new, default_out, holder, in_use
from .recipes import ASSIGNMENTS, S9_VARIANTS, recipe
from .resume import planned_epochs

# what a resumed run takes from its checkpoint (the schedule and data it started with)
RESUMED = ("assignment", "variant", "epochs", "batch_size", "seed", "subset", "lr", "loader", "precision", "compile")


def _integer(value) -> int | None:
    """``value`` as an int if it spells one exactly ("5", 5), else None ("5.0", 2.5, "five")."""
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if str(number) == str(value).strip() else None


def positive_int(value) -> int:
    number = _integer(value)
    if number is None or number <= 0:
        raise ValueError(f"must be a positive integer; got {value!r}")
    return number


def non_negative_int(value) -> int:
    number = _integer(value)
    if number is None or number < 0:
        raise ValueError(f"must be a non-negative integer; got {value!r}")
    return number


SEED_MAX = 2**32 - 1  # numpy's legacy seed and the loaders' generators take 32-bit seeds


def seed_value(value) -> int:
    number = non_negative_int(value)
    if number > SEED_MAX:
        raise ValueError(f"must be an integer from 0 to {SEED_MAX}; got {value!r}")
    return number


GALLERY_MAX = 100  # misclassified images drawn; past this the figures stop being readable


def gallery_size(value) -> int:
    number = positive_int(value)
    if number > GALLERY_MAX:
        raise ValueError(f"must be at most {GALLERY_MAX} (images in the misclassified and Grad-CAM figures); "
                         f"got {value!r}")
    return number


def path_text(value) -> str:
    """A path given as text or ``os.PathLike``, kept as text."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a path (text); got {value!r}")
    return value


def lr_value(value) -> str:
    """'auto' or a positive, finite number (kept as text, as the command line gives it)."""
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"must be 'auto' or a positive finite number; got {value!r}")
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

    assignment: str | None = option(None, f"a built-in recipe: {', '.join(ASSIGNMENTS)}", choices=ASSIGNMENTS,
                                        cli=False)
    variant: str = option("spec", "S9's Ultimus block", choices=tuple(S9_VARIANTS))
    epochs: int | None = option(None, "default: the recipe's", check=positive_int)
    batch_size: int | None = option(None, "default: the recipe's; a small --subset gets a smaller one (the log says)",
                                    check=positive_int)
    lr: str = option("auto", "max LR of the one-cycle; 'auto' runs the LR range test", check=lr_value)
    data_dir: str | None = option(None, "local CIFAR-10: DIR/cifar-10-batches-py or DIR/{train,test}/<class>/*.jpg",
                                  check=path_text)
    download: bool = option(True, "never download (use ./data or --data-dir)", flag="--no-download")
    out: str | None = option(None, "output directory (default runs/<name>-<timestamp>, new for every run)",
                             check=path_text)
    overwrite: bool = option(False, "use an --out that already holds files: the files a run writes are removed "
                                    "first, anything else is kept")
    device: str = option("auto", "where to train", choices=("auto", "cpu", "cuda"))
    precision: str = option("auto", "autocast of the forward pass; auto: bf16 where the device runs it natively "
                                    "(AVX-512 BF16/AMX CPU, CUDA 8.0+), fp16 + grad scaler on older GPUs, else fp32; "
                                    "fp64: float64 throughout, for checks that must match on every CPU (slow)",
                            choices=PRECISIONS)
    compile: bool = option(False, "torch.compile the model for training and testing")
    seed: int = option(1, "seed of weights, shuffling and augmentation", check=seed_value)
    subset: int | None = option(None, "use N training and N test images (quick checks)", check=positive_int)
    resume: bool = option(False, "continue the run in --out (default: the latest with a checkpoint) to its end")
    strict: bool = option(False, "stop at the training doctor's first finding")
    workers: int | None = option(None, "DataLoader workers for --loader classic (default 0 on CPU, 2 on CUDA)",
                                 check=non_negative_int)
    loader: str = option("auto", "classic: albumentations in a DataLoader; fast: the split on the device, "
                                 "augmented per batch; auto: fast on CUDA, classic on the CPU",
                         choices=("auto", "classic", "fast"))
    sync_bn: bool = option(False, "under torchrun on CUDA: SyncBatchNorm, BatchNorm statistics over all processes")
    tensorboard: bool = option(True, "write no TensorBoard event files (default: under <out>/tb)",
                               flag="--no-tensorboard")
    gallery: int = option(10, "misclassified images in the gallery and Grad-CAM", check=gallery_size)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            name = meta["flag"] or "--" + f.name.replace("_", "-")
            if isinstance(f.default, bool):  # Run(overwrite="no") must not mean True
                if not isinstance(value, bool):
                    raise ValueError(f"{name} must be True or False; got {value!r}")
                continue
            if value is None and f.default is None:
                continue
            if value is None:
                raise ValueError(f"{name} cannot be None (default {f.default!r})")
            if isinstance(value, bool):  # True is an int to Python, not a count or a name
                raise ValueError(f"{name} must not be True/False; got {value!r}")
            if meta["choices"] and value not in meta["choices"]:
                raise ValueError(f"{name} must be one of {', '.join(meta['choices'])}; got {value!r}")
            if meta["check"]:
                try:
                    object.__setattr__(self, f.name, meta["check"](value))
                except (TypeError, ValueError) as e:
                    raise ValueError(f"{name} {e}") from None
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite exclude each other: --resume continues the run in --out, "
                             "--overwrite replaces it")


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
        help_text = meta["help"]
        if help_text.startswith("default: the recipe's"):  # its numbers, from the recipes themselves
            numbers = "(" + ", ".join(f"{a} {getattr(recipe(a), f.name)}" for a in ASSIGNMENTS) + ")"
            help_text, default = help_text.replace("the recipe's", f"the recipe's {numbers}", 1), ""
        parser.add_argument(flag, dest=f.name, default=f.default, help=help_text + default, **kwargs)


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


@dataclass(frozen=True)
class Resolved:
    """What :func:`resolve_out` decided: the config to run with, the out folder (``unique``: a default name,
    to be made unique when created), and for a resume the checkpoint's state and the options it ignores."""

    config: RunConfig
    out: Path
    unique: bool = False
    state: dict | None = None  # the whole checkpoint (a resume)
    ignored: tuple[str, ...] = ()



def run_config(config: RunConfig | None, recipe, callbacks, options: dict) -> RunConfig:
    """The options of ``Run(...)``: a RunConfig or keywords (not both), a built-in assignment or a recipe (one of
    them), callbacks that are :class:`utils.callbacks.Callback` objects. Each refusal is one line."""
    from utils.callbacks import Callback
    from utils.recipe import Recipe

    if config is not None and options:
        raise ValueError(f"Run: pass the options in the RunConfig or as keywords, not both (got {', '.join(options)} "
                         f"beside a RunConfig)")
    config = config or RunConfig(**options)
    if recipe is None and config.assignment is None:
        raise ValueError(f"Run needs assignment= one of {', '.join(ASSIGNMENTS)}, or recipe=Recipe(...) with a model")
    if recipe is not None and not isinstance(recipe, Recipe):
        raise ValueError(f"Run: recipe must be a utils.Recipe; got {type(recipe).__name__}")
    if recipe is not None and config.assignment is not None:
        raise ValueError(f"Run: pass assignment={config.assignment!r} (a built-in recipe) or recipe=Recipe(...), "
                         f"not both")
    if bad := [cb for cb in callbacks if not isinstance(cb, Callback)]:
        raise ValueError(f"Run: callbacks must be utils.callbacks.Callback objects; got {type(bad[0]).__name__}")
    return config


def check_tensorboard_folder(out: Path, tensorboard: bool) -> None:
    """``<out>/tb``, where TensorBoard writes, must be a folder or absent: else one line."""
    tb = out / "tb"
    if tensorboard and (tb.is_symlink() or tb.exists()) and not tb.is_dir():
        raise OutError(f"--out {out}: {tb} is not a folder, where TensorBoard writes; move it away or pass "
                       f"--no-tensorboard")


def resolve_out(config: RunConfig, name: str) -> Resolved:
    """Where the run goes and, for ``--resume``, the config its checkpoint was started with. Nothing is created
    or written here; the caller's config is not changed. A folder the run may not use is one line."""
    if not config.resume:
        out = Path(config.out) if config.out else default_out(slug(name))
        check_new(out, config.overwrite)
        return Resolved(config, out, unique=not config.out)
    out = Path(config.out) if config.out else latest_run(slug(name))
    if who := holder(out):
        raise in_use(out, who, "--resume:")
    state = load_run_checkpoint(out / CHECKPOINT)
    saved = state["extra"]
    started = saved.get("config", {})
    if config.assignment != started.get("assignment"):
        theirs = started.get("assignment") or f"a run of recipe {saved.get('recipe', {}).get('name')!r}"
        raise OutError(f"--resume: {out} holds {theirs}, not {config.assignment or 'this recipe'}'s run; "
                       f"pass the --out of a {config.assignment or 'this recipe'} run")
    planned = planned_epochs(state)
    if planned is not None and state.get("epoch", 0) >= planned:  # nothing to continue: its files stay as they are
        raise OutError(f"--resume: {out} is finished ({state['epoch']} of {planned} epochs); to train longer, start a "
                       f"new run with more --epochs (and another --out); to look at it: python -m assignments.app {out}")
    keep = {k: started[k] for k in RESUMED if k in started}
    defaults = RunConfig()
    ignored = tuple(f"{k}={getattr(config, k)!r}" for k, v in keep.items()
                    if getattr(config, k) not in (getattr(defaults, k), v))
    return Resolved(dataclasses.replace(config, **keep), out, state=state, ignored=ignored)


def latest_run(prefix: str) -> Path:
    """The newest ``runs/<prefix>-*`` folder with a checkpoint whose run is unfinished and held by no process."""
    runs = sorted((p for p in Path("runs").glob(f"{prefix}-*") if (p / CHECKPOINT).is_file()),
                  key=lambda p: (p / CHECKPOINT).stat().st_mtime, reverse=True)
    for run in runs:
        if holder(run):
            continue
        try:
            state = load_run_checkpoint(run / CHECKPOINT, mmap=True)
        except (RuntimeError, FileNotFoundError):
            continue
        planned = planned_epochs(state)
        if planned is None or state["epoch"] < planned:
            return run
    raise FileNotFoundError(f"--resume: no unfinished runs/{prefix}-* run that no other process holds; pass --out "
                            f"DIR of the run to resume")
