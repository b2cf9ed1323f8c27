"""The plan ``memsv train --gpu-memory`` chooses for the paper's setup on a card (issue 14).

    .venv/bin/python benchmarks/memory_plans.py --gpu-memory 11GiB \
        --models resnet293,rev_resnet293,fullrev_resnet293,dfresnet233,rev_dfresnet233 --optimizer sgd8bit

Paper setup: batch 128 x 200 frames x 80 fbank per GPU, 5,994 speakers, fp32, width 32, the recipe's
optimizer arguments; peaks are the profiler's meta estimate (allocated bytes), "+margin" adds the allocator
margin and the CUDA reserve (memsv_cli.profile.plan). One line per model, then each model's candidates.
``--allow-micro-batch`` / ``--allow-half-precision`` widen the search as the train flags do.
"""

from __future__ import annotations

import argparse
import time

from memsv_cli.profile.plan import CUDA_RESERVE_BYTES, Recipe, choose_plan, plan_table
from memsv_cli.profile.step import OPTIMIZER_KWARGS, full_precision_optimizer
from memsv_cli.sizes import format_bytes, parse_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu-memory", default="11GiB")
    ap.add_argument(
        "--models", default="resnet293,rev_resnet293,fullrev_resnet293,dfresnet233,rev_dfresnet233"
    )
    ap.add_argument("--optimizer", default="sgd8bit")
    ap.add_argument("--allow-micro-batch", action="store_true")
    ap.add_argument("--allow-half-precision", action="store_true")
    args = ap.parse_args()
    budget = parse_size(args.gpu_memory)
    tables = []
    print(f"# {args.gpu_memory}: batch 128 x 200 x 80, 5994 speakers, fp32, {args.optimizer}; meta estimate")
    print(f"{'model':20s} {'plan':32s} {'peak':>10s} {'+margin':>10s} {'cost':>6s}  profiles  seconds")
    for name in args.models.split(","):
        opt_args = dict(OPTIMIZER_KWARGS[full_precision_optimizer(args.optimizer)])
        recipe = Recipe(name, {"base_width": 32}, 128, 1, 200, 5994, args.optimizer, opt_args, "fp32")
        start = time.perf_counter()
        result = choose_plan(
            recipe,
            budget,
            reserve=CUDA_RESERVE_BYTES,
            allow_micro_batch=args.allow_micro_batch,
            half="bf16" if args.allow_half_precision else None,
        )
        seconds = time.perf_counter() - start
        profiles = sum(c.peak is not None for c in result.candidates)
        c = result.chosen
        if c is None:
            print(f"{name:20s} does not fit: {result.message}")
        else:
            print(
                f"{name:20s} {c.plan.describe():32s} {format_bytes(c.peak):>10s} {format_bytes(c.need):>10s} "
                f"{c.cost:5.2f}x  {profiles:8d}  {seconds:7.1f}",
                flush=True,
            )
        tables.append((name, plan_table(result)))
    for name, lines in tables:
        print(f"\n## {name}")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
