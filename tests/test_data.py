"""Both --data-dir layouts, float64 statistics, augmentations, one-line errors."""
import pickle
import shutil
import urllib.error
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from synthetic import colour_task, write_batches
from utils.data import CLASSES, DataError, ImageSplit, channel_stats, load_cifar10
from assignments.recipes import ASSIGNMENTS, recipe
from utils.augment import AugmentSpec, mean_pixel
from utils.transforms import make_loaders, eval_transform, train_transform


def test_channel_stats_known_answer():
    img = np.zeros((4, 32, 32, 3), np.uint8)
    img[..., 0] = 51  # 0.2 everywhere
    img[:2, ..., 1] = 255  # half 1.0, half 0.0: mean 0.5, std 0.5
    img[..., 2] = 255
    mean, std = channel_stats(img)
    np.testing.assert_allclose(mean, (0.2, 0.5, 1.0), atol=1e-12)
    np.testing.assert_allclose(std, (0.0, 0.5, 0.0), atol=1e-12)


def test_channel_stats_do_not_saturate_on_cifar_sized_channels():
    # 17,000 images x 1,024 pixels = 17.4M values per channel, past float32's 2^24 exact-integer range
    img = np.full((17_000, 32, 32, 3), 200, np.uint8)
    img[::2, ..., 2] = 100
    mean, _ = channel_stats(img)
    assert mean[0] == pytest.approx(200 / 255, abs=1e-12)
    assert mean[2] == pytest.approx(150 / 255, abs=1e-12)


def test_folder_layout_loads_the_same_pixels_and_labels(folder_dir, colour_data):
    data = load_cifar10(folder_dir)
    assert len(data.train) == 200 and len(data.test) == 50
    expected = colour_data.train.subset(200)
    order = np.lexsort((np.arange(200), expected.labels))  # the loader reads class folder by class folder
    assert np.array_equal(np.sort(data.train.labels), np.sort(expected.labels))
    assert np.array_equal(data.train.images, expected.images[order])
    assert "image folders" in data.source


def test_batches_layout_loads_the_same_pixels_and_labels(tmp_path):
    src = colour_task(60, 20, seed=3)
    for root in (write_batches(tmp_path, src), tmp_path / "cifar-10-batches-py"):  # DIR or the batches dir itself
        data = load_cifar10(root)
        assert np.array_equal(data.train.images, src.train.images) and np.array_equal(data.train.labels, src.train.labels)
        assert np.array_equal(data.test.images, src.test.images)


def _tree(tmp_path, n=2):
    for split in ("train", "test"):
        for c in CLASSES:
            (tmp_path / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / split / c / f"{i}.png")
    return tmp_path


