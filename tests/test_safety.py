"""Never lose a run: the out folder's rules and lock, resume's checks, Ctrl-C, a full disk, files that are not
a run's, options of the wrong type. Each test builds the failure for real (a second process, a signal, a
foreign checkpoint) or mocks only the disk."""
import hashlib
import shutil
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from synthetic import colour_task, write_batches

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
SMALL = ("--subset", 96, "--batch-size", 32, "--device", "cpu", "--lr", "0.003", "--precision", "fp32")


def cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "assignments", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=600)


def start(*args, cwd=REPO):
    """A CLI run in the background that takes Ctrl-C as a terminal would deliver it (SIGINT not ignored)."""
    return subprocess.Popen([sys.executable, "-m", "assignments", *map(str, args)], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (but the lock) with the hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def one_line(p) -> str:
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_batches(tmp_path_factory.mktemp("safety"), colour_task(300, 100))


@pytest.fixture(scope="module")
def s9_run(data_dir, tmp_path_factory):
    """A finished 1-epoch S9 run folder."""
    out = tmp_path_factory.mktemp("runs") / "s9"
    p = cli("S9", "--data-dir", data_dir, *SMALL, "--epochs", 1, "--out", out)
    assert p.returncode == 0, p.stderr[-2000:]
    return out


# --- options ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options, message", [
    ({"overwrite": "no"}, "--overwrite must be True or False; got 'no'"),
    ({"resume": "false"}, "--resume must be True or False; got 'false'"),
    ({"strict": "no"}, "--strict must be True or False; got 'no'"),
    ({"loader": None}, "--loader cannot be None"),
    ({"gallery": None}, "--gallery cannot be None"),
    ({"seed": None}, "--seed cannot be None"),
    ({"data_dir": 123}, "--data-dir must be a path (text); got 123"),
    ({"out": 123}, "--out must be a path (text); got 123"),
    ({"seed": 2**70}, "--seed must be an integer from 0 to 4294967295"),
    ({"gallery": 10**9}, "--gallery must be at most 100"),
    ({"epochs": True}, "--epochs must not be True/False"),
    ({"resume": True, "overwrite": True}, "--resume and --overwrite exclude each other"),
])
def test_run_config_refuses_a_value_of_the_wrong_kind_naming_the_option(options, message):
    from assignments.config import RunConfig

    with pytest.raises(ValueError) as e:
        RunConfig(assignment="S9", **options)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_config_and_keywords_together_is_one_line_not_a_dropped_option():
    from assignments.config import RunConfig
    from assignments.run import Run

    with pytest.raises(ValueError, match="pass the options in the RunConfig or as keywords, not both .*epochs"):
        Run(RunConfig(assignment="S9"), epochs=5)


@pytest.mark.slow
def test_fp16_on_the_cpu_is_refused(tmp_path):
    p = cli("S9", "--precision", "fp16", "--device", "cpu", "--out", tmp_path / "o", "--no-download")
    assert p.returncode == 1 and "--precision fp16 runs on CUDA only" in one_line(p)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_seed_too_large_and_a_path_too_long_are_one_line(tmp_path):
    p = cli("S9", "--seed", 2**70, "--out", tmp_path / "o")
    assert p.returncode == 2 and "argument --seed: must be an integer from 0 to 4294967295" in p.stderr
    long = tmp_path / ("x" * 300)
    p = cli("S9", "--out", long, "--no-download")
    assert p.returncode == 1 and "cannot use it (File name too long)" in one_line(p)


