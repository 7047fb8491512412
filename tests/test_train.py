"""Loops, true mean test loss, learnable task, resume = straight run, atomic checkpoints."""
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from assignments.recipes import recipe
from models import TransformerUltimus
from synthetic import colour_task
from utils.checkpoint import Checkpoint, atomic_save, load_checkpoint
from utils.lr import one_cycle
from utils.seed import set_seed
from utils.callbacks import Callback, EpochLog
from utils.train import evaluate, fit
from utils.transforms import make_loaders
from utils.data import channel_stats


def loaders(data, batch=32, seed=0):
    mean, std = channel_stats(data.train.images)
    return make_loaders(data.train, data.test, recipe("S9").augment, mean, std, batch, seed=seed)


def s9_setup(data, epochs, seed=0, max_lr=5e-3, batch=32):
    set_seed(seed)
    r = recipe("S9")
    model = r.model()
    train_loader, test_loader = loaders(data, batch, seed)
    opt = r.make_optimizer(model.parameters(), max_lr / r.div_factor)
    sched = one_cycle(opt, max_lr, epochs, len(train_loader), r.peak_epoch, r.div_factor)
    return model, train_loader, test_loader, opt, sched, r.criterion()


@pytest.mark.slow
def test_s9_spec_model_learns_the_synthetic_task_in_seconds():
    data = colour_task(1500, 400)
    model, tr, te, opt, sched, crit = s9_setup(data, epochs=5, max_lr=3e-3)  # the spec model's LR regime
    history = fit(model, tr, te, opt, crit, 5, sched)
    assert history[-1]["test_acc"] > 30  # chance is 10%: a collapsed or batch-mixing model stays near it
    assert history[-1]["test_loss"] < math.log(10) - 0.5


class Interrupted(Exception):
    pass


class StopAtEpoch:
    """Wraps a loader; raises when epoch ``stop`` begins (a killed run)."""

    def __init__(self, loader, stop):
        self.loader, self.stop = loader, stop

    def set_epoch(self, epoch):
        if epoch == self.stop:
            raise Interrupted
        self.loader.set_epoch(epoch)

    def __iter__(self):
        return iter(self.loader)

    def __len__(self):
        return len(self.loader)


