"""Step time and state bytes of memsv's 8-bit optimizers vs torch.optim (foreach, fused) and bitsandbytes.

Usage: .venv/bin/python benchmarks/optim.py [--sizes 1,8,32] [--steps 5] [--threads 1]

Each model is a list of 1024x1024 fp32 tensors (the last one shorter) totalling SIZE million parameters,
with fixed random gradients. Step time is the median over ``--steps`` steps after two warm-up steps,
measured as process CPU time (robust on a shared machine) and as wall time. Ratios are printed against
bitsandbytes' 8-bit twin (time) and the 32-bit torch.optim twin (state bytes).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable

import torch

from memsv_cli.optim import Adam8bit, SGD8bit, optimizer_state_bytes

Factory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]


def _bnb() -> object | None:
    if importlib.util.find_spec("bitsandbytes") is None:
        return None
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        import bitsandbytes as bnb
    except Exception:  # noqa: BLE001 - any import failure means "not available" here
        return None
    return bnb


def candidates(bnb: object | None) -> dict[str, list[tuple[str, Factory]]]:
    """Per optimizer family: (label, factory) pairs; the first is the 32-bit reference for state bytes."""
    sgd = {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}
    adam = {"lr": 1e-3}
    out: dict[str, list[tuple[str, Factory]]] = {
        "adam": [
            ("torch Adam foreach", lambda ps: torch.optim.Adam(ps, foreach=True, **adam)),
            ("torch Adam fused", lambda ps: torch.optim.Adam(ps, fused=True, **adam)),
            ("memsv Adam8bit", lambda ps: Adam8bit(ps, **adam)),
        ],
        "sgd": [
            ("torch SGD foreach", lambda ps: torch.optim.SGD(ps, foreach=True, **sgd)),
            ("torch SGD fused", lambda ps: torch.optim.SGD(ps, fused=True, **sgd)),
            ("memsv SGD8bit", lambda ps: SGD8bit(ps, **sgd)),
        ],
    }
    if bnb is not None:
        out["adam"].append(("bnb Adam8bit", lambda ps: bnb.optim.Adam8bit(ps, **adam)))
        out["sgd"].append(("bnb SGD8bit", lambda ps: bnb.optim.SGD8bit(ps, **sgd)))
    return out


def make_params(millions: int, seed: int = 0) -> list[torch.Tensor]:
    """``millions`` x 2**20 parameters as 1024x1024 tensors, with gradients set."""
    gen = torch.Generator().manual_seed(seed)
    params = []
    for _ in range(millions):
        p = torch.nn.Parameter(torch.randn(1024, 1024, generator=gen) * 0.1)
        p.grad = torch.randn(1024, 1024, generator=gen) * 0.01
        params.append(p)
    return params


def measure(factory: Factory, params: list[torch.Tensor], steps: int) -> tuple[float, float, int]:
    """(median CPU ms per step, median wall ms per step, state bytes)."""
    opt = factory(params)
    for _ in range(2):
        opt.step()
    cpu, wall = [], []
    for _ in range(steps):
        c0, w0 = time.process_time(), time.perf_counter()
        opt.step()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    nbytes = optimizer_state_bytes(opt)
    del opt
    return statistics.median(cpu) * 1e3, statistics.median(wall) * 1e3, nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,8,32", help="model sizes in millions (2**20) of parameters")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bnb = _bnb()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, ", end="")
    print(f"bitsandbytes {getattr(bnb, '__version__', 'not available')}\n")
    header = "| family | params | optimizer | CPU ms/step | wall ms/step | state MiB | CPU time vs bnb 8-bit "
    header += "| CPU time vs torch fused | state vs 32-bit |"
    print(header)
    print("|---" * 9 + "|")
    for family, entries in candidates(bnb).items():
        for millions in (int(s) for s in args.sizes.split(",")):
            params = make_params(millions)
            rows = [(label, *measure(factory, params, args.steps)) for label, factory in entries]
            ref_bytes = rows[0][3]
            fused_cpu = rows[1][1]
            bnb_cpu = next((r[1] for r in rows if r[0].startswith("bnb")), None)
            for label, cpu, wall, nbytes in rows:
                vs_bnb = f"{cpu / bnb_cpu:.2f}x" if bnb_cpu else "n/a"
                print(
                    f"| {family} | {millions}M | {label} | {cpu:.1f} | {wall:.1f} | {nbytes / 2**20:.1f} "
                    f"| {vs_bnb} | {cpu / fused_cpu:.2f}x | {nbytes / ref_bytes:.3f}x |",
                    flush=True,
                )
            del params


if __name__ == "__main__":
    main()
