"""Atomic checkpoints: write a temp file beside the target, then rename over it.

A crash or a full disk mid-write leaves the previous checkpoint intact; loading uses ``weights_only=True``
(no file can run code), and :func:`load_run_checkpoint` also checks that the file is a run's checkpoint.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


CHECKPOINT = "checkpoint.pt"  # a run's checkpoint in its out folder


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under ``torch.compile`` / DataParallel wrappers (no ``_orig_mod.``/``module.`` keys)."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` so that ``path`` is either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed while saving
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, (OSError, RuntimeError)):  # torch.save reports a full disk as a RuntimeError
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0][:120]
            kept = "the previous checkpoint is kept" if path.exists() else "no checkpoint was written"
            raise OSError(getattr(e, "errno", None), f"could not write {path} ({reason}; disk full?): {kept}") from None
        raise


def load_checkpoint(path: str | os.PathLike, map_location="cpu", mmap: bool = False):
    """Load a file written by :func:`atomic_save`; a missing or unreadable file raises one clear line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001  (torch's message suggests weights_only=False: never for a file of unknown origin)
        raise RuntimeError(f"{path}: not a checkpoint this project wrote ({type(e).__name__}); it was not loaded") from None


# a run's checkpoint (utils.train.fit): key -> the type it must have
RUN_KEYS = {"model": dict, "optimizer": dict, "epoch": int, "history": list, "extra": dict}


def first_non_finite(weights: dict) -> str | None:
    """The name of the first floating tensor in ``weights`` (a state dict) holding NaN or inf, or None."""
    return next((k for k, v in weights.items() if v.is_floating_point() and not v.isfinite().all()), None)


def load_run_checkpoint(path: str | os.PathLike, map_location="cpu", mmap: bool = False) -> dict:
    """:func:`load_checkpoint` of a run's checkpoint, checked before anything uses it: the keys ``fit`` writes
    with their types, tensors as weights, all of them finite, and an epoch within its history."""
    state = load_checkpoint(path, map_location, mmap)
    problem = None
    if not isinstance(state, dict):
        problem = f"a {type(state).__name__}, not a run's checkpoint"
    else:
        missing = [k for k in RUN_KEYS if k not in state]
        wrong = [k for k, t in RUN_KEYS.items() if k in state and not isinstance(state[k], t)]
        if missing or wrong:
            problem = (f"no {', '.join(map(repr, missing))}" if missing else
                       f"{', '.join(map(repr, wrong))} of the wrong type")
        elif not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
            problem = "'model' holds values that are not tensors"
        elif bad := first_non_finite(state["model"]):
            problem = f"weight {bad!r} is not finite (NaN or inf)"
        elif not 0 <= state["epoch"] == len(state["history"]):
            problem = f"epoch {state['epoch']} but {len(state['history'])} epochs of history"
    if problem:
        raise RuntimeError(f"{path}: not a checkpoint of a run ({problem}); it was not used")
    return state


@dataclass
class Checkpoint:
    """Where :func:`utils.train.fit` saves the run after every epoch, and what it resumes from first: ``resume``
    True loads ``path``, a dict is the checkpoint already loaded (:func:`load_run_checkpoint`), None starts afresh."""
    path: str | os.PathLike
    resume: bool | dict | None = None
