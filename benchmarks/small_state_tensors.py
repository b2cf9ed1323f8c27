"""Would packing the small optimizer-state tensors into one buffer lower the state bytes? (issue 14 item 4)

CUDA's caching allocator rounds every allocation up to 512 bytes, so an 8-bit state of a 256-element
tensor (256 B of codes + a 4-byte absmax, two allocations) costs 1 KiB, as much as its fp32 state.
For each model (the paper's width 32, with the 5,994 x 256 AAM head) and optimizer, after one step:
the state tensors' exact bytes, the bytes after 512-byte rounding (what the allocator holds), and the
rounded bytes if every state tensor under 4 KiB shared one buffer (one rounding). Usage::

    .venv/bin/python benchmarks/small_state_tensors.py [--models dfresnet233 resnet293 ...]
"""

from __future__ import annotations

import argparse
import sys

import torch

from memsv_cli.models import get_model
from memsv_cli.optim import build_optimizer
from memsv_cli.train.heads import AAMSoftmax

BLOCK = 512  # the caching allocator's rounding (bytes)
SMALL = 4096  # state tensors below this many bytes would share one buffer
MIB = 2**20


def rounded(nbytes: int) -> int:
    """Bytes the caching allocator holds for an allocation of ``nbytes``."""
    return -(-nbytes // BLOCK) * BLOCK


def state_sizes(model: str, optimizer: str) -> list[int]:
    """Bytes of every optimizer-state tensor of ``model`` + head after one step of ``optimizer``."""
    params = [*get_model(model).parameters(), *AAMSoftmax(256, 5994).parameters()]
    for p in params:
        p.grad = torch.zeros_like(p)
    kwargs = {"momentum": 0.9} if optimizer.startswith("sgd") else {}
    opt = build_optimizer(optimizer, params, lr=0.1, **kwargs)
    opt.step()
    states = (t for state in opt.state.values() for t in state.values() if isinstance(t, torch.Tensor))
    return [t.numel() * t.element_size() for t in states if t.numel()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet34", "resnet293", "dfresnet233"])
    parser.add_argument("--optimizers", nargs="+", default=["sgd", "sgd8bit", "adam8bit"])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(
        f"{'model':<12} {'optimizer':<9} {'tensors':>7} {'small':>6} {'exact MiB':>10} {'held MiB':>9}"
        f" {'packed MiB':>10} {'saving':>7}"
    )
    for model in args.models:
        for optimizer in args.optimizers:
            sizes = state_sizes(model, optimizer)
            small = [n for n in sizes if n < SMALL]
            held = sum(rounded(n) for n in sizes)
            packed = held - sum(rounded(n) for n in small) + rounded(sum(small))
            print(
                f"{model:<12} {optimizer:<9} {len(sizes):>7} {len(small):>6} {sum(sizes) / MIB:>10.3f}"
                f" {held / MIB:>9.3f} {packed / MIB:>10.3f} {(held - packed) / held:>7.2%}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
