"""``python -m assignments S7|S8|S9 [options]``: train with the assignment's recipe and write log.txt,
metrics.json, the checkpoint, every figure and report.md into the out directory.

The options are :class:`assignments.config.RunConfig`'s fields. Exit codes: 0 done, 1 a data or run
problem (one line on stderr), 2 an option argparse rejects (usage and one line) or a run the doctor stopped.
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
        print(f"error: {e}", file=sys.stderr)
        return 1
    from utils.data import DataError

    from .run import Run

    from utils import distributed

    try:
        return Run(config).run_all()
    except (DataError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        distributed.close()  # under torchrun: leave the process group


if __name__ == "__main__":
    sys.exit(main())
