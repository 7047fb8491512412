"""The training doctor flags the original solution's collapse, stays quiet on healthy runs, stops on NaN."""
import math
import re

import numpy as np
import pytest
import torch

from models import TransformerUltimus
from reference_ultimus import seed_model
from synthetic import PALETTE, colour_task
from utils.checkpoint import load_checkpoint
from utils.data import channel_stats
from utils.checks import batch_dependence_check, schedule_check
from utils.doctor import Doctor, TrainingStopped
from utils.lr import one_cycle
from utils.seed import set_seed
from utils.train import batch_stats, fit
from assignments.recipes import recipe
from utils.transforms import make_loaders

STEPS = 100  # steps per epoch: more than the doctor's grace (20) + window (30) + patience (30)


def observe(doctor, step, loss, logits, targets):
    """One step's numbers as the loop hands them to the doctor (utils.train.batch_stats, read on the host)."""
    _, correct, top, spread, size = batch_stats(torch.tensor(loss), logits, targets).tolist()
    doctor.observe(step, loss, correct, top, spread, int(size))


def run(model, data, epochs, max_lr, weight_decay=0.0, doctor=None, checkpoint=None, batch=32):
    mean, std = channel_stats(data.train.images)
    tr, te = make_loaders(data.train, data.test, recipe("S9").augment, mean, std, batch, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=max_lr / 25, weight_decay=weight_decay)
    sched = one_cycle(opt, max_lr, epochs, len(tr))
    doctor = doctor or Doctor(log=lambda m: None)
    history = fit(model, tr, te, opt, torch.nn.CrossEntropyLoss(), epochs, sched, callbacks=[doctor],
                  checkpoint=checkpoint)
    return history, doctor


@pytest.mark.slow
def test_the_seeds_recipe_is_flagged_as_collapsed_within_its_first_epoch():
    set_seed(0)
    data = colour_task(32 * STEPS, 200)
    history, doctor = run(seed_model(), data, epochs=1, max_lr=0.83, weight_decay=1e-2)
    kinds = {f.kind for f in doctor.findings}
    assert "collapse" in kinds, doctor.findings
    first = min(f.step for f in doctor.findings if f.kind == "collapse")
    assert first <= STEPS
    assert history[-1]["test_acc"] < 25  # it really did fail: the doctor is not crying wolf
    msg = next(f.message for f in doctor.findings if f.kind == "collapse")
    assert "AdamW" in msg and "utils.checks.batch_independence(model)" in msg and "--lr auto" in msg


@pytest.mark.slow
def test_strict_stops_the_seeds_recipe_at_the_first_finding(tmp_path):
    set_seed(0)
    data = colour_task(32 * STEPS, 200)
    with pytest.raises(TrainingStopped, match="collapse|vanishing"):
        run(seed_model(), data, epochs=3, max_lr=0.83, weight_decay=1e-2, doctor=Doctor(strict=True, log=lambda m: None),
            checkpoint=tmp_path / "ck.pt")
    assert not (tmp_path / "ck.pt").exists()  # stopped inside epoch 1, long before spending 3 epochs


@pytest.mark.slow
def test_a_healthy_run_raises_no_finding():
    set_seed(0)
    data = colour_task(32 * STEPS, 300)
    history, doctor = run(TransformerUltimus(), data, epochs=3, max_lr=1e-2)
    assert doctor.findings == []
    assert history[-1]["test_acc"] > 30


def plateau_task(n_train, n_test):
    """Classes 5..9 share one colour: the best loss is 0.5 * ln 5 = 0.80, well below ln 10 = 2.30."""
    data = colour_task(n_train, n_test)
    for split in (data.train, data.test):
        same = split.labels >= 5
        noise = split.images.astype(np.float64) - PALETTE[split.labels][:, None, None, :]
        base = PALETTE[np.where(same, 9, split.labels)][:, None, None, :]
        split.images[...] = (base + noise).clip(0, 255).astype(np.uint8)
    return data


@pytest.mark.slow
def test_a_plateau_well_below_chance_raises_no_finding():
    set_seed(0)
    history, doctor = run(TransformerUltimus(residual=True), plateau_task(32 * STEPS, 300), epochs=3, max_lr=1e-2)
    assert doctor.findings == []
    assert history[-1]["train_loss"] < math.log(10) - 0.8  # it did plateau far below ln 10


