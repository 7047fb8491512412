"""The Colab student's path: a first cell that fails early and in one line on a placeholder or a failed clone,
one command that points every badge and REPO_URL at a fork, quick checks that train instead of diverging,
and a divergence the doctor names whatever the step count."""
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
import torch

from synthetic import colour_task, write_batches

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["S7", "S8", "S9", "S10", "template"]


def test_publish_points_every_badge_and_repo_url_at_the_fork_and_nothing_else(tmp_path):
    from assignments.publish import main

    root = tmp_path / "copy"
    (root / "assignments").mkdir(parents=True)
    shutil.copy(REPO / "README.md", root)
    for name in NOTEBOOKS:
        shutil.copy(REPO / "assignments" / f"{name}.ipynb", root / "assignments")
    assert main(["jane/cifar10-lab", "--root", str(root)]) == 0
    readme = (root / "README.md").read_text()
    badges = [n for n in NOTEBOOKS if n != "template"]  # the README's table: one badge per assignment
    assert readme.count("colab.research.google.com/github/jane/cifar10-lab/blob/main/assignments/") == len(badges)
    for name in NOTEBOOKS:
        before = nbformat.read(REPO / "assignments" / f"{name}.ipynb", as_version=4)
        after = nbformat.read(root / "assignments" / f"{name}.ipynb", as_version=4)
        assert 'REPO_URL = "https://github.com/jane/cifar10-lab"' in after.cells[[
            i for i, c in enumerate(after.cells) if "REPO_URL = " in c.source][0]].source
        assert f"github/jane/cifar10-lab/blob/main/assignments/{name}.ipynb" in after.cells[0].source
        changed = [i for i, (a, b) in enumerate(zip(before.cells, after.cells)) if a != b]
        assert len(before.cells) == len(after.cells) and len(changed) == 2, (name, changed)
    assert main(["not a repo", "--root", str(root)]) == 1


FORK = "https://github.com/student/cifar10-lab"
STUB_FILES = """import os


def download(path):
    with open(os.environ["COLAB_STUB_DOWNLOADS"], "a") as f:
        f.write(path + "\\n")
"""


@pytest.fixture(scope="module")
def colab_stub(tmp_path_factory):
    """A ``google.colab`` package imported at start-up, as in Colab's kernels; ``files.download`` records the
    path it is given in the file ``$COLAB_STUB_DOWNLOADS``."""
    stub = tmp_path_factory.mktemp("colab")
    (stub / "google" / "colab").mkdir(parents=True)
    # google stays a namespace package (no __init__.py), as in Colab: google.protobuf (TensorBoard) still imports
    (stub / "google" / "colab" / "__init__.py").write_text("")
    (stub / "google" / "colab" / "files.py").write_text(STUB_FILES)
    (stub / "sitecustomize.py").write_text("import google.colab\n")
    return stub


@pytest.fixture(scope="module")
def colab_env(colab_stub):
    return {**os.environ, "PYTHONPATH": f"{colab_stub}{os.pathsep}{REPO}", "NO_ALBUMENTATIONS_UPDATE": "1"}


@pytest.fixture(scope="module")
def fork(tmp_path_factory):
    """This working tree (tracked and untracked, not ignored) committed into a scratch repository and published as
    student/cifar10-lab; returns (the repository, a git config that serves FORK from it as Colab's clone would)."""
    from assignments.publish import main as publish

    root = tmp_path_factory.mktemp("fork")
    src = root / "cifar10-lab"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    assert publish(["student/cifar10-lab", "--root", str(src)]) == 0
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(src)]
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "fork"]):
        subprocess.run(git + args, check=True, capture_output=True)
    config = root / "gitconfig"
    config.write_text(f'[url "{src}"]\n\tinsteadOf = {FORK}\n')
    return src, config


