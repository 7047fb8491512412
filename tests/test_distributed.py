"""torchrun with 2 CPU processes (gloo) on the synthetic task: one set of files, the same test numbers as a
single-process evaluation, the same weights as one process on the same global batches, exact resume."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from synthetic import colour_task, write_batches

pytestmark = pytest.mark.slow  # end-to-end: processes, kernels, whole runs

REPO = Path(__file__).resolve().parents[1]


def single(*args):
    """``python ARGS`` with one torch thread."""
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)


def torchrun(*args, nproc: int = 2):
    """``torchrun --nproc_per_node nproc ARGS`` (``-m assignments ...`` or a script), one thread per process."""
    return single("-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_batches(tmp_path_factory.mktemp("ddp"), colour_task(300, 100, seed=3))


def _weights(out: Path) -> dict:
    return torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]


def test_two_processes_write_one_run_whose_test_accuracy_is_the_whole_test_set_s(data_dir, tmp_path):
    out = tmp_path / "ddp"
    p = torchrun("-m", "assignments", "S9", "--data-dir", data_dir, "--subset", 96, "--epochs", 2, "--batch-size", 32,
                 "--device", "cpu", "--lr", "0.003", "--out", out)
    assert p.returncode == 0, p.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["commands"][0].startswith("torchrun --nproc_per_node 2 -m assignments S9")
    assert [e["epoch"] for e in m["history"]] == [1, 2] and m["history"][-1]["step"] == 2 * (96 // 32)
    log = (out / "log.txt").read_text()
    assert log.count("EPOCH: 1") == 1 and "torchrun: 2 processes (gloo), 16 images per process" in log
    assert not list(tmp_path.glob("ddp/.checkpoint*")) and (out / "report.md").exists()
    # the recorded accuracy is the whole test set's: a single process evaluating the checkpoint agrees
    from assignments.run import Run
    from utils.train import evaluate

    run = Run(assignment="S9", data_dir=str(data_dir), subset=96, device="cpu", out=str(tmp_path / "check"))
    run.model.load_state_dict(_weights(out))
    te = evaluate(run.model, run.data.test_loader, run.precision)
    assert te["total"] == 96 and te["acc"] == pytest.approx(m["history"][-1]["test_acc"], abs=1e-9)
    assert te["pred_counts"] == m["history"][-1]["pred_counts"]


def test_a_batchnorm_free_net_learns_the_same_weights_in_two_processes_as_in_one(data_dir, tmp_path):
    one = single("tests/ddp_job.py", "nobn", data_dir, tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun("tests/ddp_job.py", "nobn", data_dir, tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    w1, w2 = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert any(not torch.equal(v, no_bn_init) for v, no_bn_init in zip(w1.values(), _fresh_nobn().values()))
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-10, atol=1e-12)  # float64 (ddp_job.py): any CPU


def _fresh_nobn():
    sys.path.insert(0, str(Path(__file__).parent))
    from ddp_job import no_bn_net

    return no_bn_net().state_dict()


def test_a_resume_under_two_processes_equals_the_straight_two_process_run(data_dir, tmp_path):
    common = ("--data-dir", data_dir, "--subset", 96, "--batch-size", 32, "--device", "cpu", "--lr", "0.003",
              "--precision", "fp32")
    straight = torchrun("-m", "assignments", "S9", *common, "--epochs", 2, "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    crashed = torchrun("tests/ddp_job.py", "crash", data_dir, tmp_path / "crashed")
    assert crashed.returncode != 0 and (tmp_path / "crashed" / "checkpoint.pt").exists()
    resumed = torchrun("-m", "assignments", "S9", "--data-dir", data_dir, "--device", "cpu", "--out", tmp_path / "crashed",
                       "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = json.loads((tmp_path / "straight" / "metrics.json").read_text())["history"]
    b = json.loads((tmp_path / "crashed" / "metrics.json").read_text())["history"]
    for ea, eb in zip(a, b, strict=True):
        assert {k: v for k, v in ea.items() if k != "seconds"} == {k: v for k, v in eb.items() if k != "seconds"}
    wa, wb = _weights(tmp_path / "straight"), _weights(tmp_path / "crashed")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_batch_that_does_not_divide_is_one_line(data_dir, tmp_path):
    p = torchrun("-m", "assignments", "S9", "--data-dir", data_dir, "--subset", 96, "--epochs", 1, "--batch-size", 33,
                 "--device", "cpu", "--lr", "0.003", "--out", tmp_path / "odd")
    assert p.returncode != 0 and "error: --batch-size 33 is not divisible by the 2 processes" in p.stderr


@pytest.mark.parametrize("fast", [False, True])
def test_rank_slices_of_each_global_batch_are_the_single_process_batch(fast):
    """Both loaders under a World of 2 (no process group needed): rank 0's slice + rank 1's = one process's batch."""
    import numpy as np

    from utils.augment import AugmentSpec
    from utils.data import ImageSplit
    from utils.distributed import World

    split = ImageSplit(np.random.default_rng(0).integers(0, 255, (100, 32, 32, 3), dtype=np.uint8), np.arange(100))
    plain = AugmentSpec(pad=0, flip=False, cutout=0)

    def loaders(world):
        if fast:
            from utils.fast_loader import make_fast_loaders
            return make_fast_loaders(split, split, plain, (0.5,) * 3, (0.25,) * 3, 16, "cpu", seed=3, world=world)
        from utils.transforms import make_loaders
        return make_loaders(split, split, plain, (0.5,) * 3, (0.25,) * 3, 16, seed=3, world=world)

    def labels(loader, epoch):
        loader.set_epoch(epoch)
        return [y.tolist() for _, y in loader]

    one_train, one_test = loaders(World())
    ranks = [loaders(World(r, 2)) for r in range(2)]
    for epoch in (1, 2):
        single = labels(one_train, epoch)
        slices = [labels(train, epoch) for train, _ in ranks]
        assert len(slices[0]) == len(slices[1]) == 100 // 16  # the short last global batch is dropped
        assert all(a + b == s for a, b, s in zip(*slices, single))
    shards = [sum(labels(test, 0), []) for _, test in ranks]
    assert shards[0] + shards[1] == list(range(100))


def test_a_bad_data_dir_is_the_same_one_line_on_every_rank(tmp_path):
    p = torchrun("-m", "assignments", "S9", "--data-dir", tmp_path / "missing", "--device", "cpu",
                 "--out", tmp_path / "o")
    line = f"error: --data-dir {tmp_path / 'missing'}: no such directory"
    assert p.returncode != 0 and sum(l.startswith(line) for l in p.stderr.splitlines()) == 2, p.stderr[-3000:]
    assert "Connection closed" not in p.stderr and "terminate called" not in p.stderr  # a clean exit on each rank
    assert not (tmp_path / "o").exists()
