"""A run's TensorBoard event files, read back with TensorBoard's own EventAccumulator: one test-accuracy point per
epoch equal to metrics.json's, and a resume that continues the curves without repeating a step."""
import json

import pytest
from torch import nn

from assignments.run import Run
from utils import Recipe

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

pytestmark = pytest.mark.slow  # end-to-end: processes, kernels, whole runs


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(8, 10))

    def forward(self, x):
        return self.net(x)


class StopInEpoch:
    """Wraps a loader; Ctrl-C after ``after`` batches of epoch ``epoch`` (past the loop's read of 10 steps)."""

    def __init__(self, loader, epoch, after):
        self.loader, self.epoch, self.after, self.now = loader, epoch, after, 0

    def set_epoch(self, epoch):
        self.now = epoch
        self.loader.set_epoch(epoch)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if self.now == self.epoch and i == self.after:
                raise KeyboardInterrupt
            yield batch

    def __len__(self):
        return len(self.loader)


def scalars(out, tag):
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_event_files_hold_each_epoch_once_and_a_resume_continues_without_a_repeated_step(folder_dir, tmp_path):
    from utils.train import Interrupted

    out = tmp_path / "tb-run"
    common = dict(recipe=Recipe("tb", epochs=2, batch_size=8), model=Small, data_dir=str(folder_dir), subset=96,
                  device="cpu", lr="0.01", out=str(out))  # 12 steps an epoch: a read at 10, then at 12
    run = Run(**common)
    run.data.train_loader = StopInEpoch(run.data.train_loader, epoch=2, after=11)  # reads step 22, stops at 23
    with pytest.raises(Interrupted):
        run.train()
    run.close()
    assert [s for s, _ in scalars(out, "train/loss")] == [10, 12, 22]  # written past the checkpoint (step 12)
    assert Run(**common, resume=True).run_all() == 0

    history = json.loads((out / "metrics.json").read_text())["history"]
    test_acc = scalars(out, "test/accuracy")
    assert [s for s, _ in test_acc] == [e["step"] for e in history] == [12, 24]
    assert [v for _, v in test_acc] == pytest.approx([e["test_acc"] for e in history], abs=1e-4)
    assert [s for s, _ in scalars(out, "train/loss")] == [10, 12, 22, 24]  # the first 22 hidden, the resumed kept
    assert len({s for s, _ in scalars(out, "train/lr")}) == len(scalars(out, "train/lr"))


def test_no_tensorboard_writes_no_event_files(folder_dir, tmp_path):
    out = tmp_path / "quiet"
    run = Run(recipe=Recipe("tb", epochs=1, batch_size=32), model=Small, data_dir=str(folder_dir), subset=96,
              device="cpu", lr="0.01", out=str(out), tensorboard=False)
    assert run.run_all() == 0
    assert (out / "metrics.json").is_file() and not (out / "tb").exists()
