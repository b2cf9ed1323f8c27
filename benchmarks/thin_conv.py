"""Thin convolutions on CPU: NCHW against channels_last, and the demo's whole training step (issue 13).

Table 1: one 3x3 convolution, forward + backward, batch 16, in NCHW (``nn.Conv2d``) and through memsv's
``Conv2d`` (channels_last inside for layers of at most ``THIN_CHANNELS`` channels, NCHW above).
Table 2: one training step (forward, backward, Adam8bit update) of a model at the demo's setup (batch
16 x 100 frames x 80 fbank, 120 classes) with memsv's path and with every convolution forced to NCHW.
Times are medians of interleaved repeats (ms); the ratio column is what to read on a shared machine.

    .venv/bin/python benchmarks/thin_conv.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import memsv_cli.models.units as units
from memsv_cli.models import get_model
from memsv_cli.optim import OPTIMIZERS
from memsv_cli.train.heads import AAMSoftmax
from memsv_cli.train.step import TrainingNet, TrainStep

LAYERS = [
    (1, 4, 80, 100),
    (4, 4, 80, 100),
    (8, 8, 40, 50),
    (8, 8, 80, 200),
    (16, 16, 80, 200),
    (32, 32, 40, 50),
]


def _median_ms(fn: Callable[[], None], repeats: int, inner: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - start) / inner * 1000)
    return statistics.median(times)


def _conv_case(in_ch: int, out_ch: int, height: int, width: int, thin: bool) -> Callable[[], None]:
    conv = (units.Conv2d if thin else nn.Conv2d)(in_ch, out_ch, 3, padding=1, bias=False)
    x = torch.randn(16, in_ch, height, width, requires_grad=True)

    def run() -> None:
        conv(x).sum().backward()

    return run


def _step_case(model_name: str, thin: bool) -> Callable[[], None]:
    torch.manual_seed(0)
    limit = units.THIN_CHANNELS
    units.THIN_CHANNELS = limit if thin else 0  # 0: every convolution takes the NCHW path
    net = TrainingNet(get_model(model_name, feat_dim=80, embed_dim=128, base_width=4), AAMSoftmax(128, 120))
    step = TrainStep(net, OPTIMIZERS["adam8bit"](net.parameters(), lr=1e-3))
    feats, labels = torch.randn(16, 100, 80), torch.randint(0, 120, (16,))

    def run() -> None:
        units.THIN_CHANNELS = limit if thin else 0
        step([(feats, labels)])
        units.THIN_CHANNELS = limit

    units.THIN_CHANNELS = limit
    return run


def _compare(
    label: str, nchw: Callable[[], None], ours: Callable[[], None], repeats: int, inner: int
) -> None:
    nchw(), ours()  # warm-up: oneDNN primitives, optimizer states
    pairs = [(_median_ms(nchw, 1, inner), _median_ms(ours, 1, inner)) for _ in range(repeats)]
    a, b = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
    print(f"| {label} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, THIN_CHANNELS {units.THIN_CHANNELS}\n"
    )
    print("| 3x3 conv, batch 16, fwd + bwd | NCHW (ms) | memsv Conv2d (ms) | speed-up |\n|---|---|---|---|")
    for c_in, c_out, h, w in LAYERS:
        label = f"{c_in} -> {c_out} ch, {h} x {w}"
        _compare(
            label, _conv_case(c_in, c_out, h, w, False), _conv_case(c_in, c_out, h, w, True), args.repeats, 5
        )
    header = "| training step, width 4, batch 16 x 100 x 80 | NCHW (ms) | memsv (ms) | speed-up |"
    print(f"\n{header}\n|---|---|---|---|")
    for name in ("resnet18", "rev_resnet18", "fullrev_resnet18"):
        _compare(name, _step_case(name, False), _step_case(name, True), args.repeats, 3)


if __name__ == "__main__":
    main()
