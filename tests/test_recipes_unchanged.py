"""S7, S8 and S9 train exactly as before a change: a short fixed-seed fp32 run through the command gives the
metrics recorded in ``golden/short_runs.json`` (AVX-512 CPUs) or ``golden/short_runs-<capability>.json`` for
the kernels torch picks on this CPU (AVX2 kernels sum floats differently: S7's train loss after 8 steps differs by
0.6%). Regenerate this CPU's record with ``python tests/test_recipes_unchanged.py`` only when a change of the
numbers is intended, and say so in the commit."""
import json
import math
import sys
from pathlib import Path

import pytest

from synthetic import colour_task, write_batches
from test_cli import cli

pytestmark = pytest.mark.slow  # end-to-end: processes, kernels, whole runs

GOLDEN = Path(__file__).parent / "golden" / "short_runs.json"


def golden_path() -> Path:
    """This CPU's record: ``short_runs-AVX2.json`` on an AVX2 CPU, ``short_runs.json`` (AVX-512) otherwise."""
    import torch

    own = GOLDEN.with_name(f"short_runs-{torch.backends.cpu.get_cpu_capability()}.json")
    return own if own.is_file() else GOLDEN
RUNS = {  # assignment -> extra options (S7/S8 with a given LR: their range test would take most of the time)
    "S7": ["--lr", "0.005"],
    "S8": ["--lr", "0.005"],
    "S9": ["--lr", "auto"],
}


def short_run(assignment: str, data_dir: Path, out: Path) -> dict:
    p = cli(assignment, "--data-dir", data_dir, "--subset", 64, "--epochs", 2, "--batch-size", 16, "--device", "cpu",
            "--seed", 5, "--precision", "fp32", "--workers", 0, "--out", out, *RUNS[assignment],
            OMP_NUM_THREADS="2")  # the thread count changes float sums: 1 vs 2 threads differ by ~3e-4 here
    assert p.returncode == 0, p.stderr
    m = json.loads((out / "metrics.json").read_text())
    keep = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "step")
    return {"max_lr": m["max_lr"], "params": m["params"], "history": [{k: e[k] for k in keep} for e in m["history"]]}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_batches(tmp_path_factory.mktemp("golden"), colour_task(200, 100, seed=7))


@pytest.mark.parametrize("assignment", sorted(RUNS))
def test_short_fixed_seed_run_matches_the_recorded_metrics(assignment, data_dir, tmp_path):
    expected = json.loads(golden_path().read_text())[assignment]
    got = short_run(assignment, data_dir, tmp_path / "run")
    assert got["params"] == expected["params"]
    assert math.isclose(got["max_lr"], expected["max_lr"], rel_tol=1e-6)
    for g, e in zip(got["history"], expected["history"], strict=True):
        assert g["step"] == e["step"] and g["epoch"] == e["epoch"]
        for key in ("train_loss", "test_loss", "lr"):  # float sums may differ in the last bits between CPUs
            assert math.isclose(g[key], e[key], rel_tol=1e-3), (key, g, e)
        for key in ("train_acc", "test_acc"):  # one image of 64 is 1.6 points
            assert abs(g[key] - e[key]) < 1.6, (key, g, e)


if __name__ == "__main__":  # regenerate the record
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    with tempfile.TemporaryDirectory() as tmp:
        d = write_batches(Path(tmp) / "data", colour_task(200, 100, seed=7))
        record = {a: short_run(a, d, Path(tmp) / a) for a in sorted(RUNS)}
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    path = GOLDEN if capability.startswith("AVX512") else GOLDEN.with_name(f"short_runs-{capability}.json")
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}")
