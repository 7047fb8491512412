"""Benchmark: train-step images/s of one assignment's model per precision and memory format, in one
process, the modes interleaved so that drift in machine load hits all of them alike.

    python bench/precision.py [--assignment S7|S8|S9|S10] [--device cpu] [--batch-size 64] [--steps 8] [--repeats 3]
        [--compile]

Synthetic batches already on the device (the model's step alone, as the loop sees it: autocast
forward, fp32 loss, backward, optimizer step). Prints img/s per mode (the best of ``--repeats``
rounds counts) and a line per comparison such as ``S9 bf16/fp32: 2.46``.
"""
import argparse
import time

import torch

from common import timed  # noqa: F401  (sets up sys.path for the repo's packages)
from assignments.recipes import recipe
from utils.precision import Precision, resolve_precision

BATCH = {"S7": 64, "S8": 64, "S9": 128, "S10": 128}  # a step of S7/S8 at batch 512 takes seconds on a 2-core CPU


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--assignment", default="S9", choices=list(BATCH))
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, help="default: S7/S8 64, S9 128")
    p.add_argument("--steps", type=int, default=8, help="train steps per timed round")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds per mode; the best counts")
    p.add_argument("--compile", action="store_true", help="also time bf16 + torch.compile (compile time excluded)")
    args = p.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    r = recipe(args.assignment)
    batch = args.batch_size or BATCH[args.assignment]
    low = resolve_precision("auto", device).replace("fp32", "bf16")  # what auto picks; bf16 where that is fp32
    modes = {"fp32": ("fp32", False, False), "fp32+channels_last": ("fp32", True, False), low: (low, False, False),
             f"{low}+channels_last": (low, True, False)}
    if args.compile:
        modes[f"{low}+compile"] = (low, False, True)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    steps = {}
    for name, (prec, channels_last, compiled) in modes.items():
        torch.manual_seed(0)
        pr = Precision(prec, device, channels_last=channels_last)
        model = r.model().to(device, memory_format=pr.memory_format)
        step_model = torch.compile(model) if compiled else model
        opt = r.make_optimizer(model.parameters(), 1e-3)
        crit = r.criterion()
        xb, yb = pr.inputs(x), y.to(device)

        def step(step_model=step_model, pr=pr, opt=opt, crit=crit, xb=xb, yb=yb):
            step_model.train()
            for _ in range(args.steps):
                opt.zero_grad(set_to_none=True)
                with pr.autocast():
                    logits = step_model(xb).float()
                pr.backward(crit(logits, yb))
                pr.step(opt)

        t = time.perf_counter()
        step()  # warm-up (and compilation)
        if compiled:
            print(f"{name}: warm-up incl. compile {time.perf_counter() - t:.1f} s")
        steps[name] = step
    rates = {name: [] for name in modes}
    for _ in range(args.repeats):
        for name, step in steps.items():
            rates[name].append(args.steps * batch / timed(step, sync))
    best = {k: max(v) for k, v in rates.items()}
    print(f"{args.assignment} {r.model}, batch {batch}, device {device}, threads {torch.get_num_threads()}, "
          f"synthetic batches, {args.steps} steps x {args.repeats} interleaved rounds (best counts)")
    for name, rate in best.items():
        print(f"  {name:22s} {rate:9.1f} img/s")
    for name in list(modes)[1:]:
        print(f"{args.assignment} {name}/fp32: {best[name] / best['fp32']:.2f}")


if __name__ == "__main__":
    main()