# --- checkpoints that are not a run's ------------------------------------------------------------------
@pytest.mark.parametrize("payload, problem", [
    (torch.zeros(3), "a Tensor, not a run's checkpoint"),
    ({"model": {}, "optimizer": {}, "epoch": 1, "history": [{}]}, "no 'extra'"),
    ({"model": {}, "optimizer": {}, "epoch": 1, "history": [{}], "extra": []}, "'extra' of the wrong type"),
    ({"model": {"w": torch.tensor([1.0, float("nan")])}, "optimizer": {}, "epoch": 1, "history": [{}], "extra": {}},
     "weight 'w' is not finite"),
    ({"model": {"w": torch.ones(1)}, "optimizer": {}, "epoch": 3, "history": [{}], "extra": {}},
     "epoch 3 but 1 epochs of history"),
])
def test_a_checkpoint_that_loads_but_is_not_a_run_s_is_refused_in_one_line(tmp_path, payload, problem):
    from utils.checkpoint import load_run_checkpoint

    torch.save(payload, tmp_path / "c.pt")
    with pytest.raises(RuntimeError) as e:
        load_run_checkpoint(tmp_path / "c.pt")
    assert problem in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_resume_of_a_tampered_checkpoint_writes_nothing(s9_run, data_dir, tmp_path):
    import shutil

    out = tmp_path / "tampered"
    shutil.copytree(s9_run, out)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    del state["model"]
    torch.save(state, out / "checkpoint.pt")
    before = snapshot(out)
    p = cli("S9", "--data-dir", data_dir, "--out", out, "--resume")
    assert p.returncode == 1 and "not a checkpoint of a run (no 'model')" in one_line(p)
    assert snapshot(out) == before


# --- the out folder ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_folder_that_holds_other_files_is_refused_and_overwrite_keeps_them(data_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / "report.md").write_text("my report")
    p = cli("S9", "--data-dir", data_dir, *SMALL, "--epochs", 1, "--out", out)
    assert p.returncode == 1 and "is not empty (notes.txt, report.md) and holds no run" in one_line(p)
    assert snapshot(out) == {"notes.txt": snapshot(out)["notes.txt"], "report.md": snapshot(out)["report.md"]}
    assert (out / "report.md").read_text() == "my report"
    # --overwrite: the run's own files are replaced, the rest stays
    (out / "log.txt").write_text("EPOCH: 99\n")
    p = cli("S9", "--data-dir", data_dir, *SMALL, "--epochs", 1, "--out", out, "--overwrite")
    assert p.returncode == 0, p.stderr[-2000:]
    assert (out / "notes.txt").read_text() == "my notes"
    log = (out / "log.txt").read_text()
    assert "EPOCH: 99" not in log and log.count("EPOCH:") == 1
    assert "EPOCH: 99" not in (out / "report.md").read_text()


def test_default_folders_are_unique_even_in_the_same_second(tmp_path):
    from assignments.outdir import claim, default_out, release

    base = tmp_path / default_out("S9-spec")
    first = claim(base, unique=True, overwrite=False, resume=False, command="a")
    second = claim(base, unique=True, overwrite=False, resume=False, command="b")
    assert first == base and second == base.with_name(base.name + "-2")
    release(first), release(second)


HOLD = """
import sys, time
from pathlib import Path
from assignments.outdir import claim
claim(Path(sys.argv[1]), unique=False, overwrite=False, resume=True, command="python -m assignments S9 (holder)")
print("held", flush=True)
time.sleep(120)
"""


