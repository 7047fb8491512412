"""One assignment run, step by step: the notebooks call these steps; ``python -m assignments`` calls them all.

Every step logs to ``log.txt`` in the run's out directory and saves its figure there as a PNG.
"""
from __future__ import annotations

import datetime as dt
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from utils.checkpoint import load_checkpoint
from utils.data import CLASSES, channel_stats, load_cifar10
from utils.doctor import Doctor
from utils.lr import find_lr, one_cycle
from utils.precision import Precision
from utils.progress import say
from utils.seed import pick_device, set_seed
from utils.summary import count_params, model_summary, summary_text
from utils.train import fit, predict
from utils import plots

from .recipes import recipe

CHECKPOINT = "checkpoint.pt"


@dataclass
class RunConfig:
    """What the command line (or a notebook's parameters cell) chooses; None means the recipe's value."""

    assignment: str = "S9"
    variant: str = "spec"  # S9 only: spec | residual | prescaled | prescaled-residual
    epochs: int | None = None
    batch_size: int | None = None
    lr: str = "auto"  # "auto" (range test's suggestion) or a float max LR
    data_dir: str | None = None  # None: torchvision download into ./data
    download: bool = True
    out: str | None = None  # default runs/<assignment>-<timestamp>
    device: str = "auto"
    seed: int = 1
    subset: int | None = None  # use N training and N test images (quick checks)
    resume: bool = False
    strict: bool = False  # stop at the doctor's first finding
    workers: int | None = None  # DataLoader workers; default 0 on CPU, 2 on CUDA (Colab's cores)
    loader: str = "classic"  # "classic" (albumentations, what the course teaches) | "fast" (data on the device)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (utils.precision: auto = what the device runs natively)
    compile: bool = False  # torch.compile the train/test model (its compile time counts in the wall time)


