"""One training run, step by step: setup -> augmented samples -> summary -> LR range test -> training ->
curves, class accuracy, confusion, mistakes, Grad-CAM (S9: attention) -> report. The notebooks call the steps one per
cell; ``python -m assignments`` and the tests call ``run_all()``.

A run is a recipe (``utils.recipe.Recipe``: the built-in S7/S8/S9 or one made in a notebook) applied to
a model. Every step logs to ``log.txt`` in the run's out directory, saves its figure there as a PNG and
records its numbers in ``self.result`` (a ``utils.report.RunResult``), from which ``metrics.json`` and
``report.md`` are written.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from utils import distributed, plots
from utils.attention import attention_stats, entropy_per_block, ultimus_blocks
from utils.checks import batch_independence, check_contract, returns_log_probs
from utils.data import CLASSES, channel_stats, fingerprint, load_cifar10
from utils.doctor import Doctor
from utils.lr import LRSearch, check_one_cycle_length, find_lr, one_cycle
from utils.metrics import class_accuracy, class_accuracy_table, confusion, misclassified
from utils.precision import Precision
from utils.progress import say
from utils.recipe import Recipe
from utils.report import RunResult, write_metrics, write_report
from utils.seed import pick_device, set_seed
from utils.summary import count_params, model_summary, summary_text
from utils.train import fit, predict
from utils.vit_attention import ViTAttention, attention_layers, entropy_per_layer, rollout_maps, vit_attention

from .config import RunConfig, resolve_out
from .outdir import CHECKPOINT, claim, release
from .resume import check_resumable
from .recipes import recipe as builtin_recipe

PROBE_IMAGES = 256  # the attention measurements (entropy per epoch, ViT maps): test images spread over the classes


class Run:
    """``Run(assignment="S9", ...)`` for a built-in recipe, or ``Run(recipe=Recipe(...), model=net, ...)``
    for your own model (an ``nn.Module`` or a function that builds one); keyword options are
    :class:`assignments.config.RunConfig`'s fields (epochs, lr, data_dir, device, precision, out ...)."""

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
        name = recipe.name if recipe else builtin_recipe(config.assignment, config.variant).name
        self.device = pick_device(config.device)
        self.world = distributed.init(self.device.type)  # torchrun: this process's rank; else a single process
        if self.device.type == "cuda" and self.world.size > 1:
            self.device = torch.device("cuda", self.world.local_rank)
        if config.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("--precision fp16 runs on CUDA only (on the CPU it measured ~100x slower than fp32); "
                             "use bf16 or fp32 there")
        if config.sync_bn and not (self.world.size > 1 and self.device.type == "cuda"):
            raise ValueError("--sync-bn needs torchrun with more than one process on CUDA")
        # the out folder; a resume reads its checkpoint: the schedule and data it started with, and names the
        # options it cannot change (under torchrun rank 0 decides and the others take its answer)
        resolved = distributed.decided(lambda: resolve_out(config, name))
        self.config, self.out, self.saved, self.ignored = (resolved.config, resolved.out, resolved.saved,
                                                           list(resolved.ignored))
        self._state, self._unique = resolved.state, resolved.unique
        # a resumed built-in run takes its recipe from the resolved config (the variant it was started with)
        self.recipe = recipe or builtin_recipe(self.config.assignment, self.config.variant)
        self.model_source = model if model is not None else self.recipe.model
        if self.model_source is None:
            raise ValueError(f"Run: recipe {self.recipe.name!r} has no model; pass model=... (an nn.Module or a factory)")
        self.epochs = self.config.epochs or self.recipe.epochs
        self.batch_size = self.config.batch_size or self.recipe.batch_size
        self.t0 = time.perf_counter()
        self.log_path = self.out / "log.txt"
        self.predictions = None
        self.attention_measured = None  # utils.attention.AttentionStats, once measured

    # --- logging ---------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        """Print ``message`` and append it to the run's log.txt (under torchrun: rank 0 only)."""
        if not self.world.main:
            return
        say(message)
        with open(self.log_path, "a") as f:
            f.write(message + "\n")

    def _figure(self, name: str, fig):
        if self.world.main:  # under torchrun rank 0 writes the files
            self.result.figures[name] = str(plots.save(fig, self.out / f"{name}.png"))
        return fig

    # --- steps -----------------------------------------------------------------------------------
    def setup(self) -> "Run":
        """Seed, load data, compute the mean/std, build loaders, model, optimizer and loss; check the model and,
        for a resume, that the checkpoint is this run's. Only then the out folder is created and locked, so a
        setup that fails writes nothing."""
        c, r = self.config, self.recipe
        set_seed(c.seed)
        self.precision = Precision(c.precision, self.device, channels_last=r.channels_last)
        distributed.barrier()  # every rank has checked --out before rank 0 creates anything
        with distributed.main_first():  # rank 0 downloads (if it must), then the others read
            data = load_cifar10(c.data_dir, download=c.download)
        self.mean, self.std = channel_stats(data.train.images)
        subset = c.subset if c.subset and c.subset < len(data.train) else None  # a larger one means everything
        self.train_split, self.test_split = data.train.subset(subset, c.seed), data.test.subset(subset, c.seed)
        # under torchrun the train and eval loaders are this rank's shards; test_loader (figures) is whole
        self.train_loader, self.eval_loader = self._loaders(self.world)
        self.test_loader = self._loaders()[1] if self.world.size > 1 else self.eval_loader
        check_one_cycle_length(self.epochs, len(self.train_loader))
        model = self.model_source if isinstance(self.model_source, nn.Module) else self.model_source()
        if c.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device, memory_format=self.precision.memory_format)
        # the wrapped modules share the model's parameters; figures and the range test use the plain one
        self.step_model = self.model
        if self.world.size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.step_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if c.compile:
            self.step_model = torch.compile(self.step_model)
        self.criterion = r.criterion()
        data_line = data.source + (f", subset of {subset}" if subset else "")
        self.identity = {"recipe": r.name, "model": type(self.model).__name__, "data": data_line,
                         "train_images": len(self.train_split), "test_images": len(self.test_split),
                         "data_fingerprint": fingerprint(self.train_split, self.test_split)}
        if c.resume:
            check_resumable(self._state, self.identity, self.model, self.out)
        with torch.random.fork_rng(devices=[]):  # the checks draw no numbers from the run's RNG
            check_contract(self.model, len(CLASSES))  # one (B, 10) tensor: every later step relies on it
            mixing = batch_independence(self.model)
            self.log_probs = returns_log_probs(self.model)
        # only now: a failed setup leaves no run folder and writes into no existing one
        self.out = distributed.decided(lambda: claim(self.out, unique=self._unique, overwrite=c.overwrite,
                                                     resume=c.resume, command=_command(self.world)))
        self.log_path = self.out / "log.txt"
        self.result = RunResult(
            name=r.name, model=type(self.model).__name__, params=count_params(self.model),
            data=data_line, device=_device_name(self.device),
            precision=repr(self.precision), epochs=self.epochs, assignment=c.assignment,
            config=dataclasses.asdict(c), recipe=r.to_dict(),
            commands=(self.saved.get("commands", []) if self.saved else []) + [_command(self.world)],
            world_size=self.world.size)
        self.log(f"{r.name}: {self.result.model} ({self.result.params:,} parameters) | device {self.device} "
                 f"({self.result.device}) | precision {self.precision}{' | torch.compile' if c.compile else ''} "
                 f"| out {self.out}")
        if self.world.size > 1:
            self.log(f"torchrun: {self.world.size} processes ({'nccl' if self.device.type == 'cuda' else 'gloo'}), "
                     f"{self.batch_size // self.world.size} images per process per step (global batch "
                     f"{self.batch_size}); the last short batch of an epoch is dropped"
                     + ("; SyncBatchNorm" if c.sync_bn else ""))
        self.log(f"data: {self.result.data}: {len(self.train_split)} train / {len(self.test_split)} test images; "
                 f"mean {tuple(round(m, 4) for m in self.mean)} std {tuple(round(s, 4) for s in self.std)}")
        for note in data.notes:
            self.log(f"data: {note}")
        if c.subset and not subset:
            self.log(f"--subset {c.subset}: the data has {len(data.train)} training images; all of them are used")
        if self.ignored:
            self.log(f"resume: ignored {', '.join(self.ignored)}: a resumed run keeps the options it was started with")
        if isinstance(self.model_source, nn.Module) and not c.resume:
            self.log("model: an instance was passed, so its weights were drawn before the run's seed; pass the class "
                     "or a function that builds it (model=MyNet) for weights that --seed fixes")
        self.result.checks.update(batch_independence=mixing, log_probs=self.log_probs)
        self.log(f"model check: an image's outputs alone vs in a batch of 64 differ by {mixing:.1e} (relative)"
                 + ("; the model returns log-probabilities" if self.log_probs else ""))
        return self

    def _loaders(self, world: distributed.World = distributed.World()):
        c, r = self.config, self.recipe
        eval_batch = max(self.batch_size, 2048 if self.device.type == "cuda" else 512)  # no gradients: large batches
        if c.loader == "fast" or (c.loader == "auto" and self.device.type == "cuda"):  # the GPU needs no workers
            from utils.fast_loader import make_fast_loaders
            return make_fast_loaders(self.train_split, self.test_split, r.augment, self.mean, self.std,
                                     self.batch_size, self.device, seed=c.seed, eval_batch_size=eval_batch, world=world)
        from utils.transforms import default_workers, make_loaders
        workers = c.workers if c.workers is not None else default_workers(self.device.type)
        return make_loaders(self.train_split, self.test_split, r.augment, self.mean, self.std, self.batch_size,
                            seed=c.seed, num_workers=workers, pin_memory=self.device.type == "cuda",
                            eval_batch_size=eval_batch, world=world)

    def show_augmented(self, n: int = 16):
        """A grid of training images after augmentation."""
        return self._figure("augmented", plots.augmented_samples(self.train_loader, self.mean, self.std, n))

    def summary(self):
        """torchinfo's table of the model (printed and logged); returns the summary object."""
        s = model_summary(self.model)
        self.result.tables["summary"] = summary_text(s)
        if not self.world.main:
            return s
        with open(self.log_path, "a") as f:
            f.write(self.result.tables["summary"] + "\n")
        print(self.result.tables["summary"])
        return s

    def find_lr(self):
        """LR range test (``lr="auto"``) or the given max LR; returns the range-test figure (or None)."""
        c, r = self.config, self.recipe
        if self.saved:  # the range test of the run's start, redrawn for the report
            self.result.max_lr, self.result.lr_search = self.saved["max_lr"], self.saved.get("lr_search")
            self.log(f"max LR {self.result.max_lr:.3e} (from the checkpoint)")
            search = self.result.lr_search
            return self._figure("lr_range_test", plots.lr_figure(LRSearch(**search))) if search else None
        if c.lr != "auto":
            self.result.max_lr = float(c.lr)
            self.log(f"max LR {self.result.max_lr:.3e} (given)")
            return None
        search = None
        if self.world.main:  # under torchrun: rank 0 alone, on the single-process loader; the others wait
            loader = self._loaders()[0] if self.world.size > 1 else self.train_loader
            search = find_lr(self.model, r.make_optimizer, self.criterion, loader, self.device,
                             end_lr=r.lr_end, num_iter=r.lr_iters, precision=self.precision)
        search = distributed.broadcast(search)
        self.result.lr_search = dataclasses.asdict(search)
        self.result.max_lr = search.suggested_lr * r.lr_scale
        scaled = f" x {r.lr_scale:.3g} (the recipe's lr_scale) = {self.result.max_lr:.3e}" if r.lr_scale != 1 else ""
        self.log(f"LR range test ({r.lr_iters} steps on the training set): suggested max LR "
                 f"{search.suggested_lr:.3e} (steepest descent){scaled}; loss minimum at {search.min_loss_lr:.3e}")
        steps = self.epochs * len(self.train_loader)
        if r.lr_scale > 1 and steps < r.lr_iters:  # a recipe's lr_scale > 1 is measured on full runs
            self.result.max_lr = search.suggested_lr
            self.log(f"max LR {search.suggested_lr:.3e}, the range test's suggestion without the recipe's lr_scale "
                     f"{r.lr_scale:.3g}: this run has {steps} training steps, fewer than the range test's "
                     f"{r.lr_iters}, and the scale was chosen on full runs (a quick check diverges with it)")
        return self._figure("lr_range_test", plots.lr_figure(search))

    def train(self) -> list[dict]:
        """One-cycle training with the doctor watching; checkpoint every epoch; returns the history."""
        c, r, res = self.config, self.recipe, self.result
        if res.max_lr is None:
            self.find_lr()
        optimizer = r.make_optimizer(self.model.parameters(), res.max_lr / r.div_factor)
        scheduler = one_cycle(optimizer, res.max_lr, self.epochs, len(self.train_loader), r.peak_epoch, r.div_factor)
        # under torchrun rank 0's doctor watches (the loss and accuracy it sees are the global batch's)
        self.doctor = Doctor(num_classes=len(CLASSES), strict=c.strict, log=self.log) if self.world.main else None
        if self.doctor:
            self.doctor.check_batch_dependence(0, res.checks["batch_independence"])
        if res.lr_search and self.doctor:
            scale = res.max_lr / res.lr_search["suggested_lr"]  # the recipe's lr_scale, unless a quick check dropped it
            self.doctor.check_schedule(res.max_lr, res.lr_search["suggested_lr"], res.lr_search["min_loss_lr"],
                                       scale if math.isclose(scale, r.lr_scale) else 1.0)
        self.log(f"one-cycle: {res.max_lr / r.div_factor:.3e} -> {res.max_lr:.3e} at epoch "
                 f"{min(r.peak_epoch, self.epochs / 2):g} -> linear anneal over {self.epochs} epochs; "
                 f"{r.optimizer} wd {r.weight_decay}, batch {self.batch_size}")
        measure = None
        entropy = self._entropy_probe()
        if entropy:  # S9's Ultimus blocks, a ViT's layers: attention entropy on one fixed test batch, every epoch
            measure = lambda: {"attention_entropy": entropy[0]()}  # noqa: E731
            # ... and on the weights training starts from (epoch 0); a resumed run keeps its start's numbers
            res.checks["attention_entropy_start"] = (self.saved.get("attention_entropy_start") if self.saved
                                                     else measure()["attention_entropy"])
            self.log(f"attention row entropy per {entropy[1]} before training ({entropy[2]} is uniform): "
                     + ", ".join(f"{h:.3f}" for h in res.checks["attention_entropy_start"] or []))

        def extra():  # saved with every epoch's checkpoint, for --resume
            return {"config": res.config, "max_lr": res.max_lr, "lr_search": res.lr_search, "recipe": res.recipe,
                    "commands": res.commands, "wall_seconds": self._wall(), "identity": self.identity,
                    "attention_entropy_start": res.checks.get("attention_entropy_start")}
        try:
            fit(self.step_model, self.train_loader, self.eval_loader, optimizer, self.criterion, self.device,
                self.epochs, scheduler, checkpoint=self.out / CHECKPOINT, resume=self._state or False,
                doctor=self.doctor, log=self.log, extra=extra, precision=self.precision, measure=measure,
                history=res.history)  # filled epoch by epoch: an interrupted run still reports what it trained
            res.checks["batch_independence_end"] = batch_independence(self.model)  # the trained model, eval mode
            if self.doctor:
                self.doctor.check_batch_dependence(res.history[-1]["step"], res.checks["batch_independence_end"])
        finally:  # metrics.json says what was trained (the epochs checkpointed), never less
            if self.doctor:
                res.health = self.doctor.report()
                res.checks["doctor"] = self.doctor.judged(res.history[-1]["step"] if res.history else 0)
            if res.history and self.world.main:
                self.write_metrics()
        return res.history

    def predict(self):
        """Logits and targets over the whole test set (cached)."""
        if self.predictions is None:
            self.predictions = predict(self.model, self.test_loader, self.device, self.precision)
        return self.predictions

    def curves(self):
        return self._figure("curves", plots.curves(self.result.history))

    def class_accuracy(self):
        """Prints and logs the table over the whole test set; returns the bar chart."""
        logits, y = self.predict()
        rows = class_accuracy(logits.argmax(1), y)
        self.result.tables["class_accuracy"] = class_accuracy_table(rows)
        self.log(self.result.tables["class_accuracy"])
        return self._figure("class_accuracy", plots.class_accuracy_figure(rows))

    def confusion(self):
        logits, y = self.predict()
        return self._figure("confusion", plots.confusion_figure(confusion(logits.argmax(1), y)))

    def misclassified(self, n: int = 10):
        """The ``n`` most confident mistakes on the test set."""
        logits, y = self.predict()
        idx = misclassified(logits, y, n)
        images = plots.denormalize(self.test_split.normalized(idx, self.mean, self.std), self.mean, self.std)
        return self._figure("misclassified", plots.misclassified_figure(images, logits, y, idx))

    def gradcam(self, n: int = 10, layer: str | None = None):
        """Grad-CAM of the predicted and the actual class on the ``n`` most confident mistakes."""
        from utils.gradcam import (PARALLEL, cam_layer, cam_target, default_target_layer, gradcam_figure,
                                   gradcam_maps_and_weights, weight_cosines)

        logits, y = self.predict()
        idx = misclassified(logits, y, n)
        if not idx:
            self.log("Grad-CAM: no misclassified images")
            return None
        layer = layer or default_target_layer(self.model)
        if layer is None:
            why = (f"{self.result.model} has no feature map of at least 8x8 (a conv layer's (B, C, H, W) output) and "
                   f"no token grid (a LayerNorm's (B, 1 + N, D) output)")
            self.result.checks["gradcam"] = f"skipped: {why}"
            self.log(f"Grad-CAM skipped: {why}")
            return None
        where = cam_layer(self.model, layer).describe()
        target = cam_target(self.model, self.log_probs)
        self.result.checks.update(gradcam_layer=layer, gradcam_grid=where, gradcam_target=target)
        x = self.test_split.normalized(idx, self.mean, self.std)
        pred, actual = [int(logits[i].argmax()) for i in idx], [int(y[i]) for i in idx]
        (pred_maps, pred_w), (actual_maps, actual_w) = [
            gradcam_maps_and_weights(self.model, x, classes, layer, self.log_probs) for classes in (pred, actual)]
        cosines = weight_cosines(pred_w, actual_w)  # (n,): 1 = the two classes' maps are one map
        same = int((cosines >= PARALLEL).sum())
        self.result.checks["gradcam_same_map"] = f"{same} of {len(idx)}"
        if same:
            self.log(f"Grad-CAM: in {same} of {len(idx)} images the predicted and the actual class have parallel "
                     f"gradients at {layer} (cosine >= {PARALLEL}), so their maps are the same map: what follows "
                     f"{layer} moves both class scores along one direction of its output")
        fig = gradcam_figure(plots.denormalize(x, self.mean, self.std), pred_maps, actual_maps, actual, pred, where,
                             target=target, cosines=cosines)
        return self._figure("gradcam", fig)

    def _probe(self) -> torch.Tensor:
        """The fixed test batch of the attention measurements: PROBE_IMAGES spread evenly over the classes."""
        return self.test_split.normalized(self.test_split.spread(PROBE_IMAGES), self.mean, self.std)

    def _entropy_probe(self):
        """(measure, what, uniform) of the model's attention entropy on the probe, or None without attention."""
        if ultimus_blocks(self.model):
            probe = self._probe()
            return lambda: entropy_per_block(self.model, probe), "block", f"ln 8 = {math.log(8):.3f}"
        if attention_layers(self.model):
            probe = self._probe()
            tokens = vit_attention(self.model, probe[:1]).tokens
            return lambda: entropy_per_layer(self.model, probe), "layer", f"ln {tokens} = {math.log(tokens):.3f}"
        return None

    def attention(self):
        """The model's attention, logged with its entropy; returns the heatmap figure. S9: each Ultimus block's mean
        attention matrix over the test set and per class, with its output's effective rank (:mod:`utils.attention`);
        a ViT: the class token's attention on the patch grid per layer and head (:mod:`utils.vit_attention`),
        and its attention rollout on the misclassified images (``attention_rollout.png``)."""
        from utils.attention_plots import attention_maps_figure, rollout_figure, vit_attention_figure

        if attention_layers(self.model) and not ultimus_blocks(self.model):
            stats = self._attention_stats()
            fig = self._figure("attention_maps", vit_attention_figure(stats))
            logits, y = self.predict()
            idx = misclassified(logits, y, self.config.gallery)
            if idx:
                x = self.test_split.normalized(idx, self.mean, self.std)
                maps = rollout_maps(self.model, x).numpy()
                self._figure("attention_rollout", rollout_figure(
                    plots.denormalize(x, self.mean, self.std), maps, [int(y[i]) for i in idx],
                    [int(logits[i].argmax()) for i in idx]))
            return fig
        stats = self._attention_stats()
        return self._figure("attention_maps", attention_maps_figure(stats)) if stats else None

    def attention_entropy(self):
        """Each block's (S9) or layer's (ViT) attention entropy by epoch, measured during training; S9 beside
        its blocks' output spectra."""
        from utils.attention_plots import attention_entropy_figure, layer_entropy_figure

        stats = self._attention_stats()
        start = self.result.checks.get("attention_entropy_start")
        if stats is None:
            return None
        if isinstance(stats, ViTAttention):
            return self._figure("attention_entropy", layer_entropy_figure(self.result.history, stats.layers,
                                                                          stats.tokens, start))
        return self._figure("attention_entropy", attention_entropy_figure(self.result.history, stats, start))

    def _attention_stats(self):
        if not (ultimus_blocks(self.model) or attention_layers(self.model)):
            self.log(f"attention: {self.result.model} has no Ultimus blocks and no self-attention layers")
            return None
        if self.attention_measured is None:
            if ultimus_blocks(self.model):
                stats = attention_stats(self.model, self.test_loader, self.device, len(CLASSES))
            else:
                stats = vit_attention(self.model, self._probe())
            self.result.tables["attention_maps"] = stats.table()
            self.result.checks["attention"] = stats.to_dict()
            self.log(stats.table())
            self.attention_measured = stats
        return self.attention_measured

    def verdict(self) -> str:
        """The training doctor's findings in plain words (logged), or that it found nothing, and what it could check."""
        findings = "\n".join(f"step {f['step']}: {f['kind']}: {f['message']}" for f in self.result.health)
        text = (findings or "Training doctor: no finding") + f" ({self.result.checks.get('doctor', 'not run')})"
        self.log(text)
        return text

    def files(self) -> list[Path]:
        """Write report.md and metrics.json; list everything in the out directory."""
        self.report()
        paths = sorted(p for p in self.out.iterdir() if not p.name.startswith("."))  # not the lock
        print("\n".join(f"{p}  ({p.stat().st_size:,} bytes)" for p in paths))
        return paths

    def keep(self, to_drive: bool = False) -> Path:
        """Zip the out folder and, in Colab, download it (or copy it to Google Drive): :func:`utils.keep.keep_run`."""
        from utils.keep import keep_run

        return keep_run(self.out, to_drive)

    def close(self) -> None:
        """Release the out folder's lock, so another process may resume or read the run (ending this process
        does it too; ``run_all`` does it when it returns)."""
        release(self.out)

    def run_all(self) -> int:
        """Every step in order, as ``python -m assignments`` runs them; 0, or 2 if the doctor stopped the run."""
        try:
            return self._run_all()
        finally:
            self.close()

    def _run_all(self) -> int:
        from utils.doctor import TrainingStopped

        self.setup()
        self.show_augmented()
        self.summary()
        self.find_lr()
        stopped = None
        try:
            self.train()
        except TrainingStopped as e:
            stopped = e
            self.log(f"STOPPED: {e}; the last good checkpoint is {self.out / CHECKPOINT}")
        if not self.world.main:  # under torchrun rank 0 draws and writes the rest
            return 2 if stopped else 0
        if self.result.history:
            self.curves()
            self.class_accuracy()
            self.confusion()
            self.misclassified(self.config.gallery)
            self.gradcam(self.config.gallery)
            if ultimus_blocks(self.model) or attention_layers(self.model):
                self.attention()
                self.attention_entropy()
        self.log(f"wrote {self.report()} and metrics.json, log.txt, checkpoint.pt, *.png in {self.out}")
        return 2 if stopped else 0

    # --- results ---------------------------------------------------------------------------------
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
        before = self.saved.get("wall_seconds", 0.0) if self.saved else 0.0
        return round(before + time.perf_counter() - self.t0, 1)

    def write_metrics(self) -> Path:
        self.result.wall_seconds = self._wall()
        return write_metrics(self.result, self.out)

    def report(self) -> Path:
        """Write metrics.json and report.md (what a student pastes on the assignment page)."""
        self.write_metrics()
        log_text = self.log_path.read_text() if self.log_path.exists() else ""
        return write_report(self.result, self.out, log_text)


def _command(world: distributed.World = distributed.World()) -> str:
    """The command line of this process (``python -m assignments ...`` or the notebook kernel's)."""
    launcher = f"torchrun --nproc_per_node {world.size} " if world.size > 1 else ""
    if sys.argv and Path(sys.argv[0]).parts[-2:] == ("assignments", "__main__.py"):
        return f"{launcher or 'python '}-m assignments " + " ".join(sys.argv[1:])
    return f"Python API (a notebook or script){' under ' + launcher.strip() if launcher else ''}"


def _device_name(device: torch.device) -> str:
    n = torch.get_num_threads()
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({n} thread{'s' * (n != 1)})"