class NaNAfter(torch.nn.Module):
    """Wraps a model; from forward call ``n`` on, its outputs are NaN."""

    def __init__(self, model, n):
        super().__init__()
        self.model, self.n, self.calls = model, n, 0

    def forward(self, x):
        self.calls += 1 if self.training else 0
        out = self.model(x)
        return out * float("nan") if self.calls >= self.n else out


@pytest.mark.slow
def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    set_seed(0)
    data = colour_task(32 * 10, 64)
    model = NaNAfter(TransformerUltimus(), n=15)  # epoch 1 = steps 1..10, NaN at step 15 of epoch 2
    doctor = Doctor(log=lambda m: None)
    with pytest.raises(TrainingStopped, match="step 15: non_finite"):
        run(model, data, epochs=3, max_lr=1e-2, doctor=doctor, checkpoint=tmp_path / "ck.pt")
    state = load_checkpoint(tmp_path / "ck.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert doctor.findings[-1].kind == "non_finite" and doctor.findings[-1].step == 15


def test_non_finite_gradient_is_caught_before_the_optimizer_step():
    model = TransformerUltimus()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model.fc.weight.grad[0, 0] = float("inf")
    with pytest.raises(TrainingStopped, match="non-finite gradient in \\['fc.weight'\\]"):
        Doctor(log=lambda m: None).check_gradients(1, model)


def test_divergence_is_flagged():
    doctor = Doctor(window=10, grace=0, patience=5, log=lambda m: None)
    y = torch.arange(10)
    for step in range(1, 31):
        loss = 2.3 if step < 5 else 2.3 * step  # rising far above its start
        observe(doctor, step, loss, torch.randn(10, 10), y)
    assert [f.kind for f in doctor.findings] == ["divergence"]


def test_a_dead_layer_is_flagged_as_vanishing():
    model = TransformerUltimus()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model.fc.weight.grad.zero_()
    doctor = Doctor(grace=0, log=lambda m: None)
    for step in (10, 20):
        doctor.check_gradients(step, model)
    assert doctor.findings == []  # a zero gradient must persist before it counts
    doctor.check_gradients(30, model)
    assert doctor.findings[0].kind == "vanishing" and "fc.weight" in doctor.findings[0].message


@pytest.mark.parametrize("max_lr, min_loss_lr, expected", [
    (0.83, 0.83, "schedule"),  # the original solution: max LR taken at the loss minimum
    (0.5, None, "schedule"),  # 50x the suggestion
    (2e-3, 0.83, None),  # the suggestion itself
])
def test_schedule_check(max_lr, min_loss_lr, expected):
    doctor = Doctor(log=lambda m: None)
    doctor.add(0, schedule_check(max_lr, suggested_lr=1e-2 if min_loss_lr is None else 2e-3, min_loss_lr=min_loss_lr))
    assert [f.kind for f in doctor.findings] == ([expected] if expected else [])


def test_each_kind_is_reported_once_and_logged():
    lines = []
    doctor = Doctor(window=5, grace=0, patience=5, log=lines.append)
    y = torch.arange(8) % 10
    for step in range(1, 40):
        observe(doctor, step, math.log(10), torch.zeros(8, 10), y)  # constant outputs at ln 10
    kinds = [f.kind for f in doctor.findings]
    assert kinds.count("collapse") == 1 and len(lines) == len(kinds)
    assert lines[0].startswith("DOCTOR step 9: collapse: collapsed:")


def test_a_breakdown_after_learning_is_flagged_as_divergence():
    # our first S9 run: train loss down to 1.42 by epoch 10, then back up to 2.1 at epoch 12-13
    doctor = Doctor(log=lambda m: None)
    y = torch.arange(10)
    logits = torch.randn(10, 10)
    for step in range(1, 401):
        loss = 2.3 - min(step, 200) * 0.0045 if step <= 300 else 2.1  # 2.3 -> 1.4, plateau, jump to 2.1
        observe(doctor, step, loss, logits, y)
    assert [f.kind for f in doctor.findings] == ["divergence"]
    assert doctor.findings[0].step > 300


def test_a_fresh_spec_network_at_ln10_but_above_chance_accuracy_is_not_collapsed():
    # measured on the CIFAR-10 JPEG copy: the spec S9 sits within 0.02 of ln 10 for ~120 steps with
    # logits ~1e-7 growing 10x per ~20 steps, while its accuracy is already 13-16%
    doctor = Doctor(log=lambda m: None)
    y = torch.arange(128) % 10
    for step in range(1, 121):
        logits = torch.randn(128, 10) * 1e-7 * 10 ** (step / 20)
        logits[:5, :] = 0
        logits[torch.arange(5), y[:5]] = 1e-7 * 10 ** (step / 20)  # 5 of 128 right + chance on the rest: ~13.5%
        observe(doctor, step, math.log(10) - 1e-5, logits, y)
    assert doctor.findings == []


def test_too_few_steps_are_said_and_what_was_checked():
    doctor = Doctor(log=lambda m: None)
    assert doctor.judged(16).startswith("too few steps to judge (16 steps): not checked: divergence (needs 50), "
                                        "collapse (needs 80), vanishing (needs 50)")
    assert doctor.judged(80) == "all checks ran (80 steps)"


@pytest.mark.parametrize("counts, expected", [
    ([0, 0, 0, 0, 980, 0, 20, 0, 0, 0], ["concentrated"]),  # 98% deer: the 16-step run
    ([0, 0, 0, 0, 0, 0, 905, 0, 842, 0], ["concentrated"]),  # only frog and ship
    ([420, 10, 80, 60, 70, 50, 120, 60, 80, 50], []),  # an early but working epoch
    ([100] * 10, []),
])
def test_test_predictions_crowded_into_few_classes_are_flagged(counts, expected):
    doctor = Doctor(log=lambda m: None)
    doctor.check_predictions(16, counts)
    assert [f.kind for f in doctor.findings] == expected


def test_batch_dependence_is_a_finding_with_the_measured_difference():
    from utils.checks import batch_independence

    torch.manual_seed(1)
    doctor = Doctor(log=lambda m: None)
    doctor.add(0, batch_dependence_check(batch_independence(TransformerUltimus())))
    assert doctor.findings == []
    doctor.add(0, batch_dependence_check(batch_independence(seed_model())))
    assert [f.kind for f in doctor.findings] == ["batch_dependence"]
    assert "differ by" in doctor.findings[0].message and "utils.checks.batch_independence(model)" in doctor.findings[0].message


@pytest.mark.parametrize("lr_scale, expected", [(1.0, ["no_descent"]), (1 / 3, [])])
def test_a_suggestion_at_the_loss_minimum_is_said_and_what_the_run_does(lr_scale, expected):
    lines = []
    doctor = Doctor(log=lines.append)
    doctor.add(0, schedule_check(8.5e-3 * lr_scale, suggested_lr=8.5e-3, min_loss_lr=8.5e-3, lr_scale=lr_scale))
    assert [f.kind for f in doctor.findings] == expected
    assert "steepest descent falls on its loss minimum" in lines[0]
    assert ("the recipe takes 0.333 of it (lr_scale)" in lines[0]) == (lr_scale < 1)


@pytest.mark.parametrize("lr_scale, expected", [(1.0, ["schedule"]), (13.5, [])])
def test_a_max_lr_past_the_loss_minimum_is_a_finding_unless_the_recipe_scales_it(lr_scale, expected):
    lines = []
    doctor = Doctor(log=lines.append)
    doctor.add(0, schedule_check(0.2, suggested_lr=0.0148, min_loss_lr=0.0313, lr_scale=lr_scale))
    assert [f.kind for f in doctor.findings] == expected
    assert any("the recipe's 13.5 x the range test's suggestion 0.0148 (lr_scale), past its loss minimum 0.0313" in m
               for m in lines) == (lr_scale > 1)


def test_advice_names_the_command_and_the_python_api():
    from utils.doctor import ADVICE

    for kind in ("collapse", "divergence", "vanishing", "schedule", "concentrated"):
        assert "command:" in ADVICE[kind] and "Python:" in ADVICE[kind], kind
    assert "tests/test_models.py" not in " ".join(ADVICE.values())


def test_a_recipes_advice_follows_the_finding_and_the_general_advice_names_no_assignment():
    from assignments.recipes import recipe
    from utils.doctor import ADVICE

    lines = []
    spec = recipe("S9")
    doctor = Doctor(log=lines.append, advice=spec.advice)
    doctor.add(0, schedule_check(8.5e-3, suggested_lr=8.5e-3, min_loss_lr=8.5e-3))
    assert lines[-1].endswith("S9 without a residual path takes a third of it.")
    plain = Doctor(log=lines.append, advice=recipe("S10").advice)
    plain.add(0, schedule_check(8.5e-3, suggested_lr=8.5e-3, min_loss_lr=8.5e-3))
    assert "S9" not in lines[-1] and lines[-1].endswith("command: --lr).")
    assert not re.search(r"\bS\d+\b|--variant", " ".join(ADVICE.values()))


# S10 on CIFAR-10 (JPEG copy): seed 1's range test suggested 2.31e-3 (loss minimum 3.76e-2), seeds 2 and 3's
# suggestion was their loss minimum, 2.15e-2 (results/S10-*/metrics.json)
S10_SEARCHES = {"seed 1": (2.31e-3, 3.76e-2), "seeds 2 and 3": (2.154e-2, 2.154e-2)}


def _s10_preflight(max_lr: float | None, search: tuple[float, float] | None, **changes):
    """The doctor's findings and lines before S10's first step: ``max_lr`` given (no range test), or None for the
    recipe's choice from ``search`` (suggested, minimum) on a full run's steps."""
    import dataclasses
    from types import SimpleNamespace

    from assignments.callbacks import doctor_preflight
    from assignments.recipes import recipe

    r = dataclasses.replace(recipe("S10"), **changes)
    steps = r.epochs * 391
    lr_search = dict(zip(("suggested_lr", "min_loss_lr"), search)) if search else None
    if max_lr is None:
        max_lr = r.max_lr(*search, steps)[0]
    lines = []
    doctor = Doctor(log=lines.append, advice=r.advice)
    result = SimpleNamespace(checks={"batch_independence": 2.5e-7}, lr_search=lr_search, max_lr=max_lr)
    doctor_preflight(doctor, result, r, steps)
    return [(f.step, f.kind) for f in doctor.findings], lines


@pytest.mark.parametrize("max_lr", [0.05, 0.1])
@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_s10_at_the_max_lr_its_students_saw_stagnate_is_a_finding_before_its_first_step(max_lr, optimizer):
    findings, lines = _s10_preflight(max_lr, None, optimizer=optimizer)
    assert findings == [(0, "schedule")]
    assert f"max LR {max_lr:.3g} is above 0.04" in lines[0] and "--lr auto" in lines[0]


@pytest.mark.parametrize("seed", list(S10_SEARCHES))
def test_s10_s_default_max_lr_gets_no_finding_whatever_its_range_test_suggested(seed):
    assert _s10_preflight(None, S10_SEARCHES[seed]) == ([], [])


def test_s10_taking_its_range_test_s_suggestion_got_a_finding_for_seeds_2_and_3():
    # why the recipe fixes its max LR: the suggestion moved 9x between seeds, and taken as it is it was the loss
    # minimum for two of three
    assert _s10_preflight(None, S10_SEARCHES["seeds 2 and 3"], lr_max=None)[0] == [(0, "no_descent")]
    assert _s10_preflight(None, S10_SEARCHES["seed 1"], lr_max=None)[0] == []


def test_a_recipe_s_lr_max_and_lr_unstable_are_checked_and_a_quick_check_still_caps_lr_max():
    from utils.recipe import Recipe

    for bad in (0, -1e-3, float("nan"), "0.01", True):
        with pytest.raises(ValueError, match="Recipe.lr_max must be a positive number or None"):
            Recipe("x", lr_max=bad)
    with pytest.raises(ValueError, match="Recipe.lr_unstable"):
        Recipe("x", lr_unstable=float("inf"))
    r = Recipe("x", lr_max=2e-2, lr_scale=10)
    assert r.max_lr(1e-3, 3e-2, steps=1000) == (2e-2, None)  # the measured value, not 10 x the suggestion
    lr, why = r.max_lr(1e-3, 3e-2, steps=50)  # a quick check: at most a third of the loss minimum
    assert lr == pytest.approx(1e-2) and "at most 1/3 of the loss minimum" in why and "lr_scale" not in why
