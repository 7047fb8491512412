"""The run's one-cycle max LR: the LR range test's suggestion as the recipe takes it (``--lr auto``), the value
given, or on ``--resume`` the one the run started with."""
from __future__ import annotations

import dataclasses

from torch import nn

from utils import distributed
from utils.lr import find_lr
from utils.precision import Precision
from utils.recipe import Recipe

from .build import RunData, make_loaders
from .config import RunConfig
from .resume import Carried


def choose_max_lr(config: RunConfig, recipe: Recipe, carried: Carried, data: RunData, model: nn.Module,
                  criterion: nn.Module, precision: Precision, world: distributed.World, epochs: int
                  ) -> tuple[float, dict | None, list[str]]:
    """(max LR, the range test as plain data or None, the lines to log). The range test runs on a copy of
    ``model`` with the recipe's optimizer and ``precision``; under torchrun rank 0 runs it alone on the
    single-process loader and the others take its answer. A recipe's measured ``lr_max`` replaces the suggestion;
    a quick check's shorter test and smaller max LR are the recipe's rules (:meth:`Recipe.range_test_steps`,
    :meth:`Recipe.max_lr`), said in the lines."""
    if config.resume:
        return carried.max_lr, carried.lr_search, [f"max LR {carried.max_lr:.3e} (from the checkpoint)"]
    if config.lr != "auto":
        return float(config.lr), None, [f"max LR {float(config.lr):.3e} (given)"]
    steps = epochs * len(data.train_loader)
    iters, shorter = recipe.range_test_steps(len(data.train_loader), steps)
    search = None
    if world.main:
        loader = make_loaders(config, recipe, data.train_split, data.test_split, data.mean, data.std, data.batch_size,
                              precision.device)[0] if world.size > 1 else data.train_loader
        search = find_lr(model, recipe.make_optimizer, criterion, loader, precision.device, end_lr=recipe.lr_end,
                         num_iter=iters, precision=precision)
    search = distributed.broadcast(search)
    max_lr, quick = recipe.max_lr(search.suggested_lr, search.min_loss_lr, steps)
    scaled = f" x {recipe.lr_scale:.3g} (the recipe's lr_scale) = {search.suggested_lr * recipe.lr_scale:.3e}" \
        if recipe.lr_scale != 1 and not recipe.lr_max else ""
    lines = [f"LR range test ({shorter or f'{iters} steps'} on the training set): suggested max LR "
             f"{search.suggested_lr:.3e} (steepest descent){scaled}; loss minimum at {search.min_loss_lr:.3e}"]
    fixed = f"max LR {max_lr:.3e}: the recipe's measured value (Recipe.lr_max), not the suggestion" \
        if recipe.lr_max else None
    taken = quick or fixed
    return max_lr, dataclasses.asdict(search), lines + ([taken] if taken else [])
