import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402
import torch  # noqa: E402

if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def colour_data():
    from synthetic import colour_task
    return colour_task()


@pytest.fixture(scope="session")
def folder_dir(tmp_path_factory, colour_data):
    """A small class-per-folder tree (200 train / 50 test PNGs)."""
    from synthetic import write_folders
    from utils.data import CifarData
    small = CifarData(colour_data.train.subset(200), colour_data.test.subset(50), "small")
    return write_folders(tmp_path_factory.mktemp("folders"), small)
