"""One training run, a recipe (``utils.recipe.Recipe``) applied to a model: ``Run(...)`` builds it whole
(options, model and its checks, data, out folder, callbacks), then the steps: augmented samples -> summary -> LR
range test -> training -> the trained model's figures (``run.analysis``) -> report. The notebooks call the steps one
per cell; ``python -m assignments`` calls ``run_all()``. Each step logs to ``log.txt``, saves its figure as a PNG
and records its numbers in ``self.result``, from which ``metrics.json`` and ``report.md`` are written.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

from torch import nn

from utils import distributed, plots
from utils.callbacks import Callback, TrainingStopped
from utils.checkpoint import CHECKPOINT, Checkpoint
from utils.data import CLASSES
from utils.doctor import Doctor
from utils.keep import keep_run
from utils.lr import LRSearch, check_one_cycle_length, one_cycle, one_cycle_line
from utils.precision import Precision
from utils.recipe import Recipe
from utils.report import RunResult, beside, doctor_line, write_metrics, write_report
from utils.seed import set_seed
from utils.summary import count_params, model_summary, summary_text
from utils.tensorboard import TensorBoard
from utils.train import fit

from .analysis import Analysis
from .build import checked_model, command, cpu_hint, device_name, load_data, place, start_lines, stepping_module
from .callbacks import attention_watch, default_callbacks, doctor_after_training, doctor_preflight
from .config import RunConfig, check_tensorboard_folder, resolve_out, run_config
from .max_lr import choose_max_lr
from .model_source import describe
from .outdir import claim, release
from .record import Record
from .recipes import recipe as builtin_recipe
from .resume import Carried, check_resumable, restore_last_good


class Run:
    """``Run(assignment="S9", ...)`` for a built-in recipe, or ``Run(recipe=Recipe(...), model=MyNet, ...)`` for your
    own model (a class or function that builds it, or an ``nn.Module``); options are RunConfig's fields (epochs, lr,
    data_dir, device, precision, out ...); ``callbacks``: your :class:`utils.callbacks.Callback` objects, after the
    run's own. It checks everything before it creates (and locks) the out folder: a failed build writes nothing."""

    def __init__(self, config: RunConfig | None = None, *, recipe: Recipe | None = None,
                 model: nn.Module | Callable[[], nn.Module] | None = None, callbacks: list[Callback] = (),
                 **options):
        config = run_config(config, recipe, callbacks, options)  # the options checked, each alone and together
        self.device, self.world = place(config)  # the device; under torchrun this process's rank
        # the out folder; a resume reads its checkpoint (the schedule and data it started with) and names the
        # options it cannot change (under torchrun rank 0 decides and the others take its answer)
        name = recipe.name if recipe else builtin_recipe(config.assignment, config.variant).name
        self.resumed = distributed.decided(lambda: resolve_out(config, name))  # config.Resolved
        self.config = c = self.resumed.config
        self.recipe = r = recipe or builtin_recipe(c.assignment, c.variant)  # a resume: the variant it started with
        source = model if model is not None else r.model
        if source is None:
            raise ValueError(f"Run: recipe {r.name!r} has no model; pass model=... (an nn.Module or a factory)")
        self.epochs, self.t0 = c.epochs or r.epochs, time.perf_counter()
        set_seed(c.seed)
        self.precision = Precision(c.precision, self.device, channels_last=r.channels_last)
        # the model and its contract before the data: a model that breaks it is refused in seconds
        self.model, checks = checked_model(source, self.precision, c.sync_bn)
        self.model_source = describe(source)  # how the app rebuilds it: names and literals, or None
        self.step_model = stepping_module(self.model, self.world, self.device, c.compile)
        self.criterion = r.criterion()
        distributed.barrier()  # every rank has checked --out before rank 0 creates anything
        self.data = d = load_data(c, r, self.device, self.world, self.resumed.state)
        check_one_cycle_length(self.epochs, len(d.train_loader))
        self.identity = d.identity(r.name, type(self.model).__name__)
        if c.resume:
            check_resumable(self.resumed.state, self.identity, self.model, self.resumed.out, len(d.train_loader))
        check_tensorboard_folder(self.resumed.out, c.tensorboard)
        # only now: a failed build leaves no run folder and writes into no existing one
        self.out = distributed.decided(lambda: claim(self.resumed.out, unique=self.resumed.unique, overwrite=c.overwrite,
                                                     resume=c.resume, command=command(self.world)))
        self.carried = Carried.of(self.resumed.state)  # what a resume takes from the run it continues
        self.result = res = RunResult(
            name=r.name, model=type(self.model).__name__, params=count_params(self.model), data=d.source,
            device=device_name(self.device), precision=repr(self.precision), epochs=self.epochs,
            assignment=c.assignment, config=dataclasses.asdict(c), recipe=r.to_dict(),
            commands=[*self.carried.commands, command(self.world)], world_size=self.world.size, checks=checks)
        self.tensorboard = (TensorBoard(self.out / "tb", findings=lambda: self.doctor.findings,
                                        purge_step=self.carried.step + 1 if c.resume else None)
                            if c.tensorboard and self.world.main else None)
        self.record = Record(self.out, res, self.world.main, self.tensorboard)  # log.txt, the PNGs, TensorBoard
        self.log = self.record.log
        # under torchrun rank 0's doctor watches (the loss and accuracy it sees are the global batch's)
        self.doctor = Doctor(len(CLASSES), strict=c.strict, log=self.log, advice=r.advice) if self.world.main else None
        self.analysis = Analysis(self.model, d.test_split, d.test_loader, d.mean, d.std, self.precision, res,
                                 self.log, self.record.figure, checks["log_probs"], gallery=c.gallery)
        hint = cpu_hint(self.model, self.device, len(d.train_split), self.epochs)
        for line in start_lines(res, c, d, device=self.device, precision=self.precision, out=self.out,
                                world=self.world, ignored=self.resumed.ignored, hint=hint,
                                instance=isinstance(source, nn.Module), rebuildable=self.model_source is not None):
            self.log(line)
        attention = attention_watch(self.analysis, res, self.carried.attention_entropy_start if c.resume else None,
                                    self.log)
        self.callbacks = [*default_callbacks(self.log, res, self.doctor, attention, self._checkpoint_extra,
                                             self.tensorboard), *callbacks]

    def show_augmented(self, n: int = 16):
        """A grid of training images after augmentation."""
        d = self.data
        return self.record.figure("augmented", plots.augmented_samples(d.train_loader, d.mean, d.std, n))

    def summary(self):
        """torchinfo's table of the model (logged); returns the summary object."""
        s = model_summary(self.model)
        self.result.tables["summary"] = summary_text(s)
        self.log(self.result.tables["summary"])
        return s

    def find_lr(self):
        """The max LR: the recipe's take on the LR range test (``lr="auto"``), the given one, or a resumed run's
        (:func:`assignments.max_lr.choose_max_lr`); returns the range-test figure (or None)."""
        res = self.result
        res.max_lr, res.lr_search, lines = choose_max_lr(self.config, self.recipe, self.carried, self.data, self.model,
                                                         self.criterion, self.precision, self.world, self.epochs)
        for line in lines:
            self.log(line)
        return self.record.figure("lr_range_test", plots.lr_figure(LRSearch(**res.lr_search), res.max_lr)) \
            if res.lr_search else None

    def train(self) -> list[dict]:
        """One-cycle training with the doctor watching; checkpoint every epoch; returns the history."""
        r, res, d = self.recipe, self.result, self.data
        if res.max_lr is None:
            self.find_lr()
        optimizer = r.make_optimizer(self.model.parameters(), res.max_lr / r.div_factor)
        scheduler = one_cycle(optimizer, res.max_lr, self.epochs, len(d.train_loader), r.peak_epoch, r.div_factor)
        if self.doctor:
            doctor_preflight(self.doctor, res, r, self.epochs * len(d.train_loader))
        self.log(one_cycle_line(res.max_lr, r.div_factor, r.peak_epoch, self.epochs, len(d.train_loader))
                 + f"; {r.optimizer} wd {r.weight_decay}, batch {d.batch_size}")
        try:
            fit(self.step_model, d.train_loader, d.eval_loader, optimizer, self.criterion, self.epochs, scheduler,
                precision=self.precision, callbacks=self.callbacks,
                checkpoint=Checkpoint(self.out / CHECKPOINT, resume=self.resumed.state))
            doctor_after_training(self.doctor, res, self.model)
        finally:  # metrics.json says what was trained (the epochs checkpointed), never less
            self.analysis.trained()
            if self.doctor:
                res.health = self.doctor.report()
                res.checks["doctor"] = self.doctor.judged(res.history[-1]["step"] if res.history else 0)
            if res.history and self.world.main:
                self.write_metrics()
        return res.history

    def _checkpoint_extra(self) -> dict:
        """What every checkpoint keeps beside the weights, for ``--resume`` and its checks."""
        res = self.result
        return Carried.now(res, self._wall()).extra(config=res.config, recipe=res.recipe, identity=self.identity,
                                                    mean=list(self.data.mean), std=list(self.data.std),
                                                    model_source=self.model_source)

    def doctor_findings(self) -> str:
        """The doctor's findings in one line (logged): :func:`utils.report.doctor_line`."""
        self.log(text := doctor_line(self.result.health, self.result.checks.get("doctor", "not run")))
        return text

    def beside(self, committed: str) -> str:
        """This run's numbers beside those of the committed run ``results/<committed>/`` (printed)."""
        where = Path(__file__).resolve().parents[1] / "results" / committed
        print(text := beside(self.result, json.loads((where / "metrics.json").read_text()), f"results/{committed}"))
        return text

    def write_files(self) -> list[Path]:
        """Write report.md and metrics.json; list (and print) everything in the out directory."""
        self.report()
        paths = sorted(p for p in self.out.iterdir() if not p.name.startswith("."))  # not the lock
        print("\n".join(f"{p}  ({p.stat().st_size:,} bytes)" for p in paths))
        return paths

    def keep(self, to_drive: bool = False, checkpoint: bool | None = None) -> Path:
        """Zip the out folder and, in Colab, download it or copy it to Drive: :func:`utils.keep.keep_run`."""
        return keep_run(self.out, to_drive, checkpoint=checkpoint)

    def app(self, **options):
        """Explore the trained model in the browser, inline in Colab and Jupyter: :func:`assignments.app.app`."""
        from .app import app

        options.setdefault("model", copy.deepcopy(self.model))  # the trained module itself: nothing to rebuild
        return app(self, **options)

    def space(self, dest: str | Path | None = None, **options) -> Path | None:
        """The trained model as a Hugging Face Space, zipped (in Colab downloaded): :func:`assignments.space.share_run`."""
        from .space import share_run  # gradio's version is read only when a Space is written

        return share_run(self.out, dest, **options)

    def close(self) -> None:
        """Close the TensorBoard files and release the out folder's lock (``run_all`` does it; so does the process's end)."""
        if self.tensorboard:
            self.tensorboard.close()
        release(self.out)

    def run_all(self) -> int:
        """Every step in order, as ``python -m assignments`` runs them; 0, or 2 if the doctor stopped the run."""
        try:
            self.show_augmented()
            self.summary()
            self.find_lr()
            stopped = False
            try:
                self.train()
            except TrainingStopped as e:
                stopped = True
                self.log(f"STOPPED: {e}; {restore_last_good(self.model, self.out, self.result.history, self.device)}")
                self.analysis.trained()
            if self.world.main and self.result.history:  # under torchrun rank 0 draws and writes the rest
                self.analysis.draw_all()
            if self.world.main:
                report = self.report()
                files = sorted(p.name for p in self.out.iterdir() if p.is_file() and p.suffix in (".json", ".txt", ".pt"))
                self.log(f"wrote {report} and {', '.join(files)}, *.png in {self.out}")
            return 2 if stopped else 0
        finally:
            self.close()

    def _wall(self) -> float:
        """Seconds of this process's run plus those of the runs it resumes."""
        return round(self.carried.wall_seconds + time.perf_counter() - self.t0, 1)

    def write_metrics(self) -> Path:
        """metrics.json (the one place it is written)."""
        self.result.wall_seconds = self._wall()
        return write_metrics(self.result, self.out)

    def report(self) -> Path:
        """metrics.json and report.md (what a student pastes on the assignment page); hparams in TensorBoard."""
        self.write_metrics()
        if self.tensorboard:
            self.tensorboard.run_hparams(self.result)
        return write_report(self.result, self.out, self.record.log_text())
