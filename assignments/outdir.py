"""A run's out folder: which one (a new one, the one given, or the run to resume), a lock held for the run's
life, and the rule that nothing a user made is overwritten.

- A new run gets ``runs/<name>-<timestamp>`` (``-2``, ``-3`` ... when that exists) or the ``--out`` given, which
  must be missing or empty; a folder that holds a run needs ``--resume`` or ``--overwrite``, and a non-empty
  folder that is not a run needs ``--overwrite``. ``--overwrite`` removes the files a run writes (so no old
  log line reaches the new report) and keeps everything else.
- ``--resume`` without ``--out`` takes the newest unfinished run of that name that no process holds.
- :func:`claim` creates the folder and takes its lock (``fcntl.flock`` on ``.lock``, released by the kernel
  when the process ends, ``kill -9`` included); a second process gets one line naming the holder.
"""
from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

from utils.checkpoint import CHECKPOINT
from utils.report import FIGURE_TITLES

LOCK = ".lock"
# what a run writes into its folder: removed by --overwrite, nothing else is
RUN_FILES = (CHECKPOINT, "metrics.json", "log.txt", "report.md", "tb", *(f"{name}.png" for name in FIGURE_TITLES))

_held: dict[str, object] = {}  # realpath -> the open lock file, for the life of this process


class OutError(ValueError):
    """An out folder that cannot be used as asked; the message is one line naming the option."""


def in_use(out: Path, who: str, option: str = "--out") -> OutError:
    """The one line for a folder another process holds (``who``: its pid and command)."""
    return OutError(f"{option} {out} is in use by another run ({who}); wait for it or choose another --out")


def is_run(out: Path) -> bool:
    return (out / CHECKPOINT).is_file() or (out / "metrics.json").is_file()


def holder(out: Path) -> str | None:
    """Who holds ``out``'s lock ("pid 123: python -m assignments S9 ..."), or None when no other process does."""
    import fcntl

    path = out / LOCK
    if str(path.resolve()) in _held or not path.is_file():
        return None
    try:
        with open(path) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return f.read().strip() or "another process"
    except OSError:
        return None
    return None


def check_new(out: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` a new run may not use: a file, a folder another run holds, a run (without
    ``--overwrite``) or a non-empty folder (without ``--overwrite``), or one this process cannot write."""
    try:
        for parent in [out, *out.parents]:
            if parent.is_symlink() and not parent.exists():
                raise OutError(f"--out {out}: {parent} is a link to {os.readlink(parent)}, which does not exist; "
                               f"choose another --out")
            if parent.exists() and not parent.is_dir():
                raise OutError(f"--out {out}: {parent} is a file, not a directory; choose another --out")
        if not out.exists():
            return
        entries = [p.name for p in out.iterdir() if p.name != LOCK]
    except OSError as e:  # a name too long, a folder we may not read
        raise OutError(f"--out {out}: cannot use it ({e.strerror})") from None
    if who := holder(out):
        raise in_use(out, who)
    if not overwrite and is_run(out):
        raise OutError(f"--out {out} already holds a run; continue it with --resume, choose another --out, "
                       f"or pass --overwrite to replace its files")
    if not overwrite and entries:
        shown = ", ".join(sorted(entries)[:3]) + (" ..." if len(entries) > 3 else "")
        raise OutError(f"--out {out} is not empty ({shown}) and holds no run; choose an empty or new --out, or pass "
                       f"--overwrite (it removes only the files a run writes)")
    _check_writable(out)


def _check_writable(out: Path) -> None:
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutError(f"--out {out}: not writable; choose another --out")


def default_out(name: str) -> Path:
    return Path(f"runs/{name}-{dt.datetime.now():%Y%m%d-%H%M%S}")


def claim(out: Path, *, unique: bool, overwrite: bool, resume: bool, command: str) -> Path:
    """Create ``out`` (with ``unique``: the first free of ``out``, ``out-2``, ...), lock it for this process's
    life and return it; with ``overwrite`` remove the files a run writes. Between the checks made when the run
    was configured and now another process may have taken the folder: that is one line, nothing written."""
    import fcntl

    candidates = [out] + [out.with_name(f"{out.name}-{i}") for i in range(2, 100)] if unique else [out]
    for path in candidates:
        try:
            path.mkdir(parents=True, exist_ok=not unique)
        except FileExistsError:
            continue
        except OSError as e:
            raise OutError(f"--out {path}: cannot create it ({e.strerror})") from None
        break
    else:
        raise OutError(f"--out {out}: 99 runs of that name started in one second; choose an --out")
    key = str((path / LOCK).resolve())
    if key not in _held:
        try:
            f = open(path / LOCK, "a+")
        except OSError as e:
            raise OutError(f"--out {path}: not writable ({e.strerror}); choose another --out") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            who = f.read().strip() or "another process"
            f.close()
            raise in_use(path, who) from None
        _held[key] = f
        if not resume:  # now that it is ours, the folder must still be what the checks saw
            try:
                check_new(path, overwrite)
            except OutError:
                release(path)
                raise
    f = _held[key]
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}: {command}\n")
    f.flush()
    if overwrite:
        for name in RUN_FILES:
            target = path / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    return path


def release(out: Path) -> None:
    """Give up this process's lock on ``out`` (the kernel does it anyway when the process ends)."""
    f = _held.pop(str((out / LOCK).resolve()), None)
    if f is not None:
        f.close()
