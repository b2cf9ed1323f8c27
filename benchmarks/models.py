"""Model zoo benchmark: parameters, cached activation memory and training-step time of every vanilla
model next to its Type I (``rev_``) and Type II (``fullrev_``) variant, from one run.

    .venv/bin/python benchmarks/models.py                      # every family, defaults below
    .venv/bin/python benchmarks/models.py --models resnet34 --time-width 32 --time-batch 8

Memory: bytes saved for backward by one training forward (``saved_activation_bytes``, once per
storage, weights excluded) at full width (32), ``--mem-batch`` x ``--frames`` x 80, divided by the batch
(activations are linear in the batch size). Time: one training step (forward, sum-of-squares loss,
backward), measured as CPU time of this single-threaded process (``time.thread_time``), which a shared
machine disturbs far less than wall time; the variants of a family run interleaved, ``--reps`` rounds
after one warm-up round, and the ratio uses each variant's fastest round.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from memsv_cli.models import get_model, saved_activation_bytes  # noqa: E402

FAMILIES = [f"resnet{d}" for d in (18, 34, 50, 101, 152, 221, 293)] + [
    f"dfresnet{d}" for d in (56, 110, 179, 233)
]
PREFIXES = ("", "rev_", "fullrev_")


def step_time(model: torch.nn.Module, feats: torch.Tensor) -> float:
    """CPU seconds of one training step."""
    model.zero_grad(set_to_none=True)
    start = time.thread_time()
    model(feats).square().sum().backward()
    return time.thread_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--models", default=",".join(FAMILIES), help="comma-separated vanilla names")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--mem-batch", type=int, default=2)
    parser.add_argument("--time-batch", type=int, default=8)
    parser.add_argument("--time-width", type=int, default=32, help="base_width for the timing")
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    header = f"{'model':<20}{'params M':>9}{'act MB/utt':>12}{'saving':>8}{'step s':>8}{'time x':>8}"
    print(
        f"memory: width 32, batch {args.mem_batch} x {args.frames} x 80; time: width {args.time_width}, "
        f"batch {args.time_batch} x {args.frames} x 80, best of {args.reps} interleaved rounds"
    )
    print(header)
    print("-" * len(header))
    for family in args.models.split(","):
        names = [p + family for p in PREFIXES]
        mem_feats = torch.randn(args.mem_batch, args.frames, 80)
        params, act = {}, {}
        for name in names:
            model = get_model(name).train()
            params[name] = sum(p.numel() for p in model.parameters())
            act[name] = saved_activation_bytes(model, mem_feats) / args.mem_batch / 2**20
            del model
        time_feats = torch.randn(args.time_batch, args.frames, 80)
        models = {n: get_model(n, base_width=args.time_width).train() for n in names}
        times = {n: [] for n in names}
        for rnd in range(args.reps + 1):
            for name, model in models.items():
                t = step_time(model, time_feats)
                if rnd:  # round 0 warms up allocators and oneDNN kernels
                    times[name].append(t)
        del models
        base = names[0]
        for name in names:
            best = min(times[name])
            print(
                f"{name:<20}{params[name] / 1e6:>9.2f}{act[name]:>12.1f}{act[base] / act[name]:>7.1f}x"
                f"{best:>8.2f}{best / min(times[base]):>7.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
