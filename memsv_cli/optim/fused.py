"""Fast path for the 8-bit optimizers: table-driven quantiser and chunked, in-place update kernels.

Why a table instead of ``searchsorted``: a binary search over 255 midpoints costs ~50 ns per element on
CPU. Instead, the top 16 bits of an fp32 value (sign, exponent, 7 mantissa bits) select one of 65,536
buckets; the dynamic map is coarse enough that no bucket straddles more than one midpoint (checked when
the tables are built), so the nearest code is ``lut[bucket]`` plus one comparison against that
candidate's upper midpoint. Result: identical codes to ``quant.quantize_blockwise``, about 20x faster.

Every kernel works on one *chunk* (a run of whole blocks of one parameter) using preallocated work
buffers, so the memory a ``step()`` allocates is bounded by ``Workspace.nbytes`` whatever the model size.
All ops are plain tensor ops, so the same code runs on CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memsv_cli.optim.quant import create_dynamic_map, decision_thresholds

# Elements per chunk: 2**18 keeps the work buffers at 6 MB (see Workspace), small enough to stay in
# cache between the ops of one chunk, large enough that per-op overhead is negligible (measured best
# of 2**16..2**20 on CPU).
CHUNK_ELEMENTS = 1 << 18

_BUCKETS = 1 << 16


@dataclass(frozen=True)
class QuantTables:
    """Everything the fast quantiser needs for one map on one device.

    code: fp32 (256,), the map.
    lut: int32 (65536,), lowest code a value in each top-16-bit bucket can round to.
    threshold: fp32 (65536,), the midpoint above ``lut[bucket]`` (+inf after code 255): a value in the
    bucket rounds to ``lut[bucket] + 1`` exactly when it is greater.
    """

    code: torch.Tensor
    lut: torch.Tensor
    threshold: torch.Tensor

    @staticmethod
    def build(signed: bool, device: torch.device | str = "cpu") -> QuantTables:
        """Build and verify the tables for the signed or unsigned dynamic map."""
        code = create_dynamic_map(signed)
        mids = decision_thresholds(code)
        upper_mid = torch.cat([mids, torch.tensor([float("inf")])])
        # Bucket h holds the fp32 values whose bit pattern's top 16 bits are h - 32768 (two's complement).
        hi = (torch.arange(_BUCKETS, dtype=torch.int64) - 32768) << 16
        first = hi.to(torch.int32).view(torch.float32)
        last = (hi + 0xFFFF).to(torch.int32).view(torch.float32)
        c_first = torch.searchsorted(mids, first)
        c_last = torch.searchsorted(mids, last)
        finite = torch.isfinite(first) & torch.isfinite(last)
        spread = (c_first - c_last).abs()
        if bool((spread[finite] > 1).any()):  # pragma: no cover - a property of the map, tested
            raise RuntimeError("dynamic map too fine for the 16-bit bucket table")
        lut = torch.minimum(c_first, c_last)
        threshold = upper_mid[lut]
        return QuantTables(code.to(device), lut.to(torch.int32).to(device), threshold.to(device))


class Workspace:
    """Reusable fp32/int32 buffers for one chunk: the only large memory a ``step()`` allocates.

    Size: 4 fp32 + 2 int32 buffers of ``capacity`` elements, ``24 * capacity`` bytes, i.e. 6 MB for the
    default 2**18-element chunk; other temporaries are per block (``capacity / block_size`` floats).
    """

    def __init__(self, capacity: int, device: torch.device) -> None:
        f32 = {"dtype": torch.float32, "device": device}
        self.capacity = capacity
        self.s1 = torch.empty(capacity, **f32)
        self.s2 = torch.empty(capacity, **f32)
        self.grad = torch.empty(capacity, **f32)
        self.tmp = torch.empty(capacity, **f32)
        self.idx1 = torch.empty(capacity, dtype=torch.int32, device=device)
        self.idx2 = torch.empty(capacity, dtype=torch.int32, device=device)

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffers."""
        return self.capacity * (4 * 4 + 2 * 4)


