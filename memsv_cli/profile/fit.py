"""Which batch fits a card: memory sizes as people write them, and the largest batch under a budget."""

from __future__ import annotations

from collections.abc import Callable

from memsv_cli.sizes import format_bytes, parse_size

__all__ = ["format_bytes", "max_batch_size", "parse_size"]


def max_batch_size(
    peak_bytes: Callable[[int], int], budget: int, known: dict[int, int] | None = None, upper: int = 1 << 16
) -> int:
    """The largest batch ``b`` in ``[1, upper]`` with ``peak_bytes(b) <= budget``; 0 when even 1 does not fit.

    ``known`` holds peaks already measured (batch -> bytes). Peak memory is close to affine in the batch
    size, so a secant through two measured points predicts the answer, and the
    prediction and its successor confirm it: 4 evaluations for an affine peak. At small batches the peak
    can be dominated by batch-independent memory, so the prediction is refined a few times before a
    bisection between the largest fitting and smallest non-fitting batch settles it exactly.
    ``peak_bytes`` must be non-decreasing in ``b``.
    """
    cache = dict(known or {})

    def fits(b: int) -> bool:
        if b not in cache:
            cache[b] = peak_bytes(b)
        return cache[b] <= budget

    def bracket() -> tuple[int, int]:
        lo = max(b for b, m in cache.items() if m <= budget and b <= upper)
        hi = min((b for b, m in cache.items() if m > budget), default=upper + 1)
        return lo, min(hi, upper + 1)

    if not fits(1):
        return 0
    if upper > 1:
        fits(max((b for b in cache if 1 < b <= upper), default=2))
    for _ in range(6):
        lo, hi = bracket()
        if hi - lo <= 1:
            return lo
        # Secant through the bracket's ends (regula falsi) once both are measured, else the two largest.
        b1, b2 = (lo, hi) if hi in cache else sorted(b for b in cache if b <= lo)[-2:]
        m1, m2 = cache[b1], cache[b2]
        slope = (m2 - m1) / (b2 - b1)
        guess = b1 + (budget - m1) / slope if slope > 0 else 2 * lo
        guess = int(min(max(guess, lo + 1), hi - 1))
        if fits(guess) and guess + 1 < hi:
            fits(guess + 1)
    lo, hi = bracket()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
