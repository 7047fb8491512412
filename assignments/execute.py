"""Run an assignment notebook headless: ``python -m assignments.execute S9 --set EPOCHS=1 --output OUT.ipynb``.

Values given with ``--set`` go into a cell inserted after the one tagged ``parameters`` (papermill's
convention, so papermill works on these notebooks too). Once the notebook has run, that cell is taken
out again and the run's parameters and numbers go into one markdown "run note" at the top instead:
the written notebook keeps the defaults of its parameters cell, so *Run all* in Colab works on it
unchanged, while its outputs stay those of the recorded run.
"""
from __future__ import annotations

import argparse
import ast
import datetime as dt
import json
import os
import shlex
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INJECTED, NOTE = "injected-parameters", "run-note"


def _tags(cell) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def execute_notebook(source: str | Path, parameters: dict, output: str | Path | None = None,
                     timeout: int = 600, cwd: str | Path = REPO, command: str | None = None):
    """Execute ``source`` top to bottom with ``parameters`` injected; write it to ``output``; return the notebook.

    The returned notebook has no injected cell and exactly one run note (see :func:`run_note`). Without an
    ``OUT`` parameter the run goes to ``runs/<notebook>-<timestamp>`` so that its metrics can be read back.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(source, as_version=4)
    at = next((i for i, c in enumerate(nb.cells) if "parameters" in _tags(c)), None)
    if at is None:
        raise ValueError(f"{source}: no cell tagged 'parameters'")
    parameters = dict(parameters)
    parameters.setdefault("OUT", f"runs/{Path(source).stem}-{dt.datetime.now():%Y%m%d-%H%M%S}")
    nb.cells = [c for c in nb.cells if not {INJECTED, NOTE} & set(_tags(c))]
    lines = ["# Parameters injected for this run"] + [f"{k} = {v!r}" for k, v in parameters.items()]
    injected = nbformat.v4.new_code_cell("\n".join(lines), metadata={"tags": [INJECTED]})
    nb.cells.insert(at + 1, injected)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    minutes = (time.perf_counter() - t0) / 60
    nb.cells.remove(injected)
    metrics_path = Path(cwd) / parameters["OUT"] / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
    command = command or _command(Path(source).stem, parameters, output)
    nb.cells.insert(1, nbformat.v4.new_markdown_cell(run_note(metrics, parameters, command, minutes),
                                                     metadata={"tags": [NOTE]}))
    if output:
        nbformat.write(nb, output)
    return nb


def run_note(metrics: dict | None, parameters: dict, command: str, minutes: float | None = None) -> str:
    """The markdown note that says what the outputs below are: parameters, data, device, numbers, command."""
    given = ", ".join(f"`{k} = {v!r}`" for k, v in parameters.items())
    head = (f"**The outputs below are one run of this notebook**, executed headless with `{command}` "
            f"(parameters {given}). The parameters cell keeps its defaults, so *Run all* trains afresh "
            f"(in Colab: the original CIFAR-10 downloaded by torchvision, on the GPU).")
    if not metrics:
        return head
    h = metrics["history"]
    m = metrics
    wall = f"wall time {m['wall_seconds'] / 60:.1f} min" + (f" ({minutes:.1f} min for the whole notebook)"
                                                            if minutes is not None else "")
    return head + (f"\n\nRun: {m.get('name') or m['assignment']}, {len(h)} epochs, data {m['data']}, device "
                   f"{m['device']}, precision {m.get('precision', 'fp32')}, {m['date']}, {wall}: final test "
                   f"accuracy **{m['final_test_acc']:.2f}%** (best {m['best_test_acc']:.2f}%).")


def _command(name: str, parameters: dict, output) -> str:
    sets = " ".join(f"--set {shlex.quote(f'{k}={v}')}" for k, v in parameters.items())
    return f"python -m assignments.execute {name} {sets} --output {output or '-'}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m assignments.execute",
                                description="Run an assignment notebook headless and write it with a run note.")
    p.add_argument("assignment", choices=["S7", "S8", "S9", "template"], help="the notebook assignments/NAME.ipynb")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a Python literal, e.g. EPOCHS=1")
    p.add_argument("--output", required=True, help="where to write the executed notebook")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = p.parse_args(argv)
    params = {}
    for item in args.set:
        name, _, value = item.partition("=")
        try:
            params[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            params[name] = value  # a bare string such as DEVICE=cpu
    execute_notebook(REPO / "assignments" / f"{args.assignment}.ipynb", params, args.output, args.timeout)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
