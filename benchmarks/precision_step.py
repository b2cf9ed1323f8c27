"""fp32 against bf16 autocast for the demo's training step, natively and with bf16 emulated (issue 13).

Why ``train.precision: auto`` exists (memsv_cli/train/precision.py): bf16 pays only where the CPU has it.
Each row runs in a child process whose oneDNN and ATen kernels are held to an instruction set, so one
machine shows all three cases:

- ``native``: whatever this CPU has (AMX / AVX512-BF16 on this project's Xeon);
- ``avx512``: AVX-512 without BF16 (``ONEDNN_MAX_CPU_ISA=AVX512_CORE``), as on Skylake / Cascade Lake;
- ``avx2``: ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``, as on most laptops and AMD Zen 1-3.

A step is forward + backward + Adam8bit update at the demo's setup (batch 16 x 100 frames x 80 fbank,
120 classes, two threads). Times are medians of interleaved repeats (ms); read the ratio column.

    .venv/bin/python benchmarks/precision_step.py [--repeats 5] [--models rev_resnet18 resnet18]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ISAS = {
    "native": {},
    "avx512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
}
PRECISIONS = ("fp32", "bf16")


def measure(model: str, width: int, repeats: int, inner: int) -> dict[str, float]:
    """Median step time (ms) per precision, in this process (interleaved, after a warm-up)."""
    import torch

    from memsv_cli.models import get_model
    from memsv_cli.optim import build_optimizer
    from memsv_cli.train.heads import AAMSoftmax
    from memsv_cli.train.step import TrainingNet, TrainStep

    torch.manual_seed(0)
    torch.set_num_threads(2)
    backbone = get_model(model, feat_dim=80, embed_dim=128, base_width=width)
    net = TrainingNet(backbone, AAMSoftmax(128, 120, scale=32.0, margin=0.0))
    optimizer = build_optimizer("adam8bit", list(net.parameters()), lr=5e-3, weight_decay=1e-5)
    batch = [(torch.randn(16, 100, 80), torch.randint(0, 120, (16,)))]
    steps = {p: TrainStep(net, optimizer, precision=p) for p in PRECISIONS}
    for step in steps.values():
        for _ in range(3):
            step(batch)
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for _ in range(repeats):
        for p, step in steps.items():
            start = time.perf_counter()
            for _ in range(inner):
                step(batch)
            times[p].append((time.perf_counter() - start) / inner * 1000)
    return {p: statistics.median(t) for p, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--inner", type=int, default=4, help="steps per timed repeat")
    parser.add_argument("--width", type=int, default=8, help="model.args.base_width (the demo's: 8)")
    parser.add_argument("--models", nargs="+", default=["rev_resnet18", "resnet18"])
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "ISA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.width, args.repeats, args.inner)))
        return
    import torch

    from memsv_cli.train.precision import native_bf16

    print(f"this CPU: native bf16 = {native_bf16(torch.device('cpu'))}; train.precision auto -> "
          f"{'bf16' if native_bf16(torch.device('cpu')) else 'fp32'}")  # fmt: skip
    print(f"{'kernels':<8} {'model':<14} {'fp32 ms':>8} {'bf16 ms':>8} {'bf16/fp32':>9}")
    for isa, env in ISAS.items():
        for model in args.models:
            cmd = [sys.executable, __file__, "--child", model, isa, "--repeats", str(args.repeats)]
            cmd += ["--inner", str(args.inner), "--width", str(args.width)]
            out = subprocess.run(cmd, env={**os.environ, **env}, check=True, capture_output=True, text=True)
            ms = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{isa:<8} {model:<14} {ms['fp32']:8.1f} {ms['bf16']:8.1f} {ms['bf16'] / ms['fp32']:9.2f}x")


if __name__ == "__main__":
    main()
