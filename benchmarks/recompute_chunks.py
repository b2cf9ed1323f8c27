"""Batch-chunked recomputation (``recompute_chunks=K``): peak memory of the paper's training step (meta
estimate, as ``memsv profile-memory``) and CPU step time relative to K=1.

    .venv/bin/python benchmarks/recompute_chunks.py --mode memory --models rev_dfresnet233 --chunks 1,4,8,16
    .venv/bin/python benchmarks/recompute_chunks.py --mode time --models rev_dfresnet233 --chunks 1,4,8,16

memory: batch 128 x 200 x 80, 5994 speakers, fp32, ``--optimizer`` (sgd8bit), against the vanilla model with
the 32-bit optimizer (the profiler's default baseline). time: one single-threaded training step (forward,
loss, backward) at ``--time-width``/``--time-batch``, the K values interleaved, best of ``--reps`` after a
warm-up round.
"""

from __future__ import annotations

import argparse
import time

import torch

from memsv_cli.models import get_model
from memsv_cli.profile import StepSetup, profile_memory

GIB = 2**30


def memory(models: list[str], chunks: list[int], optimizer: str) -> None:
    print(
        f"{'model':22s} {'K':>3s} {'act GiB':>8s} {'other GiB':>9s} {'total GiB':>9s} "
        f"{'baseline':>9s} {'saving':>7s}"
    )
    for name in models:
        baseline = None
        for k in chunks:  # the baseline (vanilla model, 32-bit optimizer) is measured once per model
            r = profile_memory(
                name,
                StepSetup(optimizer=optimizer),
                "meta",
                "auto" if baseline is None else None,
                recompute_chunks=k,
            )
            baseline = baseline or r.baseline
            b = r.bytes
            print(
                f"{name:22s} {k:3d} {b.activations / GIB:8.2f} {b.other / GIB:9.2f} {b.total / GIB:9.2f} "
                f"{baseline.total / GIB:9.2f} {baseline.total / b.total:6.2f}x",
                flush=True,
            )


def step_time(models: list[str], chunks: list[int], width: int, batch: int, frames: int, reps: int) -> None:
    torch.set_num_threads(1)
    print(f"{'model':22s} {'K':>3s} {'step s':>7s} {'time x':>7s}")
    for name in models:
        built = {}
        for k in chunks:
            torch.manual_seed(0)
            built[k] = get_model(name, base_width=width, recompute_chunks=k).train()
        feats = torch.randn(batch, frames, 80)
        best = {k: float("inf") for k in chunks}
        for rep in range(reps + 1):
            for k in chunks:
                start = time.perf_counter()
                built[k](feats).square().mean().backward()
                if rep:  # round 0 is the warm-up
                    best[k] = min(best[k], time.perf_counter() - start)
        for k in chunks:
            print(f"{name:22s} {k:3d} {best[k]:7.2f} {best[k] / best[chunks[0]]:6.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=("memory", "time"), default="memory")
    parser.add_argument(
        "--models", default="rev_dfresnet233,fullrev_dfresnet233,rev_resnet293,fullrev_resnet293"
    )
    parser.add_argument("--chunks", default="1,4,8,16")
    parser.add_argument("--optimizer", default="sgd8bit")
    parser.add_argument("--time-width", type=int, default=8)
    parser.add_argument("--time-batch", type=int, default=16)
    parser.add_argument("--time-frames", type=int, default=100)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    models, chunks = args.models.split(","), [int(k) for k in args.chunks.split(",")]
    if args.mode == "memory":
        memory(models, chunks, args.optimizer)
    else:
        step_time(models, chunks, args.time_width, args.time_batch, args.time_frames, args.reps)


if __name__ == "__main__":
    main()
