"""Mixed precision: the choice per device, a bf16 step that learns, fp16's scaler, fp32 unchanged, fp64 for checks."""
import math

import pytest
import torch
from torch import nn

from synthetic import colour_task
from test_train import loaders, s9_setup
from utils.checkpoint import Checkpoint
from utils.doctor import Doctor, TrainingStopped
from utils.precision import Precision, resolve_precision
from utils.seed import set_seed
from utils.train import fit, train_one_epoch


@pytest.mark.parametrize("device, avx512_bf16, amx, capability, expected", [
    ("cpu", True, False, None, "bf16"),  # AVX-512 BF16
    ("cpu", False, True, None, "bf16"),  # AMX
    ("cpu", False, False, None, "fp32"),  # bf16 would be emulated: slower than fp32
    ("cuda", False, False, (7, 5), "fp16"),  # T4: bf16 only emulated, fp16 + scaler
    ("cuda", False, False, (8, 0), "bf16"),  # A100 and newer
    ("cuda", False, False, (9, 0), "bf16"),
])
def test_auto_picks_what_the_device_runs_natively(monkeypatch, device, avx512_bf16, amx, capability, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # the emulation answer: not used
    assert resolve_precision("auto", torch.device(device)) == expected


def test_explicit_precision_is_kept_and_a_bad_one_names_the_option():
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("fp16", torch.device("cuda")) == "fp16"
    with pytest.raises(ValueError, match="--precision must be one of auto, fp32, bf16, fp16, fp64; got 'half'"):
        resolve_precision("half", torch.device("cpu"))


def small_cnn():
    """A conv net as a student writes one: conv-BN-ReLU twice, GAP, linear."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


@pytest.mark.slow
def test_bf16_autocast_step_learns_the_synthetic_task_with_fp32_state():
    set_seed(0)
    data = colour_task(800, 200)
    tr, te = loaders(data, batch=64)
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    history = fit(model, tr, te, opt, nn.CrossEntropyLoss(), 3, precision=Precision("bf16"))
    assert history[-1]["test_acc"] > 50 and history[-1]["test_loss"] < math.log(10) - 0.5  # chance: 10%
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast only: parameters stay fp32
    assert all(v.dtype == torch.float32 for s in opt.state.values() for v in s.values() if v.is_floating_point())


def test_batchnorm_statistics_stay_fp32_under_bf16():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(10))
    model(torch.randn(2, 3, 8, 8))
    pr = Precision("bf16")
    with pr.autocast():
        out = model(torch.randn(8, 3, 8, 8))
    assert out.dtype == torch.bfloat16  # autocast did run in bf16 ...
    assert model[1].running_mean.dtype == torch.float32  # ... and the statistics did not follow it


def test_fp32_is_exactly_the_plain_training_step():
    """precision fp32 adds nothing: same weights, bit for bit, as a hand-written step on the same batches."""
    data = colour_task(96, 32)
    model, tr, _, opt, sched, crit = s9_setup(data, epochs=1)
    ref, _, _, ref_opt, ref_sched, _ = s9_setup(data, epochs=1)
    tr.set_epoch(1)
    batches = list(tr)
    train_one_epoch(model, batches, opt, crit, sched, precision=Precision("fp32"))
    ref.train()
    for x, y in batches:
        ref_opt.zero_grad(set_to_none=True)
        crit(ref(x), y).backward()
        ref_opt.step()
        ref_sched.step()
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name


class InfGradient(torch.autograd.Function):
    """Identity forward; the gradient flowing back becomes inf/NaN (what an fp16 overflow looks like)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


class Overflow(nn.Module):
    """A linear model whose gradients overflow while ``blow`` is set; its loss stays finite."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, 10)
        self.blow = False

    def forward(self, x):
        out = self.fc(x.flatten(1))
        return InfGradient.apply(out) if self.blow else out


def _batches(n=4, b=8):
    set_seed(0)
    return [(torch.randn(b, 3, 32, 32), torch.randint(0, 10, (b,))) for _ in range(n)]


def test_fp16_scaler_skips_an_overflowing_step_without_a_finding():
    model = Overflow()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pr = Precision("fp16", "cpu")
    doctor = Doctor(grad_every=1, log=lambda m: None)
    train_one_epoch(model, _batches(), opt, nn.CrossEntropyLoss(), callbacks=[doctor], precision=pr)
    scale = pr.scaler.get_scale()
    before = [p.detach().clone() for p in model.parameters()]
    model.blow = True
    train_one_epoch(model, _batches(1), opt, nn.CrossEntropyLoss(), callbacks=[doctor], precision=pr)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))  # the step was skipped
    assert pr.scaler.get_scale() == scale / 2  # the scaler backed off
    assert doctor.findings == []  # and the doctor left it to the scaler


def test_fp16_gradients_that_overflow_even_unscaled_stop_the_run():
    model = Overflow()
    model.blow = True
    pr = Precision("fp16", "cpu")
    doctor = Doctor(grad_every=1, log=lambda m: None)
    with pytest.raises(TrainingStopped, match="overflow even unscaled"):
        train_one_epoch(model, _batches(40), torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(),
                        callbacks=[doctor], precision=pr)
    assert [f.kind for f in doctor.findings] == ["non_finite"]


def test_fp32_reports_the_same_inf_gradient_at_once():
    model = Overflow()
    model.blow = True
    doctor = Doctor(grad_every=1, log=lambda m: None)
    with pytest.raises(TrainingStopped, match="non-finite gradient"):
        train_one_epoch(model, _batches(1), torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(),
                        callbacks=[doctor], precision=Precision("fp32"))


def test_fp16_scaler_state_is_checkpointed_and_restored(tmp_path):
    model = Overflow()
    model.blow = True  # two skipped steps: the scale falls from 65536 to 16384
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pr = Precision("fp16", "cpu")
    fit(model, _batches(2), _batches(1), opt, nn.CrossEntropyLoss(), 1, checkpoint=tmp_path / "c.pt",
        precision=pr)
    again = Precision("fp16", "cpu")
    fit(model, _batches(2), _batches(1), opt, nn.CrossEntropyLoss(), 1,
        checkpoint=Checkpoint(tmp_path / "c.pt", resume=True), precision=again)
    assert again.scaler.get_scale() == pr.scaler.get_scale() == 16384.0


def _fp64_steps(threads: int) -> dict:
    """Four fp64 train steps of a small CNN on fixed batches with ``threads`` torch threads; the final weights."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        set_seed(0)
        precision = Precision("fp64")
        with precision.building():
            model = precision.place(small_cnn())
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        g = torch.Generator().manual_seed(1)
        batches = [(torch.rand(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(4)]
        train_one_epoch(model, batches, opt, nn.CrossEntropyLoss(), precision=precision)
        return model.state_dict()
    finally:
        torch.set_num_threads(before)


def test_fp64_trains_in_float64_from_float32_batches_and_restores_the_default_dtype():
    precision = Precision("fp64")
    with precision.building():
        model = precision.place(small_cnn())
    assert torch.get_default_dtype() == torch.float32
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert model(torch.rand(2, 3, 32, 32)).dtype == torch.float64  # float32 batches are cast on the way in
    assert precision.inputs(torch.rand(2, 3, 32, 32)).dtype == torch.float64
    assert precision.inputs(torch.zeros(2, dtype=torch.long)).dtype == torch.long  # labels stay integers
    with pytest.raises(RuntimeError), precision.building():
        raise RuntimeError("a model whose constructor fails")
    assert torch.get_default_dtype() == torch.float32


def test_fp64_steps_agree_across_thread_counts_to_rounding():
    """The reason fp64 exists: the order of a sum (here: one thread or two) moves fp64 weights by ~1e-16."""
    one, two = _fp64_steps(1), _fp64_steps(2)
    for k in one:
        torch.testing.assert_close(one[k], two[k], rtol=1e-12, atol=1e-14)
