"""A run through the Python API, for tests/test_distributed.py: ``python tests/ddp_job.py MODE DATA OUT`` alone
or under ``torchrun --nproc_per_node 2``. MODE: ``nobn`` (a BatchNorm-free net, SGD, no augmentation, 1 epoch, float64)
or ``crash`` (S9, 2 epochs, killed as epoch 2 begins: exit 3 with the checkpoint of epoch 1)."""
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).parent)]

import torch  # noqa: E402
from torch import nn  # noqa: E402

from assignments.run import Run  # noqa: E402
from utils import AugmentSpec, Recipe, distributed  # noqa: E402


def no_bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, 10))


def main(mode: str, data: str, out: str) -> int:
    common = {"data_dir": data, "device": "cpu", "out": out, "precision": "fp32", "subset": 96}
    if mode == "nobn":  # float64: the two processes' gradient sums differ from one's by ~1e-16, on any CPU
        recipe = Recipe(name="no-BN net", epochs=1, batch_size=32, optimizer="sgd",
                        augment=AugmentSpec(pad=0, flip=False, cutout=0), model=no_bn_net)
        return Run(recipe=recipe, lr="0.05", **{**common, "precision": "fp64"}).run_all()
    from test_train import Interrupted, StopAtEpoch

    run = Run(assignment="S9", epochs=2, batch_size=32, lr="0.003", **common)
    run.show_augmented()  # as the command does: same RNG use
    run.find_lr()
    run.data.train_loader = StopAtEpoch(run.data.train_loader, 2)
    try:
        run.train()
    except Interrupted:
        return 3
    finally:
        distributed.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
