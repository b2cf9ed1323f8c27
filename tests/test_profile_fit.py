"""Memory sizes and the largest-batch search behind ``profile-memory --gpu-memory``."""

from __future__ import annotations

import pytest

from memsv_cli.errors import MemsvError
from memsv_cli.profile.fit import format_bytes, max_batch_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("11GiB", 11 * 2**30),
        ("11G", 11 * 2**30),
        ("10.7GB", 10_700_000_000),
        ("24576MiB", 24576 * 2**20),
        ("4096", 4096),
        (" 1.5 gib ", 3 * 2**29),
    ],
)
def test_parse_size_reads_binary_and_decimal_units(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "11XB", "-1GiB", "0"])
def test_parse_size_rejects_what_it_cannot_read(text: str) -> None:
    with pytest.raises(MemsvError):
        parse_size(text)


def test_format_bytes_picks_a_binary_unit() -> None:
    assert [format_bytes(n) for n in (12, 1536, 3 * 2**29)] == ["12 B", "1.50 KiB", "1.50 GiB"]


def _brute_force(peak, budget: int, upper: int) -> int:  # noqa: ANN001
    return max((b for b in range(1, upper + 1) if peak(b) <= budget), default=0)


@pytest.mark.parametrize("budget", [999, 1000, 1234, 5000, 77_777, 10**6])
def test_max_batch_size_finds_the_exact_answer_for_affine_peaks(budget: int) -> None:
    calls: list[int] = []

    def peak(b: int) -> int:
        calls.append(b)
        return 1000 + 37 * b

    assert max_batch_size(peak, budget, upper=4096) == _brute_force(lambda b: 1000 + 37 * b, budget, 4096)
    assert len(set(calls)) <= 4  # the linear prediction is confirmed, not searched for


@pytest.mark.parametrize("budget", [500, 2000, 3001, 9000, 20000])
def test_max_batch_size_is_exact_when_peaks_are_not_affine(budget: int) -> None:
    def peak(b: int) -> int:  # a step in the middle (another layer becomes the peak) and curvature
        return 300 + 10 * b + (b * b) // 8 + (2000 if b > 100 else 0)

    assert max_batch_size(peak, budget, upper=1000) == _brute_force(peak, budget, 1000)


def test_max_batch_size_uses_known_peaks_and_caps_at_upper() -> None:
    calls: list[int] = []

    def peak(b: int) -> int:
        calls.append(b)
        return 10 * b

    assert max_batch_size(peak, 10**9, known={64: 640}, upper=256) == 256
    assert 64 not in calls
    assert max_batch_size(lambda b: 100 + b, 50) == 0
