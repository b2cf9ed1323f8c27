"""Dynamic tree 8-bit data type and block-wise (de)quantisation: the readable reference.

The 256-value map (Dettmers et al. 2022; PAPER.md "Decisions for the 8-bit optimizers") spans seven
decades, 1e-7..1e0. Decade ``i`` (0..6) holds the midpoints of ``linspace(0.1, 1, k + 1)`` scaled by
``10**(i - 6)``, with ``k = 2**i`` points for the signed map (each also negated) and ``k = 2**(i + 1)``
for the unsigned map; 0 and 1.0 complete it. Coarse decades near zero give the map a huge dynamic range,
fine decades near 1 keep large values accurate.

A tensor is cut into blocks of ``block_size`` consecutive elements (row-major order); each block is
divided by its absolute maximum ("absmax", kept in fp32) and every element is stored as the index of the
*nearest* map value (midpoint rounding: a value exactly on a midpoint goes to the lower neighbour), with
one exception: with the unsigned map (Adam's second moment) a positive value never becomes 0 (see
:func:`decision_thresholds`). A block of zeros has absmax 0 and stays exactly zero. The last block may be
shorter than ``block_size``.

This module is the specification: it is written for clarity, not speed. ``memsv_cli.optim.fused``
holds the fast path the optimizers use; tests check that both give identical codes.
"""

from __future__ import annotations

import math

import torch

# Bump when the map (the decoding) changes: 8-bit states saved under another version decode wrongly. A
# change of the rounding rule alone (as the unsigned map's zero exclusion) leaves saved states valid.
MAP_VERSION = 1

_DECADES = 7


def create_dynamic_map(signed: bool = True) -> torch.Tensor:
    """The dynamic tree map: 256 sorted, distinct fp32 values in [-1, 1] (signed) or [0, 1] (unsigned).

    Signed: 127 negative values (min -0.99296875), 0 at index 127, 128 positive values (max 1.0).
    Unsigned: 0 at index 0, 254 values in (1e-7, 1), 1.0 at index 255.
    """
    values: list[float] = []
    for i in range(_DECADES):
        points = 2**i if signed else 2 ** (i + 1)
        # Computed in fp32 like bitsandbytes so that maps (and codes) agree bit for bit with it.
        bounds = torch.linspace(0.1, 1.0, points + 1, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        decade = (10.0 ** (i - (_DECADES - 1))) * means
        values += decade.tolist()
        if signed:
            values += (-decade).tolist()
    values += [0.0, 1.0]
    assert len(values) == 256, len(values)
    return torch.tensor(sorted(values), dtype=torch.float32)


def map_midpoints(code: torch.Tensor) -> torch.Tensor:
    """The 255 decision thresholds between neighbouring map values, ``(code[k] + code[k+1]) / 2``, fp32."""
    return (code[1:] + code[:-1]) / 2.0


def decision_thresholds(code: torch.Tensor) -> torch.Tensor:
    """The 255 thresholds that pick a code: a normalised value gets the number of thresholds strictly
    below it. They are the midpoints (:func:`map_midpoints`), except for a map without negative values
    (the unsigned map, used for Adam's second moment ``v``), whose first threshold is 0 itself: a positive
    value then encodes to at least the smallest positive map value (3.25e-7 of the block's absmax) and
    only an exact 0 stays 0.

    Why: ``v`` spans the square of the gradients' range, so in a block with one large gradient the small
    ones fall below 1.6e-7 of the absmax and nearest rounding would store ``v = 0`` while the first moment
    (linear in the gradient) is still non-zero. The next update is then ``m / (sqrt(v) + eps)`` with
    ``sqrt(v)`` of the order of ``eps``: a step thousands of times the learning rate (the "zero-point
    problem", Li et al. 2023, "Memory Efficient Optimizers with 4-bit States"). We measured it: a small
    conv net whose 640-weight output layer had 8-bit Adam states diverged to NaN within 220 steps with
    nearest rounding, and trains like 32-bit Adam with this rule (tests/test_optim8bit.py). Rounding
    ``v`` up only ever shortens a step.
    """
    thresholds = map_midpoints(code)
    if float(code[0]) == 0.0:  # no negative values: the unsigned map
        thresholds = thresholds.clone()
        thresholds[0] = 0.0
    return thresholds


def num_blocks(numel: int, block_size: int) -> int:
    """Number of blocks (the last one possibly short) that ``numel`` elements occupy."""
    return math.ceil(numel / block_size)


def _check_block_size(block_size: int) -> None:
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")


def quantize_blockwise(
    x: torch.Tensor, code: torch.Tensor, block_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise ``x`` block-wise to 8-bit indices into ``code``.

    Args:
        x: any shape, floating point; read in row-major order.
        code: the 256-value map (``create_dynamic_map``), on ``x``'s device.
        block_size: elements per block.

    Returns:
        ``(codes, absmax)``: ``codes`` uint8 with ``x``'s shape; ``absmax`` fp32 of shape
        ``(ceil(x.numel() / block_size),)``, the per-block absolute maximum.
    """
    _check_block_size(block_size)
    flat = x.detach().reshape(-1).float()
    n = flat.numel()
    nb = num_blocks(n, block_size)
    padded = torch.zeros(nb * block_size, dtype=torch.float32, device=x.device)
    padded[:n] = flat
    blocks = padded.view(nb, block_size)
    absmax = blocks.abs().amax(dim=1)
    # An all-zero block divides by 1 instead of 0: its values are 0, whose nearest map value is 0.
    scale = torch.where(absmax == 0, torch.ones_like(absmax), absmax)
    normed = (blocks / scale.unsqueeze(1)).reshape(-1)[:n]
    # Nearest map value (but see decision_thresholds): the number of thresholds strictly below the value.
    codes = torch.searchsorted(decision_thresholds(code.to(x.device)), normed, right=False)
    return codes.to(torch.uint8).view(x.shape), absmax


def dequantize_blockwise(
    codes: torch.Tensor,
    absmax: torch.Tensor,
    code: torch.Tensor,
    shape: torch.Size | tuple[int, ...] | None = None,
    block_size: int = 256,
) -> torch.Tensor:
    """Inverse of :func:`quantize_blockwise`: ``code[codes] * absmax[block]``, fp32.

    Args:
        codes: uint8, any shape (row-major order gives the block of each element).
        absmax: fp32 ``(ceil(codes.numel() / block_size),)``.
        code: the map the codes index.
        shape: output shape; defaults to ``codes.shape``.
        block_size: elements per block, as used for quantisation.
    """
    _check_block_size(block_size)
    n = codes.numel()
    nb = num_blocks(n, block_size)
    if absmax.numel() != nb:
        raise ValueError(f"absmax has {absmax.numel()} blocks, {n} elements need {nb} of {block_size}")
    values = torch.zeros(nb * block_size, dtype=torch.float32, device=codes.device)
    values[:n] = code.to(codes.device)[codes.reshape(-1).long()]
    out = values.view(nb, block_size) * absmax.float().unsqueeze(1)
    return out.reshape(-1)[:n].view(shape if shape is not None else codes.shape)