@pytest.mark.slow
def test_a_folder_held_by_another_process_is_refused_naming_the_holder(s9_run, data_dir, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(s9_run)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(s9_run)
        p = cli("S9", "--data-dir", data_dir, "--out", s9_run, "--resume")
        assert p.returncode == 1
        assert f"is in use by another run (pid {holder.pid}: python -m assignments S9 (holder))" in one_line(p)
        p = cli("S9", "--data-dir", data_dir, *SMALL, "--out", s9_run, "--overwrite")
        assert p.returncode == 1 and f"in use by another run (pid {holder.pid}" in one_line(p)
        assert snapshot(s9_run) == before
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the lock of the killed holder: the folder is free again
    from assignments.outdir import holder as who

    assert who(s9_run) is None


@pytest.mark.slow
def test_two_runs_started_together_on_one_out_leave_one_run(data_dir, tmp_path):
    out = tmp_path / "race"
    args = ("S9", "--data-dir", data_dir, *SMALL, "--epochs", 1, "--out", out)
    a, b = start(*args), start(*args)
    results = [(p.wait(timeout=600), p.stderr.read()) for p in (a, b)]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    loser = next(err for code, err in results if code == 1).strip()
    assert len(loser.splitlines()) == 1 and ("in use by another run" in loser or "already holds a run" in loser)
    m = json.loads((out / "metrics.json").read_text())
    assert len(m["commands"]) == 1 and (out / "log.txt").read_text().count("EPOCH: 1") == 1


def _fake_run(folder: Path, epoch: int, planned: int):
    from utils.checkpoint import atomic_save

    atomic_save({"model": {"w": torch.ones(1)}, "optimizer": {}, "epoch": epoch, "history": [{}] * epoch,
                 "extra": {"config": {"assignment": "S9", "epochs": planned}}}, folder / "checkpoint.pt")
    time.sleep(0.02)  # distinct modification times


@pytest.mark.slow
def test_resume_without_out_takes_the_newest_unfinished_run_no_process_holds(tmp_path, monkeypatch):
    from assignments.config import latest_run
    from assignments.outdir import claim, release

    monkeypatch.chdir(tmp_path)
    runs = {name: tmp_path / "runs" / f"S9-spec-{name}" for name in ("old", "free", "finished", "held")}
    for name, folder in runs.items():
        folder.mkdir(parents=True)
    _fake_run(runs["old"], 1, 3)
    _fake_run(runs["free"], 1, 3)
    _fake_run(runs["finished"], 3, 3)
    _fake_run(runs["held"], 1, 3)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(runs["held"])], env=ENV, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert latest_run("S9-spec") == Path("runs/S9-spec-free")
    finally:
        holder.kill()
        holder.wait()
    assert latest_run("S9-spec") == Path("runs/S9-spec-held")  # free again
    claim(Path("runs/S9-spec-held"), unique=False, overwrite=False, resume=True, command="x")  # this process: its own
    assert latest_run("S9-spec") == Path("runs/S9-spec-held")
    release(Path("runs/S9-spec-held"))


# --- resume's checks ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_resume_of_another_assignment_s_run_is_one_line_and_changes_nothing(s9_run, data_dir):
    before = snapshot(s9_run)
    p = cli("S8", "--data-dir", data_dir, "--out", s9_run, "--resume")
    assert p.returncode == 1 and f"--resume: {s9_run} holds S9, not S8's run" in one_line(p)
    assert snapshot(s9_run) == before


@pytest.mark.slow
def test_resume_on_other_data_is_one_line_and_changes_nothing(s9_run, tmp_path):
    other = write_batches(tmp_path / "other", colour_task(300, 100, seed=7))
    unfinished = _unfinished(s9_run, tmp_path / "unfinished")
    before = snapshot(unfinished)
    p = cli("S9", "--data-dir", other, "--out", unfinished, "--resume")
    assert p.returncode == 1 and "the data differ from the run's" in one_line(p)
    assert snapshot(unfinished) == before


def _unfinished(run: Path, out: Path) -> Path:
    """A copy of a finished 1-epoch run whose checkpoint plans 2 epochs: a run --resume may continue."""
    import shutil

    shutil.copytree(run, out)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["extra"]["config"]["epochs"] = 2
    torch.save(state, out / "checkpoint.pt")
    return out


@pytest.mark.slow
def test_resume_of_a_finished_run_is_one_line_and_changes_nothing(s9_run, data_dir):
    before = snapshot(s9_run)
    p = cli("S9", "--data-dir", data_dir, "--out", s9_run, "--resume")
    assert p.returncode == 1 and f"--resume: {s9_run} is finished (1 of 1 epochs); to train longer" in one_line(p)
    assert snapshot(s9_run) == before