def _png_header(width: int, height: int) -> bytes:
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize("case, pattern", [
    ("missing", "no such directory"),
    ("unrecognised", "unrecognised layout"),
    ("unknown_class", r"unknown class folder\(s\) \['zebra'\]"),
    ("wrong_size", "expected a 32x32 RGB image; got 40x32 RGB"),
    ("grayscale", "expected a 32x32 RGB image; got 32x32 L"),
    ("undecodable", "cannot be decoded"),
    ("bomb", r"huge.png: cannot be decoded as an image \(Image size \(256000000 pixels\) exceeds limit"),
    ("empty_split", "test/airplane: no images of class 'airplane'"),
    ("missing_class", "train: no folder for class 'truck'"),
    ("class_is_a_file", "train/truck: a file, not a folder of truck images"),
    ("bad_batch", "data_batch_1: not a CIFAR-10 batch file"),
    ("missing_batch", "data_batch_2: missing"),
])
def test_bad_input_raises_one_clear_line(tmp_path, case, pattern):
    root = tmp_path / "d"
    if case == "unrecognised":
        root.mkdir()
        (root / "notes.txt").write_text("hi")
    elif case not in ("missing", "bad_batch", "missing_batch"):
        _tree(root)
    if case == "unknown_class":
        (root / "train" / "zebra").mkdir()
    elif case == "wrong_size":
        Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(root / "train" / "automobile" / "x.png")
    elif case == "grayscale":
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "test" / "airplane" / "g.png")
    elif case == "undecodable":
        (root / "train" / "airplane" / "broken.jpg").write_bytes(b"not a jpeg")
    elif case == "bomb":  # a PNG header that says 16000 x 16000 (PIL refuses it at open: a decompression bomb)
        (root / "train" / "airplane" / "huge.png").write_bytes(_png_header(16000, 16000))
    elif case == "empty_split":
        for c in CLASSES[:2]:
            for f in (root / "test" / c).iterdir():
                f.unlink()
    elif case == "missing_class":
        shutil.rmtree(root / "train" / "truck")
    elif case == "class_is_a_file":
        shutil.rmtree(root / "train" / "truck")
        (root / "train" / "truck").write_text("not a folder")
    elif case == "bad_batch":
        (root / "cifar-10-batches-py").mkdir(parents=True)
        for name in ("data_batch_1", "test_batch"):
            (root / "cifar-10-batches-py" / name).write_bytes(b"garbage")
    elif case == "missing_batch":
        write_batches(root, colour_task(20, 10))
        (root / "cifar-10-batches-py" / "data_batch_2").unlink()
    with pytest.raises(DataError, match=pattern) as e:
        load_cifar10(root)
    assert "\n" not in str(e.value)


def test_a_tampered_batch_file_runs_no_code(tmp_path):
    """A pickle whose payload would create a file: refused by the loader before anything is called."""
    import os

    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    write_batches(tmp_path, colour_task(20, 10))
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump({"data": Payload(), "labels": [0]}, f)
    with pytest.raises(DataError, match=r"data_batch_1: not a CIFAR-10 batch file .*refused to load (posix|os)\.system"):
        load_cifar10(tmp_path)
    assert not marker.exists()


def test_files_in_nested_folders_are_named_not_skipped_silently(tmp_path):
    _tree(tmp_path)
    (tmp_path / "train" / "cat" / "more").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "train" / "cat" / "more" / "x.png")
    data = load_cifar10(tmp_path)
    assert len(data.train) == 20 and len(data.notes) == 1
    assert "1 file(s) in folders below the class folders were not read" in data.notes[0]


def test_failed_download_says_offline_and_which_layouts_work(monkeypatch, tmp_path):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError, match=r"could not download CIFAR-10 .*offline.*--data-dir.*cifar-10-batches-py.*train/<class>"):
        load_cifar10(None, root=str(tmp_path))


def test_no_download_and_nothing_there(tmp_path):
    with pytest.raises(DataError, match="CIFAR-10 not found .*drop --no-download"):
        load_cifar10(None, download=False, root=str(tmp_path))


def test_pipelines_build_and_run_without_any_warning():
    img = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for spec in (recipe(a).augment for a in ASSIGNMENTS):
            out = train_transform(spec, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2))(image=img)["image"]
            assert out.shape == (3, 32, 32) and out.dtype == torch.float32
        eval_transform((0.5, 0.4, 0.3), (0.2, 0.2, 0.2))(image=img)


