"""Run a notebook headless: ``python -m assignments.execute S9 --set EPOCHS=1 --output OUT.ipynb`` (S7 ... S10,
template, or the path of any notebook with a cell tagged ``parameters``, e.g. a copied template).

``--set NAME=VALUE`` takes only names the parameters cell assigns, and values that are Python literals (``1``,
``'cpu'``, ``None``) or a bare word or path (``cpu``, ``local/data``: taken as text); values are written into the
notebook with ``repr``, so nothing given can run as code. The values a run checks (EPOCHS, LR, DEVICE ...) are
checked before the kernel starts, with one line naming the parameter; so are ``--output`` and ``--timeout``.
A cell that fails is one line too. Values go into a cell inserted after the one tagged ``parameters`` (papermill's
convention, so papermill works on these notebooks too). Once the notebook has run, that cell is taken
out again and the run's parameters and numbers go into one markdown "run note" at the top instead:
the written notebook keeps the defaults of its parameters cell, so *Run all* in Colab works on it
unchanged, while its outputs stay those of the recorded run.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime as dt
import json
import os
import re
import shlex
import subprocess
import sys
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
    at = _parameters_cell(nb, source)
    parameters = dict(parameters)
    parameters.setdefault("OUT", f"runs/{Path(source).stem}-{dt.datetime.now():%Y%m%d-%H%M%S}")
    original = list(nb.cells)  # a failing cell is named by its index in the file
    nb.cells = [c for c in nb.cells if not {INJECTED, NOTE} & set(_tags(c))]
    lines = ["# Parameters injected for this run"] + [f"{k} = {v!r}" for k, v in parameters.items()]
    injected = nbformat.v4.new_code_cell("\n".join(lines), metadata={"tags": [INJECTED]})
    nb.cells.insert(at + 1, injected)
    t0 = time.perf_counter()
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    try:
        # the kernel process's own log (not the cells' output, which comes over its channels) stays off the terminal;
        # no progress bars (a saved widget reads "0%|"; the log lines say the same), no albumentations update check
        env = {"NO_ALBUMENTATIONS_UPDATE": "1", **os.environ, "TQDM_DISABLE": "1"}
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(cwd)}}).execute(stderr=subprocess.DEVNULL, env=env)
    except CellTimeoutError:
        raise NotebookFailed(f"a cell of {Path(source).name} ran past --timeout {timeout} (seconds per cell)") from None
    except CellExecutionError as e:
        raise NotebookFailed(f"{Path(source).name}: {_cell_error(nb, e, original)}") from None
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


class NotebookFailed(RuntimeError):
    """A cell failed or ran past the timeout; the message is one line."""


def _parameters_cell(nb, source) -> int:
    at = next((i for i, c in enumerate(nb.cells) if "parameters" in _tags(c)), None)
    if at is None:
        raise ValueError(f"{source}: no cell tagged 'parameters'")
    return at


def notebook_parameters(nb, source) -> dict:
    """The names the parameters cell assigns, with their default values (None where not a literal)."""
    try:
        tree = ast.parse(nb.cells[_parameters_cell(nb, source)].source)
    except SyntaxError as e:
        raise ValueError(f"{source}: its parameters cell does not parse (line {e.lineno}: {e.msg}); fix that "
                         f"cell") from None
    names = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    try:
                        names[target.id] = ast.literal_eval(node.value)
                    except ValueError:
                        names[target.id] = None
    return names


BARE = re.compile(r"[\w./:~+-]+")  # a word or a path, taken as text


def parse_sets(items: list[str], defined: dict) -> dict:
    """``--set`` items -> {NAME: value}; a name the parameters cell does not assign, a missing ``=`` or a value
    that is neither a literal nor a bare word is one line (ValueError)."""
    params = {}
    for item in items:
        name, eq, value = item.partition("=")
        name = name.strip()
        if not eq:
            raise ValueError(f"--set {item!r}: expected NAME=VALUE, e.g. --set EPOCHS=1")
        if name not in defined:
            raise ValueError(f"--set {name}: the notebook's parameters cell has no {name!r}; it defines "
                             f"{', '.join(defined)}")
        try:
            params[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            if not BARE.fullmatch(value):
                raise ValueError(f"--set {name}: {value!r} is not a Python literal; quote text, e.g. "
                                 f"--set \"{name}='...'\"") from None
            params[name] = value
    return params


def check_parameters(params: dict, defaults: dict) -> None:
    """The run options among ``params`` (EPOCHS -> epochs ...) checked as the run will check them, before the
    notebook starts; the message names the notebook parameter, not the command-line option."""
    from .config import RunConfig

    fields = {f.name for f in dataclasses.fields(RunConfig)}
    if "OUT" in params and not isinstance(params["OUT"], str):
        raise ValueError(f"OUT={params['OUT']!r}: the runner reads the run's metrics from its out folder; give a "
                         f"path, or leave OUT out (runs/<notebook>-<timestamp>)")
    given = {k.lower(): v for k, v in {**defaults, **params}.items() if k.lower() in fields}
    try:
        config = RunConfig(**given)
    except (TypeError, ValueError) as e:
        message = str(e)
        for k in given:
            message = message.replace("--" + k.replace("_", "-"), k.upper())
        raise ValueError(message) from None
    if config.device == "cuda":
        from utils.seed import pick_device

        try:
            pick_device("cuda")
        except ValueError:
            raise ValueError("DEVICE='cuda': no CUDA GPU is visible to torch here; use 'cpu' or 'auto'") from None


def _check_output(output: Path) -> None:
    parent = output.parent if str(output.parent) else Path(".")
    if output.is_dir():
        raise ValueError(f"--output {output}: a directory; give the notebook file to write")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ValueError(f"--output {output}: {parent} is not a writable directory")


def _cell_error(nb, e, original: list) -> str:
    """One line for a failed cell: its index in the notebook file (``original``'s cells) and the exception,
    without ANSI colours."""
    failed = next((c for c in nb.cells if any(o.get("output_type") == "error" for o in c.get("outputs", []))), None)
    number = next((i for i, c in enumerate(original) if c is failed), None)
    where = f"cell {number}" if number is not None else "the injected parameters cell" if failed else "a cell"
    ename, evalue = getattr(e, "ename", type(e).__name__), getattr(e, "evalue", str(e))
    text = re.sub(r"\x1b\[[0-9;]*m", "", f"{ename}: {evalue}").strip().splitlines()
    return f"{where} failed: {text[0] if text else ename}"


def run_note(metrics: dict | None, parameters: dict, command: str, minutes: float | None = None) -> str:
    """The markdown note that says what the outputs below are: parameters, data, device, numbers, command."""
    given = ", ".join(f"`{k} = {v!r}`" for k, v in parameters.items())
    head = (f"**The committed outputs below are one recorded run of this notebook** (after *Run all* they are your "
            f"own run's; this note describes the committed ones), executed headless with `{command}` "
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m assignments.execute",
                                description="Run a notebook headless and write it with a run note.")
    named = ", ".join(sorted((f.stem for f in (REPO / "assignments").glob("*.ipynb")), key=lambda n: (len(n), n)))
    p.add_argument("notebook", help=f"{named} (assignments/NAME.ipynb) or the path of a notebook with a cell tagged "
                                    f"'parameters'")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter of the notebook's parameters cell: a Python literal or a bare word, e.g. EPOCHS=1")
    p.add_argument("--output", required=True, help="where to write the executed notebook")
    p.add_argument("--timeout", type=_positive, default=3600, help="seconds per cell (default 3600)")
    args = p.parse_args(argv)
    import nbformat

    source = Path(args.notebook) if args.notebook.endswith(".ipynb") else REPO / "assignments" / f"{args.notebook}.ipynb"
    try:
        if not source.is_file():
            raise ValueError(f"{args.notebook}: no such notebook; give {named} or a path to a .ipynb")
        defaults = notebook_parameters(nbformat.read(source, as_version=4), source)
        params = parse_sets(args.set, defaults)
        check_parameters(params, defaults)
        _check_output(Path(args.output))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        execute_notebook(source, params, args.output, args.timeout, command=_command(args.notebook, params, args.output))
    except NotebookFailed as e:
        print(f"error: {e}; {args.output} was not written", file=sys.stderr)
        return 1
    print(f"wrote {args.output}")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds; got {text!r}")
    return value


if __name__ == "__main__":
    sys.exit(main())
