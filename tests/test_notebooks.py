"""The notebooks call only the library, keep Colab's defaults and one run note; their Run all in a Colab-like
kernel is tests/test_colab.py."""
import ast
import json
import re
from pathlib import Path

import nbformat
import pytest


REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["S7", "S8", "S9", "S10", "template"]


DEFAULTS = {"DATA_DIR": None, "DEVICE": "auto", "OUT": None}
# a path of one machine: a repo-relative data or run folder, a parent directory, an absolute home or temp path
LOCAL_PATH = re.compile(r"""["'](local/|runs/|\.\./|/tmp/|/home/|/work/|/Users/)""")


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def parameters(nb) -> dict:
    """The literal assignments of the cell tagged ``parameters``."""
    cell = next(c for c in code_cells(nb) if "parameters" in c.metadata.get("tags", []))
    tree = ast.parse(cell.source)
    return {n.targets[0].id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)}


def assert_colab_clean(nb, name):
    """Run all in Colab works unchanged: defaults in the parameters cell, no injected cell, no local path, and
    at most one run note, whose final accuracy is the last one the outputs print."""
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert not [t for t in tags if "injected-parameters" in t], f"{name}: an injected-parameters cell is left"
    params = parameters(nb)
    assert {k: params.get(k, "missing") for k in DEFAULTS} == DEFAULTS, f"{name}: parameters cell lost its defaults"
    for cell in code_cells(nb):
        assert not LOCAL_PATH.search(cell.source), f"{name}: a local path in a code cell: {cell.source[:200]}"
    notes = [c for c, t in zip(nb.cells, tags) if "run-note" in t]
    assert len(notes) <= 1, f"{name}: {len(notes)} run notes"
    text = "".join(o.get("text", "") for c in code_cells(nb) for o in c.outputs if o.output_type == "stream")
    printed = re.findall(r"Test set: Average loss: [\d.]+, Accuracy: \d+/\d+ \(([\d.]+)%\)", text)
    if printed:  # an executed notebook says what its outputs are
        assert notes, f"{name}: executed but no run note"
        noted = re.search(r"final test accuracy \*\*([\d.]+)%\*\*", notes[0].source)
        assert noted and noted.group(1) == printed[-1], f"{name}: note {noted and noted.group(1)} vs outputs {printed[-1]}"
        epochs = re.search(r"(\d+) epochs", notes[0].source)
        assert epochs and int(epochs.group(1)) == len(re.findall(r"^EPOCH: \d+", text, flags=re.M))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameters_cell_defaults_are_the_run_config_defaults(name):
    from assignments.config import RunConfig

    params = parameters(nbformat.read(REPO / "assignments" / f"{name}.ipynb", as_version=4))
    assert params.pop("SAVE_TO_DRIVE") is False  # the notebooks' own: the last cell downloads the zipped run
    defaults = RunConfig()
    for key, value in params.items():
        assert value == getattr(defaults, key.lower()), f"{name}: {key} = {value!r}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_runs_in_colab_unchanged(name):
    assert_colab_clean(nbformat.read(REPO / "assignments" / f"{name}.ipynb", as_version=4), name)


def test_colab_check_catches_what_breaks_run_all():
    nb = nbformat.read(REPO / "assignments" / "S8.ipynb", as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    broken = nbformat.v4.new_code_cell("DATA_DIR = 'local/cifar10-jpeg'", metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(at + 1, broken)
    with pytest.raises(AssertionError, match="injected"):
        assert_colab_clean(nb, "S8")
    broken.metadata["tags"] = []
    with pytest.raises(AssertionError, match="local path"):
        assert_colab_clean(nb, "S8")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_defines_nothing_and_has_a_parameters_cell(name):
    nb = nbformat.read(REPO / "assignments" / f"{name}.ipynb", as_version=4)
    tagged = [c for c in code_cells(nb) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for cell in code_cells(nb):
        source = re.sub(r"^(\s*)[%!].*$", r"\1pass", cell.source, flags=re.M)  # IPython magics and shell lines
        defs = [n for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Lambda))]
        assert defs == [], f"{name}: a notebook cell defines code; move it into utils/ or assignments/"
    assert "colab.research.google.com" in nb.cells[0].source  # the Open in Colab badge


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_outputs_name_no_folder_of_the_machine_that_ran_them(name):
    nb = nbformat.read(REPO / "assignments" / f"{name}.ipynb", as_version=4)
    text = json.dumps([c.outputs for c in code_cells(nb)])
    assert not re.findall(r"(?<![\w.])/(?:tmp|work|home|root|Users)/[^\s\"']*", text)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_committed_cell_has_an_id(name):
    """nbformat 4.5 needs cell ids; nbformat.read adds missing ones silently, so read the file as it is."""
    cells = json.loads((REPO / "assignments" / f"{name}.ipynb").read_text())["cells"]
    assert all("id" in c for c in cells), f"{name}: a cell without an id"


COLAB_PREINSTALLED = {"torch", "torchvision", "timm", "safetensors", "matplotlib", "tqdm", "numpy", "pillow",
                      "tensorboard", "gradio", "ipywidgets", "albumentations"}  # Colab's runtime, August 2026


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_first_cell_installs_only_what_colab_lacks_without_a_restart_note(name):
    nb = nbformat.read(REPO / "assignments" / f"{name}.ipynb", as_version=4)
    first = next(c.source for c in code_cells(nb) if "REPO_URL = " in c.source)
    assert "%pip" not in first  # IPython's %pip ends with "you may need to restart the kernel"; nothing needs one
    lacks = ast.literal_eval(re.search(r"^COLAB_LACKS = (\[.*?\])", first, flags=re.M).group(1))
    names = {re.split(r"[=<>]", p)[0].lower() for p in lacks}
    assert not names & (COLAB_PREINSTALLED - {"albumentations"})  # albumentations: pinned, a no-op where Colab has 2.0.8
    runtime = {re.split(r"[=<>]", line)[0].lower() for line in (REPO / "requirements.txt").read_text().splitlines()
               if line and not line.startswith("#")}
    tests_only = {"pytest", "nbformat", "nbclient", "ipykernel", "selenium"}
    assert runtime - tests_only - COLAB_PREINSTALLED <= names
    app = next(c.source for c in code_cells(nb) if "APP = False" in c.source)
    assert 'find_spec("gradio") is None' in app  # installs gradio only where it is missing


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_beside_cell_puts_this_run_next_to_the_committed_run_the_markdown_quotes(name):
    from utils.report import RunResult, beside

    nb = nbformat.read(REPO / "assignments" / f"{name}.ipynb", as_version=4)
    cells = [c.source for c in code_cells(nb) if c.source.startswith("run.beside(")]
    if name == "template":  # no committed run to compare with
        assert not cells
        return
    folder = re.fullmatch(r'run\.beside\("([^"]+)"\);', cells[0]).group(1)
    committed = json.loads((REPO / "results" / folder / "metrics.json").read_text())
    this = RunResult(name, "Net", 1, "CIFAR-10 (JPEG copy) in somewhere", "CPU (1 thread)", "fp32", 2,
                     history=[{"test_acc": 12.5, "step": 7}, {"test_acc": 33.25, "step": 14}])
    lines = beside(this, committed, folder).splitlines()
    assert lines[1] == f"{'final test accuracy':<22}{'33.25%':<34}{committed['final_test_acc']:.2f}%"
    assert lines[2] == f"{'epochs':<22}{2:<34}{len(committed['history'])}"