def test_test_split_is_normalise_only():
    img = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    out = eval_transform(mean, std)(image=img)["image"]
    expected = (torch.from_numpy(img).permute(2, 0, 1) / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def _fill_mask(spec, n=1):
    """Run ``spec`` on all-black images; return (n, 32, 32) masks of pixels that took the mean fill."""
    mean, std = (0.2, 0.6, 0.8), (1.0, 1.0, 1.0)
    tf = train_transform(spec, mean, std)
    tf.set_random_seed(0)
    outs = torch.stack([tf(image=np.zeros((32, 32, 3), np.uint8))["image"] for _ in range(n)])  # (n, 3, 32, 32)
    fill = torch.tensor(mean_pixel(mean)) / 255 - torch.tensor(mean)  # the mean pixel after Normalize
    black = -torch.tensor(mean)
    is_fill = (outs - fill.view(1, 3, 1, 1)).abs().amax(1) < 1e-3
    is_black = (outs - black.view(1, 3, 1, 1)).abs().amax(1) < 1e-3
    assert (is_fill | is_black).all()  # every pixel is either image or mean fill
    return is_fill


def test_cutout_is_one_square_of_the_mean_colour():
    masks = _fill_mask(AugmentSpec(pad=0, flip=False, cutout=8, cutout_p=1.0), n=20)
    for m in masks:
        rows, cols = torch.nonzero(m, as_tuple=True)
        assert m.sum() == 64 and rows.max() - rows.min() == 7 and cols.max() - cols.min() == 7


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_cutout_probability_counts_8x8_holes_not_the_padding_fill(p):
    masks = _fill_mask(AugmentSpec(pad=4, flip=False, cutout=8, cutout_p=p), n=400)
    assert masks.any()  # the padding fill shows at the borders whatever p is ...
    # ... but only a hole fills a whole 8x8 window: a padding strip is at most 4 pixels wide
    full = torch.nn.functional.avg_pool2d(masks.float().unsqueeze(1), 8, stride=1).flatten(1).amax(1) == 1
    rate = full.float().mean().item()
    assert abs(rate - p) < 0.08, rate  # 400 draws: 3 standard deviations of a rate of 0.5 is 0.075


def test_loader_batches_are_a_function_of_seed_and_epoch():
    split = colour_task(64, 8).train
    mk = lambda seed: make_loaders(split, split, recipe("S9").augment, (0.5,) * 3, (0.25,) * 3, 16, seed=seed)[0]  # noqa: E731
    a, b, c = mk(1), mk(1), mk(2)
    batches = []
    for loader, epoch in ((a, 3), (b, 3), (c, 3), (a, 4)):
        loader.set_epoch(epoch)
        batches.append(next(iter(loader)))
    assert torch.equal(batches[0][0], batches[1][0]) and torch.equal(batches[0][1], batches[1][1])
    assert not torch.equal(batches[0][0], batches[2][0])
    assert not torch.equal(batches[0][0], batches[3][0])


def test_subset_is_seeded_and_sized():
    split = ImageSplit(np.zeros((100, 32, 32, 3), np.uint8), np.arange(100) % 10)
    assert len(split.subset(30)) == 30 and split.subset(200) is split
    assert np.array_equal(split.subset(30, seed=5).labels, split.subset(30, seed=5).labels)


@pytest.mark.parametrize("order", ["sorted by class", "shuffled"])
def test_spread_covers_every_class_evenly_however_the_split_is_sorted(order):
    labels = np.repeat(np.arange(10), 40)  # 400 items, a class-per-folder copy's order
    if order == "shuffled":
        labels = np.random.default_rng(0).permutation(labels)
    split = ImageSplit(np.zeros((400, 32, 32, 3), np.uint8), labels)
    idx = split.spread(256)
    counts = np.bincount(labels[idx], minlength=10)
    assert len(set(idx)) == 256 and counts.min() == 25 and counts.max() == 26, counts
    first = {c: int(np.flatnonzero(labels == c)[0]) for c in range(10)}
    assert set(first.values()) <= set(idx)  # each class's first items, in split order


def test_spread_of_an_uneven_split_takes_what_each_class_has():
    labels = np.array([0] * 3 + [1] * 50)
    idx = ImageSplit(np.zeros((53, 32, 32, 3), np.uint8), labels).spread(20)
    assert np.bincount(labels[idx]).tolist() == [3, 17] and idx == sorted(idx)


def test_importing_the_library_and_the_run_leaves_the_environment_as_it_was():
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    # cv2's own loader sets LD_LIBRARY_PATH when it is imported: imported first, it is not counted
    code = ("import os, cv2; before = dict(os.environ); import utils.transforms, assignments.run; "
            "changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)); "
            "print(changed)")
    p = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"
