"""TensorBoard event files for a run (``<out>/tb``), written by a :class:`utils.callbacks.Callback`.

Train loss, accuracy and LR at every read of the device's numbers (the loop reads them every ``SYNC_EVERY`` steps
anyway: no extra device reads), test loss and accuracy at each epoch's last step, the doctor's findings as text,
the figures as images and the recipe and options as hparams with the final accuracy. Every scalar's step is the
global optimizer step, so a resumed run (``purge_step`` = the checkpoint's step + 1) hides what the interrupted
process wrote after its checkpoint and continues the same curves without a repeated step.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .callbacks import Callback


class TensorBoard(Callback):
    """``logdir``: the event files' folder; ``findings``: returns the doctor's findings so far (logged as text);
    ``purge_step``: for a resume, the checkpoint's step + 1 (else taken from the resumed history at fit start)."""

    def __init__(self, logdir: str | Path, findings: Callable[[], list] = list, purge_step: int | None = None):
        self.logdir, self.findings, self.purge_step = Path(logdir), findings, purge_step
        self.writer, self.told, self.wrote_hparams = None, 0, False

    def _open(self):
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.logdir), purge_step=self.purge_step)
        return self.writer

    def on_fit_start(self, state):
        if self.purge_step is None and state.history:
            self.purge_step = state.step + 1
        self._open()
        self.told = len(self.findings())  # a resume: the findings before it were written by the first process

    def on_steps(self, state, rows):
        n = sum(r.size for r in rows)
        step = rows[-1].step
        self.writer.add_scalar("train/loss", sum(r.loss * r.size for r in rows) / n, step)
        self.writer.add_scalar("train/accuracy", 100 * sum(r.correct for r in rows) / n, step)
        self.writer.add_scalar("train/lr", rows[-1].lr, step)

    def on_epoch_end(self, state, entry):
        self.writer.add_scalar("test/loss", entry["test_loss"], entry["step"])
        self.writer.add_scalar("test/accuracy", entry["test_acc"], entry["step"])
        found = self.findings()
        for f in found[self.told:]:
            self.writer.add_text("doctor", f"step {f.step}: **{f.kind}**: {f.message}", f.step)
        self.told = len(found)
        self.writer.flush()

    def figure(self, name: str, fig, step: int) -> None:
        """A matplotlib figure as an image (``figures/<name>``) at ``step``."""
        self._open().add_figure(f"figures/{name}", fig, step, close=False)

    def hparams(self, hparams: dict, metrics: dict) -> None:
        """The run's options and recipe (plain values) beside its final metrics, in TensorBoard's HPARAMS tab."""
        if self.wrote_hparams:  # once per process: the report may be written again
            return
        plain = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}
        self._open().add_hparams(plain, metrics, run_name="hparams")
        self.wrote_hparams = True

    def run_hparams(self, result) -> None:
        """A run's options and recipe (:class:`utils.report.RunResult`) beside its final test accuracy and loss."""
        if result.history:
            last = result.history[-1]
            self.hparams({**result.config, **{f"recipe.{k}": v for k, v in result.recipe.items()}},
                         {"hparam/test_accuracy": last["test_acc"], "hparam/test_loss": last["test_loss"]})

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
