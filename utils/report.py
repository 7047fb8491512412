"""``report.md``: what a student copies onto the assignment page, readable on GitHub."""
from __future__ import annotations

from pathlib import Path

FIGURE_TITLES = {
    "augmented": "Training images after augmentation",
    "lr_range_test": "LR range test",
    "curves": "Training and test loss and accuracy",
    "class_accuracy": "Accuracy per class",
    "confusion": "Confusion matrix",
    "misclassified": "Misclassified images",
    "gradcam": "Grad-CAM on misclassified images",
}


def write_report(run) -> Path:
    """Write ``run.out/report.md`` from a finished :class:`assignments.run.Run` and return its path."""
    m = run.metrics()
    acc = lambda v: "n/a" if v is None else f"{v:.2f}%"  # noqa: E731
    rows = [
        ("assignment", m["assignment"]),
        ("model", f"{m['model']} ({m['variant']})" if m["assignment"] == "S9" else m["model"]),
        ("trainable parameters", f"{m['params']:,}"),
        ("data", m["data"]),
        ("device", m["device"]),
        ("epochs", m["epochs"]),
        ("max LR (one-cycle)", f"{m['max_lr']:.3e}" if m["max_lr"] else "n/a"),
        ("final test accuracy", acc(m["final_test_acc"])),
        ("best test accuracy", acc(m["best_test_acc"])),
        ("wall time", f"{m['wall_seconds'] / 60:.1f} min"),
        ("date", m["date"]),
    ]
    lines = [f"# {m['assignment']}: {m['model']}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    health = m["health"]
    lines += ["", "## Training doctor", ""]
    lines += [f"- step {f['step']}, **{f['kind']}**: {f['message']}" for f in health] or ["No finding: the run looked healthy."]
    for name, path in run.figures.items():
        lines += ["", f"## {FIGURE_TITLES.get(name, name)}", "", f"![{name}]({Path(path).name})"]
        if name == "class_accuracy" and getattr(run, "class_table", None):
            lines += ["", "```text", run.class_table, "```"]
    if getattr(run, "summary_text", None):
        lines += ["", "## Model summary", "", "```text", run.summary_text, "```"]
    log = run.log_path.read_text() if run.log_path.exists() else ""
    if getattr(run, "summary_text", None):
        log = log.replace(run.summary_text + "\n", "")  # shown above already
    lines += ["", "## Training log", "", "```text", log.rstrip(), "```", ""]
    path = run.out / "report.md"
    path.write_text("\n".join(lines))
    return path
