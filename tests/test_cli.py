"""``python -m assignments`` end to end, its outputs, its one-line errors, --resume."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthetic import colour_task, write_batches

pytestmark = pytest.mark.slow  # end-to-end: processes, kernels, whole runs

REPO = Path(__file__).resolve().parents[1]


def cli(*args, cwd=REPO, **env_vars):
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(REPO), **env_vars}
    return subprocess.run([sys.executable, "-m", "assignments", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def batches_dir(tmp_path_factory):
    return write_batches(tmp_path_factory.mktemp("batches"), colour_task(300, 100))


def test_s9_end_to_end_writes_log_metrics_checkpoint_figures_and_report(batches_dir, tmp_path):
    out = tmp_path / "run"
    p = cli("S9", "--data-dir", batches_dir, "--epochs", 1, "--subset", 200, "--batch-size", 32, "--out", out,
            "--device", "cpu", "--seed", 3)
    assert p.returncode == 0, p.stderr
    m = json.loads((out / "metrics.json").read_text())
    for key in ("assignment", "model", "params", "epochs", "history", "final_test_acc", "best_test_acc", "data",
                "device", "wall_seconds", "health"):
        assert key in m
    assert m["assignment"] == "S9" and m["params"] == 25_680 and m["epochs"] == 1
    assert set(m["history"][0]) >= {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr"}
    assert "cifar-10-batches-py" in m["data"] and "subset of 200" in m["data"]
    log = (out / "log.txt").read_text()
    assert "EPOCH: 1" in log and "Test set: Average loss:" in log and "LR range test" in log
    assert "\r" not in log and "\r" not in p.stdout  # no progress-bar redraws when not a terminal
    for name in ("checkpoint.pt", "report.md", "curves.png", "misclassified.png", "gradcam.png", "lr_range_test.png"):
        assert (out / name).is_file(), name


def test_resume_after_a_crash_matches_the_straight_run(batches_dir, tmp_path):
    from assignments.run import Run
    from test_train import Interrupted, StopAtEpoch

    common = ("--data-dir", batches_dir, "--subset", 96, "--batch-size", 32, "--device", "cpu", "--lr", "0.003")
    assert cli("S9", *common, "--epochs", 2, "--out", tmp_path / "straight").returncode == 0
    # the same run, killed as epoch 2 begins (checkpoint of epoch 1 on disk) ...
    run = Run(assignment="S9", data_dir=str(batches_dir), subset=96, batch_size=32, device="cpu", lr="0.003",
              epochs=2, out=str(tmp_path / "crashed"))
    run.show_augmented()  # the CLI draws this grid first: same RNG use, same batches
    run.find_lr()
    run.data.train_loader = StopAtEpoch(run.data.train_loader, 2)
    with pytest.raises(Interrupted):
        run.train()
    run.close()  # the out folder's lock: held by this process until then
    # resuming resolves a config of its own: the caller's stays as given, ignored options are named
    from assignments.config import RunConfig, resolve_out
    mine = RunConfig(assignment="S9", out=str(tmp_path / "crashed"), resume=True, epochs=7)
    resolved = resolve_out(mine, "S9 (spec)")
    assert mine.epochs == 7 and resolved.config.epochs == 2 and list(resolved.ignored) == ["epochs=7"]
    # ... and resumed from the command line, which takes epochs, batch size, LR and seed from the checkpoint
    p = cli("S9", "--data-dir", batches_dir, "--device", "cpu", "--out", tmp_path / "crashed", "--resume")
    assert p.returncode == 0, p.stderr
    assert "resumed from" in (tmp_path / "crashed" / "log.txt").read_text()
    hist = lambda d: [{k: v for k, v in e.items() if k != "seconds"}  # noqa: E731
                      for e in json.loads((tmp_path / d / "metrics.json").read_text())["history"]]
    assert hist("crashed") == hist("straight") and len(hist("straight")) == 2
    resumed = json.loads((tmp_path / "crashed" / "metrics.json").read_text())
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert len(resumed["commands"]) == 2 and resumed["commands"][1].endswith("--resume")  # both commands kept
    assert resumed["max_lr"] == straight["max_lr"]
    start = straight["checks"]["attention_entropy_start"]  # measured once, on the untrained weights
    assert len(start) == 4 and resumed["checks"]["attention_entropy_start"] == start



def test_resume_without_a_checkpoint_is_one_line(tmp_path):
    p = cli("S9", "--out", tmp_path / "nothing", "--resume")
    assert p.returncode == 1 and "no checkpoint at" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("args, message", [
    (["--data-dir", "/no/such/dir"], "error: --data-dir /no/such/dir: no such directory"),
])
def test_bad_data_is_one_line_and_exit_1(args, message, tmp_path):
    p = cli("S9", *args, "--out", tmp_path / "o", "--no-download")
    assert p.returncode == 1 and p.stderr.startswith(message) and len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()  # a failed setup leaves no run folder behind


@pytest.mark.parametrize("assignment, args, message", [
    ("S9", ["--lr", "fast"], "argument --lr: must be 'auto' or a positive finite number; got 'fast'"),
    ("S9", ["--lr", "nan"], "argument --lr: must be 'auto' or a positive finite number; got 'nan'"),
    ("S9", ["--lr", "inf"], "argument --lr: must be 'auto' or a positive finite number; got 'inf'"),
    ("S9", ["--epochs", "0"], "argument --epochs: must be a positive integer; got '0'"),
    ("S9", ["--seed", "-1"], "argument --seed: must be a non-negative integer; got '-1'"),
    ("S9", ["--variant", "sideways"], "argument --variant: invalid choice: 'sideways'"),
])
def test_bad_options_get_usage_and_one_line_naming_the_option_exit_2(assignment, args, message, tmp_path):
    p = cli(assignment, *args, "--out", tmp_path / "o", "--no-download")
    assert p.returncode == 2 and p.stderr.startswith("usage:") and message in p.stderr.splitlines()[-1]
    assert "Traceback" not in p.stderr


def test_variant_belongs_to_s9(tmp_path):
    p = cli("S8", "--variant", "residual", "--out", tmp_path / "o", "--no-download")
    assert p.returncode == 1 and "--variant is S9's option" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_out_that_is_a_file_or_holds_a_run_is_refused_in_one_line(tmp_path, batches_dir):
    (tmp_path / "file").write_text("mine")
    for out in (tmp_path / "file", tmp_path / "file" / "below"):
        p = cli("S9", "--out", out, "--no-download")
        assert p.returncode == 1 and p.stderr.startswith(f"error: --out {out}: ") and "is a file" in p.stderr
    held = tmp_path / "held"
    held.mkdir()
    (held / "metrics.json").write_text("{}")
    p = cli("S9", "--data-dir", batches_dir, "--out", held, "--device", "cpu")
    assert p.returncode == 1 and "already holds a run; continue it with --resume" in p.stderr
    assert (held / "metrics.json").read_text() == "{}" and (tmp_path / "file").read_text() == "mine"  # nothing lost


def test_a_run_too_short_for_one_cycle_is_one_line(batches_dir, tmp_path):
    p = cli("S9", "--data-dir", batches_dir, "--subset", 64, "--batch-size", 32, "--epochs", 1, "--lr", "0.01",
            "--device", "cpu", "--out", tmp_path / "o")
    assert p.returncode == 1 and "one-cycle needs at least 3 training steps; this run has 2" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_unknown_class_folder_is_reported_without_a_traceback(tmp_path):
    (tmp_path / "train" / "unicorn").mkdir(parents=True)
    (tmp_path / "test").mkdir()
    p = cli("S9", "--data-dir", tmp_path, "--out", tmp_path / "o")
    assert p.returncode == 1 and "unknown class folder(s) ['unicorn']" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
