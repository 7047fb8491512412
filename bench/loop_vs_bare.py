"""Benchmark: S9 images/s of the full training loop (loader + doctor + bookkeeping) against the
model's bare train step on tensors already in memory, same machine, same process.

    python bench/loop_vs_bare.py [--data-dir local/cifar10-jpeg] [--images 12800] [--device cpu]

Goal: the loop keeps >= 0.8 of the bare step on CPU, >= 0.9 on a GPU (where the loop uses the device-resident
loader, as ``--loader auto`` does). Prints both rates and their ratio.
"""
import torch

from common import bench_data, bench_parser, timed
from assignments.recipes import recipe
from utils.data import channel_stats
from utils.doctor import Doctor
from utils.train import train_one_epoch
from utils.transforms import make_loaders


def main():
    p = bench_parser(__doc__)
    args = p.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    r = recipe("S9")
    data = bench_data(args.data_dir, args.images)
    mean, std = channel_stats(data.train.images)
    loader, _ = make_loaders(data.train, data.test, r.augment, mean, std, r.batch_size, seed=0)
    batches = [(x.to(device), y.to(device)) for x, y in loader]  # ready tensors for the bare step
    if device.type == "cuda":  # the loop as a CUDA run has it (--loader auto): the device-resident loader
        from utils.fast_loader import make_fast_loaders
        loader, _ = make_fast_loaders(data.train, data.test, r.augment, mean, std, r.batch_size, device, seed=0)
    torch.manual_seed(0)
    model = r.model().to(device)
    opt = r.make_optimizer(model.parameters(), 1e-3)
    crit = r.criterion()

    def bare():
        model.train()
        for x, y in batches:
            opt.zero_grad(set_to_none=True)
            crit(model(x), y).backward()
            opt.step()

    def loop():
        train_one_epoch(model, loader, opt, crit, callbacks=[Doctor(log=lambda m: None)])

    n = len(data.train)
    bare()  # warm-up
    rates = {"bare": [], "loop": []}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
        rates["bare"].append(n / timed(bare, sync))
        rates["loop"].append(n / timed(loop, sync))
    best = {k: max(v) for k, v in rates.items()}
    print(f"data: {data.source}, {n} images, batch {r.batch_size}, device {device}, threads {torch.get_num_threads()}")
    print(f"bare train step : {best['bare']:8.1f} img/s")
    print(f"full loop       : {best['loop']:8.1f} img/s")
    print(f"ratio loop/bare : {best['loop'] / best['bare']:.3f}")


if __name__ == "__main__":
    main()
