"""SGD8bit: torch.optim.SGD semantics with a block-wise 8-bit momentum buffer (signed dynamic map).

Momentum 0 keeps no state at all (plain SGD, like torch.optim.SGD). Non-finite gradients propagate as in
torch.optim: the parameter element turns non-finite in the same step, and the momentum block holding it
(``block_size`` elements) decodes to NaN from the next step on.
"""

from __future__ import annotations

from typing import Any

import torch

from memsv_cli.optim.adam8bit import _flat
from memsv_cli.optim.base import DEFAULT_MIN_8BIT_SIZE, Blockwise8bitOptimizer, reject_unsupported
from memsv_cli.optim.fused import fusable, sgd_chunk


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
        lr, momentum = float(group["lr"]), float(group["momentum"])
        dampening, wd = float(group["dampening"]), float(group["weight_decay"])
        nesterov, maximize = bool(group["nesterov"]), bool(group["maximize"])
        bs = group["block_size"]
        if momentum == 0:
            # No state, as torch.optim.SGD: the update is p -= lr * (g + wd * p).
            for p in params:
                d_p = -p.grad if maximize else p.grad
                if wd != 0:
                    d_p = d_p.add(p, alpha=wd)
                p.add_(d_p, alpha=-lr)
            return
        eight = [p for p in params if self.uses_8bit(p, group)]
        workspaces = self.workspaces_for(eight, bs)
        # fp32-state tensors of one device (and first-step flag) go through one fused call.
        batched: dict[tuple[torch.device, bool], list[torch.Tensor]] = {}
        for p in params:
            state = self.init_state(p, group)
            first = state["step"] == 0
            state["step"] += 1
            if not self.uses_8bit(p, group):
                if fusable(p, p.grad):
                    batched.setdefault((p.device, first), []).append(p)
                else:
                    _sgd_fp32(p, p.grad, state["momentum_buffer"], lr, momentum, dampening, wd, nesterov,
                              maximize, first)  # fmt: skip
                continue
            ws = workspaces[p.device]
            signed = self.tables(True, p.device)
            flat_p, flat_g = _flat(p), _flat(p.grad)
            c1, a1 = state["momentum_buffer_q"].view(-1), state["momentum_buffer_absmax"]
            for s, e, b0, b1 in self.chunks(p.numel(), bs):
                sgd_chunk(
                    flat_p[s:e], flat_g[s:e], c1[s:e], a1[b0:b1], ws, signed, block_size=bs, lr=lr,
                    momentum=momentum, dampening=dampening, weight_decay=wd, nesterov=nesterov,
                    maximize=maximize, first_step=first,
                )  # fmt: skip
            if flat_p.data_ptr() != p.data_ptr():
                p.copy_(flat_p.view_as(p))
        for (_, first), ps in batched.items():
            torch._fused_sgd_(
                ps, [p.grad for p in ps], [self.state[p]["momentum_buffer"] for p in ps], weight_decay=wd,
                momentum=momentum, lr=lr, dampening=dampening, nesterov=nesterov, maximize=maximize,
                is_first_step=first,
            )  # fmt: skip


def _sgd_fp32(
    param: torch.Tensor,
    grad: torch.Tensor,
    buf: torch.Tensor,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    first: bool,
) -> None:
    """torch.optim.SGD's single-tensor momentum update for a parameter that keeps fp32 state."""
    d_p = -grad if maximize else grad
    if weight_decay != 0:
        d_p = d_p.add(param, alpha=weight_decay)
    if first:
        buf.copy_(d_p)
    else:
        buf.mul_(momentum).add_(d_p, alpha=1 - dampening)
    d_p = d_p.add(buf, alpha=momentum) if nesterov else buf
    param.add_(d_p, alpha=-lr)
