"""The headless notebook runner's rules: ``--set`` takes only the parameters cell's names and literal (or bare
word) values, everything a run checks is checked before the kernel starts, and a failing cell is one line."""
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.slow  # end-to-end: processes, kernels, whole runs

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(REPO)}


def runner(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "assignments.execute", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=600)


def test_code_given_as_a_name_does_not_run(tmp_path):
    marker = tmp_path / "ran"
    p = runner("S9", "--set", f"import os; os.system('touch {marker}'); X=1", "--output", tmp_path / "o.ipynb")
    assert p.returncode == 1 and "the notebook's parameters cell has no" in p.stderr
    assert not marker.exists() and not (tmp_path / "o.ipynb").exists()


@pytest.mark.parametrize("sets, message", [
    (["EPOCH=1"], "--set EPOCH: the notebook's parameters cell has no 'EPOCH'; it defines EPOCHS, BATCH_SIZE"),
    (["EPOCHS"], "--set 'EPOCHS': expected NAME=VALUE"),
    (["EPOCHS=0"], "EPOCHS must be a positive integer; got 0"),
    (["LR=nan"], "LR must be 'auto' or a positive finite number; got 'nan'"),
    (["OUT=None"], "OUT=None: the runner reads the run's metrics from its out folder"),
    (["SEED=__import__('os')"], "--set SEED: \"__import__('os')\" is not a Python literal"),
    (["VARIANT=sideways"], "VARIANT must be one of spec, residual, prescaled, prescaled-residual"),
])
def test_a_bad_set_is_one_line_before_the_notebook_starts(tmp_path, sets, message, capsys):
    from assignments.execute import main

    args = [a for s in sets for a in ("--set", s)]
    code = main(["S9", *args, "--output", str(tmp_path / "o.ipynb")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith(f"error: {message}"), lines
    assert not (tmp_path / "o.ipynb").exists()


def test_values_are_literals_or_bare_words_and_are_written_back_with_repr():
    from assignments.execute import parse_sets

    defined = {"DEVICE": "auto", "EPOCHS": None, "DATA_DIR": None}
    got = parse_sets(["DEVICE=cpu", "EPOCHS=2", "DATA_DIR=local/data-1"], defined)
    assert got == {"DEVICE": "cpu", "EPOCHS": 2, "DATA_DIR": "local/data-1"}


def test_an_output_that_cannot_be_written_is_refused_before_the_run(tmp_path):
    p = runner("S9", "--output", tmp_path / "missing" / "o.ipynb")
    assert p.returncode == 1 and "is not a writable directory" in p.stderr
    p = runner("S9", "--output", tmp_path)
    assert p.returncode == 1 and "a directory; give the notebook file to write" in p.stderr


def test_any_notebook_with_a_parameters_cell_runs_and_a_failing_cell_is_one_line(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("STEPS = 1\nOUT = None", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("if STEPS > 1:\n    raise ValueError(f'STEPS={STEPS} is too many')")]
    nbformat.write(nb, tmp_path / "copy.ipynb")
    p = runner(tmp_path / "copy.ipynb", "--set", "STEPS=1", "--output", tmp_path / "ok.ipynb")
    assert p.returncode == 0, p.stderr
    p = runner(tmp_path / "copy.ipynb", "--set", "STEPS=2", "--output", tmp_path / "failed.ipynb")
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1, p.stderr
    assert lines[0] == f"error: copy.ipynb: cell 1 failed: ValueError: STEPS=2 is too many; {tmp_path / 'failed.ipynb'} " \
                       f"was not written"
    assert "\x1b[" not in p.stderr and not (tmp_path / "failed.ipynb").exists()


def test_the_saved_notebook_has_the_log_lines_and_no_progress_bar(tmp_path):
    """A widget bar saved by a headless kernel reads "0%|" in the file; the runner's kernel draws none."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("OUT = None", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("from utils.progress import progress, say\n"
                                          "for i in progress(range(3), total=3, leave=False):\n    say(f'step {i}')")]
    nbformat.write(nb, tmp_path / "bars.ipynb")
    assert runner(tmp_path / "bars.ipynb", "--output", tmp_path / "out.ipynb").returncode == 0
    outputs = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells[-1].outputs
    assert [o.output_type for o in outputs] == ["stream"] and outputs[0].text == "step 0\nstep 1\nstep 2\n"


def test_the_template_with_a_model_written_by_its_own_cell_runs_and_trains_that_model(tmp_path, folder_dir):
    """The template's documented way in Colab: a ``%%writefile models/<file>.py`` cell after the first one, and
    the model cell importing from it."""
    import json
    import uuid

    name = f"mynet_{uuid.uuid4().hex[:8]}"  # a file of this test's own, removed afterwards
    nb = nbformat.read(REPO / "assignments" / "template.ipynb", as_version=4)
    nb.cells.insert(1, nbformat.v4.new_code_cell(
        f"%%writefile models/{name}.py\nfrom torch import nn\n\n\nclass MyNet(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
        "                                 nn.Flatten(), nn.Linear(8, 10))\n\n"
        "    def forward(self, x):\n        return self.net(x)\n"))
    model_cell = next(c for c in nb.cells if "from models import ResNet18" in c.source)
    model_cell.source = (model_cell.source.replace("from models import ResNet18", f"from models.{name} import MyNet")
                         .replace("model=ResNet18", "model=MyNet").replace("channels_last=True", "channels_last=False"))
    nbformat.write(nb, tmp_path / "mine.ipynb")
    try:
        p = runner(tmp_path / "mine.ipynb", "--set", f"DATA_DIR={folder_dir}", "--set", "DEVICE=cpu", "--set",
                   "SUBSET=96", "--set", "EPOCHS=2", "--set", "BATCH_SIZE=32", "--set", "LR=0.01", "--set",
                   f"OUT={tmp_path / 'run'}", "--output", tmp_path / "ran.ipynb")
        assert p.returncode == 0, p.stderr
    finally:
        (REPO / "models" / f"{name}.py").unlink(missing_ok=True)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["model"] == "MyNet" and len(metrics["history"]) == 2


def test_a_parameters_cell_that_does_not_parse_is_one_line_before_the_notebook_starts(tmp_path, capsys):
    from assignments.execute import main

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("EPOCHS = = 1", metadata={"tags": ["parameters"]})]
    nbformat.write(nb, tmp_path / "broken.ipynb")
    code = main([str(tmp_path / "broken.ipynb"), "--set", "EPOCHS=1", "--output", str(tmp_path / "o.ipynb")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "its parameters cell does not parse (line 1: invalid syntax)" in lines[0]
    assert not (tmp_path / "o.ipynb").exists()
