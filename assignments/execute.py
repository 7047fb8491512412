"""Run an assignment notebook headless: ``python -m assignments.execute S9 --set EPOCHS=1 --output OUT.ipynb``.

Values given with ``--set`` go into a cell inserted after the one tagged ``parameters`` (papermill's
convention, so papermill works on these notebooks too). Used by the tests and for committed runs.
"""
from __future__ import annotations

import argparse
import ast
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def execute_notebook(source: str | Path, parameters: dict, output: str | Path | None = None,
                     timeout: int = 600, cwd: str | Path = REPO):
    """Execute ``source`` top to bottom with ``parameters`` injected; write it to ``output``; return the notebook."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(source, as_version=4)
    at = next((i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if at is None:
        raise ValueError(f"{source}: no cell tagged 'parameters'")
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    lines = ["# Parameters injected for this run"] + [f"{k} = {v!r}" for k, v in parameters.items()]
    cell = nbformat.v4.new_code_cell("\n".join(lines), metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(at + 1, cell)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    if output:
        nbformat.write(nb, output)
    return nb


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m assignments.execute", description=__doc__)
    p.add_argument("assignment", choices=["S7", "S8", "S9"])
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
