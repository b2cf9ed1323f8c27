"""Gradient accumulation's step-time cost: one optimizer step over a fixed number of samples per process,
split into A micro-batches, relative to A = 1 (the cost model of ``memsv train --gpu-memory``).

    .venv/bin/python benchmarks/accumulation.py --models resnet34,rev_resnet34 --total 32 --accum 1,2,4,8

The step is the trainer's own (:class:`memsv_cli.train.step.TrainStep`: forward, loss, backward per
micro-batch, one SGD update), single-threaded on CPU, the A values interleaved, best of ``--reps`` after a
warm-up round. The fitted per-micro-batch overhead ``phi`` is the fraction of an A = 1 step that every
extra micro-batch adds: ``time(A) / time(1) = 1 + phi (A - 1)`` (least squares through the origin).
"""

from __future__ import annotations

import argparse
import time

import torch

from memsv_cli.models import get_model
from memsv_cli.optim import build_optimizer
from memsv_cli.train.heads import AAMSoftmax
from memsv_cli.train.step import TrainingNet, TrainStep


def _step_seconds(step: TrainStep, total: int, accum: int, frames: int, classes: int) -> float:
    b = total // accum
    gen = torch.Generator().manual_seed(accum)
    micro = [
        (torch.randn(b, frames, 80, generator=gen), torch.randint(0, classes, (b,), generator=gen))
        for _ in range(accum)
    ]
    start = time.perf_counter()
    step(micro)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet34,rev_resnet34")
    ap.add_argument("--total", type=int, default=32, help="samples per optimizer step")
    ap.add_argument("--accum", default="1,2,4,8")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    accums = [int(a) for a in args.accum.split(",")]
    print(f"{'model':18s} {'A':>3s} {'micro':>5s} {'step s':>7s} {'time x':>7s}")
    for name in args.models.split(","):
        torch.manual_seed(0)
        net = TrainingNet(get_model(name, base_width=args.width), AAMSoftmax(256, args.classes)).train()
        step = TrainStep(net, build_optimizer("sgd", list(net.parameters()), lr=0.01, momentum=0.9))
        best = {a: float("inf") for a in accums}
        for rep in range(args.reps + 1):
            for a in accums:
                t = _step_seconds(step, args.total, a, args.frames, args.classes)
                if rep:  # round 0 warms up
                    best[a] = min(best[a], t)
        ratios = {a: best[a] / best[accums[0]] for a in accums}
        phi = sum((ratios[a] - 1) * (a - 1) for a in accums) / max(sum((a - 1) ** 2 for a in accums), 1)
        for a in accums:
            print(f"{name:18s} {a:3d} {args.total // a:5d} {best[a]:7.2f} {ratios[a]:6.2f}x")
        print(f"{name:18s} phi = {phi:.3f} (time(A)/time(1) = 1 + phi (A - 1))", flush=True)


if __name__ == "__main__":
    main()
