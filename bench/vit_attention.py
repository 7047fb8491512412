"""Benchmark: train-step images/s of the S10 ViT (models/model10.py) with its attention written out (matmul,
softmax, matmul) against ``F.scaled_dot_product_attention``, per size and precision, in one process, the modes
interleaved so that drift in machine load hits all of them alike.

    python bench/vit_attention.py [--device cpu] [--batch-size 128] [--steps 6] [--repeats 3]
        [--sizes 64x6,128x6] [--precision fp32,bf16]

Synthetic batches already on the device (autocast forward, fp32 loss, backward, AdamW step). Prints img/s per
mode (the best of ``--repeats`` rounds) and, per size and precision, ``fused/explicit``: below 1 the written-out
attention is faster. bf16 is timed only where it is native (CUDA compute capability 8+, or oneDNN bf16 on the
CPU).
"""
import argparse
import time

import torch

from common import timed  # noqa: F401  (sets up sys.path for the repo's packages)
from models.model10 import ViT


def native_bf16(device: str) -> bool:
    if device == "cuda":
        return torch.cuda.get_device_capability()[0] >= 8
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=6, help="train steps per timed round")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds per mode; the best counts")
    p.add_argument("--sizes", default="64x6,128x6", help="ViT width x depth, comma-separated (patch 4, 4 heads)")
    p.add_argument("--precision", default="fp32,bf16")
    args = p.parse_args()
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    x = torch.randn(args.batch_size, 3, 32, 32, device=args.device)
    y = torch.randint(0, 10, (args.batch_size,), device=args.device)
    precisions = [q for q in args.precision.split(",") if q == "fp32" or native_bf16(args.device)]
    modes = {}
    for size in args.sizes.split(","):
        dim, depth = map(int, size.split("x"))
        for fused in (False, True):
            torch.manual_seed(0)
            model = ViT(dim=dim, depth=depth, fused=fused).to(args.device)
            opt = torch.optim.AdamW(model.parameters(), 1e-3)
            for q in precisions:
                modes[(size, q, fused)] = (model, opt)

    def step(model, opt, q):
        with torch.autocast(args.device, torch.bfloat16, enabled=q == "bf16"):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    best = {}
    for round_ in range(args.repeats + 1):  # round 0 warms up
        for key, (model, opt) in modes.items():
            seconds = timed(lambda: [step(model, opt, key[1]) for _ in range(args.steps)], sync)
            if round_:
                best[key] = max(best.get(key, 0.0), args.steps * args.batch_size / seconds)
    print(f"device {args.device}, batch {args.batch_size}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    for (size, q, fused), ips in best.items():
        params = sum(t.numel() for t in modes[(size, q, fused)][0].parameters())
        print(f"ViT {size} ({params:,} params) {q} {'fused' if fused else 'explicit'}: {ips:,.0f} img/s")
    for size in args.sizes.split(","):
        for q in precisions:
            print(f"ViT {size} {q} fused/explicit: {best[(size, q, True)] / best[(size, q, False)]:.2f}")


if __name__ == "__main__":
    t = time.time()
    main()
    print(f"({time.time() - t:.0f} s)")