def dequantize_into(
    codes: torch.Tensor, absmax: torch.Tensor, tables: QuantTables, out: torch.Tensor, idx: torch.Tensor
) -> None:
    """``out[:n] = code[codes] * absmax[block]``; ``out[n:]`` (padding to whole blocks) is zeroed.

    codes: uint8 (n,); absmax: fp32 (nb,); out: fp32 (nb * block_size,); idx: int32 scratch (>= n,).
    """
    n = codes.numel()
    nb = absmax.numel()
    ix = idx[:n]
    ix.copy_(codes)
    torch.index_select(tables.code, 0, ix, out=out[:n])
    out[n:].zero_()
    out.view(nb, -1).mul_(absmax.unsqueeze(1))


def quantize_from(
    x: torch.Tensor,
    absmax_out: torch.Tensor,
    codes_out: torch.Tensor,
    tables: QuantTables,
    tmp: torch.Tensor,
    idx1: torch.Tensor,
    idx2: torch.Tensor,
    nonnegative: bool = False,
) -> None:
    """Quantise ``x`` block-wise into ``codes_out``/``absmax_out``; ``x`` is destroyed (normalised).

    x: fp32 (nb * block_size,), padding after the ``n = codes_out.numel()`` real values must be zero;
    absmax_out: fp32 (nb,); codes_out: uint8 (n,); tmp fp32 / idx1, idx2 int32 scratch of x's size.
    ``nonnegative`` skips the abs() for states known to be >= 0 (Adam's second moment).
    """
    n = codes_out.numel()
    nb = absmax_out.numel()
    blocks = x.view(nb, -1)
    if nonnegative:
        torch.amax(blocks, dim=1, out=absmax_out)
    else:
        torch.amax(torch.abs(x, out=tmp).view(nb, -1), dim=1, out=absmax_out)
    # 0/0 would be NaN: an all-zero block is divided by 1 and its zeros land on the map's 0.
    scale = torch.where(absmax_out == 0, torch.ones_like(absmax_out), absmax_out)
    blocks.div_(scale.unsqueeze(1))
    xs = x[:n]
    bucket = idx1[:n]
    torch.bitwise_right_shift(xs.view(torch.int32), 16, out=bucket)
    bucket.add_(32768)
    cand = idx2[:n]
    torch.index_select(tables.lut, 0, bucket, out=cand)
    diff = tmp[:n]
    torch.index_select(tables.threshold, 0, bucket, out=diff)
    # threshold - x < 0 (sign bit set) exactly when x > threshold: an arithmetic shift of the sign bit
    # gives -1, so subtracting it rounds up. Cheaper on CPU than a bool comparison plus an add.
    diff.sub_(xs)
    sign = bucket  # bucket indices are no longer needed
    torch.bitwise_right_shift(diff.view(torch.int32), 31, out=sign)
    cand.sub_(sign)
    codes_out.copy_(cand)


def adam_chunk(
    param: torch.Tensor,
    grad: torch.Tensor,
    c1: torch.Tensor,
    a1: torch.Tensor,
    c2: torch.Tensor,
    a2: torch.Tensor,
    ws: Workspace,
    signed: QuantTables,
    unsigned: QuantTables,
    *,
    block_size: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    maximize: bool,
    step: int,
    use_fused: bool = True,
) -> None:
    """One Adam/AdamW step on a chunk with torch.optim.Adam's maths; the moments are re-quantised.

    param, grad: (n,) views of the parameter and its gradient; c1, c2: uint8 (n,) codes of the first
    and second moment; a1, a2: fp32 (nb,) their absmax, updated in place. The update uses the exact fp32
    moments; only what is stored for the next step is quantised. ``use_fused`` runs the maths in
    torch's fused CPU/CUDA Adam kernel (one pass instead of ~8) when the dtypes allow it.
    """
    n = param.numel()
    padded = a1.numel() * block_size
    m, v, t = ws.s1[:padded], ws.s2[:padded], ws.tmp[:padded]
    dequantize_into(c1, a1, signed, m, ws.idx1)
    dequantize_into(c2, a2, unsigned, v, ws.idx1)
    if use_fused and fusable(param, grad):
        kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
        steps = torch.full((), float(step), dtype=torch.float32, device=param.device)
        kernel(
            [param], [grad], [m[:n]], [v[:n]], [], [steps], lr=lr, beta1=beta1, beta2=beta2,
            weight_decay=weight_decay, eps=eps, amsgrad=False, maximize=maximize,
        )  # fmt: skip
    else:
        adam_math(param, grad, m[:n], v[:n], ws.grad[:n], t[:n], lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                  weight_decay=weight_decay, decoupled=decoupled, maximize=maximize, step=step)  # fmt: skip
    quantize_from(m, a1, c1, signed, t, ws.idx1, ws.idx2)
    quantize_from(v, a2, c2, unsigned, t, ws.idx1, ws.idx2, nonnegative=True)


