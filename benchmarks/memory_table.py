"""The paper's memory table: peak training-step memory of vanilla / rev / fullrev models with 32- and 8-bit
optimizers, and the saving of each against its vanilla 32-bit baseline, side by side.

Estimates come from ``memsv_cli.profile`` on fake (meta) tensors, so the whole table needs no GPU; with
``--device cuda`` (or ``auto`` on a GPU machine) the CUDA allocator's measured peak is printed beside each
estimate. Usage::

    .venv/bin/python benchmarks/memory_table.py                 # paper setup: batch 128, 200 frames
    .venv/bin/python benchmarks/memory_table.py --models resnet34 --optimizers sgd sgd8bit --batch-size 32

Rows: each model as ``vanilla``, ``<model>+ckpt`` (the vanilla model with ``torch.utils.checkpoint``
around each residual block), ``rev_`` and ``fullrev_``, with each optimizer. Columns: component bytes
in GiB (P = parameters, G = gradients, O = optimizer states, A = activations, other, total), then
``xO`` = baseline optimizer states / these, ``xA`` = activation saving and ``xT`` = total saving
against ``<vanilla model> + <32-bit optimizer>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from memsv_cli.profile.memory import MemoryBreakdown, measure_step  # noqa: E402
from memsv_cli.profile.report import model_builder  # noqa: E402
from memsv_cli.profile.step import StepSetup, full_precision_optimizer  # noqa: E402

MODELS = ("resnet34", "resnet101", "resnet293", "dfresnet56", "dfresnet233")
#: row kinds: the vanilla model, the vanilla model with activation checkpointing around each residual
#: block (torch.utils.checkpoint: the baseline users reach for), Type I and Type II reversible
VARIANTS = ("vanilla", "ckpt", "rev", "fullrev")
OPTIMIZERS = ("sgd", "sgd8bit", "adam", "adam8bit")
GIB = 2**30


def _ratio(base: int, this: int) -> str:
    return f"{base / this:6.2f}" if this else "     -"


def _row(name: str, optimizer: str, this: MemoryBreakdown, ref: MemoryBreakdown) -> str:
    """One table line: component GiB, then the savings against ``ref`` (xO, xA, xT)."""
    b = this.as_dict()
    widths = (("parameters", 6), ("gradients", 6), ("optimizer_states", 6), ("activations", 7))
    cells = " ".join(f"{b[k] / GIB:{w}.2f}" for k, w in (*widths, ("other", 6), ("total", 7)))
    return (
        f"{name:<20} {optimizer:<9} {cells} {_ratio(ref.optimizer_states, this.optimizer_states)}"
        f" {_ratio(ref.activations, this.activations)} {_ratio(ref.total, this.total)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--device", default="meta", choices=("meta", "cuda", "auto"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    measure_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    prefixes = {"vanilla": "", "ckpt": "", "rev": "rev_", "fullrev": "fullrev_"}

    header = (
        f"{'model':<20} {'optimizer':<9} {'P':>6} {'G':>6} {'O':>6} {'A':>7} {'other':>6} {'total':>7}"
        f" {'xO':>6} {'xA':>6} {'xT':>6}" + (f" {'cuda':>7} {'cuda xT':>7}" if measure_cuda else "")
    )
    print(
        f"# batch {args.batch_size} x {args.frames} frames x 80 fbank, 5994 speakers, {args.precision}; "
        "GiB at the step's peak (meta estimate); x = saving vs vanilla model + 32-bit optimizer"
    )
    print(header)
    started = time.time()
    cache: dict[tuple[str, str, str], MemoryBreakdown] = {}

    def estimate(name: str, optimizer: str, method: str = "meta") -> MemoryBreakdown:
        key = (name, optimizer, method)
        if key not in cache:
            setup = StepSetup(args.batch_size, args.frames, optimizer=optimizer, precision=args.precision)
            model, _, kind = name.partition("+")
            build = model_builder(model, 80, 256, 32, checkpoint_blocks=kind == "ckpt")
            cache[key] = measure_step(build, setup, method)
        return cache[key]

    for base in args.models:
        for variant in args.variants:
            name = prefixes[variant] + base + ("+ckpt" if variant == "ckpt" else "")
            for optimizer in args.optimizers:
                this = estimate(name, optimizer)
                ref = estimate(base, full_precision_optimizer(optimizer))
                line = _row(name, optimizer, this, ref)
                if measure_cuda:  # pragma: no cover - GPU only
                    real = estimate(name, optimizer, "cuda")
                    real_ref = estimate(base, full_precision_optimizer(optimizer), "cuda")
                    line += f" {real.total / GIB:7.2f} {_ratio(real_ref.total, real.total)}"
                print(line, flush=True)
    print(f"# {len(cache)} profiles in {time.time() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