def _colab_kernel_env(monkeypatch, stub: Path, gitconfig: Path, tmp: Path) -> Path:
    """The environment the runner's kernel starts with: the stub alone on PYTHONPATH (the repo is importable only
    from the clone), git reading ``gitconfig``, a private temp dir (TensorBoard's instance files); returns it."""
    (tmp / "tmp").mkdir()
    monkeypatch.setenv("PYTHONPATH", str(stub))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(gitconfig))
    monkeypatch.setenv("TMPDIR", str(tmp / "tmp"))
    monkeypatch.setenv("COLAB_STUB_DOWNLOADS", str(tmp / "downloads.txt"))
    return tmp / "tmp"


def _stop_tensorboards(tmpdir: Path) -> list[dict]:
    """The TensorBoard instances still running from the kernel (their info files under ``tmpdir``), stopped."""
    import json
    import signal

    infos = [json.loads(f.read_text()) for f in (tmpdir / ".tensorboard-info").glob("pid-*.info")]
    for info in infos:
        try:
            os.kill(info["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    return infos


def _first_cell_only(name: str, folder: Path, url: str | None = None, root: Path = REPO) -> Path:
    nb = nbformat.read(root / "assignments" / f"{name}.ipynb", as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "REPO_URL = " in c.source)
    params = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    if url:
        nb.cells[at].source = nb.cells[at].source.replace("https://github.com/OWNER/REPO", url)
    nb.cells[at].source = nb.cells[at].source.replace("/content/repo", str(folder / "content" / "repo"))
    nb.cells = nb.cells[:max(at, params) + 1] + [nbformat.v4.new_code_cell("import assignments")]
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def test_every_notebook_has_the_same_first_cell():
    first = [next(c.source for c in nbformat.read(REPO / "assignments" / f"{name}.ipynb", as_version=4).cells
                  if c.cell_type == "code") for name in NOTEBOOKS]
    assert all(cell == first[0] for cell in first) and "REPO_URL = " in first[0]


@pytest.mark.slow
def test_in_colab_the_placeholder_repo_url_stops_run_all_at_the_first_cell_in_one_line(colab_env, tmp_path):
    name = "S9"  # the first cell is the same in every notebook (above)
    path = _first_cell_only(name, tmp_path)
    p = subprocess.run([sys.executable, "-m", "assignments.execute", str(path), "--output", str(tmp_path / "o.ipynb")],
                       env=colab_env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1, p.stderr
    first_code = next(i for i, c in enumerate(nbformat.read(path, as_version=4).cells) if c.cell_type == "code")
    assert f"cell {first_code} failed: RuntimeError: REPO_URL is the placeholder https://github.com/OWNER/REPO" \
           in lines[0]


@pytest.mark.slow
def test_in_colab_a_clone_that_fails_is_one_line_naming_repo_url(colab_env, tmp_path):
    missing = f"file://{tmp_path / 'no-such-repo'}"
    path = _first_cell_only("S9", tmp_path, url=missing)
    p = subprocess.run([sys.executable, "-m", "assignments.execute", str(path), "--output", str(tmp_path / "o.ipynb")],
                       env=colab_env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1, p.stderr
    assert f"RuntimeError: REPO_URL {missing}: git clone failed" in lines[0]
    assert not Path("/content/repo/.git").exists() or os.environ.get("COLAB_RELEASE_TAG")


# --- Run all in a Colab-like kernel ----------------------------------------------------------------------------
# A CIFAR-10 folder (docs/command.md: Data) in this variable makes each Run all a student's quick check on it:
# SUBSET=2000, EPOCHS=2 and the recipe's batch, as Colab's students type them (.ci/other_pythons.sh passes it on)
QUICK_CHECK_DATA = os.environ.get("COLAB_QUICK_CHECK_DATA")


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_in_colab_run_all_clones_the_fork_trains_and_downloads_the_zipped_run(name, fork, colab_stub, folder_dir,
                                                                              tmp_path, monkeypatch):
    """Each notebook of the published fork, Run all as Colab runs it: the Colab branch of the first cell (clone,
    %cd, %pip), the library imported from the clone, the TensorBoard cell's server on the runs folder, the last
    cell's download. /content is a temp folder; the parameters are the defaults but EPOCHS, SUBSET and BATCH_SIZE
    (small, for time) and DATA_DIR (synthetic: nothing is downloaded offline)."""
    from assignments.execute import execute_notebook
    from test_notebooks import assert_colab_clean, code_cells

    src, gitconfig = fork
    tmpdir = _colab_kernel_env(monkeypatch, colab_stub, gitconfig, tmp_path)
    content = tmp_path / "content"
    content.mkdir()
    nb = nbformat.read(src / "assignments" / f"{name}.ipynb", as_version=4)
    first = next(i for i, c in enumerate(nb.cells) if "REPO_URL = " in c.source)
    published = nb.cells[first].source
    assert f'REPO_URL = "{FORK}"' in published
    nb.cells[first].source = published.replace("/content/repo", str(content / "repo"))
    nb.cells.append(nbformat.v4.new_code_cell("import assignments; print('imported from', assignments.__file__)"))
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, path)
    written = path.read_bytes()
    params = {"EPOCHS": 1, "SUBSET": 64, "BATCH_SIZE": 16, "DATA_DIR": str(folder_dir), "OUT": str(tmp_path / "run")}
    if QUICK_CHECK_DATA:
        params.update(EPOCHS=2, SUBSET=2000, DATA_DIR=QUICK_CHECK_DATA)
        del params["BATCH_SIZE"]
    try:
        out = execute_notebook(path, params, output=tmp_path / "out.ipynb", timeout=900, cwd=content)
    finally:
        servers = _stop_tensorboards(tmpdir)
    assert path.read_bytes() == written  # the runner writes its output, never the notebook it runs
    outputs = [o for c in code_cells(out) for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    later = [o for c in code_cells(out)[1:] for o in c.outputs]  # the first cell's is git's and pip's
    stderr = "".join(o.get("text", "") for o in later if o.output_type == "stream" and o.name == "stderr")
    assert "Warning" not in stderr and "warn" not in stderr.lower(), stderr[:2000]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"imported from {content / 'repo' / 'assignments' / '__init__.py'}" in text
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) >= 7
    board = next(c for c in code_cells(out) if "%tensorboard" in c.source or '"tensorboard"' in c.source)
    shown = [o["data"].get("application/javascript", "") for o in board.outputs if o.output_type == "display_data"]
    assert len(shown) == 1 and "google.colab.kernel.proxyPort(6006" in shown[0]  # TensorBoard answered, inline
    assert all(s["logdir"] == str(tmp_path) for s in servers)  # the runs folder (servers still up at the end)
    downloaded = (tmp_path / "downloads.txt").read_text().split()
    assert downloaded == [str(tmp_path / "run.zip")]
    with zipfile.ZipFile(downloaded[0]) as z:
        assert {"run/report.md", "run/log.txt", "run/metrics.json", "run/curves.png"} <= set(z.namelist())
        assert "run/checkpoint.pt" not in z.namelist()  # the weights stay in the runtime unless asked for
        metrics, log = json.loads(z.read("run/metrics.json")), z.read("run/log.txt").decode()
    assert os.path.getsize(downloaded[0]) < 5e6
    assert log.splitlines()[1].startswith("no GPU in this runtime: Runtime -> Change runtime type -> T4 GPU")
    if QUICK_CHECK_DATA:  # a quick check that is mostly training, and learns
        tested, trained = metrics["lr_search"]["steps"], metrics["history"][-1]["step"]
        accuracy = metrics["history"][-1]["test_acc"]
        print(f"{name}: range test {tested} steps, training {trained} steps, test accuracy {accuracy:.2f}%, "
              f"zip {os.path.getsize(downloaded[0]) / 1e6:.2f} MB")
        assert tested < trained and accuracy > 15
    out.cells[next(i for i, c in enumerate(out.cells) if "REPO_URL = " in c.source)].source = published
    assert_colab_clean(out, name)


@pytest.mark.slow
def test_in_colab_a_second_run_all_pulls_the_fork_s_new_commits(fork, colab_stub, tmp_path, monkeypatch):
    from assignments.execute import execute_notebook

    src, gitconfig = fork
    _colab_kernel_env(monkeypatch, colab_stub, gitconfig, tmp_path)
    (tmp_path / "content").mkdir()
    path = _first_cell_only("S9", tmp_path, root=src)
    execute_notebook(path, {}, cwd=tmp_path / "content")
    clone = tmp_path / "content" / "repo"
    (src / "NEW.md").write_text("a commit after the first clone\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(src)]
    subprocess.run(git + ["add", "NEW.md"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "new"], check=True)
    try:
        again = execute_notebook(path, {}, cwd=tmp_path / "content")
    finally:
        subprocess.run(git + ["reset", "-q", "--hard", "HEAD~1"], check=True)
    printed = "".join(o.get("text", "") for c in again.cells if c.cell_type == "code" for o in c.outputs)
    assert f"{clone} updated" in printed and (clone / "NEW.md").is_file()


# --- quick checks --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_2000(tmp_path_factory):
    return write_batches(tmp_path_factory.mktemp("quick"), colour_task(2000, 500))


def small_resnet():
    from test_own_model import SmallResNet

    return SmallResNet()


@pytest.mark.parametrize("recipe_batch", [128, 512])
@pytest.mark.parametrize("images", [64, 500, 2000, 3000, 5000, 20000, 50000])
def test_a_subset_gets_a_batch_with_enough_steps_and_a_full_run_the_recipe_s(images, recipe_batch):
    from utils.recipe import QUICK_MIN_BATCH, QUICK_STEPS, Recipe

    r = Recipe("r", batch_size=recipe_batch)
    batch, why = r.batch_for(images)
    if images // recipe_batch >= QUICK_STEPS:
        assert (batch, why) == (recipe_batch, None)
        return
    assert batch < recipe_batch and batch & (batch - 1) == 0 and batch >= QUICK_MIN_BATCH
    assert images // batch >= QUICK_STEPS or batch == QUICK_MIN_BATCH  # enough steps, or the smallest batch
    assert images // (2 * batch) < QUICK_STEPS or 2 * batch >= recipe_batch  # and the largest batch that gives them
    assert why.startswith(f"batch {batch}, not the recipe's {recipe_batch}: {images} training images make ")


@pytest.mark.parametrize("lr_scale", [1 / 3, 1.0, 10.0])
@pytest.mark.parametrize("suggested, min_loss", [(5.9e-3, 1.2e-2), (5.5e-2, 9.5e-2), (8.5e-3, 8.5e-3)])
def test_a_quick_check_s_max_lr_stays_below_the_range_test_s_loss_minimum(lr_scale, suggested, min_loss):
    from utils.recipe import Recipe

    r = Recipe("r", lr_scale=lr_scale, lr_iters=100)
    assert r.max_lr(suggested, min_loss, steps=100) == (suggested * lr_scale, None)  # a full run: the recipe's
    lr, why = r.max_lr(suggested, min_loss, steps=64)
    margin = 10 if suggested == min_loss else 3  # a tenth where the steepest descent is the minimum itself
    assert lr <= suggested * min(lr_scale, 1) and lr <= min_loss / margin * (1 + 1e-12)
    assert lr == min(suggested * min(lr_scale, 1), min_loss / margin)  # the largest the rule allows
    assert (why is None) == (lr == suggested * lr_scale)


@pytest.mark.parametrize("per_epoch, total, expected", [(391, 9384, 100), (32, 64, 32), (4, 8, 17), (60, 120, 100),
                                                          (60, 90, 60)])
def test_a_quick_check_s_range_test_takes_one_epoch_and_a_full_run_the_recipe_s(per_epoch, total, expected):
    from utils.recipe import Recipe

    steps, why = Recipe("r", lr_iters=100).range_test_steps(per_epoch, total)
    assert steps == expected and (why is None) == (steps == 100)
    assert steps < total or steps in (17, 100)  # fewer range-test steps than training steps, where the curve allows


@pytest.mark.slow
def test_a_quick_check_gets_a_smaller_batch_and_a_capped_max_lr_and_trains(data_2000, tmp_path):
    from assignments.recipes import recipe
    from assignments.run import Run
    from dataclasses import replace
    from utils.recipe import QUICK_LR_MARGIN, QUICK_LR_MARGIN_NO_DESCENT

    s7 = replace(recipe("S7"), model=small_resnet, channels_last=False)  # its batch 512, lr_scale 10, 100 LR steps
    run = Run(recipe=s7, data_dir=str(data_2000), subset=2000, epochs=2, device="cpu", precision="fp32",
              out=str(tmp_path / "q"))
    assert run.data.batch_size == 64 and len(run.data.train_loader) == 32
    assert run.run_all() == 0
    search = run.result.lr_search
    margin = QUICK_LR_MARGIN_NO_DESCENT if search["suggested_lr"] == search["min_loss_lr"] else QUICK_LR_MARGIN
    assert run.result.max_lr == min(search["suggested_lr"], search["min_loss_lr"] / margin)  # not x 10
    log = (tmp_path / "q" / "log.txt").read_text()
    assert "batch 64, not the recipe's 512: 2000 training images make 4 step(s) per epoch at 512, 32 at 64" in log
    assert (f"max LR {run.result.max_lr:.3e}, not the recipe's {10 * search['suggested_lr']:.3e}: this run has 64 training "
            f"steps, fewer than the recipe's 100 range-test steps") in log
    assert search["steps"] == 32 and len(search["lrs"]) <= 32 and ("LR range test (32 steps, not the recipe's 100: this run has 64 training "
                                         "steps, so the range test takes one epoch (at least 17) on the training set)") in log
    assert "DOCTOR" not in log and "batch 64" in log.split("one-cycle:")[1].splitlines()[0]
    assert run.result.history[-1]["test_acc"] > 30 and run.result.history[-1]["test_loss"] < 2.3  # chance: 10%, ln 10


def test_a_resume_keeps_the_batch_its_checkpoint_trained_with(data_2000, tmp_path, monkeypatch):
    from assignments.run import Run
    from utils import recipe as recipe_module
    from utils.recipe import Recipe

    recipe = Recipe("quick", epochs=1, batch_size=512, model=small_resnet)
    options = dict(data_dir=str(data_2000), subset=1800, device="cpu", lr="0.01", out=str(tmp_path / "q"),
                   tensorboard=False)
    first = Run(recipe=recipe, **options)
    first.train()
    assert first.data.batch_size == 32  # 1,800 images: the rule's batch
    first.close()
    state = torch.load(tmp_path / "q" / "checkpoint.pt", weights_only=True)
    state["extra"]["config"]["epochs"] = 2  # a run of 2 epochs stopped after its first: one --resume continues
    torch.save(state, tmp_path / "q" / "checkpoint.pt")
    monkeypatch.setattr(recipe_module, "QUICK_STEPS", 1)  # the rule now keeps the recipe's 512 ...
    assert Run(recipe=recipe, **{**options, "out": str(tmp_path / "fresh")}).data.batch_size == 512
    resumed = Run(recipe=recipe, **options, resume=True)  # ... but a resume keeps what its checkpoint trained with
    assert resumed.data.batch_size == 32 and len(resumed.data.train_loader) == len(first.data.train_loader)


def test_a_run_whose_test_loss_explodes_is_flagged_whatever_its_step_count():
    from utils.doctor import Doctor

    doctor = Doctor(num_classes=10, log=lambda m: None)
    doctor.check_test_loss(8, 2.2, None)
    assert not doctor.findings
    doctor.check_test_loss(16, 308.6, 2.2)
    assert [f.kind for f in doctor.findings] == ["divergence"]
    assert "the test loss 308.6 is 134x that of guessing (ln 10 = 2.303)" in doctor.findings[0].message
    jump = Doctor(num_classes=10, log=lambda m: None)
    jump.check_test_loss(16, 2.0, 0.15)
    assert "the test loss rose from 0.15 to 2 in one epoch" in jump.findings[0].message


class LoudInEval(__import__("torch").nn.Module):
    """Trains as a small linear model; in eval mode its logits are 1e4 times larger: a test loss far above ln 10."""

    def __init__(self):
        import torch

        super().__init__()
        self.fc = torch.nn.Linear(3, 10)

    def forward(self, x):
        return self.fc(x.mean((2, 3))) * (1.0 if self.training else 1e4)


def test_fit_hands_each_epoch_s_test_loss_to_the_doctor():
    import torch

    from utils.doctor import Doctor
    from utils.train import fit

    torch.manual_seed(0)
    batches = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))) for _ in range(2)]
    model = LoudInEval()
    doctor = Doctor(num_classes=10, log=lambda m: None)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    fit(model, batches, batches, opt, torch.nn.CrossEntropyLoss(), 1, callbacks=[doctor])
    assert [f.kind for f in doctor.findings] == ["divergence"] and "that of guessing" in doctor.findings[0].message


