"""What a run produced, in one object, and the two files written from it: ``metrics.json`` (plain data)
and ``report.md`` (what a student copies onto the assignment page, readable on GitHub).

``assignments.run.Run`` fills a :class:`RunResult` step by step; anything else can build one (a loop
written by hand, a notebook) and call :func:`write_metrics` / :func:`write_report` with it.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

FIGURE_TITLES = {
    "augmented": "Training images after augmentation",
    "lr_range_test": "LR range test",
    "curves": "Training and test loss and accuracy",
    "class_accuracy": "Accuracy per class",
    "confusion": "Confusion matrix",
    "misclassified": "Misclassified images",
    "gradcam": "Grad-CAM on misclassified images",
    "attention_maps": "Attention maps",
    "attention_rollout": "Attention rollout on misclassified images",
    "attention_entropy": "Attention entropy by epoch and block output spectra",
}


@dataclass
class RunResult:
    """Everything a run reports. ``history`` holds one dict per epoch (train/test loss and accuracy, LR)."""

    name: str  # the recipe's name: a built-in name or the notebook's, e.g. "MyNet"
    model: str  # the model's class name
    params: int  # trainable parameters
    data: str  # where the images came from
    device: str  # e.g. "CPU (2 threads)", "NVIDIA H200"
    precision: str  # e.g. "bf16 autocast, channels_last"
    epochs: int  # planned epochs
    assignment: str | None = None  # the built-in recipe's name (assignments.recipes), else None
    history: list[dict] = field(default_factory=list)
    max_lr: float | None = None
    lr_search: dict | None = None  # the range test: suggested_lr, min_loss_lr and its curve (lrs, losses)
    health: list[dict] = field(default_factory=list)  # the doctor's findings
    checks: dict = field(default_factory=dict)  # batch_independence, log_probs, gradcam target ...
    figures: dict[str, str] = field(default_factory=dict)  # figure name -> PNG path
    tables: dict[str, str] = field(default_factory=dict)  # "class_accuracy", "summary" -> text
    config: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)  # the command line(s), first run then resumes
    wall_seconds: float = 0.0  # summed over the first run and every resume
    world_size: int = 1  # processes under torchrun
    date: str = field(default_factory=lambda: dt.date.today().isoformat())

    def metrics(self) -> dict:
        """metrics.json's content: the fields plus the final and best test accuracy."""
        import torch

        h = self.history
        d = {k: v for k, v in vars(self).items() if k not in ("figures", "tables")}
        d.update(final_test_acc=h[-1]["test_acc"] if h else None,
                 best_test_acc=max((e["test_acc"] for e in h), default=None),
                 figures=sorted(self.figures), torch=torch.__version__)
        return json.loads(json.dumps(d, default=str))


def write_metrics(result: RunResult, out: str | Path) -> Path:
    path = Path(out) / "metrics.json"
    path.write_text(json.dumps(result.metrics(), indent=1))
    return path


def write_report(result: RunResult, out: str | Path, log_text: str = "") -> Path:
    """Write ``out/report.md`` from ``result`` (and the training log's text) and return its path."""
    m = result.metrics()
    acc = lambda v: "n/a" if v is None else f"{v:.2f}%"  # noqa: E731
    rows = [
        ("run", m["name"]),
        ("model", m["model"]),
        ("trainable parameters", f"{m['params']:,}"),
        ("data", m["data"]),
        ("device", m["device"] + (f" x {m['world_size']} processes (torchrun)" if m["world_size"] > 1 else "")),
        ("precision", m["precision"]),
        ("epochs", f"{len(m['history'])} of {m['epochs']}"),
        ("max LR (one-cycle)", f"{m['max_lr']:.3e}" if m["max_lr"] else "n/a"),
        ("final test accuracy", acc(m["final_test_acc"])),
        ("best test accuracy", acc(m["best_test_acc"])),
        ("wall time", f"{m['wall_seconds'] / 60:.1f} min"),
        ("date", m["date"]),
    ]
    rows += [("command" if len(m["commands"]) == 1 else f"command {i + 1}", f"`{c}`")
             for i, c in enumerate(m["commands"])]
    lines = [f"# {m['name']}: {m['model']}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "## Training doctor", ""]
    lines += [f"- step {f['step']}, **{f['kind']}**: {f['message']}" for f in m["health"]] or ["No finding."]
    if "doctor" in m["checks"]:
        lines += ["", f"What it could check: {m['checks']['doctor']}."]
    if str(m["checks"].get("gradcam", "")).startswith("skipped"):
        lines += ["", f"## {FIGURE_TITLES['gradcam']}", "", f"Grad-CAM {m['checks']['gradcam']}."]
    for name, path in result.figures.items():
        lines += ["", f"## {FIGURE_TITLES.get(name, name)}", "", f"![{name}]({Path(path).name})"]
        if name in result.tables:  # the figure's numbers (class accuracy, attention per block)
            lines += ["", "```text", result.tables[name], "```"]
    if log_text:
        lines += ["", "## Training log", "", "```text", log_text.rstrip(), "```"]
    path = Path(out) / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def doctor_line(health: list[dict], judged: str) -> str:
    """One line: the training doctor's findings by kind and step (each was logged in full where it was made), or
    that it found nothing, and what it could check."""
    where = ", ".join(f"{f['kind']} at step {f['step']}" for f in health)
    return (f"Training doctor: {len(health)} finding(s), logged in full above: {where} ({judged})" if health
            else f"Training doctor: no finding ({judged})")


def beside(this: RunResult, committed: dict, where: str) -> str:
    """This run's numbers beside a committed run's (its metrics.json, read from ``where``) as a small table:
    final test accuracy, epochs, training images, data, device and precision."""
    def row(name, ours, theirs):
        return f"{name:<22}{str(ours):<34}{theirs}"

    last = this.history[-1] if this.history else {}
    history = committed.get("history") or [{}]
    lines = [row("", "this run", f"the committed run ({where})"),
             row("final test accuracy", f"{last['test_acc']:.2f}%" if last else "not trained yet",
                 f"{committed.get('final_test_acc', float('nan')):.2f}%"),
             row("epochs", len(this.history), len(committed.get("history", []))),
             row("training steps", last.get("step", 0), history[-1].get("step", "?")),
             row("data", this.data.split(" in ")[0], str(committed.get("data", "?")).split(" in ")[0]),
             row("device", this.device, committed.get("device", "?")),
             row("precision", this.precision, committed.get("precision", "?"))]
    return "\n".join(lines)
