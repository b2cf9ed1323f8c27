"""SGD8bit: torch.optim.SGD semantics with a block-wise 8-bit momentum buffer (signed dynamic map).

Momentum 0 keeps no state at all (plain SGD, like torch.optim.SGD). Non-finite gradients propagate as in
torch.optim: the parameter element turns non-finite in the same step, and the momentum block holding it
(``block_size`` elements) decodes to NaN from the next step on.
"""

from __future__ import annotations

from typing import Any

import torch

from memsv_cli.optim.base import DEFAULT_MIN_8BIT_SIZE, Blockwise8bitOptimizer, Chunk, reject_unsupported
from memsv_cli.optim.fused import sgd_chunk


class SGD8bit(Blockwise8bitOptimizer):
    """torch.optim.SGD with an 8-bit momentum buffer for tensors of >= ``min_8bit_size`` elements.

    Args: as torch.optim.SGD (``lr``, ``momentum``, ``dampening``, ``weight_decay``, ``nesterov``,
    ``maximize``), plus ``block_size``, ``min_8bit_size`` and ``optim_bits`` (8, or 32 to force fp32
    state for a param group). ``foreach``, ``fused`` and ``differentiable`` other than their defaults
    raise :class:`UnsupportedOptimizerArgument`.
    """

    STATE_NAMES = {"momentum_buffer": True}
    TORCH_GROUP_DEFAULTS = {"foreach": None, "differentiable": False, "fused": None}

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        block_size: int = 256,
        min_8bit_size: int = DEFAULT_MIN_8BIT_SIZE,
        optim_bits: int = 8,
    ) -> None:
        reject_unsupported(type(self).__name__, foreach=foreach, differentiable=differentiable, fused=fused)
        if float(lr) < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "block_size": block_size,
            "min_8bit_size": min_8bit_size,
            "optim_bits": optim_bits,
        }
        super().__init__(params, defaults)

    def _update_group(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        """Momentum 0 keeps no state (as torch.optim.SGD); otherwise the shared 8-bit loop."""
        if float(group["momentum"]) == 0:
            _sgd_no_momentum(
                params, lr=float(group["lr"]), weight_decay=float(group["weight_decay"]),
                maximize=bool(group["maximize"]),
            )  # fmt: skip
            return
        super()._update_group(group, params)

    def _hyperparams(self, group: dict[str, Any]) -> dict[str, Any]:
        """lr, momentum, dampening, weight_decay, nesterov, maximize: the kernels' keyword names."""
        return {
            "lr": float(group["lr"]),
            "momentum": float(group["momentum"]),
            "dampening": float(group["dampening"]),
            "weight_decay": float(group["weight_decay"]),
            "nesterov": bool(group["nesterov"]),
            "maximize": bool(group["maximize"]),
        }

    def _update_chunk(self, chunk: Chunk, hp: dict[str, Any]) -> None:
        """One chunk through :func:`fused.sgd_chunk` (codes/absmax/tables: the momentum buffer's)."""
        c = chunk
        sgd_chunk(
            c.param, c.grad, c.codes[0], c.absmax[0], c.ws, c.tables[0], block_size=c.block_size,
            first_step=c.step == 1, **hp,
        )  # fmt: skip

    def _update_fp32_batch(
        self, params: list[torch.Tensor], states: list[dict[str, Any]], hp: dict[str, Any], first: bool
    ) -> None:
        """torch.optim.SGD(fused=True)'s kernel; ``first`` starts the buffers at the gradients."""
        bufs = [state["momentum_buffer"] for state in states]
        torch._fused_sgd_(params, [p.grad for p in params], bufs, is_first_step=first, **hp)

    def _update_fp32(self, param: torch.Tensor, state: dict[str, Any], hp: dict[str, Any]) -> None:
        """torch.optim.SGD's single-tensor maths (bf16/fp16 parameters whose state is not quantised)."""
        _sgd_fp32(param, param.grad, state["momentum_buffer"], first=state["step"] == 1, **hp)


def _sgd_no_momentum(params: list[torch.Tensor], *, lr: float, weight_decay: float, maximize: bool) -> None:
    """Stateless SGD, as torch.optim.SGD with momentum 0: ``p -= lr * (g + weight_decay * p)``."""
    for p in params:
        d_p = -p.grad if maximize else p.grad
        if weight_decay != 0:
            d_p = d_p.add(p, alpha=weight_decay)
        p.add_(d_p, alpha=-lr)


def _sgd_fp32(
    param: torch.Tensor,
    grad: torch.Tensor,
    buf: torch.Tensor,
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    first: bool,
) -> None:
    """torch.optim.SGD's single-tensor momentum update for a parameter whose state is not quantised.

    param, grad, buf: same shape; buf, the momentum buffer (in the parameter's dtype, as torch.optim
    keeps it), is updated in place; first: the parameter's first step (buffer := decayed gradient).
    """
    d_p = -grad if maximize else grad
    if weight_decay != 0:
        d_p = d_p.add(param, alpha=weight_decay)
    if first:
        buf.copy_(d_p)
    else:
        buf.mul_(momentum).add_(d_p, alpha=1 - dampening)
    d_p = d_p.add(buf, alpha=momentum) if nesterov else buf
    param.add_(d_p, alpha=-lr)
