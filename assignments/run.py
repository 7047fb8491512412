"""One training run: ``Run(...)`` builds it whole (options, data, loaders, model, checks, out folder), then the
steps: augmented samples -> summary -> LR range test -> training -> the figures of the trained model -> report.
The notebooks call the steps one per cell; ``python -m assignments`` and the tests call ``run_all()``.

A run is a recipe (``utils.recipe.Recipe``: the built-in S7/S8/S9 or one made in a notebook) applied to a model.
Every step logs to ``log.txt`` in the run's out directory, saves its figure there as a PNG and records its numbers
in ``self.result`` (a ``utils.report.RunResult``), from which ``metrics.json`` and ``report.md`` are written.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from utils import distributed, plots
from utils.callbacks import EpochLog, History, Measure, ProgressBar, Saved
from utils.checks import batch_independence, check_contract, returns_log_probs
from utils.checkpoint import first_non_finite
from utils.data import CLASSES, channel_stats, fingerprint, load_cifar10
from utils.doctor import Doctor, TrainingStopped, batch_dependence_check, schedule_check
from utils.model_attention import LOOKED_FOR
from utils.lr import LRSearch, check_one_cycle_length, find_lr, one_cycle
from utils.precision import Precision
from utils.progress import say
from utils.recipe import Recipe
from utils.report import RunResult, write_metrics, write_report
from utils.seed import set_seed
from utils.summary import count_params, model_summary, summary_text
from utils.tensorboard import TensorBoard
from utils.train import fit

from .analysis import Analysis
from .build import batch_size, build_model, command, device_name, make_loaders, place, start_lines, stepping_module
from .config import RunConfig, resolve_out
from .model_source import describe
from .outdir import CHECKPOINT, OutError, claim, release
from .recipes import recipe as builtin_recipe
from .resume import Carried, check_resumable


class Run:
    """``Run(assignment="S9", ...)`` for a built-in recipe, or ``Run(recipe=Recipe(...), model=MyNet, ...)`` for
    your own model (a class or function that builds it, or an ``nn.Module``); keyword options are
    :class:`assignments.config.RunConfig`'s fields (epochs, lr, data_dir, device, precision, out ...).
    Constructing it checks everything and only then creates (and locks) the out folder: a run that fails to
    build writes nothing."""

    def __init__(self, config: RunConfig | None = None, *, recipe: Recipe | None = None,
                 model: nn.Module | Callable[[], nn.Module] | None = None, **options):
        if config is not None and options:
            raise ValueError(f"Run: pass the options in the RunConfig or as keywords, not both (got {', '.join(options)} "
                             f"beside a RunConfig)")
        config = config or RunConfig(**options)
        if recipe is None and config.assignment is None:
            raise ValueError("Run needs assignment='S7'|'S8'|'S9' or recipe=Recipe(...) with a model")
        if recipe is not None and not isinstance(recipe, Recipe):
            raise ValueError(f"Run: recipe must be a utils.Recipe; got {type(recipe).__name__}")
        if recipe is not None and config.assignment is not None:
            raise ValueError(f"Run: pass assignment={config.assignment!r} (a built-in recipe) or recipe=Recipe(...), "
                             f"not both")
        self.device, self.world = place(config)  # the device; under torchrun this process's rank
        # the out folder; a resume reads its checkpoint (the schedule and data it started with) and names the
        # options it cannot change (under torchrun rank 0 decides and the others take its answer)
        name = recipe.name if recipe else builtin_recipe(config.assignment, config.variant).name
        self.resumed = distributed.decided(lambda: resolve_out(config, name))  # config.Resolved
        self.config, c = self.resumed.config, self.resumed.config
        self.recipe = r = recipe or builtin_recipe(c.assignment, c.variant)  # a resume: the variant it started with
        source = model if model is not None else r.model
        if source is None:
            raise ValueError(f"Run: recipe {r.name!r} has no model; pass model=... (an nn.Module or a factory)")
        self.epochs = c.epochs or r.epochs
        self.t0 = time.perf_counter()

        set_seed(c.seed)
        self.precision = Precision(c.precision, self.device, channels_last=r.channels_last)
        # the model and its contract before the data: a model that breaks it is refused in seconds
        with self.precision.building():  # fp64: the weights drawn in float64
            built = build_model(source)
        built = nn.SyncBatchNorm.convert_sync_batchnorm(built) if c.sync_bn else built
        self.model = self.precision.place(built)
        with torch.random.fork_rng(devices=[]):  # the checks draw no numbers from the run's RNG
            check_contract(self.model, len(CLASSES))  # one (B, 10) tensor: every later step relies on it
            mixing = batch_independence(self.model)
            log_probs = returns_log_probs(self.model)
        self.model_source = describe(source)  # how the app rebuilds it: names and literals, or None
        self.step_model = stepping_module(self.model, self.world, self.device, c.compile)
        self.criterion = r.criterion()
        distributed.barrier()  # every rank has checked --out before rank 0 creates anything
        with distributed.main_first():  # rank 0 downloads (if it must), then the others read
            data = load_cifar10(c.data_dir, download=c.download)
        self.mean, self.std = channel_stats(data.train.images)
        subset = c.subset if c.subset and c.subset < len(data.train) else None  # a larger one means everything
        self.train_split, self.test_split = data.train.subset(subset, c.seed), data.test.subset(subset, c.seed)
        # the recipe's batch, or a smaller one that gives a subset enough steps (logged); a resume keeps its own
        self.batch_size, self.batch_note = batch_size(c, r, len(self.train_split), self.resumed.state)
        # under torchrun the train and eval loaders are this rank's shards; test_loader (figures) is whole
        loaders = lambda world: make_loaders(c, r, self.train_split, self.test_split, self.mean, self.std,  # noqa
                                             self.batch_size, self.device, world)
        self.train_loader, self.eval_loader = loaders(self.world)
        self.test_loader = loaders(distributed.World())[1] if self.world.size > 1 else self.eval_loader
        check_one_cycle_length(self.epochs, len(self.train_loader))
        data_line = data.source + (f", subset of {subset}" if subset else "")
        self.identity = {"recipe": r.name, "model": type(self.model).__name__, "data": data_line,
                         "batch_size": self.batch_size, "train_images": len(self.train_split),
                         "test_images": len(self.test_split),
                         "data_fingerprint": fingerprint(self.train_split, self.test_split)}
        if c.resume:
            check_resumable(self.resumed.state, self.identity, self.model, self.resumed.out, len(self.train_loader))
        tb = self.resumed.out / "tb"
        if c.tensorboard and (tb.is_symlink() or tb.exists()) and not tb.is_dir():
            raise OutError(f"--out {self.resumed.out}: {tb} is not a folder, where TensorBoard writes; move it away "
                           f"or pass --no-tensorboard")
        # only now: a failed build leaves no run folder and writes into no existing one
        self.out = distributed.decided(lambda: claim(self.resumed.out, unique=self.resumed.unique, overwrite=c.overwrite,
                                                     resume=c.resume, command=command(self.world)))
        self.log_path = self.out / "log.txt"
        self.carried = Carried.of(self.resumed.state)  # what a resume takes from the run it continues
        self.result = RunResult(
            name=r.name, model=type(self.model).__name__, params=count_params(self.model), data=data_line,
            device=device_name(self.device), precision=repr(self.precision), epochs=self.epochs,
            assignment=c.assignment, config=dataclasses.asdict(c), recipe=r.to_dict(),
            commands=[*self.carried.commands, command(self.world)], world_size=self.world.size)
        self.result.checks.update(batch_independence=mixing, log_probs=log_probs)
        self.tensorboard = (TensorBoard(self.out / "tb", purge_step=self.carried.step + 1 if c.resume else None)
                            if c.tensorboard and self.world.main else None)
        self.analysis = Analysis(self.model, self.test_split, self.test_loader, self.mean, self.std, self.precision,
                                 self.result, self.log, self._save, log_probs, gallery=c.gallery)
        for line in start_lines(self, data, subset, instance=isinstance(source, nn.Module)):
            self.log(line)
        if self.model_source is None:
            self.log(f"the app cannot rebuild {type(self.model).__name__} from this run by itself (a lambda, a class "
                     f"made in a notebook cell, or an instance with arguments): reopen it with run.app(), or "
                     f"app(out, model=...) / python -m assignments.app OUT --model module:factory")

    def log(self, message: str) -> None:
        """Print ``message`` and append it to the run's log.txt (under torchrun: rank 0 only)."""
        if not self.world.main:
            return
        say(message)
        with open(self.log_path, "a") as f:
            f.write(message + "\n")

    def _save(self, name: str, fig):
        if self.world.main:  # under torchrun rank 0 writes the files
            self.result.figures[name] = str(plots.save(fig, self.out / f"{name}.png"))
        if self.tensorboard:
            self.tensorboard.figure(name, fig, self.result.history[-1]["step"] if self.result.history else 0)
        return fig

    # --- the steps -------------------------------------------------------------------------------
    def show_augmented(self, n: int = 16):
        """A grid of training images after augmentation."""
        return self._save("augmented", plots.augmented_samples(self.train_loader, self.mean, self.std, n))

    def summary(self):
        """torchinfo's table of the model (logged); returns the summary object."""
        s = model_summary(self.model)
        self.result.tables["summary"] = summary_text(s)
        self.log(self.result.tables["summary"])
        return s

    def find_lr(self):
        """LR range test (``lr="auto"``) or the given max LR; returns the range-test figure (or None)."""
        c, r, res = self.config, self.recipe, self.result
        if c.resume:  # the range test of the run's start, redrawn for the report
            res.max_lr, res.lr_search = self.carried.max_lr, self.carried.lr_search
            self.log(f"max LR {res.max_lr:.3e} (from the checkpoint)")
            return self._save("lr_range_test", plots.lr_figure(LRSearch(**res.lr_search))) if res.lr_search else None
        if c.lr != "auto":
            res.max_lr = float(c.lr)
            self.log(f"max LR {res.max_lr:.3e} (given)")
            return None
        search = None
        iters, shorter = r.range_test_steps(len(self.train_loader), self.epochs * len(self.train_loader))
        if self.world.main:  # under torchrun: rank 0 alone, on the single-process loader; the others wait
            loader = make_loaders(c, r, self.train_split, self.test_split, self.mean, self.std, self.batch_size,
                                  self.device)[0] if self.world.size > 1 else self.train_loader
            search = find_lr(self.model, r.make_optimizer, self.criterion, loader, self.device,
                             end_lr=r.lr_end, num_iter=iters, precision=self.precision)
        search = distributed.broadcast(search)
        res.lr_search = dataclasses.asdict(search)
        res.max_lr, quick = r.max_lr(search.suggested_lr, search.min_loss_lr, self.epochs * len(self.train_loader))
        scaled = f" x {r.lr_scale:.3g} (the recipe's lr_scale) = {search.suggested_lr * r.lr_scale:.3e}" \
            if r.lr_scale != 1 else ""
        self.log(f"LR range test ({shorter or f'{iters} steps'} on the training set): suggested max LR "
                 f"{search.suggested_lr:.3e} (steepest descent){scaled}; loss minimum at {search.min_loss_lr:.3e}")
        if quick:
            self.log(quick)
        return self._save("lr_range_test", plots.lr_figure(search))

    def train(self) -> list[dict]:
        """One-cycle training with the doctor watching; checkpoint every epoch; returns the history."""
        c, r, res = self.config, self.recipe, self.result
        if res.max_lr is None:
            self.find_lr()
        optimizer = r.make_optimizer(self.model.parameters(), res.max_lr / r.div_factor)
        scheduler = one_cycle(optimizer, res.max_lr, self.epochs, len(self.train_loader), r.peak_epoch, r.div_factor)
        # under torchrun rank 0's doctor watches (the loss and accuracy it sees are the global batch's)
        doctor = Doctor(num_classes=len(CLASSES), strict=c.strict, log=self.log) if self.world.main else None
        if doctor:
            doctor.add(0, batch_dependence_check(res.checks["batch_independence"]))
        if doctor and res.lr_search:
            scale = res.max_lr / res.lr_search["suggested_lr"]  # the recipe's lr_scale, unless a quick check changed it
            doctor.add(0, schedule_check(res.max_lr, res.lr_search["suggested_lr"], res.lr_search["min_loss_lr"],
                                         scale if math.isclose(scale, r.lr_scale) else 1.0))
        self.log(f"one-cycle: {res.max_lr / r.div_factor:.3e} -> {res.max_lr:.3e} at epoch "
                 f"{min(r.peak_epoch, self.epochs / 2):g} -> linear anneal over {self.epochs} epochs; "
                 f"{r.optimizer} wd {r.weight_decay}, batch {self.batch_size}")
        callbacks = [EpochLog(self.log), ProgressBar(), History(res.history), *([doctor] if doctor else []),
                     *self._attention_watch(), Saved("extra", self._checkpoint_extra)]
        if self.tensorboard:
            self.tensorboard.findings = lambda: doctor.findings if doctor else []
            callbacks.append(self.tensorboard)
        try:
            fit(self.step_model, self.train_loader, self.eval_loader, optimizer, self.criterion, self.epochs,
                scheduler, precision=self.precision, callbacks=callbacks, checkpoint=self.out / CHECKPOINT,
                resume=self.resumed.state or False)
            res.checks["batch_independence_end"] = batch_independence(self.model)  # the trained model, eval mode
            if doctor:
                doctor.add(res.history[-1]["step"], batch_dependence_check(res.checks["batch_independence_end"]))
        finally:  # metrics.json says what was trained (the epochs checkpointed), never less
            self.analysis.trained()
            if doctor:
                res.health, res.checks["doctor"] = doctor.report(), doctor.judged(res.history[-1]["step"] if res.history else 0)
            if res.history and self.world.main:
                self.write_metrics()
        return res.history

    def _attention_watch(self) -> list:
        """For a model with attention: its entropy on a fixed test batch every epoch, and on the weights training
        starts from (a resumed run keeps its start's numbers)."""
        kind, res = self.analysis.attention_kind, self.result
        if kind is None:
            self.log(f"attention: none found in {res.model} (looked for {LOOKED_FOR})")
            return []
        probe = self.analysis.probe()
        try:
            start = kind.entropy(probe)
        except (ValueError, RuntimeError) as e:  # attention of a shape the measurements do not read: train anyway
            self.log(f"attention entropy not measured: {type(e).__name__}: {str(e).splitlines()[0]}")
            return []
        res.checks["attention_entropy_start"] = self.carried.attention_entropy_start if self.config.resume else start
        self.log(f"attention row entropy per {kind.unit} before training ({kind.uniform(probe)} is uniform): "
                 + ", ".join(f"{h:.3f}" for h in res.checks["attention_entropy_start"] or []))
        return [Measure("attention_entropy", lambda: kind.entropy(probe))]

    def _checkpoint_extra(self) -> dict:
        """What every checkpoint keeps beside the weights, for ``--resume`` and its checks."""
        res = self.result
        carried = Carried(res.max_lr, res.lr_search, tuple(res.commands), self._wall(),
                          res.checks.get("attention_entropy_start"))
        return carried.extra(config=res.config, recipe=res.recipe, identity=self.identity, mean=list(self.mean),
                             std=list(self.std), model_source=self.model_source)

    # --- the trained model's figures: assignments.analysis.Analysis ---------------------------------
    def curves(self):
        return self.analysis.curves()

    def class_accuracy(self):
        return self.analysis.class_accuracy()

    def confusion(self):
        return self.analysis.confusion()

    def misclassified(self, n: int | None = None):
        return self.analysis.misclassified(n or self.config.gallery)

    def gradcam(self, n: int | None = None, layer: str | None = None):
        return self.analysis.gradcam(n or self.config.gallery, layer)

    def attention(self):
        return self.analysis.attention(self.config.gallery)

    def attention_entropy(self):
        return self.analysis.attention_entropy()

    # --- what the run leaves -----------------------------------------------------------------------
    def doctor_findings(self) -> str:
        """One line (logged): the training doctor's findings by kind and step (each was logged in full where it was
        made), or that it found nothing, and what it could check."""
        health, judged = self.result.health, self.result.checks.get("doctor", "not run")
        where = ", ".join(f"{f['kind']} at step {f['step']}" for f in health)
        text = (f"Training doctor: {len(health)} finding(s), logged in full above: {where} ({judged})" if health
                else f"Training doctor: no finding ({judged})")
        self.log(text)
        return text

    def beside(self, committed: str) -> str:
        """Print this run's numbers beside those of the committed run ``results/<committed>/`` (the numbers the
        notebook's markdown quotes): :func:`utils.report.beside`."""
        from utils.report import beside

        where = Path(__file__).resolve().parents[1] / "results" / committed
        text = beside(self.result, json.loads((where / "metrics.json").read_text()), f"results/{committed}")
        print(text)
        return text

    def write_files(self) -> list[Path]:
        """Write report.md and metrics.json; list (and print) everything in the out directory."""
        self.report()
        paths = sorted(p for p in self.out.iterdir() if not p.name.startswith("."))  # not the lock
        print("\n".join(f"{p}  ({p.stat().st_size:,} bytes)" for p in paths))
        return paths

    def keep(self, to_drive: bool = False, checkpoint: bool | None = None) -> Path:
        """Zip the out folder and, in Colab, download it (without checkpoint.pt unless ``checkpoint``) or copy it to
        Google Drive (with it): :func:`utils.keep.keep_run`."""
        from utils.keep import keep_run

        return keep_run(self.out, to_drive, checkpoint=checkpoint)

    def app(self, **options):
        """Explore the trained model in the browser, inline in Colab and Jupyter: :func:`assignments.app.app`
        (installs nothing: ``pip install gradio`` first where it is missing)."""
        from .app import app

        options.setdefault("model", copy.deepcopy(self.model))  # the trained module itself: nothing to rebuild
        return app(self, **options)

    def space(self, dest: str | Path | None = None, **options) -> Path | None:
        """Write the trained model as a Hugging Face Space (:func:`assignments.space.build_space`; default
        ``<out>-space``), zip it and, in Colab, download the zip. A run it cannot share is said in one line."""
        from utils.keep import keep_run

        from .space import SpaceError, build_space
        from .explore import RunFolderError

        try:
            folder = build_space(self.out, dest or self.out.with_name(self.out.name + "-space"), **options)
        except (SpaceError, RunFolderError) as e:
            print(f"Space not written: {e}")
            return None
        print(f"The Space is in {folder}/ (upload it as its README says)")
        return keep_run(folder, what="the Space")

    def close(self) -> None:
        """Close the TensorBoard files and release the out folder's lock, so another process may resume or read
        the run (ending this process does it too; ``run_all`` does it when it returns)."""
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
                self.log(f"STOPPED: {e}; {self._last_good()}")
            if self.world.main and self.result.history:  # under torchrun rank 0 draws and writes the rest
                for figure in (self.curves, self.class_accuracy, self.confusion, self.misclassified, self.gradcam):
                    figure()
                if self.analysis.attention_kind:
                    self.attention()
                    self.attention_entropy()
            if self.world.main:
                report = self.report()
                files = sorted(p.name for p in self.out.iterdir() if p.is_file() and p.suffix in (".json", ".txt", ".pt"))
                self.log(f"wrote {report} and {', '.join(files)}, *.png in {self.out}")
            return 2 if stopped else 0
        finally:
            self.close()

    def _last_good(self) -> str:
        """After a stop: which checkpoint holds the last good epoch (its weights are put back into the model, so
        the figures and the report describe it), or that there is none."""
        if not self.result.history:
            return "no epoch was checkpointed: nothing to resume or draw"
        epoch = self.result.history[-1]["epoch"]  # the history holds exactly the epochs on disk
        if first_non_finite(self.model.state_dict()):
            saved = torch.load(self.out / CHECKPOINT, map_location=self.device, weights_only=True)
            self.model.load_state_dict(saved["model"])
            self.analysis.trained()
        return f"the last good checkpoint is {self.out / CHECKPOINT} (epoch {epoch}); the figures show it"

    @property
    def history(self) -> list[dict]:
        return self.result.history

    @property
    def figures(self) -> dict[str, str]:
        return self.result.figures

    @property
    def max_lr(self) -> float | None:
        return self.result.max_lr

    def _wall(self) -> float:
        """Seconds of this process's run plus those of the runs it resumes."""
        return round(self.carried.wall_seconds + time.perf_counter() - self.t0, 1)

    def write_metrics(self) -> Path:
        self.result.wall_seconds = self._wall()
        return write_metrics(self.result, self.out)

    def report(self) -> Path:
        """Write metrics.json and report.md (what a student pastes on the assignment page); TensorBoard gets the
        options and recipe as hparams beside the final accuracy."""
        self.write_metrics()
        if self.tensorboard and self.result.history:
            h = self.result.history
            self.tensorboard.hparams({**self.result.config, **{f"recipe.{k}": v for k, v in self.result.recipe.items()}},
                                     {"hparam/test_accuracy": h[-1]["test_acc"], "hparam/test_loss": h[-1]["test_loss"]})
        return write_report(self.result, self.out, self.log_path.read_text() if self.log_path.exists() else "")
