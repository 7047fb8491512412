"""S7, S8 and S9 train exactly as before a change: a short fixed-seed run through the command, in float64
(``--precision fp64``: model, loss, optimizer, one-cycle, augmentation and loaders as always, only the dtype of
parameters, batches and loss switched), gives the metrics recorded in ``golden/short_runs.json``.

In float64 the order in which a CPU's kernels sum (AVX2, AVX-512, one thread or two) moves these numbers by
about 1e-12, so one record holds on every x86 CPU at a tolerance (``RTOL``) far below what any change of the
recipe moves them (a changed LR rule, augmentation, loss or one-cycle peak: 1e-3 or more). Regenerate the
record with ``python tests/test_recipes_unchanged.py`` only when a change of the numbers is intended, and say so
in the commit."""
import json
import math
import sys
from pathlib import Path

import pytest

if __name__ == "__main__":  # run as a script (to regenerate the record): the repo and tests/ importable
    sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from synthetic import colour_task, write_batches  # noqa: E402
from test_cli import cli  # noqa: E402

pytestmark = pytest.mark.slow  # end-to-end: processes, kernels, whole runs

GOLDEN = Path(__file__).parent / "golden" / "short_runs.json"
RTOL = 1e-8  # float64 runs differ by ~1e-12 between CPUs and thread counts; a recipe change moves them >= 1e-3
RUNS = {  # assignment -> extra options (S7/S8 with a given LR: their range test would take most of the time)
    "S7": ["--lr", "0.005"],
    "S8": ["--lr", "0.005"],
    "S9": ["--lr", "auto"],
}


def short_run(assignment: str, data_dir: Path, out: Path, **env) -> dict:
    p = cli(assignment, "--data-dir", data_dir, "--subset", 64, "--epochs", 2, "--batch-size", 16, "--device", "cpu",
            "--seed", 5, "--precision", "fp64", "--workers", 0, "--out", out, *RUNS[assignment], **env)
    assert p.returncode == 0, p.stderr
    m = json.loads((out / "metrics.json").read_text())
    keep = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "step")
    return {"max_lr": m["max_lr"], "params": m["params"], "history": [{k: e[k] for k in keep} for e in m["history"]]}


def differences(got: dict, expected: dict) -> list[str]:
    """What differs between two short runs beyond ``RTOL`` (accuracies and step counts exactly)."""
    out = []
    if got["params"] != expected["params"]:
        out.append(f"params {got['params']} != {expected['params']}")
    if not math.isclose(got["max_lr"], expected["max_lr"], rel_tol=RTOL):
        out.append(f"max_lr {got['max_lr']!r} != {expected['max_lr']!r}")
    if len(got["history"]) != len(expected["history"]):
        return out + [f"{len(got['history'])} epochs != {len(expected['history'])}"]
    for g, e in zip(got["history"], expected["history"]):
        for key in ("epoch", "step", "train_acc", "test_acc"):
            if g[key] != e[key]:
                out.append(f"epoch {e['epoch']} {key} {g[key]!r} != {e[key]!r}")
        for key in ("train_loss", "test_loss", "lr"):
            if not math.isclose(g[key], e[key], rel_tol=RTOL):
                out.append(f"epoch {e['epoch']} {key} {g[key]!r} != {e[key]!r}")
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_batches(tmp_path_factory.mktemp("golden"), colour_task(200, 100, seed=7))


@pytest.mark.parametrize("assignment", sorted(RUNS))
def test_short_fixed_seed_run_matches_the_recorded_metrics(assignment, data_dir, tmp_path):
    expected = json.loads(GOLDEN.read_text())[assignment]
    assert differences(short_run(assignment, data_dir, tmp_path / "run"), expected) == []


if __name__ == "__main__":  # regenerate the record
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        d = write_batches(Path(tmp) / "data", colour_task(200, 100, seed=7))
        record = {a: short_run(a, d, Path(tmp) / a) for a in sorted(RUNS)}
    GOLDEN.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {GOLDEN}")
