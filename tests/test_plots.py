"""Figures, class table, confusion matrix, gallery, Grad-CAM and report from a tiny run."""
import gc
import math
import json
import tracemalloc

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from assignments.analysis import PROBE_IMAGES
from assignments.run import Run
from models import ResNet18, TransformerUltimus
from utils import plots
from utils import metrics
from utils.attention import entropy_per_block
from utils.gradcam import block_output_sizes, default_target_layer, gradcam_maps


@pytest.fixture(scope="module")
def tiny_run(folder_dir, tmp_path_factory):
    run = Run(assignment="S9", data_dir=str(folder_dir), epochs=2, batch_size=32, lr="3e-3", device="cpu",
              out=str(tmp_path_factory.mktemp("run") / "r"), seed=0, gallery=4)
    assert run.run_all() == 0
    return run


EXPECTED_PANELS = {"augmented": 16, "curves": 2, "class_accuracy": 1, "confusion": 2, "misclassified": 4, "gradcam": 12,
                   "attention_maps": 45, "attention_entropy": 2}


@pytest.mark.slow
def test_every_png_exists_and_decodes(tiny_run):
    assert set(tiny_run.result.figures) == set(EXPECTED_PANELS)
    for name, path in tiny_run.result.figures.items():
        with Image.open(path) as im:
            im.load()
            assert im.width > 200 and im.height > 100, name


@pytest.mark.slow
def test_figures_have_the_expected_panels(tiny_run):
    logits, y = tiny_run.analysis.predict()
    assert len(plots.curves(tiny_run.result.history).axes) == 2
    assert len(plots.class_accuracy_figure(metrics.class_accuracy(logits.argmax(1), y)).axes) == 1
    assert len(plots.confusion_figure(metrics.confusion(logits.argmax(1), y)).axes) == 2  # matrix + colour bar
    fig = plots.augmented_samples(tiny_run.data.train_loader, tiny_run.data.mean, tiny_run.data.std, n=16)
    assert sum(ax.has_data() for ax in fig.axes) == 16


@pytest.mark.slow
def test_class_table_sums_to_the_test_set_and_confusion_diagonal_is_the_correct_count(tiny_run):
    logits, y = tiny_run.analysis.predict()
    preds = logits.argmax(1)
    rows = metrics.class_accuracy(preds, y)
    assert len(rows) == 10 and sum(r["total"] for r in rows) == len(y) == 50
    cm = metrics.confusion(preds, y)
    assert cm.sum() == len(y) and np.trace(cm) == int((preds == y).sum()) == sum(r["correct"] for r in rows)
    assert tiny_run.result.history[-1]["test_acc"] == pytest.approx(100 * np.trace(cm) / len(y))


def test_gallery_holds_only_mistakes_most_confident_first():
    torch.manual_seed(0)
    logits, y = torch.randn(200, 10), torch.randint(0, 10, (200,))
    idx = metrics.misclassified(logits, y, n=20)
    probs = torch.softmax(logits, 1)
    assert len(idx) == 20 and all(int(logits[i].argmax()) != int(y[i]) for i in idx)
    conf = [float(probs[i].max()) for i in idx]
    assert conf == sorted(conf, reverse=True)
    assert idx == metrics.misclassified(logits, y, n=20)  # deterministic
    fig = plots.misclassified_figure(np.zeros((20, 32, 32, 3)), logits, y, idx)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    from utils.data import CLASSES
    for i, t in zip(idx, titles):
        assert t.startswith(f"{CLASSES[int(y[i])]} / {CLASSES[int(logits[i].argmax())]}")


def test_log_probability_models_get_the_same_gallery():
    torch.manual_seed(0)
    logits, y = torch.randn(100, 10) * 3, torch.randint(0, 10, (100,))
    assert metrics.misclassified(torch.log_softmax(logits, 1), y) == metrics.misclassified(logits, y)


def test_gradcam_maps_have_input_size_unit_range_and_depend_on_the_class():
    torch.manual_seed(0)
    model = ResNet18().train()
    x = torch.randn(2, 3, 32, 32)
    layer = default_target_layer(model)
    assert layer == "layer3"  # 8x8, the block's output after its skip connections; layer4 is 4x4
    maps_a = gradcam_maps(model, x, [0, 0], layer)
    maps_b = gradcam_maps(model, x, [5, 5], layer)
    assert maps_a.shape == (2, 32, 32) and maps_a.min() >= 0 and maps_a.max() <= 1
    assert not np.allclose(maps_a, maps_b)
    assert model.training  # grad-cam's eval() side effect undone


def test_default_layer_for_model9_and_any_named_layer():
    model = TransformerUltimus()
    assert default_target_layer(model) == "convs"  # the conv stack's output, 32x32
    assert [s for s in block_output_sizes(model) if s[0] in ("convs", "gap")] == [("convs", 32, 32), ("gap", 1, 1)]
    maps = gradcam_maps(model, torch.randn(1, 3, 32, 32), [3], "convs.1.0")
    assert maps.shape == (1, 32, 32)


def test_no_figure_stays_open_over_a_loop_of_50():
    import matplotlib.pyplot as plt

    history = [{"epoch": e, "train_loss": 1.0, "test_loss": 1.1, "train_acc": 50.0, "test_acc": 48.0} for e in range(1, 4)]
    plots.curves(history)
    tracemalloc.start()
    for _ in range(5):
        plots.curves(history)
    gc.collect()
    base = tracemalloc.get_traced_memory()[0]
    for _ in range(50):
        plots.curves(history)
    gc.collect()  # a Figure and its axes form reference cycles: freed by the collector, not at once
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert plt.get_fignums() == []
    assert grown < 5_000_000


