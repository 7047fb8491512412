"""Atomic checkpoints: write a temp file beside the target, then rename over it.

A crash mid-write leaves the previous checkpoint intact; loading uses ``weights_only=True``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn


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
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`atomic_save`; a missing or unreadable file raises one clear line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch's message suggests weights_only=False: never for a file of unknown origin)
        raise RuntimeError(f"{path}: not a checkpoint this project wrote ({type(e).__name__}); it was not loaded") from None
