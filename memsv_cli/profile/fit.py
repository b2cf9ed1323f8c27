"""Which batch fits a card: memory sizes as people write them, and the largest batch under a budget."""

from __future__ import annotations

import re
from collections.abc import Callable

from memsv_cli.errors import MemsvError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "kib": 2**10,
    "kb": 10**3,
    "m": 2**20,
    "mib": 2**20,
    "mb": 10**6,
    "g": 2**30,
    "gib": 2**30,
    "gb": 10**9,
    "t": 2**40,
    "tib": 2**40,
    "tb": 10**12,
}


def parse_size(text: str) -> int:
    """Bytes in a size such as ``11GiB``, ``11G`` (binary, as nvidia-smi's MiB), ``10.7GB`` (decimal),
    ``24576MiB`` or a plain byte count."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS:
        raise MemsvError(f"cannot read memory size {text!r}; write e.g. 11GiB, 10.7GB, 24576MiB or bytes")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise MemsvError(f"memory size must be positive, got {text!r}")
    return size


def format_bytes(nbytes: float) -> str:
    """Human-readable binary size: ``1.50 GiB``, ``512.0 KiB``, ``12 B``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{int(nbytes)} B"


def max_batch_size(peak_bytes: Callable[[int], int], budget: int, upper: int = 1 << 16) -> int:
    """The largest batch ``b`` in ``[1, upper]`` with ``peak_bytes(b) <= budget``; 0 when even 1 does not fit.

    Peak memory is affine in the batch size, ``a + c * b``, so two evaluations predict the answer and a
    short search around the prediction confirms it (peak_bytes is assumed non-decreasing in ``b``); a
    ResNet293 needs 3-5 meta estimates.
    """
    cache: dict[int, int] = {}

    def fits(b: int) -> bool:
        if b not in cache:
            cache[b] = peak_bytes(b)
        return cache[b] <= budget

    if not fits(1):
        return 0
    if fits(upper):
        return upper
    per_item = max(peak_bytes(2) - cache[1], 1) if fits(2) else 0
    guess = min(max(1 + (budget - cache[1]) // per_item, 1), upper) if per_item else 1
    # Bracket [lo, hi): lo fits, hi does not, starting next to the linear prediction.
    lo, hi = 1, upper
    if fits(guess):
        lo = guess
        if not fits(min(guess + 1, upper)):
            return guess
        hi = min(guess + 1, upper)
        step = 2
        while fits(hi):
            lo, hi = hi, min(hi + step, upper)
            step *= 2
    else:
        hi = guess
        step = 1
        while not fits(max(hi - step, 1)):
            hi, step = max(hi - step, 1), step * 2
        lo = max(hi - step, 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