def test_a_collapsed_run_still_gets_its_figures(tmp_path):
    logits = torch.zeros(50, 10)  # constant outputs: every prediction is class 0
    y = torch.arange(50) % 10
    cm = metrics.confusion(logits.argmax(1), y)
    assert (cm[:, 1:] == 0).all() and cm[:, 0].sum() == 50
    plots.save(plots.confusion_figure(cm), tmp_path / "c.png")
    rows = metrics.class_accuracy(logits.argmax(1), y)
    plots.save(plots.class_accuracy_figure(rows), tmp_path / "a.png")
    idx = metrics.misclassified(logits, y, 10)
    plots.save(plots.misclassified_figure(np.zeros((len(idx), 32, 32, 3)), logits, y, idx), tmp_path / "m.png")
    model = TransformerUltimus()
    torch.nn.init.zeros_(model.fc.weight)  # collapsed: the CAM has nothing to show
    maps = gradcam_maps(model, torch.randn(2, 3, 32, 32), [0, 1])
    assert maps.shape == (2, 32, 32) and np.isfinite(maps).all()


@pytest.mark.slow
def test_report_links_every_figure_and_carries_the_log(tiny_run):
    text = (tiny_run.out / "report.md").read_text()
    for name, path in tiny_run.result.figures.items():
        assert f"]({Path(path).name})" in text
    assert "Test set: Average loss:" in text and "Total params: 25,680" in text and "| trainable parameters | 25,680 |" in text
    metrics = json.loads((tiny_run.out / "metrics.json").read_text())
    assert metrics["params"] == 25_680 and len(metrics["history"]) == 2


def _gap_net(bottleneck: bool) -> torch.nn.Module:
    """conv -> GAP -> FC: with ``bottleneck`` the FC passes one direction (48 -> 1 -> 10), as a chain of
    near-uniform Ultimus blocks does; without it, a full 48 -> 10."""
    head = [torch.nn.Linear(16, 1), torch.nn.Linear(1, 10)] if bottleneck else [torch.nn.Linear(16, 10)]
    return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), *head)


def test_gradcam_maps_coincide_exactly_when_the_class_weights_are_parallel():
    from utils.gradcam import PARALLEL, gradcam_maps_and_weights, weight_cosines

    torch.manual_seed(0)
    x = torch.randn(6, 3, 32, 32)
    a, b = [0] * 6, [3] * 6
    for bottleneck in (True, False):
        model = _gap_net(bottleneck).eval()
        maps_a, w_a = gradcam_maps_and_weights(model, x, a, "1")
        maps_b, w_b = gradcam_maps_and_weights(model, x, b, "1")
        cos = weight_cosines(w_a, w_b)
        assert w_a.shape == (6, 16)
        if bottleneck:  # one direction: cos = +-1; the same sign gives the same map
            np.testing.assert_allclose(np.abs(cos), 1, atol=1e-5)
            if cos[0] > 0:
                np.testing.assert_allclose(maps_a, maps_b, atol=1e-5)
        else:
            assert (cos < PARALLEL).all() and not np.allclose(maps_a, maps_b, atol=1e-3)


def test_gradcam_figure_names_the_columns_with_one_map():
    from utils.gradcam import gradcam_figure

    maps = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    fig = gradcam_figure(np.zeros((3, 32, 32, 3)), maps, maps, [0, 1, 2], [3, 4, 5], "convs",
                         cosines=np.array([1.0, 0.2, 0.995]))
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert sum("same map" in t for t in texts) == 2
    assert "2 of 3 columns" in fig._suptitle.get_text()


@pytest.mark.slow
def test_s9_run_measures_attention_every_epoch_and_reports_it(tiny_run):
    entropies = [h["attention_entropy"] for h in tiny_run.result.history]
    assert len(entropies) == 2 and all(len(e) == 4 and all(0 <= v <= math.log(8) + 1e-4 for v in e) for e in entropies)
    split = tiny_run.data.test_split  # the last epoch's numbers are the trained model's on the class-spread probe
    probe = split.normalized(split.spread(PROBE_IMAGES), tiny_run.data.mean, tiny_run.data.std)
    assert entropies[-1] == pytest.approx(entropy_per_block(tiny_run.model, probe), abs=1e-4)
    start = tiny_run.result.checks["attention_entropy_start"]  # untrained spec blocks: uniform rows
    assert start == pytest.approx([math.log(8)] * 4, abs=0.01)
    lines = tiny_run.analysis.attention_entropy().axes[0].lines[:4]  # one per block: epoch 0 (start), 1, 2
    assert [list(line.get_xdata()) for line in lines] == [[0, 1, 2]] * 4
    assert [line.get_ydata()[0] for line in lines] == start
    att = json.loads((tiny_run.out / "metrics.json").read_text())["checks"]["attention"]
    assert att["blocks"] == ["ultimus.0", "ultimus.1", "ultimus.2", "ultimus.3"] and att["images"] == len(tiny_run.data.test_split)
    text = (tiny_run.out / "report.md").read_text()
    assert "## Attention maps" in text and "eff. rank out" in text


def test_a_figure_that_cannot_be_written_names_its_file(tmp_path, monkeypatch):
    import errno

    from matplotlib.figure import Figure

    from utils import plots

    def full(*args, **kwargs):  # matplotlib's own error on a full disk carries no file name
        raise OSError(errno.ENOSPC, "No space left on device")
    fig = Figure()
    monkeypatch.setattr(fig, "savefig", full)
    with pytest.raises(OSError) as e:
        plots.save(fig, tmp_path / "curves.png")
    assert e.value.filename == str(tmp_path / "curves.png") and e.value.strerror == "No space left on device"