def adam_math(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    g: torch.Tensor,
    denom: torch.Tensor,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    maximize: bool,
    step: int,
) -> None:
    """torch.optim.Adam's single-tensor update in plain ops; ``g``/``denom`` are fp32 scratch (n,)."""
    # copy_ then neg_: torch.neg(out=) refuses an fp32 out for a bf16/fp16 gradient; negation is exact.
    g.copy_(grad)
    if maximize:
        g.neg_()
    if weight_decay != 0:
        if decoupled:
            param.mul_(1 - lr * weight_decay)
        else:
            g.add_(param, alpha=weight_decay)
    exp_avg.lerp_(g, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    torch.sqrt(exp_avg_sq, out=denom)
    denom.div_(bias_correction2_sqrt).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)


def sgd_chunk(
    param: torch.Tensor,
    grad: torch.Tensor,
    c1: torch.Tensor,
    a1: torch.Tensor,
    ws: Workspace,
    signed: QuantTables,
    *,
    block_size: int,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    first_step: bool,
    use_fused: bool = True,
) -> None:
    """One SGD-with-momentum step on a chunk with torch.optim.SGD's maths; the buffer is re-quantised.

    param, grad: (n,); c1: uint8 (n,) momentum codes; a1: fp32 (nb,) absmax, updated in place.
    """
    n = param.numel()
    padded = a1.numel() * block_size
    buf = ws.s1[:padded]
    if first_step:
        buf[n:].zero_()  # the buffer is set from the gradient below; only the padding needs zeros
    else:
        dequantize_into(c1, a1, signed, buf, ws.idx1)
    if use_fused and fusable(param, grad):
        torch._fused_sgd_(
            [param], [grad], [buf[:n]], weight_decay=weight_decay, momentum=momentum, lr=lr,
            dampening=dampening, nesterov=nesterov, maximize=maximize, is_first_step=first_step,
        )  # fmt: skip
    else:
        d_p, t = ws.grad[:n], ws.tmp[:n]
        d_p.copy_(grad)  # not torch.neg(out=): it refuses an fp32 out for a bf16/fp16 gradient
        if maximize:
            d_p.neg_()
        if weight_decay != 0:
            d_p.add_(param, alpha=weight_decay)
        if first_step:
            # torch.optim.SGD starts the buffer at the first (decayed) gradient, without dampening.
            buf[:n].copy_(d_p)
        else:
            buf[:n].mul_(momentum).add_(d_p, alpha=1 - dampening)
        if nesterov:
            torch.add(d_p, buf[:n], alpha=momentum, out=t)
            param.add_(t, alpha=-lr)
        else:
            param.add_(buf[:n], alpha=-lr)
    quantize_from(buf, a1, c1, signed, ws.tmp[:padded], ws.idx1, ws.idx2)


def fusable(param: torch.Tensor, grad: torch.Tensor) -> bool:
    """torch's fused kernels need fp32 tensors of one dtype (our fp32 buffers) on a supported device."""
    return (
        hasattr(torch, "_fused_adam_")
        and param.dtype == torch.float32
        and grad.dtype == torch.float32
        and param.device.type in ("cpu", "cuda")
    )
