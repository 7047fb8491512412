"""``python -m assignments S7|S8|S9 [options]``: train with the assignment's recipe and write
log.txt, metrics.json, the checkpoint, every figure and report.md into the out directory."""
from __future__ import annotations

import argparse
import os
import sys


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text}")
    return value


def lr_value(text: str) -> str:
    if text != "auto":
        try:
            if float(text) <= 0:
                raise ValueError
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be 'auto' or a positive number; got {text!r}") from None
    return text


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m assignments",
                                description="Train with the assignment's recipe and write log.txt, metrics.json, "
                                            "the checkpoint, every figure and report.md into the out directory.")
    p.add_argument("assignment", choices=["S7", "S8", "S9"])
    p.add_argument("--variant", default="spec", help="S9 Ultimus variant: spec | residual | prescaled | prescaled-residual")
    p.add_argument("--epochs", type=positive_int, help="default: the assignment's (S7 20, S8 24, S9 24)")
    p.add_argument("--batch-size", type=positive_int, help="default: the recipe's (S7/S8 512, S9 128)")
    p.add_argument("--lr", type=lr_value, default="auto", help="max LR of the one-cycle: 'auto' runs the LR range test")
    p.add_argument("--data-dir", help="local CIFAR-10: DIR/cifar-10-batches-py or DIR/{train,test}/<class>/*.jpg")
    p.add_argument("--no-download", action="store_true", help="never download (use ./data or --data-dir)")
    p.add_argument("--out", help="output directory (default runs/<assignment>-<timestamp>)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--subset", type=positive_int, help="use N training and N test images (quick checks)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (default: the latest) to its end")
    p.add_argument("--strict", action="store_true", help="stop at the training doctor's first finding")
    p.add_argument("--workers", type=int, help="DataLoader workers (default 0 on CPU, 2 on CUDA)")
    p.add_argument("--loader", default="classic", choices=["classic", "fast"],
                   help="classic: albumentations in a DataLoader; fast: the split on the device, augmented per batch")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast of the forward pass; auto: bf16 where the device runs it natively "
                        "(AVX-512 BF16/AMX CPU, CUDA 8.0+), fp16 + grad scaler on older GPUs, else fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the model for training and testing")
    p.add_argument("--gallery", type=positive_int, default=10, help="misclassified images in the gallery and Grad-CAM")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import matplotlib

    matplotlib.use("Agg")  # headless: figures go to PNG files
    from utils.data import DataError
    from utils.doctor import TrainingStopped

    from .run import Run, RunConfig

    config = RunConfig(assignment=args.assignment, variant=args.variant, epochs=args.epochs,
                       batch_size=args.batch_size, lr=args.lr, data_dir=args.data_dir, download=not args.no_download,
                       out=args.out, device=args.device, seed=args.seed, subset=args.subset, resume=args.resume,
                       strict=args.strict, workers=args.workers, loader=args.loader,
                       precision=args.precision, compile=args.compile)
    try:
        run = Run(config).setup()
        run.show_augmented()
        run.summary()
        run.find_lr()
        stopped = None
        try:
            run.train()
        except TrainingStopped as e:
            stopped = e
            run.log(f"STOPPED: {e}; the last good checkpoint is {run.out / 'checkpoint.pt'}")
        if run.history:
            run.curves()
            run.class_accuracy()
            run.confusion()
            run.misclassified(args.gallery)
            run.gradcam(args.gallery)
        report = run.report()
        run.log(f"wrote {report} and metrics.json, log.txt, checkpoint.pt, *.png in {run.out}")
        return 2 if stopped else 0
    except (DataError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
