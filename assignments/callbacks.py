"""The callbacks a run trains with, built in one place (:func:`default_callbacks`): the log's epoch lines, the
progress bar, the history the run's result keeps, the training doctor, the attention entropy per epoch (a model
with attention), the checkpoint's run data and TensorBoard. A student's own (``Run(callbacks=[...])``) come after
them and see the same events (:mod:`utils.callbacks`). The doctor's checks before and after training are here too.
"""
from __future__ import annotations

import math
from typing import Callable

from torch import nn

from utils.callbacks import Callback, EpochLog, History, Measure, ProgressBar, Saved
from utils.checks import batch_dependence_check, batch_independence, schedule_check, unstable_lr_check
from utils.doctor import Doctor
from utils.model_attention import LOOKED_FOR
from utils.recipe import Recipe
from utils.report import RunResult
from utils.tensorboard import TensorBoard

from .analysis import Analysis


def attention_watch(analysis: Analysis, result: RunResult, carried_start: list | None, log: Callable[[str], None]
                    ) -> list[Callback]:
    """For a model with attention: its row entropy on a fixed test batch after every epoch, and (logged now) on the
    weights training starts from; ``carried_start``: a resumed run's numbers of its start, kept. None without
    attention, or with attention of a shape the measurements do not read (said in one line: training goes on)."""
    kind = analysis.attention_kind
    if kind is None:
        log(f"attention: none found in {result.model} (looked for {LOOKED_FOR})")
        return []
    probe = analysis.probe()
    try:
        start = kind.entropy(probe)
    except (ValueError, RuntimeError) as e:
        log(f"attention entropy not measured: {type(e).__name__}: {str(e).splitlines()[0]}")
        return []
    result.checks["attention_entropy_start"] = carried_start if carried_start is not None else start
    log(f"attention row entropy per {kind.unit} before training ({kind.uniform(probe)} is uniform): "
        + ", ".join(f"{h:.3f}" for h in result.checks["attention_entropy_start"] or []))
    return [Measure("attention_entropy", lambda: kind.entropy(probe))]


def default_callbacks(log: Callable[[str], None], result: RunResult, doctor: Doctor | None,
                      attention: list[Callback], checkpoint_extra: Callable[[], dict],
                      tensorboard: TensorBoard | None) -> list[Callback]:
    """In the order they see each event: the epoch lines, the progress bar, the history (kept in ``result``), the
    doctor (rank 0 only: None elsewhere), ``attention`` (:func:`attention_watch`), the run data every checkpoint
    keeps (``checkpoint_extra()`` under "extra"), TensorBoard (None when off)."""
    return [EpochLog(log), ProgressBar(), History(result.history), *([doctor] if doctor else []), *attention,
            Saved("extra", checkpoint_extra), *([tensorboard] if tensorboard else [])]


def doctor_preflight(doctor: Doctor, result: RunResult, recipe: Recipe, steps: int) -> None:
    """The doctor's checks before training: the model's per-image outputs, the max LR against the range test (a
    scale the recipe chose on purpose is a note, not a finding; the recipe's measured ``lr_max`` is not compared),
    and against the LR the recipe measured unstable (a given max LR too)."""
    doctor.add(0, batch_dependence_check(result.checks["batch_independence"]))
    # the recipe's measured max LR, taken as it is: the log says so, and the range test is not its reference
    taken_as_measured = recipe.lr_max and math.isclose(result.max_lr, recipe.lr_max, rel_tol=1e-6)
    if (s := result.lr_search) and not taken_as_measured:
        scale = recipe.lr_scale_taken(s["suggested_lr"], s["min_loss_lr"], steps)
        doctor.add(0, schedule_check(result.max_lr, s["suggested_lr"], s["min_loss_lr"], scale))
    doctor.add(0, unstable_lr_check(result.max_lr, recipe.lr_unstable))


def doctor_after_training(doctor: Doctor | None, result: RunResult, model: nn.Module) -> None:
    """After the last epoch: the trained model's per-image check (in eval mode), recorded in ``result`` and, on
    rank 0, judged by the doctor."""
    result.checks["batch_independence_end"] = batch_independence(model)
    if doctor:
        doctor.add(result.history[-1]["step"], batch_dependence_check(result.checks["batch_independence_end"]))
