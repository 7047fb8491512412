"""Where a run writes as it goes: log lines (printed and appended to ``log.txt``) and figures (a PNG in the out
folder, recorded in the run's result, and an image in TensorBoard). Under torchrun only rank 0 writes."""
from __future__ import annotations

from pathlib import Path

from utils import plots
from utils.progress import say
from utils.report import RunResult
from utils.tensorboard import TensorBoard


class Record:
    def __init__(self, out: Path, result: RunResult, main: bool = True, tensorboard: TensorBoard | None = None):
        self.out, self.result, self.main, self.tensorboard = out, result, main, tensorboard
        self.log_path = out / "log.txt"

    def log(self, message: str) -> None:
        """Print ``message`` and append it to log.txt."""
        if self.main:
            say(message)
            with open(self.log_path, "a") as f:
                f.write(message + "\n")

    def figure(self, name: str, fig):
        """``fig`` as ``<out>/<name>.png`` (its path in ``result.figures``) and in TensorBoard at the last step
        trained; returns ``fig``."""
        if self.main:
            self.result.figures[name] = str(plots.save(fig, self.out / f"{name}.png"))
        if self.tensorboard:
            self.tensorboard.figure(name, fig, self.result.history[-1]["step"] if self.result.history else 0)
        return fig

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""