@pytest.mark.slow
def test_a_finding_is_logged_once_and_the_doctor_s_last_line_points_to_it(folder_dir, tmp_path):
    from assignments.run import Run
    from utils.recipe import Recipe

    run = Run(recipe=Recipe("loud", epochs=1, batch_size=16, model=LoudInEval), data_dir=str(folder_dir), subset=64,
              device="cpu", lr="0.01", out=str(tmp_path / "loud"), tensorboard=False)
    run.run_all()
    run.doctor_findings()  # the notebooks' cell after training
    log = (tmp_path / "loud" / "log.txt").read_text()
    finding = run.result.health[0]
    assert finding["kind"] == "divergence" and log.count(finding["message"]) == 1
    last = [line for line in log.splitlines() if line.startswith("Training doctor:")]
    assert last == [f"Training doctor: 1 finding(s), logged in full above: divergence at step {finding['step']} "
                    f"({run.result.checks['doctor']})"]


def test_outside_colab_keep_names_the_run_relative_to_the_working_directory_it_lies_under(tmp_path, monkeypatch,
                                                                                          capsys):
    from utils.keep import keep_run

    (tmp_path / "here" / "runs" / "S10-x").mkdir(parents=True)
    (tmp_path / "here" / "runs" / "S10-x" / "log.txt").write_text("log")
    monkeypatch.chdir(tmp_path / "here")
    keep_run("runs/S10-x")
    assert capsys.readouterr().out == "the run is in runs/S10-x/ and runs/S10-x.zip\n"
    monkeypatch.chdir(tmp_path / "here" / "runs" / "S10-x")  # the run is not under it: the whole path
    archive = keep_run(tmp_path / "here" / "runs" / "S10-x")
    assert capsys.readouterr().out == f"the run is in {archive.with_suffix('')}/ and {archive}\n"


