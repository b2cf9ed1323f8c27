"""The dynamic tree 8-bit data type: map invariants, round-trip error, fast path == reference."""

from __future__ import annotations

import pytest
import torch

from memsv_cli.optim import create_dynamic_map, dequantize_blockwise, quantize_blockwise
from memsv_cli.optim.fused import QuantTables, Workspace, dequantize_into, quantize_from
from memsv_cli.optim.quant import map_midpoints


def _decade_counts(code: torch.Tensor) -> list[int]:
    """Number of positive map values in each decade (1e-7, 1e-6], ..., (0.1, 1) (1.0 itself excluded)."""
    pos = code[(code > 0) & (code < 1)].double()
    return [int(((pos > 10.0 ** (i - 7)) & (pos < 10.0 ** (i - 6))).sum()) for i in range(7)]


def test_signed_map_has_256_sorted_values_with_zero_at_127_and_decade_counts():
    code = create_dynamic_map(signed=True)
    assert code.shape == (256,) and code.dtype == torch.float32
    assert bool((code[1:] > code[:-1]).all())
    assert code[127].item() == 0.0
    assert code.max().item() == 1.0
    assert code.min().item() == torch.tensor(-0.99296875).item()  # nearest fp32
    assert _decade_counts(code) == [1, 2, 4, 8, 16, 32, 64]
    # Negative half mirrors the positive half without the 1.0.
    assert torch.equal(-code[:127].flip(0), code[128:255])


def test_unsigned_map_has_256_sorted_values_from_zero_to_one_and_decade_counts():
    code = create_dynamic_map(signed=False)
    assert code.shape == (256,)
    assert bool((code[1:] > code[:-1]).all())
    assert code[0].item() == 0.0 and code[255].item() == 1.0
    assert _decade_counts(code) == [2, 4, 8, 16, 32, 64, 128]


@pytest.mark.parametrize(
    ("signed", "dist", "max_abs", "max_rel"),
    [
        (True, "randn", 0.011, 0.018),
        (True, "uniform", 0.0036, 0.015),
        (False, "uniform", 0.0023, 0.012),
    ],
)
def test_round_trip_error_on_1024x1024_is_within_bitsandbytes_tolerances(signed, dist, max_abs, max_rel):
    x = torch.randn(1024, 1024) if dist == "randn" else torch.rand(1024, 1024)
    code = create_dynamic_map(signed)
    codes, absmax = quantize_blockwise(x, code, block_size=256)
    assert codes.dtype == torch.uint8 and codes.shape == x.shape
    assert absmax.dtype == torch.float32 and absmax.shape == (1024 * 1024 // 256,)
    y = dequantize_blockwise(codes, absmax, code, block_size=256)
    err = (x - y).abs()
    assert err.mean().item() < max_abs
    assert (err / (x.abs() + 1e-8)).mean().item() < max_rel


def test_quantisation_rounds_to_the_nearest_map_value():
    code = create_dynamic_map(signed=True)
    x = torch.rand(10_000) * 2 - 1
    x[0] = 1.0  # absmax 1: normalised values equal x
    codes, _ = quantize_blockwise(x, code, block_size=x.numel())
    nearest = (x.unsqueeze(1) - code.unsqueeze(0)).abs().argmin(dim=1)
    chosen_err = (x - code[codes.long()]).abs()
    best_err = (x - code[nearest]).abs()
    assert torch.equal(chosen_err, best_err)


@pytest.mark.parametrize("fast", [False, True])
def test_unsigned_map_never_encodes_a_positive_value_to_zero_and_is_nearest_otherwise(fast):
    code = create_dynamic_map(signed=False)
    x = torch.cat([torch.tensor([1.0, 0.0, 1e-45, 1e-12, 1e-7, 1.6e-7, 1.7e-7]), torch.rand(2000) ** 4])
    if fast:
        tables, ws = QuantTables.build(False), Workspace(x.numel(), x.device)
        codes = torch.empty(x.numel(), dtype=torch.uint8)
        buf = ws.s1[: x.numel()]
        buf.copy_(x)
        quantize_from(buf, torch.empty(1), codes, tables, ws.tmp, ws.idx1, ws.idx2, nonnegative=True)
    else:
        codes, _ = quantize_blockwise(x, code, block_size=x.numel())
    assert codes[1] == 0  # an exact zero stays zero
    assert bool((codes[x > 0] >= 1).all())  # 1e-45 .. 1.6e-7 would be nearest to 0
    assert codes[2:6].tolist() == [1, 1, 1, 1]
    nearest = (x.unsqueeze(1) - code.unsqueeze(0)).abs().argmin(dim=1)
    above = x >= code[1] / 2  # from the first midpoint on, rounding is nearest as for the signed map
    assert torch.equal((x - code[codes.long()]).abs()[above], (x - code[nearest]).abs()[above])


def test_all_zero_block_stays_exactly_zero_and_short_tail_block_works():
    code = create_dynamic_map(signed=True)
    x = torch.randn(1000)
    x[256:512] = 0.0  # block 1 all zero; block 3 is a 232-element tail
    codes, absmax = quantize_blockwise(x, code, block_size=256)
    assert absmax.shape == (4,)
    assert absmax[1].item() == 0.0
    assert absmax[3].item() == x[768:].abs().max().item()
    y = dequantize_blockwise(codes, absmax, code, block_size=256)
    assert torch.equal(y[256:512], torch.zeros(256))
    assert (y - x).abs().max().item() < 0.05 * x.abs().max().item()
    # The element holding a block's absmax is represented (almost) exactly.
    i = int(x[768:].abs().argmax()) + 768
    assert y[i].item() == pytest.approx(x[i].item(), rel=0.008)


def test_signed_requantisation_never_flips_the_sign_of_a_nonzero_value():
    code = create_dynamic_map(signed=True)
    # Wide dynamic range inside each block so that many values are tiny relative to absmax.
    x = torch.randn(64, 256) * torch.logspace(-9, 0, 256)
    x = x.flatten()
    y = dequantize_blockwise(*quantize_blockwise(x, code), code)
    assert bool((y * x >= 0).all())
    assert int((y == 0).sum()) > 0  # the test does reach values small enough to round to zero


def test_dequantize_rejects_absmax_of_the_wrong_length_and_bad_block_size():
    code = create_dynamic_map()
    codes, absmax = quantize_blockwise(torch.randn(600), code, block_size=256)
    with pytest.raises(ValueError, match="blocks"):
        dequantize_blockwise(codes, absmax[:2], code, block_size=256)
    with pytest.raises(ValueError, match="block_size"):
        quantize_blockwise(torch.randn(10), code, block_size=0)


def _edge_values(code: torch.Tensor) -> torch.Tensor:
    """Values at, just below and just above every midpoint and map value, plus zeros and denormals."""
    mids = map_midpoints(code)
    pts = torch.cat([mids, code])
    down = torch.nextafter(pts, torch.full_like(pts, -2.0))
    up = torch.nextafter(pts, torch.full_like(pts, 2.0))
    extra = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 1e-38, -1e-38, 1e-7, -1e-7])
    return torch.cat([pts, down, up, extra]).clamp(-1.0, 1.0)


