"""Is a checkpoint this run's? ``--resume`` compares what the checkpoint was trained with (recipe, model class,
parameter names and shapes, data and its size) with the run about to continue it, before anything is written;
a mismatch is one line naming it."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from utils.checkpoint import CHECKPOINT, first_non_finite, unwrap


def planned_epochs(state: dict) -> int | None:
    """The number of epochs the checkpoint's run was started for."""
    extra = state.get("extra", {})
    return (extra.get("config") or {}).get("epochs") or (extra.get("recipe") or {}).get("epochs")


class ResumeError(ValueError):
    """A checkpoint that is not the run's; the message is one line."""


def check_resumable(state: dict, identity: dict, model: nn.Module, out: Path, steps_per_epoch: int | None = None) -> None:
    """Raise :class:`ResumeError` unless ``state`` (a checkpoint) continues the run described by ``identity``
    (``Run.identity``: recipe, model, data, image counts, data fingerprint) with ``model``'s parameters; a
    checkpoint without an identity (an older layout) must have taken ``steps_per_epoch`` steps per epoch."""
    extra = state["extra"]
    saved = extra.get("identity") or {}
    recipe = (extra.get("recipe") or {}).get("name")
    planned = planned_epochs(state)
    where = f"--resume: {out / CHECKPOINT}"
    if recipe is not None and recipe != identity["recipe"]:
        raise ResumeError(f"{where} is a run of recipe {recipe!r}, not {identity['recipe']!r}; pass the --out of "
                          f"a {identity['recipe']} run")
    if saved.get("model") not in (None, identity["model"]):
        raise ResumeError(f"{where} trained a {saved['model']}, this run builds a {identity['model']}")
    mine = unwrap(model).state_dict()
    theirs = state["model"]
    if missing := [k for k in mine if k not in theirs]:
        raise ResumeError(f"{where} does not fit the model: it has no {missing[0]!r}"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if extra_keys := [k for k in theirs if k not in mine]:
        raise ResumeError(f"{where} does not fit the model: the model has no {extra_keys[0]!r}")
    if bad := next((k for k in mine if tuple(mine[k].shape) != tuple(theirs[k].shape)), None):
        raise ResumeError(f"{where} does not fit the model: {bad!r} is {tuple(theirs[bad].shape)} there, "
                          f"{tuple(mine[bad].shape)} here")
    if saved and (saved.get("data_fingerprint"), saved.get("train_images"), saved.get("test_images")) != (
            identity["data_fingerprint"], identity["train_images"], identity["test_images"]):
        raise ResumeError(f"{where}: the data differ from the run's: it trained on {saved.get('data')} "
                          f"({saved.get('train_images')} train / {saved.get('test_images')} test images), this is "
                          f"{identity['data']} ({identity['train_images']} / {identity['test_images']}); pass the "
                          f"--data-dir (and --subset) it was started with")
    history = state["history"]
    if not saved and steps_per_epoch and history and history[-1]["step"] != state["epoch"] * steps_per_epoch:
        # an older checkpoint without the run's identity: its steps per epoch are what it says of its data
        raise ResumeError(f"{where} took {history[-1]['step'] // max(state['epoch'], 1)} steps per epoch, this data "
                          f"gives {steps_per_epoch} ({identity['data']}); it holds no record of its data (an older "
                          f"checkpoint): pass the --data-dir (and --subset) it was started with")
    if planned is not None and state["epoch"] > planned:
        raise ResumeError(f"{where} is at epoch {state['epoch']} of a {planned}-epoch run")


@dataclass(frozen=True)
class Carried:
    """What a run carries across ``--resume`` beside its weights and history: read once from the checkpoint's
    ``extra`` (:meth:`of`), written into every checkpoint with the run's identity (:meth:`extra`)."""
    max_lr: float | None = None  # the one-cycle's max LR, fixed at the run's start
    lr_search: dict | None = None  # the range test of the run's start (redrawn for the report)
    commands: tuple[str, ...] = ()  # the command lines so far, first run then resumes
    wall_seconds: float = 0.0  # the processes' seconds so far
    attention_entropy_start: list[float] | None = None  # attention entropy on the untrained weights
    step: int = 0  # the last checkpointed optimizer step (0: nothing trained yet)

    @classmethod
    def of(cls, state: dict | None) -> "Carried":
        if not state:
            return cls()
        e, history = state["extra"], state["history"]
        return cls(e.get("max_lr"), e.get("lr_search"), tuple(e.get("commands", [])), e.get("wall_seconds", 0.0),
                   e.get("attention_entropy_start"), history[-1]["step"] if history else 0)

    @classmethod
    def now(cls, result, wall_seconds: float) -> "Carried":
        """What a run (its :class:`utils.report.RunResult`) carries so far, after ``wall_seconds`` in all."""
        return cls(result.max_lr, result.lr_search, tuple(result.commands), wall_seconds,
                   result.checks.get("attention_entropy_start"))

    def extra(self, **identity) -> dict:
        """The checkpoint's ``extra``: these fields (but ``step``, which the history holds) and ``identity``
        (config, recipe, identity, mean, std), as :func:`check_resumable` and the explorer read them."""
        d = asdict(self)
        d.pop("step")
        d["commands"] = list(self.commands)
        return {**identity, **d}


def restore_last_good(model: nn.Module, out: Path, history: list[dict], device) -> str:
    """After the doctor stopped a run: put the last checkpointed epoch's weights back into ``model`` when its own
    are not finite (so the figures and the report describe that epoch); says which checkpoint that is, or that
    there is none. ``history`` holds exactly the epochs on disk."""
    if not history:
        return "no epoch was checkpointed: nothing to resume or draw"
    if first_non_finite(model.state_dict()):
        saved = torch.load(out / CHECKPOINT, map_location=device, weights_only=True)
        model.load_state_dict(saved["model"])
    return f"the last good checkpoint is {out / CHECKPOINT} (epoch {history[-1]['epoch']}); the figures show it"