def test_keep_zips_the_run_and_downloads_it_in_colab_or_copies_it_to_drive(tmp_path, monkeypatch):
    import types

    from utils.keep import keep_run

    out = tmp_path / "runs" / "S9-x"
    out.mkdir(parents=True)
    for name in ("report.md", "log.txt", "metrics.json", "curves.png", ".lock", "checkpoint.pt"):
        (out / name).write_text(name)
    calls = []
    colab = types.ModuleType("google.colab")
    colab.files = types.SimpleNamespace(download=lambda path: calls.append(("download", path)))
    colab.drive = types.SimpleNamespace(mount=lambda where: calls.append(("mount", where)))
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    archive = keep_run(out)
    assert calls == [("download", str(archive))] and archive == tmp_path / "runs" / "S9-x.zip"
    with zipfile.ZipFile(archive) as z:
        assert sorted(z.namelist()) == ["S9-x/curves.png", "S9-x/log.txt", "S9-x/metrics.json", "S9-x/report.md"]
    first = archive.read_bytes()
    kept = keep_run(out, to_drive=True, drive_dir=str(tmp_path / "drive"))  # a second zip: S9-x-2.zip
    assert calls[-1] == ("mount", "/content/drive") and kept == tmp_path / "drive" / "S9-x-2.zip" and kept.is_file()
    assert "S9-x/checkpoint.pt" in zipfile.ZipFile(kept).namelist()  # Drive keeps the weights
    asked = keep_run(out, checkpoint=True)  # a download with the weights, when asked
    assert "S9-x/checkpoint.pt" in zipfile.ZipFile(asked).namelist() and asked.name == "S9-x-3.zip"
    monkeypatch.delitem(sys.modules, "google.colab")
    calls.clear()
    assert keep_run(out) == tmp_path / "runs" / "S9-x-4.zip" and calls == []  # outside Colab: the path printed
    assert archive.read_bytes() == first  # an earlier zip is never replaced