def test_a_built_in_assignment_and_a_recipe_together_are_refused_in_one_line(tmp_path):
    from assignments.run import Run
    from utils import Recipe

    with pytest.raises(ValueError, match="pass assignment='S8' .* or recipe=Recipe") as e:
        Run(assignment="S8", recipe=Recipe("X", epochs=1, batch_size=8), model=torch.nn.Linear(1, 1),
            out=str(tmp_path / "x"))
    assert len(str(e.value).splitlines()) == 1 and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_resume_with_a_model_of_other_shapes_is_one_line(data_dir, tmp_path):
    from torch import nn

    from assignments.resume import ResumeError
    from assignments.run import Run
    from utils import Recipe

    def net(width):
        return lambda: nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                     nn.Flatten(), nn.Linear(width, 10))

    recipe = Recipe("mine", epochs=1, batch_size=32)
    common = dict(data_dir=str(data_dir), subset=96, device="cpu", lr="0.01", out=str(tmp_path / "mine"))
    run = Run(recipe=recipe, model=net(8), **common)
    assert run.run_all() == 0
    unfinished = _unfinished(tmp_path / "mine", tmp_path / "unfinished")  # a finished run is refused earlier
    before = snapshot(unfinished)
    with pytest.raises(ResumeError, match=r"does not fit the model: '0.weight' is \(8, 3, 3, 3\) there, "
                                          r"\(16, 3, 3, 3\) here"):
        Run(recipe=recipe, model=net(16), resume=True, **{**common, "out": str(unfinished)})
    assert snapshot(unfinished) == before


