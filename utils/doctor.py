"""The training doctor: watches each step for the failures that keep a network at chance (10% on CIFAR-10) for a
whole run: a collapse to one output, a dying signal, divergence, NaN.

It only looks at what the loop already has (the loss value, the batch's logits and predictions,
and every ``grad_every`` steps the gradients), so it costs no extra forward pass. Each kind of
finding is reported once, with likely causes and the next thing to try.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .callbacks import Callback, TrainingStopped


@dataclass
class Finding:
    step: int
    kind: str  # collapse | non_finite | divergence | vanishing | schedule | no_descent | concentrated | batch_dependence
    message: str


TEST_LOSS_CHANCE = 10  # a test loss this many times ln C (guessing) after an epoch: diverged
TEST_LOSS_JUMP = 10  # ... or this many times the previous epoch's
CHECK_MODEL = "utils.checks.batch_independence(model) (it works on any model)"
ADVICE = {
    "collapse": ("the network gives (almost) the same output for every image. Likely causes: a max LR far above "
                 "the range test's suggestion (e.g. taken at the loss minimum), weight decay with Adam (use AdamW "
                 "or weight_decay=0), or a layer that mixes images across the batch. Next: the range test's "
                 "steepest-descent suggestion (command: --lr auto; Python: lr=\"auto\"), then check the model with "
                 + CHECK_MODEL + "."),
    "non_finite": ("the loss or a gradient became NaN/inf; the run stopped and the last checkpoint is kept. "
                   "Likely causes: LR too high, log of zero, bad input values. Next: a lower max LR (command: --lr; "
                   "Python: lr=...), check the data."),
    "divergence": ("the loss is climbing back up. Likely cause: LR too high for this model. Next: lower the max "
                   "LR to the range test's suggestion (command: --lr; Python: lr=..., or Recipe(lr_scale=...))."),
    "vanishing": ("the signal is dying: {what}. Likely causes: stacked blocks without a residual path at a bad LR, "
                  "a frozen or disconnected layer. Next: a lower max LR (command: --lr; Python: lr=...)."),
    "schedule": ("{what}. The steepest descent of the range test is the usual max LR; the loss minimum is already "
                 "past the point where training becomes unstable. Next: the suggestion (command: --lr auto; "
                 "Python: lr=\"auto\")."),
    "no_descent": ("{what}. Next: a max LR below it (Python: Recipe(lr_scale=1/3) or lr=...; command: --lr)."),
    "concentrated": ("{what}: the network favours a few classes. Likely causes: too few steps or images so far, "
                     "a max LR too high or too low, a layer that mixes images across the batch. Next: more epochs "
                     "or images, the range test's suggestion (command: --lr auto; Python: lr=\"auto\")."),
    "batch_dependence": ("{what}: a layer mixes images across the batch (e.g. attention over the batch dimension, "
                         "Q.T @ K on (B, d) matrices), so test predictions depend on the batch they are computed in. "
                         "Next: compute such products per image ((B, d, 1) @ (B, 1, d)); measure with "
                         + CHECK_MODEL + "."),
}



# The rules that watch training steps, and the steps each needs before it can fire (its warm-up, from the doctor's
# settings): the window checks begin after grace + window steps, and a condition must then persist patience steps.
WARMUP = {
    "divergence": lambda d: d.grace + d.window,
    "collapse": lambda d: d.grace + d.window + d.patience,
    "vanishing": lambda d: min(d.grace + d.window + d.patience, d.grace + 3 * d.grad_every),
}
# ... and those that judge from the first step (or before it, or at an epoch's end)
ALWAYS_CHECKED = {"non_finite": "non-finite values", "schedule": "the schedule",
                  "concentrated": "test predictions per class", "batch_dependence": "the per-image check"}


class Doctor(Callback):
    """Per-step health checks, as a :class:`utils.callbacks.Callback` of :func:`utils.train.fit`; ``findings``
    collects what it saw, ``strict`` stops at the first one.

    ``window`` steps of history are compared after ``grace`` steps (a fresh network may briefly
    predict one class), and a condition must hold ``patience`` steps in a row before it is reported.
    ``band`` is how close to ln(num_classes) a stuck loss must stay; a window-mean loss ``rise`` nats
    above the best window so far is a divergence (an attention network measured 1.4 -> 2.1 before it broke down).
    ``advice``: more to say after a kind's advice, by kind, from the layer that knows the run's options (a
    recipe's :attr:`utils.recipe.Recipe.advice`).
    """
    state_key = "health"  # the findings, saved in every checkpoint

    def __init__(self, num_classes: int = 10, window: int = 30, grace: int = 20, band: float = 0.02,
                 patience: int = 30, grad_every: int = 10, rise: float = 0.5, crowd: int = 2, strict: bool = False,
                 log=print, advice: dict[str, str] | None = None):
        self.num_classes, self.window, self.grace, self.band = num_classes, window, grace, band
        self.patience = patience
        self.grad_every, self.strict, self.log = grad_every, strict, log
        self.chance_loss = math.log(num_classes)
        self.losses: deque[float] = deque(maxlen=window)
        self.correct: deque[float] = deque(maxlen=window)
        self.top_share: deque[float] = deque(maxlen=window)  # share of the batch given its most common prediction
        self.spread: deque[float] = deque(maxlen=window)  # logits' std across the batch, averaged over classes
        self.sizes: deque[int] = deque(maxlen=window)
        self.streak: dict[str, int] = {}  # consecutive steps a condition has held
        self.dead_checks: dict[str, int] = {}  # consecutive gradient checks a tensor's gradient was exactly 0
        self.first_loss: float | None = None
        self.best_mean = math.inf  # lowest window-mean loss so far
        self.rise = rise
        self.crowd = crowd  # at most this many classes taking 90% of the test predictions is a finding
        self.findings: list[Finding] = []
        self.advice = advice or {}

    # --- the callback's events -------------------------------------------------------------------
    def on_steps(self, state, rows) -> None:
        for r in rows:
            self.observe(r.step, r.loss, r.correct, r.top, r.spread, r.size)
        if state.precision.hopeless():
            self.non_finite(state.step, f"gradients overflow even unscaled (fp16 scale "
                                        f"{state.precision.scaler.get_scale():g})")

    def after_backward(self, state) -> None:
        self.check_gradients(state.step, state.model, state.precision.overflow_expected)

    def on_epoch_end(self, state, entry) -> None:
        previous = state.history[-2]["test_loss"] if len(state.history) > 1 else None
        self.check_test_loss(state.step, entry["test_loss"], previous)
        if state.epoch == state.epochs:  # early epochs may crowd (a fresh attention network does); the end may not
            self.check_predictions(state.step, entry["pred_counts"])

    def state_dict(self) -> list[dict]:
        return self.report()

    def load_state_dict(self, data: list[dict]) -> None:
        self.findings = [Finding(**f) for f in data]

    # --- checks before and after training --------------------------------------------------------
    def add(self, step: int, check: tuple[str, str] | None) -> None:
        """Record a pre-flight check's result (:func:`utils.checks.schedule_check`,
        :func:`utils.checks.batch_dependence_check`)."""
        if check is None:
            return
        kind, what = check
        if kind == "note":
            self.log(f"DOCTOR note: {what}")
        else:
            self._report(step, kind, what)

    def check_gradients(self, step: int, model: nn.Module, overflow_expected: bool = False) -> None:
        """After backward, before the optimizer step: stop on non-finite grads; flag dead layers.

        With ``overflow_expected`` (fp16 with a gradient scaler) an inf gradient is the scaler's to skip,
        not a finding; the loop reports a real one through :meth:`non_finite`."""
        if step % self.grad_every and step > 1:
            return
        grads = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
        if not grads:
            return
        norms = torch.stack(torch._foreach_norm([g for _, g in grads])).float().cpu()  # (num_params,)
        if not torch.isfinite(norms).all():
            if overflow_expected:
                return
            bad = [n for (n, _), v in zip(grads, norms) if not torch.isfinite(v)]
            self.non_finite(step, f"non-finite gradient in {bad[:3]}")
        for (name, _), v in zip(grads, norms):
            self.dead_checks[name] = self.dead_checks.get(name, 0) + 1 if v == 0 else 0
        # exactly zero for 3 checks in a row: a fresh attention block without a residual path measured K/Q gradients
        # of ~1e-17, not 0
        dead = [n for n, count in self.dead_checks.items() if count >= 3]
        if dead and step > self.grace:
            self._report(step, "vanishing", f"zero gradient in {len(dead)} parameter tensor(s), e.g. {dead[0]}")

    def check_test_loss(self, step: int, loss: float, previous: float | None) -> None:
        """After an epoch's test: a mean test loss far above chance (``TEST_LOSS_CHANCE`` x ln C) or many times the
        previous epoch's (``TEST_LOSS_JUMP`` x) is divergence, however few steps the run has had."""
        chance = math.log(self.num_classes)
        if loss > TEST_LOSS_CHANCE * chance:
            self._report(step, "divergence", f"the test loss {loss:.4g} is {loss / chance:.0f}x that of guessing "
                                             f"(ln {self.num_classes} = {chance:.3f})")
        elif previous and loss > TEST_LOSS_JUMP * previous:
            self._report(step, "divergence", f"the test loss rose from {previous:.4g} to {loss:.4g} in one epoch")

    def check_predictions(self, step: int, counts: list[int]) -> None:
        """After an epoch's test: ``counts`` predictions per class. Flags a test set whose predictions crowd
        into ``crowd`` classes or fewer (90% of them): a run that predicts only frog and ship, say."""
        total = sum(counts)
        if total < 10 * self.num_classes:
            return
        shares = sorted((c / total for c in counts), reverse=True)
        crowded = next(k for k in range(1, len(shares) + 1) if sum(shares[:k]) >= 0.9)
        if crowded <= self.crowd:
            top = ", ".join(f"{s:.0%}" for s in shares[:crowded])
            self._report(step, "concentrated", f"90% of the test predictions go to {crowded} class(es) ({top})")

    def judged(self, steps: int) -> str:
        """What the doctor could check in a run of ``steps`` steps, in one sentence (from :data:`WARMUP`)."""
        need = {kind: warmup(self) for kind, warmup in WARMUP.items()}
        short = {kind: n for kind, n in need.items() if steps < n}
        if not short:
            return f"all checks ran ({steps} steps)"
        return (f"too few steps to judge ({steps} steps): not checked: "
                + ", ".join(f"{kind} (needs {n})" for kind, n in short.items())
                + "; checked: " + ", ".join(ALWAYS_CHECKED.values()))

    def non_finite(self, step: int, what: str) -> None:
        """A NaN/inf the run cannot go on with: reported, and the run stops."""
        self._report(step, "non_finite", what, fatal=True)

    def observe(self, step: int, loss: float, correct: float, top: float, spread: float, size: int) -> None:
        """One step's numbers, as :func:`batch_stats` computes them on the device (the loop reads them in groups)."""
        if not math.isfinite(loss):
            self.non_finite(step, f"loss is {loss}")
        self.losses.append(loss)
        self.correct.append(correct / size)
        self.top_share.append(top / size)
        self.spread.append(spread if size > 1 else 1.0)
        self.sizes.append(size)
        if self.first_loss is None:
            self.first_loss = loss
        if step < self.grace + self.window or len(self.losses) < self.window:
            return
        self._check_window(step)

    # --- the checks ------------------------------------------------------------------------------
    def _check_window(self, step: int) -> None:
        mean_loss = sum(self.losses) / len(self.losses)
        acc = sum(self.correct) / len(self.correct)
        top = sum(self.top_share) / len(self.top_share)
        chance = 1 / self.num_classes
        stuck_at_chance = max(abs(v - self.chance_loss) for v in self.losses) < self.band
        # A fresh attention network without a residual path sits at ln 10 for ~120 steps (logits ~1e-7), but its accuracy is
        # already well above chance (13-16% on CIFAR-10): only accuracy within 3 sigma of chance counts.
        sigma = math.sqrt(chance * (1 - chance) / max(sum(self.sizes), 1))
        at_chance_acc = acc < chance + 3 * sigma
        growing = self.spread[-1] > 10 * self.spread[0]  # a fresh network's spread grows ~10x per 20 steps
        if self._persists("collapse", (stuck_at_chance and at_chance_acc) or top > 0.95):
            what = (f"loss has stayed within {self.band} of ln({self.num_classes}) = {self.chance_loss:.4f} "
                    f"for {self.window + self.patience} steps" if stuck_at_chance else
                    f"{top:.0%} of predictions went to one class for {self.window + self.patience} steps")
            self._report(step, "collapse", f"collapsed: the {what}, accuracy {acc:.1%}")
        if self._persists("spread", max(self.spread) < 1e-4 and not growing):
            self._report(step, "vanishing", f"the logits' spread across images has stayed below 1e-4 without "
                                            f"growing for {self.window + self.patience} steps")
        self.best_mean = min(self.best_mean, mean_loss)
        if mean_loss > max(3 * self.first_loss, self.first_loss + 2):
            self._report(step, "divergence", f"loss {mean_loss:.3g} is far above its start {self.first_loss:.3g}")
        elif mean_loss > self.best_mean + self.rise:
            self._report(step, "divergence", f"loss {mean_loss:.3g} over the last {self.window} steps has risen "
                                             f"{mean_loss - self.best_mean:.2f} above its best {self.best_mean:.3g}")

    def _persists(self, name: str, condition: bool) -> bool:
        """True once ``condition`` has held for ``patience`` consecutive steps."""
        self.streak[name] = self.streak.get(name, 0) + 1 if condition else 0
        return self.streak[name] >= self.patience

    def _report(self, step: int, kind: str, what: str, fatal: bool = False) -> None:
        if any(f.kind == kind for f in self.findings) and not fatal:
            return
        advice = ADVICE[kind] + (f" {self.advice[kind]}" if kind in self.advice else "")
        text = advice.format(what=what) if "{what}" in advice else f"{what}; {advice}"
        finding = Finding(step, kind, text)
        self.findings.append(finding)
        self.log(f"DOCTOR step {step}: {kind}: {text}")
        if fatal or self.strict:
            raise TrainingStopped(f"stopped at step {step}: {kind}: {what}")

    def report(self) -> list[dict]:
        """The findings as plain dicts, for metrics.json's ``health`` entry."""
        return [asdict(f) for f in self.findings]
