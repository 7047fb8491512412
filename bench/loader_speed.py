"""Benchmark: the same assignment trained with the classic (albumentations) and the fast
(data on the device) loader in one process; images/s of each and the ratio. Optionally times the
augmentation alone against kornia.augmentation, when kornia is installed.

    python bench/loader_speed.py [--assignment S9] [--data-dir local/cifar10-jpeg] [--images 12800] [--device cpu]
"""
import torch

from common import bench_data, bench_parser, timed
from assignments.recipes import recipe
from utils.data import channel_stats
from utils.fast_loader import augment_batch, make_fast_loaders
from utils.train import train_one_epoch
from utils.augment import mean_pixel
from utils.transforms import default_workers, make_loaders


def kornia_comparison(images: torch.Tensor, spec, mean, sync) -> None:
    try:
        import kornia.augmentation as K
    except ImportError:
        print("kornia not installed: augmentation-only comparison skipped (pip install kornia)")
        return
    fill = torch.tensor(mean_pixel(mean), dtype=torch.uint8, device=images.device)
    x = images.float() / 255  # kornia works on float images
    pipeline = torch.nn.Sequential(
        K.RandomCrop((32, 32), padding=spec.pad, fill=list(mean), p=1.0),
        K.RandomHorizontalFlip(p=0.5),
        # RandomErasing takes one fill value for all channels: it cannot fill with the per-channel mean
        K.RandomErasing(scale=(spec.cutout**2 / 1024,) * 2, ratio=(1.0, 1.0), value=float(sum(mean) / 3), p=spec.cutout_p),
    ).to(images.device)
    gen = torch.Generator(device=images.device).manual_seed(0)
    ours = lambda: [augment_batch(images[i:i + 512], spec, fill, gen) for i in range(0, len(images), 512)]  # noqa: E731
    theirs = lambda: [pipeline(x[i:i + 512]) for i in range(0, len(x), 512)]  # noqa: E731
    ours(), theirs()
    t_ours, t_theirs = timed(ours, sync), timed(theirs, sync)
    print(f"augmentation only, {len(images)} images: ours {len(images) / t_ours:10.0f} img/s | "
          f"kornia {len(images) / t_theirs:10.0f} img/s | ours/kornia {t_theirs / t_ours:.2f}x")


def main():
    p = bench_parser(__doc__)
    p.add_argument("--assignment", default="S9", choices=["S7", "S8", "S9"])
    p.add_argument("--workers", type=int, help="classic DataLoader workers (default: 0 on CPU, 2 on CUDA)")
    args = p.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    r = recipe(args.assignment)
    data = bench_data(args.data_dir, args.images)
    mean, std = channel_stats(data.train.images)
    workers = args.workers if args.workers is not None else default_workers(device.type)
    classic, _ = make_loaders(data.train, data.test, r.augment, mean, std, r.batch_size, seed=0, num_workers=workers,
                              pin_memory=device.type == "cuda")
    fast, _ = make_fast_loaders(data.train, data.test, r.augment, mean, std, r.batch_size, device, seed=0)
    torch.manual_seed(0)
    model = r.model().to(device)
    opt = r.make_optimizer(model.parameters(), 1e-3)
    crit = r.criterion()
    epoch = lambda loader: train_one_epoch(model, loader, opt, crit)  # noqa: E731
    n = len(data.train)
    epoch(fast)  # warm-up
    rates = {"classic": [], "fast": []}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
        rates["classic"].append(n / timed(lambda: epoch(classic), sync))
        rates["fast"].append(n / timed(lambda: epoch(fast), sync))
    best = {k: max(v) for k, v in rates.items()}
    loader_only = {name: n / timed(lambda: [None for _ in loader], sync) for name, loader in (("classic", classic), ("fast", fast))}
    print(f"{args.assignment} {r.model}, data: {data.source}, {n} images, batch {r.batch_size}, device {device}, "
          f"threads {torch.get_num_threads()}, classic workers {workers}")
    for k in ("classic", "fast"):
        print(f"{k:8s} loader: training {best[k]:8.1f} img/s | loader alone {loader_only[k]:9.0f} img/s")
    print(f"ratio fast/classic (training): {best['fast'] / best['classic']:.3f}")
    kornia_comparison(fast.images[: min(n, 10_240)], r.augment, mean, sync)


if __name__ == "__main__":
    main()