# --- Ctrl-C and a full disk ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ctrl_c_is_one_line_keeps_epoch_1_and_resume_equals_the_straight_run(data_dir, tmp_path):
    args = ("S9", "--data-dir", data_dir, "--subset", 160, "--batch-size", 16, "--device", "cpu", "--lr", "0.003",
            "--precision", "fp32", "--epochs", 2)
    straight = cli(*args, "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]
    out = tmp_path / "stopped"
    p = start(*args, "--out", out)
    deadline = time.time() + 300
    while not (out / "checkpoint.pt").exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)  # during epoch 2
    assert p.wait(timeout=120) == 130
    line = p.stderr.read().strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line, line
    assert line.startswith("interrupted at epoch 2 step ") and "checkpoint of epoch 1 kept" in line, line
    assert f"python -m assignments S9 --out {out} --resume" in line
    m = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in m["history"]] == [1]  # what was trained, not an empty record
    resumed = cli("S9", "--data-dir", data_dir, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    hist = lambda d: [{k: v for k, v in e.items() if k != "seconds"}  # noqa: E731
                      for e in json.loads((d / "metrics.json").read_text())["history"]]
    assert hist(out) == hist(tmp_path / "straight")


def test_a_full_disk_at_the_checkpoint_is_one_line_and_keeps_the_last_checkpoint(data_dir, tmp_path, monkeypatch,
                                                                                 capsys):
    import utils.checkpoint
    from assignments.__main__ import main

    real_save, saves = torch.save, []

    def save(obj, f, *a, **k):  # the second epoch's checkpoint hits a full disk, as torch reports it
        saves.append(1)
        if len(saves) == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 512 vs 448")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(utils.checkpoint.torch, "save", save)
    out = tmp_path / "full"
    code = main(["S9", "--data-dir", str(data_dir), *map(str, SMALL), "--epochs", "3", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert f"could not write {out / 'checkpoint.pt'}" in err and "the previous checkpoint is kept" in err
    monkeypatch.setattr(utils.checkpoint.torch, "save", real_save)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and not list(out.glob(".checkpoint.pt.*.tmp"))
    assert [e["epoch"] for e in json.loads((out / "metrics.json").read_text())["history"]] == [1]


def test_the_error_line_is_one_write_so_two_ranks_sharing_stderr_cannot_mix_their_lines(tmp_path, monkeypatch):
    from assignments.__main__ import main

    writes = []

    class Stderr:  # what the process's stderr receives, call by call (torchrun's ranks share one)
        def write(self, text):
            writes.append(text)

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stderr", Stderr())
    missing = tmp_path / "missing"
    assert main(["S9", "--data-dir", str(missing), "--out", str(tmp_path / "o"), "--no-download"]) == 1
    assert len(writes) == 1 and writes[0].startswith(f"error: --data-dir {missing}: no such directory")
    assert writes[0].endswith("\n") and writes[0].count("\n") == 1


@pytest.mark.slow
def test_a_run_the_doctor_stops_writes_its_report_and_names_only_a_checkpoint_that_exists(data_dir, tmp_path):
    from utils.checkpoint import load_run_checkpoint

    out = tmp_path / "stopped"
    p = cli("S9", "--data-dir", data_dir, "--subset", 160, "--batch-size", 16, "--epochs", 2, "--lr", "1e3",
            "--device", "cpu", "--strict", "--out", out)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    log = (out / "log.txt").read_text().splitlines()
    stopped = next(line for line in log if line.startswith("STOPPED"))
    assert (out / "report.md").is_file()
    if (out / "checkpoint.pt").exists():  # a good epoch: finite, so --resume can take it
        assert "the last good checkpoint is" in stopped
        load_run_checkpoint(out / "checkpoint.pt")
    else:
        assert "no epoch was checkpointed" in stopped and "checkpoint.pt" not in log[-1]


def test_an_out_that_is_a_dangling_link_is_one_line_naming_it(tmp_path):
    from assignments.outdir import OutError, check_new

    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(OutError, match=f"--out {link}: {link} is a link to {tmp_path / 'gone'}, which does not exist"):
        check_new(link, overwrite=False)
    with pytest.raises(OutError, match="which does not exist"):
        check_new(link / "run", overwrite=False)


@pytest.mark.slow
def test_a_tb_that_is_a_file_is_refused_before_anything_is_written(s9_run, data_dir, tmp_path):
    unfinished = _unfinished(s9_run, tmp_path / "unfinished")
    shutil.rmtree(unfinished / "tb", ignore_errors=True)
    (unfinished / "tb").write_text("not a folder")
    before = snapshot(unfinished)
    p = cli("S9", "--data-dir", data_dir, "--out", unfinished, "--resume")
    assert p.returncode == 1 and "tb is not a folder, where TensorBoard writes" in one_line(p)
    assert snapshot(unfinished) == before


@pytest.mark.slow
def test_resume_of_a_checkpoint_without_identity_on_other_data_is_one_line_and_changes_nothing(s9_run, tmp_path):
    older = _unfinished(s9_run, tmp_path / "older")
    state = torch.load(older / "checkpoint.pt", weights_only=True)
    del state["extra"]["identity"]  # the layout before runs recorded their data
    torch.save(state, older / "checkpoint.pt")
    other = write_batches(tmp_path / "other", colour_task(40, 20, seed=7))  # fewer images: fewer steps per epoch
    before = snapshot(older)
    p = cli("S9", "--data-dir", other, "--out", older, "--resume")
    assert p.returncode == 1 and "holds no record of its data (an older checkpoint)" in one_line(p), p.stderr
    assert snapshot(older) == before


def test_a_model_class_that_needs_arguments_is_one_line_before_the_data_is_read(tmp_path):
    from assignments.run import Run
    from utils import Recipe

    class Wide(torch.nn.Module):
        def __init__(self, width, depth, p=0.1):
            super().__init__()

    with pytest.raises(ValueError, match=r"model=Wide needs the arguments width, depth; pass "
                                         r"model=functools.partial\(Wide, width=..., depth=...\)") as e:
        Run(recipe=Recipe("X", epochs=1, batch_size=8), model=Wide, data_dir=str(tmp_path / "no-such-data"),
            out=str(tmp_path / "x"))  # the data folder does not exist: the model is refused first
    assert len(str(e.value).splitlines()) == 1 and not (tmp_path / "x").exists()
