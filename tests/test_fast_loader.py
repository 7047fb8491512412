"""The GPU-resident loader draws the same augmentations, with the same statistics, as albumentations."""
import numpy as np
import pytest
import torch

from synthetic import colour_task
from utils.data import ImageSplit, channel_stats
from utils.fast_loader import GpuLoader, augment_batch, make_fast_loaders
from assignments.recipes import recipe
from utils.augment import AugmentSpec
from utils.transforms import make_loaders, train_transform

FILL = torch.tensor([50, 100, 150], dtype=torch.uint8)


def coordinate_images(n):
    """Pixel (r, c) holds R = 7r + 1, G = 7c + 1: a crop's offset can be read back from any pixel."""
    r, c = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    img = np.stack([7 * r + 1, 7 * c + 1, np.full_like(r, 3)], -1).astype(np.uint8)  # (32, 32, 3)
    return np.repeat(img[None], n, 0)


def offsets_fast(n, spec):
    x = torch.from_numpy(coordinate_images(n)).permute(0, 3, 1, 2)
    out = augment_batch(x, spec, FILL, torch.Generator().manual_seed(0))  # (n, 3, 32, 32)
    return ((out[:, 0, 4, 4].long() - 1) // 7, (out[:, 1, 4, 4].long() - 1) // 7)  # image row/col at (4, 4)


def offsets_albumentations(n, spec):
    tf = train_transform(spec, (0.0,) * 3, (1 / 255,) * 3)  # Normalize to plain pixel values
    tf.set_random_seed(0)
    out = np.stack([tf(image=img)["image"].numpy() for img in coordinate_images(n)])
    return (np.round(out[:, 0, 4, 4]).astype(int) - 1) // 7, (np.round(out[:, 1, 4, 4]).astype(int) - 1) // 7


@pytest.mark.parametrize("draw", [offsets_fast, offsets_albumentations])
def test_crop_offsets_are_uniform_over_the_9x9_positions(draw):
    n = 81 * 100
    dy, dx = draw(n, AugmentSpec(pad=4, flip=False, cutout=0))
    counts = np.bincount(np.asarray(dy) * 9 + np.asarray(dx), minlength=81)  # pixel (4,4) shows image (dy, dx)
    assert len(counts) == 81 and counts.sum() == n
    assert counts.min() > 55 and counts.max() < 145  # 100 expected per cell; +-4.5 sigma


def test_flip_rate_is_one_half_and_padding_uses_the_fill():
    x = torch.zeros(10_000, 3, 32, 32, dtype=torch.uint8)
    x[..., 16:] = 255  # right half white
    out = augment_batch(x, AugmentSpec(pad=0, flip=True, cutout=0), FILL, torch.Generator().manual_seed(1))
    flipped = out[:, 0, 0, 0] == 255
    assert abs(flipped.float().mean().item() - 0.5) < 0.02
    padded = augment_batch(torch.zeros(500, 3, 32, 32, dtype=torch.uint8), AugmentSpec(pad=4, flip=False, cutout=0),
                           FILL, torch.Generator().manual_seed(2))
    is_fill = (padded == FILL.view(1, 3, 1, 1)).all(1)  # (500, 32, 32)
    assert is_fill.any() and ((padded == 0).all(1) | is_fill).all()


def test_cutout_is_one_square_inside_the_image_with_probability_p_and_uniform_placement():
    n = 20_000
    out = augment_batch(torch.zeros(n, 3, 32, 32, dtype=torch.uint8), AugmentSpec(pad=0, flip=False, cutout=8, cutout_p=0.5),
                        FILL, torch.Generator().manual_seed(3))
    hole = (out == FILL.view(1, 3, 1, 1)).all(1)  # (n, 32, 32)
    area = hole.sum((1, 2))
    assert set(area.unique().tolist()) == {0, 64}
    assert abs((area > 0).float().mean().item() - 0.5) < 0.02
    with_hole = hole[area > 0]
    top = with_hole.any(2).float().argmax(1)  # first row of the hole
    assert top.min() == 0 and top.max() == 24  # fully inside: 0..32-8
    counts = torch.bincount(top, minlength=25).float()
    assert counts.std() / counts.mean() < 0.15  # uniform rows


def test_normalised_output_matches_the_classic_path_in_mean_and_std():
    data = colour_task(2000, 10)
    mean, std = channel_stats(data.train.images)
    fast, _ = make_fast_loaders(data.train, data.test, recipe("S8").augment, mean, std, 250, "cpu")
    classic, _ = make_loaders(data.train, data.test, recipe("S8").augment, mean, std, 250)
    stats = []
    for loader in (fast, classic):
        x = torch.cat([b for b, _ in loader])  # (2000, 3, 32, 32)
        stats.append((x.mean((0, 2, 3)), x.std((0, 2, 3))))
    torch.testing.assert_close(stats[0][0], stats[1][0], atol=0.02, rtol=0)
    torch.testing.assert_close(stats[0][1], stats[1][1], atol=0.02, rtol=0)


def test_test_split_is_in_order_and_equals_the_classic_normalisation():
    data = colour_task(64, 100)
    mean, std = channel_stats(data.train.images)
    _, fast = make_fast_loaders(data.train, data.test, recipe("S9").augment, mean, std, 32, "cpu")
    _, classic = make_loaders(data.train, data.test, recipe("S9").augment, mean, std, 32)
    for (a, ya), (b, yb) in zip(fast, classic):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        assert torch.equal(ya, yb)
    # the gallery and Grad-CAM take test images from the split: the same tensors as the test loaders give
    test_x = torch.cat([x for x, _ in classic])
    torch.testing.assert_close(data.test.normalized([5, 70], mean, std), test_x[[5, 70]], atol=1e-5, rtol=1e-5)


def test_epochs_are_seeded_and_every_item_is_seen_once():
    split = ImageSplit(np.zeros((100, 32, 32, 3), np.uint8), np.arange(100) % 10)
    loader = GpuLoader(split, recipe("S9").augment, (0.5,) * 3, (0.25,) * 3, 32, "cpu", seed=4)
    loader.set_epoch(1)
    first = torch.cat([y for _, y in loader])
    loader.set_epoch(1)
    again = torch.cat([y for _, y in loader])
    assert torch.equal(first, again) and len(loader) == 4
    assert sorted(first.tolist()) == sorted(split.labels.tolist())