@pytest.mark.parametrize("signed", [True, False])
def test_fast_quantiser_gives_the_reference_codes_bit_for_bit(signed):
    code = create_dynamic_map(signed)
    tables = QuantTables.build(signed)
    edge = _edge_values(code)
    if not signed:
        edge = edge.abs()
    # One block of exact edge values (absmax 1 so they are not rescaled), then random blocks and a tail.
    block = 2048
    first = torch.zeros(block)
    first[: edge.numel()] = edge
    first[-1] = 1.0
    rnd = torch.randn(5 * block + 77) * torch.logspace(-8, 0, 5 * block + 77)
    x = torch.cat([first, rnd.abs() if not signed else rnd])
    ref_codes, ref_absmax = quantize_blockwise(x, code, block_size=block)

    n, nb = x.numel(), -(-x.numel() // block)
    ws = Workspace(nb * block, x.device)
    buf = ws.s1
    buf[:n] = x
    buf[n:] = 0
    codes = torch.empty(n, dtype=torch.uint8)
    absmax = torch.empty(nb)
    quantize_from(buf, absmax, codes, tables, ws.tmp, ws.idx1, ws.idx2, nonnegative=not signed)
    assert torch.equal(absmax, ref_absmax)
    assert torch.equal(codes, ref_codes)

    out = torch.empty(nb * block)
    dequantize_into(codes, absmax, tables, out, ws.idx1)
    assert torch.equal(out[:n], dequantize_blockwise(ref_codes, ref_absmax, code, block_size=block))
    assert torch.equal(out[n:], torch.zeros(nb * block - n))


def test_map_equals_bitsandbytes_and_codes_are_never_farther_than_its_codes():
    bnbf = pytest.importorskip("bitsandbytes.functional")

    for signed in (True, False):
        code = create_dynamic_map(signed)
        assert torch.equal(bnbf.create_dynamic_map(signed), code)
        x = torch.randn(256 * 64) if signed else torch.rand(256 * 64)
        ours, absmax = quantize_blockwise(x, code, block_size=256)
        theirs, qstate = bnbf.quantize_blockwise(x, code=code, blocksize=256)
        assert torch.equal(qstate.absmax, absmax)
        normed = x.view(-1, 256) / absmax.unsqueeze(1)
        our_err = (normed.flatten() - code[ours.long()]).abs()
        their_err = (normed.flatten() - code[theirs.long()]).abs()
        assert bool((our_err <= their_err).all())
