"""Adam8bit and AdamW8bit: torch.optim.Adam / AdamW semantics with block-wise 8-bit moments.

The first moment uses the signed dynamic map, the second moment the unsigned one. Each step decodes a
chunk of both moments to fp32, applies exactly torch.optim.Adam's update (coupled L2 weight decay for
Adam, decoupled for AdamW, bias correction) with the fp32 moments, and re-encodes them.

Non-finite gradients propagate as in torch.optim: a NaN/inf gradient element makes its parameter
element non-finite in the same step. Its block's absmax becomes non-finite too, so at the next step the
whole block (``block_size`` elements) of moments, and through them those parameters, turn NaN. Skip
such steps (``torch.amp.GradScaler`` does) or clip gradients.
"""

from __future__ import annotations

from typing import Any

import torch

from memsv_cli.optim.base import DEFAULT_MIN_8BIT_SIZE, Blockwise8bitOptimizer, Chunk, reject_unsupported
from memsv_cli.optim.fused import adam_chunk


class Adam8bit(Blockwise8bitOptimizer):
    """torch.optim.Adam with 8-bit moments for tensors of >= ``min_8bit_size`` elements.

    Args: as torch.optim.Adam (``lr``, ``betas``, ``eps``, ``weight_decay`` as coupled L2,
    ``maximize``, ``decoupled_weight_decay``), plus ``block_size`` (elements per absmax block),
    ``min_8bit_size`` (smaller tensors keep fp32 state) and ``optim_bits`` (8, or 32 to force fp32
    state for a param group). ``amsgrad``, ``foreach``, ``fused``, ``capturable`` and
    ``differentiable`` other than their defaults raise :class:`UnsupportedOptimizerArgument`.
    """

    STATE_NAMES = {"exp_avg": True, "exp_avg_sq": False}
    TORCH_GROUP_DEFAULTS = {
        "amsgrad": False,
        "foreach": None,
        "capturable": False,
        "differentiable": False,
        "fused": None,
    }
    TORCH_STEP_IN_STATE = True

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        block_size: int = 256,
        min_8bit_size: int = DEFAULT_MIN_8BIT_SIZE,
        optim_bits: int = 8,
    ) -> None:
        reject_unsupported(
            type(self).__name__,
            amsgrad=amsgrad,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
        )
        lr_f = float(lr)
        b1, b2 = float(betas[0]), float(betas[1])
        if lr_f < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if eps < 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= b1 < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= b2 < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = {
            "lr": lr,
            "betas": (b1, b2),
            "eps": eps,
            "weight_decay": weight_decay,
            "maximize": maximize,
            "decoupled_weight_decay": decoupled_weight_decay,
            "block_size": block_size,
            "min_8bit_size": min_8bit_size,
            "optim_bits": optim_bits,
        }
        super().__init__(params, defaults)

    def _hyperparams(self, group: dict[str, Any]) -> dict[str, Any]:
        """lr, beta1, beta2, eps, weight_decay, decoupled, maximize: :func:`fused.adam_chunk`'s names."""
        beta1, beta2 = (float(b) for b in group["betas"])
        return {
            "lr": float(group["lr"]),
            "beta1": beta1,
            "beta2": beta2,
            "eps": float(group["eps"]),
            "weight_decay": float(group["weight_decay"]),
            "decoupled": bool(group["decoupled_weight_decay"]),
            "maximize": bool(group["maximize"]),
        }

    def _update_chunk(self, chunk: Chunk, hp: dict[str, Any]) -> None:
        """One chunk through :func:`fused.adam_chunk` (index 0: ``exp_avg``, 1: ``exp_avg_sq``)."""
        c = chunk
        adam_chunk(
            c.param, c.grad, c.codes[0], c.absmax[0], c.codes[1], c.absmax[1], c.ws, c.tables[0], c.tables[1],
            block_size=c.block_size, step=c.step, **hp,
        )  # fmt: skip

    def _update_fp32_batch(
        self, params: list[torch.Tensor], states: list[dict[str, Any]], hp: dict[str, Any], first: bool
    ) -> None:
        """torch.optim.Adam(fused=True)'s kernel (AdamW's for decoupled decay); steps are per tensor."""
        kernel = torch._fused_adamw_ if hp["decoupled"] else torch._fused_adam_
        device = params[0].device
        steps = [torch.tensor(float(state["step"]), device=device) for state in states]
        kernel(
            params, [p.grad for p in params], [state["exp_avg"] for state in states],
            [state["exp_avg_sq"] for state in states], [], steps, lr=hp["lr"], beta1=hp["beta1"],
            beta2=hp["beta2"], weight_decay=hp["weight_decay"], eps=hp["eps"], amsgrad=False,
            maximize=hp["maximize"],
        )  # fmt: skip

    def _update_fp32(self, param: torch.Tensor, state: dict[str, Any], hp: dict[str, Any]) -> None:
        """torch.optim.Adam's single-tensor maths (bf16/fp16 parameters whose state is not quantised)."""
        _adam_fp32(param, param.grad, state["exp_avg"], state["exp_avg_sq"], step=state["step"], **hp)


class AdamW8bit(Adam8bit):
    """torch.optim.AdamW with 8-bit moments: Adam8bit with decoupled weight decay (default 1e-2)."""

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        block_size: int = 256,
        min_8bit_size: int = DEFAULT_MIN_8BIT_SIZE,
        optim_bits: int = 8,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
            capturable=capturable, differentiable=differentiable, fused=fused, decoupled_weight_decay=True,
            block_size=block_size, min_8bit_size=min_8bit_size, optim_bits=optim_bits,
        )  # fmt: skip


def _adam_fp32(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
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
    """torch.optim.Adam's single-tensor update for a parameter whose state is not quantised.

    param, grad, exp_avg, exp_avg_sq: same shape; the moments (in the parameter's dtype, as torch.optim
    keeps them) are updated in place; step: this parameter's step count, 1 on its first step.
    """
    if maximize:
        grad = -grad
    if weight_decay != 0:
        if decoupled:
            param.mul_(1 - lr * weight_decay)
        else:
            grad = grad.add(param, alpha=weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
