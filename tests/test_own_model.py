"""A student's own model through the public API: a recipe made in the notebook, any nn.Module (or a
factory), log-probability outputs, the per-image check, and no trace of the built-in assignments."""
import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from assignments.run import Run
from models import CustomResNet, ResNet18, TransformerUltimus
from reference_ultimus import seed_model
from utils import AugmentSpec, Recipe, batch_independence, default_target_layer, gradcam_maps
from utils.callbacks import Callback

REPO = Path(__file__).resolve().parents[1]


class LogSoftmaxNet(nn.Module):
    """Written the way course code often is: conv blocks, GAP, a linear layer, ``F.log_softmax`` at the end."""

    def __init__(self, log_probs: bool = True):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, 10)
        self.log_probs = log_probs

    def forward(self, x):
        x = self.fc(self.features(x).mean((2, 3)))  # (B, 32, H, W) -> (B, 32) -> (B, 10)
        return F.log_softmax(x, dim=-1) if self.log_probs else x


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())

    def forward(self, x):
        return x + self.conv(x)


class SmallResNet(nn.Module):
    """A ResNet-like net with layer1..layer3 (32, 16, 8 pixels)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = nn.Sequential(Block(16))
        self.layer2 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), Block(32))
        self.layer3 = nn.Sequential(nn.Conv2d(32, 32, 3, stride=2, padding=1), Block(32))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))  # (B, 32, 8, 8)
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def log_softmax_run(folder_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("own") / "run"
    recipe = Recipe("S10 LogNet", epochs=2, batch_size=32, optimizer="sgd", weight_decay=5e-4,
                    augment=AugmentSpec(pad=2, flip=True, cutout=0))
    run = Run(recipe=recipe, model=LogSoftmaxNet(), data_dir=str(folder_dir), device="cpu", lr="0.05", out=str(out),
              subset=96, gallery=4)
    assert run.run_all() == 0
    return run


@pytest.mark.slow
def test_own_model_gets_every_output_under_its_own_name(log_softmax_run):
    out = log_softmax_run.out
    for name in ("log.txt", "metrics.json", "checkpoint.pt", "report.md", "augmented.png", "curves.png",
                 "class_accuracy.png", "confusion.png", "misclassified.png", "gradcam.png"):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    assert m["name"] == "S10 LogNet" and m["model"] == "LogSoftmaxNet" and m["assignment"] is None
    assert m["recipe"]["optimizer"] == "sgd" and m["recipe"]["augment"]["cutout"] == 0 and len(m["history"]) == 2
    assert m["checks"]["log_probs"] is True
    assert m["checks"]["gradcam_target"] == "class score before the model's log_softmax"
    report = (out / "report.md").read_text()
    assert report.startswith("# S10 LogNet: LogSoftmaxNet")
    assert m["commands"] == ["Python API (a notebook or script)"]  # not the test runner's command line
    for word in ("S9", "Ultimus", "variant", "model_kwargs"):
        assert word not in report, word


@pytest.mark.slow
def test_a_model_factory_in_the_recipe_and_the_block_output_for_gradcam(folder_dir, tmp_path):
    recipe = Recipe("ResNet-like", epochs=1, batch_size=32, model=SmallResNet)
    run = Run(recipe=recipe, data_dir=str(folder_dir), device="cpu", lr="0.01", out=str(tmp_path / "r"), subset=96)
    assert run.run_all() == 0
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["checks"]["gradcam_layer"] == "layer3"
    assert default_target_layer(ResNet18()) == "layer3"  # after the skip connections, not layer3.1.conv2


def test_gradcam_of_a_log_softmax_model_equals_that_of_the_same_net_returning_logits():
    torch.manual_seed(0)
    log_net, logit_net = LogSoftmaxNet(log_probs=True), LogSoftmaxNet(log_probs=False)
    logit_net.load_state_dict(log_net.state_dict())
    x, classes = torch.randn(4, 3, 32, 32), [0, 3, 5, 9]
    reference = gradcam_maps(logit_net, x, classes, "features")
    np.testing.assert_allclose(gradcam_maps(log_net, x, classes, "features", log_probs=True), reference, atol=1e-5)
    # the control: targeting log p(c) instead gives other maps
    assert not np.allclose(gradcam_maps(log_net, x, classes, "features"), reference, atol=1e-3)


def test_batch_independence_flags_a_batch_mixing_block_and_passes_every_model_in_models():
    torch.manual_seed(1)
    assert batch_independence(seed_model()) > 1e-3
    for model in (ResNet18(), CustomResNet(), TransformerUltimus(), TransformerUltimus(residual=True)):
        assert batch_independence(model, batch=16) < 1e-4, type(model).__name__


@pytest.mark.slow
def test_the_max_lr_is_the_range_test_suggestion_times_the_recipe_s_lr_scale(folder_dir, tmp_path):
    # 3 epochs of 12 steps: more than the range test's 20 (a shorter run would drop the scale, tests/test_colab.py)
    recipe = Recipe("scaled", epochs=3, batch_size=8, optimizer="sgd", lr_scale=3.0, lr_iters=20, model=SmallResNet)
    run = Run(recipe=recipe, data_dir=str(folder_dir), device="cpu", out=str(tmp_path / "r"), subset=96)
    run.find_lr()
    suggested = run.result.lr_search["suggested_lr"]
    assert run.result.max_lr == pytest.approx(3.0 * suggested)
    assert f"x 3 (the recipe's lr_scale) = {3 * suggested:.3e}" in (tmp_path / "r" / "log.txt").read_text()


def test_a_run_without_a_model_or_with_a_bad_recipe_says_so_in_one_line():
    with pytest.raises(ValueError, match="has no model; pass model="):
        Run(recipe=Recipe("mine"))
    with pytest.raises(ValueError, match="Recipe.optimizer must be one of"):
        Recipe("mine", optimizer="lamb")
    with pytest.raises(ValueError, match="Run needs assignment="):
        Run()


def _imports(path: Path, package: str) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.add(f"{package}.{node.module}" if node.module else package)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("utils", "assignments"):
            found.add(node.module)
    return found


def test_no_import_circle_in_the_packages():
    graph = {}
    for package in ("utils", "assignments"):
        for path in (REPO / package).glob("*.py"):
            graph[f"{package}.{path.stem}"] = {m for m in _imports(path, package) if m != f"{package}.__init__"}

    def reaches(start, target, seen=()):
        return any(n == target or (n not in seen and reaches(n, target, (*seen, n))) for n in graph.get(start, ()))

    circles = [m for m in graph if reaches(m, m)]
    assert circles == [], circles


class Tally(Callback):
    """A student's callback: counts each event, stops the first run after epoch 1 (as Ctrl-C would) and keeps its
    counts in every checkpoint."""
    state_key = "tally"

    def __init__(self, stop_after: int | None = None):
        self.counts, self.stop_after, self.loaded = {}, stop_after, None

    def _count(self, event):
        self.counts[event] = self.counts.get(event, 0) + 1

    def on_fit_start(self, state):
        self._count("fit_start")

    def on_epoch_start(self, state):
        self._count("epoch_start")

    def on_steps(self, state, rows):
        self.counts["steps"] = self.counts.get("steps", 0) + len(rows)

    def after_backward(self, state):
        self._count("backward")

    def on_test(self, state, entry):
        self._count("test")
        entry["tally_steps"] = self.counts.get("steps", 0)  # a callback may add to the epoch's entry

    def on_epoch_end(self, state, entry):
        self._count("epoch_end")
        if state.epoch == self.stop_after:
            raise KeyboardInterrupt

    def state_dict(self):
        return dict(self.counts)

    def load_state_dict(self, data):
        self.loaded = dict(data)
        self.counts = dict(data)


def test_a_students_callback_through_run_sees_every_event_and_gets_its_state_back_on_resume(folder_dir, tmp_path):
    from utils.train import Interrupted

    common = dict(recipe=Recipe("MyNet", epochs=2, batch_size=8), model=LogSoftmaxNet, data_dir=str(folder_dir),
                  subset=96, device="cpu", lr="0.01", out=str(tmp_path / "cb"), tensorboard=False)  # 12 steps/epoch
    first = Tally(stop_after=1)
    run = Run(**common, callbacks=[first])
    with pytest.raises(Interrupted):
        run.train()
    run.close()
    assert first.counts == {"fit_start": 1, "epoch_start": 1, "steps": 12, "backward": 12, "test": 1, "epoch_end": 1}

    again = Tally()
    resumed = Run(**common, resume=True, callbacks=[again])
    assert resumed.run_all() == 0
    # its state came back as the checkpoint of epoch 1 saved it: after on_test, before on_epoch_end
    assert again.loaded == {k: v for k, v in first.counts.items() if k != "epoch_end"}
    assert again.counts == {"fit_start": 2, "epoch_start": 2, "steps": 24, "backward": 24, "test": 2, "epoch_end": 1}
    history = json.loads((tmp_path / "cb" / "metrics.json").read_text())["history"]
    assert [e["tally_steps"] for e in history] == [12, 24]


def test_run_refuses_a_callback_that_is_not_one(folder_dir, tmp_path):
    with pytest.raises(ValueError, match="callbacks must be utils.callbacks.Callback objects; got function"):
        Run(recipe=Recipe("MyNet", epochs=1, batch_size=8), model=LogSoftmaxNet, data_dir=str(folder_dir),
            device="cpu", out=str(tmp_path / "x"), callbacks=[lambda state: None])
    assert not (tmp_path / "x").exists()
