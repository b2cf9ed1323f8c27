"""8-bit optimizers (dynamic tree, block-wise quantised states) and the optimizer factory.

``quant`` is the readable reference for the 8-bit data type, ``fused`` the fast chunked kernels, ``base``
the shared state handling, ``sgd8bit``/``adam8bit`` the optimizers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from memsv_cli.errors import MemsvError
from memsv_cli.optim.adam8bit import Adam8bit, AdamW8bit
from memsv_cli.optim.base import (
    DEFAULT_MIN_8BIT_SIZE,
    OptimizerStateError,
    UnsupportedOptimizerArgument,
    optimizer_state_bytes,
)
from memsv_cli.optim.quant import (
    MAP_VERSION,
    create_dynamic_map,
    dequantize_blockwise,
    num_blocks,
    quantize_blockwise,
)
from memsv_cli.optim.sgd8bit import SGD8bit

__all__ = [
    "MAP_VERSION",
    "OPTIMIZERS",
    "OPTIMIZER_NAMES",
    "Adam8bit",
    "AdamW8bit",
    "OptimizerStateError",
    "SGD8bit",
    "UnsupportedOptimizerArgument",
    "build_optimizer",
    "create_dynamic_map",
    "dequantize_blockwise",
    "estimate_state_bytes",
    "full_precision_name",
    "optimizer_family",
    "optimizer_state_bytes",
    "quantize_blockwise",
]

# The one list of optimizer names (CLI choices, train config, profiler): name -> class. Each 8-bit
# optimizer is named after its 32-bit torch.optim twin plus "8bit".
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "sgd8bit": SGD8bit,
    "adam": torch.optim.Adam,
    "adam8bit": Adam8bit,
    "adamw": torch.optim.AdamW,
    "adamw8bit": AdamW8bit,
}
OPTIMIZER_NAMES: tuple[str, ...] = tuple(OPTIMIZERS)
"""Every name :func:`build_optimizer` accepts (lower case), in :data:`OPTIMIZERS` order."""

# 32-bit name -> family: optimizers of one family share hyper-parameters and state names (adamw is
# Adam with decoupled weight decay).
_FAMILIES = {"sgd": "sgd", "adam": "adam", "adamw": "adam"}
_EIGHT_BIT_ONLY = ("block_size", "min_8bit_size", "optim_bits")


def _known(name: str) -> str:
    """``name`` in lower case; :class:`MemsvError` listing the choices when it is not an optimizer."""
    key = name.lower()
    if key not in OPTIMIZERS:
        raise MemsvError(f"unknown optimizer '{name}'; choose one of: {', '.join(OPTIMIZER_NAMES)}")
    return key


def full_precision_name(name: str) -> str:
    """The 32-bit torch.optim optimizer that ``name`` replaces: ``adam8bit`` -> ``adam``.

    32-bit names map to themselves. Case-insensitive (the result is lower case); raises
    :class:`MemsvError` for a name not in :data:`OPTIMIZER_NAMES`.
    """
    return _known(name).removesuffix("8bit")


def optimizer_family(name: str) -> str:
    """``"sgd"`` for sgd/sgd8bit, ``"adam"`` for adam/adam8bit/adamw/adamw8bit.

    The family decides which hyper-parameters apply and what state is kept (a momentum buffer, or two
    moments). Case-insensitive; raises :class:`MemsvError` for an unknown name.
    """
    return _FAMILIES[full_precision_name(name)]


def build_optimizer(name: str, params: Any, **kwargs: Any) -> torch.optim.Optimizer:
    """Create the optimizer ``name`` (``sgd|sgd8bit|adam|adam8bit|adamw|adamw8bit``) over ``params``.

    ``kwargs`` are the optimizer's own arguments (torch.optim's, plus ``block_size``, ``min_8bit_size``
    and ``optim_bits`` for the 8-bit ones). Raises :class:`MemsvError` for an unknown name or argument.
    """
    key = _known(name)
    if key == full_precision_name(key):
        wrong = [k for k in _EIGHT_BIT_ONLY if k in kwargs]
        if wrong:
            raise UnsupportedOptimizerArgument(
                f"optimizer '{name}' is 32-bit; {', '.join(wrong)} only apply to '{key}8bit'"
            )
    try:
        return OPTIMIZERS[key](params, **kwargs)
    except TypeError as err:
        raise MemsvError(f"optimizer '{name}': {err}") from err


def estimate_state_bytes(name: str, params: Any, **kwargs: Any) -> int:
    """Bytes :func:`optimizer_state_bytes` will report once every parameter has taken a step.

    Computed from shapes and dtypes without allocating any state (``params`` may live on the meta
    device), for memory planning. ``name`` and ``kwargs`` as :func:`build_optimizer`; only plain
    parameter lists or param groups whose options are given in ``kwargs`` are honoured per group.
    """
    key = _known(name)
    eight_bit = key != full_precision_name(key)
    groups = list(params)
    if not groups or not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    total = 0
    for group in groups:
        opts = {**kwargs, **{k: v for k, v in group.items() if k != "params"}}
        if optimizer_family(key) == "sgd":
            if float(opts.get("momentum", 0.0)) == 0.0:
                continue
            n_states, step_bytes = 1, 0  # our int step and torch's SGD keep no step tensor
        else:
            n_states, step_bytes = 2, (0 if eight_bit else 4)  # torch: fp32 scalar step
        block = opts.get("block_size", 256)
        min_8bit = opts.get("min_8bit_size", DEFAULT_MIN_8BIT_SIZE)
        eight = eight_bit and opts.get("optim_bits", 8) == 8
        for p in group["params"]:
            n = p.numel()
            if eight and n >= min_8bit:
                total += n_states * (n + 4 * num_blocks(n, block))
            else:
                total += n_states * n * p.element_size() + step_bytes
    return total