def test_resume_gives_the_same_metrics_and_weights_as_a_straight_run(tmp_path):
    data = colour_task(320, 100)
    model, tr, te, opt, sched, crit = s9_setup(data, epochs=2)
    straight = fit(model, tr, te, opt, crit, 2, sched, checkpoint=tmp_path / "a.pt")

    model, tr, te, opt, sched, crit = s9_setup(data, epochs=2)
    with pytest.raises(Interrupted):
        fit(model, StopAtEpoch(tr, 2), te, opt, crit, 2, sched, checkpoint=tmp_path / "b.pt")
    assert load_checkpoint(tmp_path / "b.pt")["epoch"] == 1
    model, tr, te, opt, sched, crit = s9_setup(data, epochs=2, seed=0)
    torch.manual_seed(999)  # the fresh process's own RNG state must not matter
    resumed = fit(model, tr, te, opt, crit, 2, sched, checkpoint=Checkpoint(tmp_path / "b.pt", resume=True))

    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(resumed) == strip(straight)
    a, b = load_checkpoint(tmp_path / "a.pt")["model"], load_checkpoint(tmp_path / "b.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_run():
    data = colour_task(200, 60)
    runs = []
    for _ in range(2):
        model, tr, te, opt, sched, crit = s9_setup(data, epochs=1, seed=7)
        runs.append(fit(model, tr, te, opt, crit, 1, sched))
    assert runs[0][0]["train_loss"] == runs[1][0]["train_loss"] and runs[0][0]["test_loss"] == runs[1][0]["test_loss"]


def test_history_holds_plain_floats_only():
    data = colour_task(100, 40)
    model, tr, te, opt, sched, crit = s9_setup(data, epochs=1)
    history = fit(model, tr, te, opt, crit, 1, sched)
    plain = lambda v: type(v) in (int, float) or (type(v) is list and all(type(c) is int for c in v))  # noqa: E731
    assert all(plain(v) for e in history for v in e.values())
    assert sum(history[0]["pred_counts"]) == 40  # test predictions per class cover the test set


class FixedLogits(nn.Module):
    """Returns preset logits per item (the items are their own indices)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, idx):
        return self.logits[idx.long()] + 0 * self.dummy


def test_test_loss_is_the_mean_over_the_whole_test_set():
    torch.manual_seed(0)
    logits, y = torch.randn(70, 10), torch.randint(0, 10, (70,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(70), y), batch_size=32)
    m = evaluate(FixedLogits(logits), loader)
    assert m["loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-6)
    assert m["correct"] == int((logits.argmax(1) == y).sum()) and m["total"] == 70
    lines = []
    entry = {"train_loss": 0.0, "train_acc": 0.0, "lr": 0.0, "test_loss": m["loss"], "test_acc": m["acc"],
             "pred_counts": m["pred_counts"]}
    EpochLog(lines.append).on_test(None, entry)  # the log's test line: the true mean loss, the counts
    assert lines[-1] == (f"Test set: Average loss: {m['loss']:.4f}, Accuracy: {m['correct']}/70 "
                         f"({100 * m['correct'] / 70:.2f}%)")


def test_one_cycle_peaks_at_epoch_5_linear_two_phases():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = one_cycle(opt, max_lr=1.0, epochs=24, steps_per_epoch=10, peak_epoch=5)
    lrs = []
    for _ in range(240):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    peak = max(range(240), key=lambda i: lrs[i])
    assert abs(peak - 50) <= 1 and lrs[peak] == pytest.approx(1.0)
    assert lrs[0] == pytest.approx(1.0 / 25)
    rise = [b - a for a, b in zip(lrs[1:peak], lrs[2:peak])]
    assert max(rise) - min(rise) < 1e-9  # linear
    assert all(b < a for a, b in zip(lrs[peak:], lrs[peak + 1:]))  # one anneal, no third phase
    assert lrs[-1] < lrs[0]


def test_atomic_save_keeps_the_old_checkpoint_when_a_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    atomic_save({"epoch": 1, "w": torch.ones(3)}, path)

    def crash(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        atomic_save({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temp file left behind


def test_unreadable_checkpoint_is_one_clear_error(tmp_path):
    (tmp_path / "ck.pt").write_bytes(b"junk")
    with pytest.raises(RuntimeError, match="not a checkpoint this project wrote") as info:
        load_checkpoint(tmp_path / "ck.pt")
    assert "weights_only=False" not in str(info.value) and "\n" not in str(info.value)  # never that advice
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "none.pt")


def test_temp_files_of_a_killed_save_are_removed_by_the_next_save(tmp_path):
    path = tmp_path / "ck.pt"
    (tmp_path / ".ck.pt.abc123.tmp").write_bytes(b"half a checkpoint")  # what kill -9 mid-save leaves
    (tmp_path / "mine.txt").write_text("keep")
    atomic_save({"epoch": 1}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt", "mine.txt"]


def test_checkpoint_of_a_compiled_model_has_plain_keys(tmp_path):
    from utils.checkpoint import unwrap

    model = TransformerUltimus()
    wrapped = nn.DataParallel(model)
    assert unwrap(wrapped) is model
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in unwrap(wrapped).state_dict())


def test_train_loss_is_plain_cross_entropy_even_with_label_smoothing():
    from utils.train import train_one_epoch

    torch.manual_seed(0)
    logits, y = torch.randn(64, 10) * 3, torch.randint(0, 10, (64,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(64), y), batch_size=64)
    model = FixedLogits(logits)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    out = train_one_epoch(model, loader, opt, nn.CrossEntropyLoss(label_smoothing=0.2))
    assert out["loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-6)


class HostReads(torch.overrides.TorchFunctionMode):
    """Counts the calls in this repository's code that bring a tensor's value to the host (on a GPU each waits
    for the device). torch's own (Adam reads its step counters, which live on the CPU) are not ours to count."""

    READS = ("item", "tolist", "cpu", "numpy")
    OURS = str(Path(__file__).resolve().parents[1] / "utils")

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.READS:
            self.count += sys._getframe(1).f_code.co_filename.startswith(self.OURS)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("with_doctor", [False, True])
def test_the_train_loop_reads_the_device_once_per_sync_not_per_step(with_doctor):
    from utils.doctor import Doctor
    from utils.train import train_one_epoch

    set_seed(0)
    model, train, _, opt, sched, crit = s9_setup(colour_task(32 * 30, 64), 1)  # 30 steps of 32
    batches = list(train)  # loaded beforehand: the count is the loop's own
    doctor = Doctor(log=lambda m: None) if with_doctor else None
    with HostReads() as reads:
        out = train_one_epoch(model, batches, opt, crit, sched, callbacks=[doctor] if doctor else [], sync_every=10)
    assert out["steps"] == 30
    # 3 reads of 10 steps' numbers; the doctor's gradient check reads norms at steps 1, 10, 20, 30
    assert reads.count == 3 + (4 if with_doctor else 0)


class Recorder(Callback):
    """Every event fit sends, in order; keeps a counter in the checkpoint."""
    state_key = "recorder"

    def __init__(self):
        self.events, self.saved = [], 0

    def on_fit_start(self, state):
        self.events.append(("fit_start", state.epoch))

    def on_epoch_start(self, state):
        self.events.append(("epoch_start", state.epoch))

    def on_steps(self, state, rows):
        self.events.append(("steps", tuple(r.step for r in rows)))

    def after_backward(self, state):
        self.events.append(("backward", state.step))

    def on_test(self, state, entry):
        entry["seen"] = len(self.events)
        self.events.append(("test", state.epoch))

    def on_epoch_end(self, state, entry):
        self.events.append(("epoch_end", state.history[-1] is entry))

    def state_dict(self):
        self.saved += 1
        return {"saves": self.saved}

    def load_state_dict(self, data):
        self.saved = data["saves"]


def test_callbacks_get_every_event_in_order_and_their_state_back_on_resume(tmp_path):
    data = colour_task(32 * 12, 64)  # 12 steps an epoch: reads after steps 10 and 12
    model, tr, te, opt, sched, crit = s9_setup(data, epochs=2)
    first = Recorder()
    with pytest.raises(Interrupted):
        fit(model, StopAtEpoch(tr, 2), te, opt, crit, 2, sched, callbacks=[first], checkpoint=tmp_path / "c.pt")
    backward = [("backward", s) for s in range(1, 13)]
    expected = [("fit_start", 0), ("epoch_start", 1), *backward[:10], ("steps", tuple(range(1, 11))),
                *backward[10:], ("steps", (11, 12)), ("test", 1), ("epoch_end", True)]
    # a full read comes before its last step's backward (the doctor sees a NaN loss before its gradients); the
    # epoch's remainder is read after the loop
    expected.insert(expected.index(("backward", 10)), expected.pop(expected.index(("steps", tuple(range(1, 11))))))
    assert first.events == expected
    assert load_checkpoint(tmp_path / "c.pt")["recorder"] == {"saves": 1}
    assert load_checkpoint(tmp_path / "c.pt")["history"][0]["seen"] == expected.index(("test", 1))

    model, tr, te, opt, sched, crit = s9_setup(data, epochs=2)
    again = Recorder()
    fit(model, tr, te, opt, crit, 2, sched, callbacks=[again], checkpoint=Checkpoint(tmp_path / "c.pt", resume=True))
    assert again.events[:2] == [("fit_start", 1), ("epoch_start", 2)] and again.events[2] == ("backward", 13)
    assert load_checkpoint(tmp_path / "c.pt")["recorder"] == {"saves": 2}  # loaded 1, saved once more


class PoisonAtEpochEnd(Callback):
    """Sets one weight to NaN after epoch ``epoch``'s test pass, before its checkpoint (what a too-high LR can
    leave behind while the train loss still reads finite)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_test(self, state, entry):
        if state.epoch == self.epoch:
            with torch.no_grad():
                next(state.model.parameters()).view(-1)[0] = float("nan")


def test_an_epoch_that_ends_with_weights_not_finite_is_not_checkpointed(tmp_path):
    from utils.doctor import TrainingStopped

    data = colour_task(64, 32)
    model, tr, te, opt, sched, crit = s9_setup(data, epochs=2)
    with pytest.raises(TrainingStopped, match="epoch 2 ended with weight .* not finite .* not checkpointed"):
        fit(model, tr, te, opt, crit, 2, sched, checkpoint=tmp_path / "c.pt", callbacks=[PoisonAtEpochEnd(2)])
    saved = load_checkpoint(tmp_path / "c.pt")  # epoch 1's, finite: the one --resume can continue
    assert saved["epoch"] == 1 and all(v.isfinite().all() for v in saved["model"].values() if v.is_floating_point())