class Run:
    """The state of one run: config, recipe, data, model, optimizer, history, figures."""

    def __init__(self, config: RunConfig | None = None, **overrides):
        self.config = config or RunConfig(**overrides)
        c = self.config
        self.recipe = recipe(c.assignment, c.variant)
        if c.resume:
            c.out = c.out or str(_latest_run(c.assignment))
        self.device = pick_device(c.device)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.out = Path(c.out or f"runs/{c.assignment}-{stamp}")
        self.saved = self._saved_state() if c.resume else None
        if self.saved:  # a resumed run keeps the schedule and data it started with
            for key in ("epochs", "batch_size", "seed", "subset", "lr", "variant", "loader", "precision", "compile"):
                if key in self.saved["config"]:
                    setattr(c, key, self.saved["config"][key])
            self.recipe = recipe(c.assignment, c.variant)
        self.out.mkdir(parents=True, exist_ok=True)
        self.epochs = c.epochs or self.recipe.epochs
        self.batch_size = c.batch_size or self.recipe.batch_size
        self.t0 = time.perf_counter()
        self.lr_search, self.max_lr, self.history, self.predictions = None, None, [], None
        self.figures: dict[str, Path] = {}
        self.log_path = self.out / "log.txt"

    # --- logging ---------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        """Print ``message`` and append it to the run's log.txt."""
        say(message)
        with open(self.log_path, "a") as f:
            f.write(message + "\n")

    def _figure(self, name: str, fig):
        self.figures[name] = plots.save(fig, self.out / f"{name}.png")
        return fig

    # --- steps -----------------------------------------------------------------------------------
    def setup(self) -> "Run":
        """Seed, load data, compute the mean/std, build loaders, model, optimizer and loss."""
        from utils.transforms import default_workers, make_loaders

        c, r = self.config, self.recipe
        set_seed(c.seed)
        self.precision = Precision(c.precision, self.device, channels_last=r.channels_last)
        self.log(f"{c.assignment}: {r.model} {r.model_kwargs or ''} | device {self.device} "
                 f"({torch.cuda.get_device_name(self.device) if self.device.type == 'cuda' else 'CPU'}) | "
                 f"precision {self.precision}{' | torch.compile' if c.compile else ''} | out {self.out}")
        data = load_cifar10(c.data_dir, download=c.download)
        self.mean, self.std = channel_stats(data.train.images)
        self.train_split, self.test_split = data.train.subset(c.subset, c.seed), data.test.subset(c.subset, c.seed)
        self.data_source = data.source + (f", subset of {c.subset}" if c.subset else "")
        self.log(f"data: {self.data_source}: {len(self.train_split)} train / {len(self.test_split)} test images; "
                 f"mean {tuple(round(m, 4) for m in self.mean)} std {tuple(round(s, 4) for s in self.std)}")
        eval_batch = max(self.batch_size, 512)
        if c.loader == "fast":
            from utils.fast_loader import make_fast_loaders
            self.train_loader, self.test_loader = make_fast_loaders(
                self.train_split, self.test_split, r.augment, self.mean, self.std, self.batch_size, self.device,
                seed=c.seed, eval_batch_size=eval_batch)
        elif c.loader == "classic":
            workers = c.workers if c.workers is not None else default_workers(self.device.type)
            self.train_loader, self.test_loader = make_loaders(
                self.train_split, self.test_split, r.augment, self.mean, self.std, self.batch_size, seed=c.seed,
                num_workers=workers, pin_memory=self.device.type == "cuda", eval_batch_size=eval_batch)
        else:
            raise ValueError(f"--loader must be classic or fast; got {c.loader!r}")
        self.model = r.build_model().to(self.device, memory_format=self.precision.memory_format)
        # the compiled module shares the model's parameters; figures and the range test use the plain one
        self.step_model = torch.compile(self.model) if c.compile else self.model
        self.params = count_params(self.model)
        self.criterion = r.criterion()
        return self

    def show_augmented(self, n: int = 16):
        """A grid of training images after augmentation."""
        return self._figure("augmented", plots.augmented_samples(self.train_loader, self.mean, self.std, n))

    def summary(self):
        """torchinfo's table of the model (printed and logged); returns the summary object."""
        s = model_summary(self.model)
        self.summary_text = summary_text(s)
        with open(self.log_path, "a") as f:
            f.write(self.summary_text + "\n")
        print(self.summary_text)
        return s

    def find_lr(self):
        """LR range test (``lr="auto"``) or the given max LR; returns the range-test figure (or None)."""
        c, r = self.config, self.recipe
        if self.saved:
            self.max_lr = self.saved["max_lr"]
            self.log(f"max LR {self.max_lr:.3e} (from the checkpoint)")
            return None
        if c.lr != "auto":
            try:
                self.max_lr = float(c.lr)
            except ValueError:
                raise ValueError(f"--lr must be 'auto' or a number; got {c.lr!r}") from None
            self.log(f"max LR {self.max_lr:.3e} (given)")
            return None
        self.lr_search = find_lr(self.model, r.make_optimizer, self.criterion, self.train_loader, self.device,
                                 end_lr=r.lr_end, num_iter=r.lr_iters, precision=self.precision)
        self.max_lr = self.lr_search.suggested_lr * r.lr_scale
        scaled = f" x {r.lr_scale:.3g} (the recipe's lr_scale) = {self.max_lr:.3e}" if r.lr_scale != 1 else ""
        self.log(f"LR range test ({r.lr_iters} steps on the training set): suggested max LR "
                 f"{self.lr_search.suggested_lr:.3e} (steepest descent){scaled}; loss minimum at "
                 f"{self.lr_search.min_loss_lr:.3e}")
        return self._figure("lr_range_test", self.lr_search.figure)

    def train(self) -> list[dict]:
        """One-cycle training with the doctor watching; checkpoint every epoch; returns the history."""
        c, r = self.config, self.recipe
        if self.max_lr is None:
            self.find_lr()
        optimizer = r.make_optimizer(self.model.parameters(), self.max_lr / r.div_factor)
        scheduler = one_cycle(optimizer, self.max_lr, self.epochs, len(self.train_loader), r.peak_epoch, r.div_factor)
        self.doctor = Doctor(num_classes=len(CLASSES), strict=c.strict, log=self.log)
        if self.lr_search:
            self.doctor.check_schedule(self.max_lr, self.lr_search.suggested_lr, self.lr_search.min_loss_lr)
        self.log(f"one-cycle: {self.max_lr / r.div_factor:.3e} -> {self.max_lr:.3e} at epoch "
                 f"{min(r.peak_epoch, self.epochs / 2):g} -> linear anneal over {self.epochs} epochs; "
                 f"{r.optimizer} wd {r.weight_decay}, batch {self.batch_size}")
        extra = {"config": asdict(c), "max_lr": self.max_lr, "recipe": r.to_dict()}
        try:
            self.history = fit(self.step_model, self.train_loader, self.test_loader, optimizer, self.criterion,
                               self.device, self.epochs, scheduler, checkpoint=self.out / CHECKPOINT,
                               resume=bool(self.saved), doctor=self.doctor, log=self.log, extra=_plain(extra),
                               precision=self.precision)
        finally:
            self.write_metrics()
        return self.history

    def predict(self):
        """Logits and targets over the whole test set (cached)."""
        if self.predictions is None:
            self.predictions = predict(self.model, self.test_loader, self.device, self.precision)
        return self.predictions

    def curves(self):
        return self._figure("curves", plots.curves(self.history))

    def class_accuracy(self):
        """Prints and logs the table over the whole test set; returns the bar chart."""
        logits, y = self.predict()
        rows = plots.class_accuracy(logits.argmax(1), y)
        self.class_table = plots.class_accuracy_table(rows)
        self.log(self.class_table)
        return self._figure("class_accuracy", plots.class_accuracy_figure(rows))

    def confusion(self):
        logits, y = self.predict()
        return self._figure("confusion", plots.confusion_figure(plots.confusion(logits.argmax(1), y)))

    def _test_images(self, indices: list[int]) -> torch.Tensor:
        """Normalised test images (k, 3, 32, 32) for test-set ``indices``."""
        return torch.stack([self.test_loader.dataset[i][0] for i in indices])

    def misclassified(self, n: int = 10):
        """The ``n`` most confident mistakes on the test set."""
        logits, y = self.predict()
        self.mistakes = plots.misclassified(logits, y, n)
        images = plots.denormalize(self._test_images(self.mistakes), self.mean, self.std) if self.mistakes else None
        fig = plots.misclassified_figure(images, logits, y, self.mistakes)
        return self._figure("misclassified", fig)

    def gradcam(self, n: int = 10, layer: str | None = None):
        """Grad-CAM of the predicted and the actual class on the ``n`` most confident mistakes."""
        from utils.gradcam import default_target_layer, gradcam_figure, gradcam_maps

        logits, y = self.predict()
        idx = plots.misclassified(logits, y, n)
        layer = layer or default_target_layer(self.model)
        if not idx:
            self.log("Grad-CAM: no misclassified images")
            return None
        x = self._test_images(idx)
        pred, actual = [int(logits[i].argmax()) for i in idx], [int(y[i]) for i in idx]
        fig = gradcam_figure(plots.denormalize(x, self.mean, self.std), gradcam_maps(self.model, x, pred, layer),
                             gradcam_maps(self.model, x, actual, layer), actual, pred, layer)
        return self._figure("gradcam", fig)

    def verdict(self) -> str:
        """The training doctor's findings in plain words (logged), or that the run looked healthy."""
        findings = self.doctor.report() if hasattr(self, "doctor") else []
        text = "\n".join(f"step {f['step']}: {f['kind']}: {f['message']}" for f in findings) or (
            "Training doctor: no finding (no collapse, divergence, vanishing signal or non-finite value).")
        self.log(text)
        return text

    def files(self) -> list[Path]:
        """Write report.md and metrics.json; list everything in the out directory."""
        self.report()
        paths = sorted(self.out.iterdir())
        print("\n".join(f"{p}  ({p.stat().st_size:,} bytes)" for p in paths))
        return paths

    # --- results ---------------------------------------------------------------------------------
    def metrics(self) -> dict:
        h = self.history
        return {
            "assignment": self.config.assignment, "model": self.recipe.model, "variant": self.config.variant,
            "params": self.params, "epochs": self.epochs, "history": h,
            "final_test_acc": h[-1]["test_acc"] if h else None,
            "best_test_acc": max((e["test_acc"] for e in h), default=None),
            "data": self.data_source, "device": _device_name(self.device),
            "precision": repr(self.precision), "compile": self.config.compile,
            "wall_seconds": round(time.perf_counter() - self.t0, 1),
            "max_lr": self.max_lr,
            "lr_search": {"suggested_lr": self.lr_search.suggested_lr, "min_loss_lr": self.lr_search.min_loss_lr}
            if self.lr_search else None,
            "health": self.doctor.report() if hasattr(self, "doctor") else [],
            "recipe": self.recipe.to_dict(), "config": asdict(self.config),
            "command": "python -m assignments " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("__main__.py") else None,
            "date": dt.date.today().isoformat(), "torch": torch.__version__,
        }

    def write_metrics(self) -> Path:
        path = self.out / "metrics.json"
        path.write_text(json.dumps(_plain(self.metrics()), indent=1))
        return path

    def report(self) -> Path:
        """Write report.md (what a student pastes on the assignment page)."""
        from utils.report import write_report

        self.write_metrics()
        return write_report(self)

    def _saved_state(self) -> dict:
        state = load_checkpoint(self.out / CHECKPOINT)
        return state["extra"]


def _plain(obj):
    """JSON-safe copy (tuples -> lists, paths -> str)."""
    return json.loads(json.dumps(obj, default=str))


def _device_name(device: torch.device) -> str:
    n = torch.get_num_threads()
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({n} thread{'s' * (n != 1)})"


def _latest_run(assignment: str) -> Path:
    runs = sorted(Path("runs").glob(f"{assignment}-*"))
    if not runs:
        raise FileNotFoundError(f"--resume: no runs/{assignment}-* directory; pass --out DIR of the run to resume")
    return runs[-1]