def test_keep_refuses_what_is_not_a_run_folder_and_names_the_local_zip_when_drive_fails(tmp_path, monkeypatch,
                                                                                         capsys):
    import types

    from utils.keep import keep_run

    (tmp_path / "a-file").write_text("x")
    for bad in (tmp_path / "nowhere", tmp_path / "a-file", tmp_path / "no" / "parent"):
        with pytest.raises(ValueError, match="is not a run folder") as e:
            keep_run(bad)
        assert len(str(e.value).splitlines()) == 1
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.txt").write_text("log")
    monkeypatch.chdir(out)
    assert keep_run(".") == tmp_path / "run.zip"  # "." is the folder it names, not ".zip"
    keep_run(out, to_drive=True)
    assert "to_drive needs Colab's Google Drive: ignored here" in capsys.readouterr().out

    def refuse(where):
        raise OSError("mount failed")
    colab = types.ModuleType("google.colab")
    colab.drive = types.SimpleNamespace(mount=refuse)
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    local = keep_run(out, to_drive=True, drive_dir=str(tmp_path / "drive"))
    assert local.parent == tmp_path and local.is_file()
    assert f"OSError: mount failed; the run is zipped in {local}" in capsys.readouterr().out


def test_publish_refuses_a_bad_name_or_root_in_one_line_and_leaves_every_file_as_it_was(tmp_path):
    from assignments.publish import main as publish

    root = tmp_path / "checkout"
    shutil.copytree(REPO / "assignments", root / "assignments", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "README.md", root / "README.md")
    before = {p: p.read_bytes() for p in [root / "README.md", *(root / "assignments").glob("*.ipynb")]}
    (tmp_path / "a-file").write_text("x")
    for args in (["jane/repo\n", "--root", root], ["jane/..", "--root", root], ["jane/.", "--root", root],
                 ["jane/repo", "--root", tmp_path / "no-such-dir"], ["jane/repo", "--root", tmp_path / "a-file"]):
        assert publish([str(a) for a in args]) == 1, args
    assert {p: p.read_bytes() for p in before} == before
    assert publish(["jane/cifar10-lab", "--root", str(root)]) == 0
    for p in before:
        if p.suffix == ".ipynb":
            assert "https://github.com/jane/cifar10-lab" in json.dumps(json.loads(p.read_text()))


@pytest.mark.slow
def test_without_a_gpu_in_colab_the_first_lines_say_how_to_get_one_and_what_the_cpu_costs(folder_dir, tmp_path,
                                                                                           monkeypatch, capsys):
    import types

    from assignments.run import Run

    options = dict(assignment="S9", data_dir=str(folder_dir), epochs=3, device="cpu", lr="0.01", tensorboard=False)
    Run(**options, out=str(tmp_path / "here")).close()
    assert "no GPU" not in capsys.readouterr().out  # outside Colab: nothing to say
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    Run(**options, out=str(tmp_path / "colab")).close()
    second = capsys.readouterr().out.splitlines()[1]
    assert second.startswith("no GPU in this runtime: Runtime -> Change runtime type -> T4 GPU (free) and Run all "
                             "again; on this CPU one step of 32 images took ")
    assert re.search(r"so the 3 epochs would take about \d+\.\d h$", second), second
