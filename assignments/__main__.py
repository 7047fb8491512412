"""``python -m assignments S7|S8|S9|S10 [options]``: train with the assignment's recipe and write log.txt,
metrics.json, the checkpoint, every figure and report.md into the out directory.

The options are :class:`assignments.config.RunConfig`'s fields. Exit codes: 0 done, 1 a data or run
problem or a file that could not be written (one line on stderr), 2 an option argparse rejects (usage and one
line) or a run the doctor stopped, 130 Ctrl-C (one line: where it stopped and how to resume).
"""
from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None):
    from .config import RunConfig, add_options
    from .recipes import ASSIGNMENTS

    p = argparse.ArgumentParser(prog="python -m assignments",
                                description="Train with the assignment's recipe and write log.txt, metrics.json, "
                                            "the checkpoint, every figure and report.md into the out directory.")
    p.add_argument("assignment", choices=ASSIGNMENTS)
    add_options(p)
    return RunConfig(**vars(p.parse_args(argv)))


def main(argv=None) -> int:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import matplotlib

    matplotlib.use("Agg")  # headless: figures go to PNG files
    try:
        config = parse_args(argv)
    except ValueError as e:  # a value argparse accepted but the config refuses (e.g. --variant for S8)
        say(f"error: {e}")
        return 1
    from utils.data import DataError
    from utils.train import Interrupted

    from .run import Run

    from utils import distributed

    run = None
    try:
        run = Run(config)
        return run.run_all()
    except (DataError, ValueError, FileNotFoundError, RuntimeError) as e:
        say(f"error: {e}")
        return 1
    except OSError as e:  # a full disk, a folder that became read-only: name the file
        where = f"{e.filename}: " if e.filename else ""
        say(f"error: {where}{e.strerror or e}")
        return 1
    except KeyboardInterrupt as e:
        say(interrupted_line(run, e if isinstance(e, Interrupted) else None, config))
        return 130
    finally:
        distributed.close()  # under torchrun: leave the process group


def say(line: str) -> None:
    """``line`` on stderr in one write, so the lines of torchrun's processes, sharing one stderr, never mix."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def interrupted_line(run, where, config) -> str:
    """The one line Ctrl-C prints: where training stopped, what is kept, the command that resumes it."""
    from utils.checkpoint import CHECKPOINT

    if where is None or where.epoch is None:  # outside an epoch: setup, range test, figures
        if run is not None and (run.out / CHECKPOINT).is_file():
            return f"interrupted outside training; the checkpoint in {run.out} is kept; resume with: " \
                   f"{resume_command(run.out, config)}"
        return "interrupted before training: no epoch was checkpointed, nothing to resume"
    head = f"interrupted at epoch {where.epoch} step {where.step}"
    if where.saved_epoch is None:
        return f"{head}; no epoch was checkpointed, nothing to resume"
    return (f"{head}; checkpoint of epoch {where.saved_epoch} kept in {run.out / CHECKPOINT}; resume with: "
            f"{resume_command(run.out, config)}")


def resume_command(out, config) -> str:
    return f"python -m assignments {config.assignment} --out {out} --resume" + (
        f" --data-dir {config.data_dir}" if config.data_dir else "")


if __name__ == "__main__":
    sys.exit(main())
