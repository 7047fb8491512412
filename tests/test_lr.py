"""LR range test: on the training loader, on a copy; the model to train is untouched."""
import pytest
import torch

from assignments.recipes import recipe
from synthetic import colour_task
from utils.data import channel_stats
from utils.lr import find_lr
from utils import plots
from utils.transforms import AugmentedSplit, EpochLoader, train_transform


class CountingSplit(AugmentedSplit):
    """The training dataset, counting the items read from it."""

    reads = 0

    def __getitem__(self, i):
        CountingSplit.reads += 1
        return super().__getitem__(i)


def test_range_test_uses_the_training_loader_and_leaves_the_model_alone():
    torch.manual_seed(0)
    data = colour_task(256, 32)
    mean, std = channel_stats(data.train.images)
    counting = EpochLoader(CountingSplit(data.train, train_transform(recipe("S9").augment, mean, std)), 32, True, seed=0)
    r = recipe("S9")
    model = r.model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    search = find_lr(model, r.make_optimizer, r.criterion(), counting, "cpu", num_iter=40)
    assert len(search.lrs) >= 17  # it may stop early on divergence, after the descent
    assert CountingSplit.reads >= len(search.lrs) * 32  # every step read a batch of training images
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # incl. BatchNorm buffers
    assert model.training
    assert 1e-7 <= search.suggested_lr <= search.lrs[-1]
    assert search.suggested_lr <= search.min_loss_lr or search.min_loss_lr == search.lrs[0]
    assert len(search.lrs) == len(search.losses) <= 40
    assert len(plots.lr_figure(search).axes) == 1


def test_a_short_range_test_that_diverges_before_its_end_still_suggests_from_its_curve():
    """A quick check's range test takes as few as RANGE_TEST_MIN (17) steps; one whose loss diverges at step 14
    has lost its noisy end already, so only that last point is left out and the descent before it is searched."""
    from utils.recipe import RANGE_TEST_MIN
    from utils.transforms import make_loaders

    torch.manual_seed(0)
    data = colour_task(32 * 20, 64)
    mean, std = channel_stats(data.train.images)
    train, _ = make_loaders(data.train, data.test, recipe("S9").augment, mean, std, 32, seed=0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    search = find_lr(model, lambda p, lr: torch.optim.SGD(p, lr=lr), torch.nn.CrossEntropyLoss(), train, "cpu",
                     end_lr=1e3, num_iter=RANGE_TEST_MIN)
    assert len(search.lrs) < RANGE_TEST_MIN and search.steps == RANGE_TEST_MIN  # it stopped early: diverged
    assert search.lrs[10] <= search.suggested_lr <= search.lrs[-2]  # from the curve, not its diverged last point
    assert len(plots.lr_figure(search).axes[0].lines[0].get_xdata()) == len(search.lrs) - 11


def test_the_range_test_figure_marks_the_run_s_max_lr_where_it_is_not_the_suggestion_and_shows_the_descent():
    from utils.lr import LRSearch

    lrs = [1e-7 * 10 ** (i / 5) for i in range(40)]
    losses = [2.3 - 1e-3 * i for i in range(28)] + [2.5, 3.0, 4.0, 6.0, 8.0] + [10.0] * 7  # descent, divergence
    search = LRSearch(suggested_lr=2.31e-3, min_loss_lr=3.77e-2, lrs=lrs, losses=losses)
    labels = lambda fig: [line.get_label() for line in fig.axes[0].lines]  # noqa: E731
    assert labels(plots.lr_figure(search, 2.15e-2))[-1] == "this run's max LR 2.15e-02"  # S10's lr_max
    assert not any("this run" in label for label in labels(plots.lr_figure(search, 2.31e-3)))  # the suggestion
    assert not any("this run" in label for label in labels(plots.lr_figure(search)))
    shown = plots.lr_figure(search).axes[0]  # the first 10 and last 5 points left out (lr.noisy_ends)
    assert shown.get_ylim()[1] == pytest.approx(1.25 * losses[10])  # the descent fills the axis, not the 10.0s
