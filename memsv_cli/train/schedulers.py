"""Per-step schedules of the learning rate and of the AAM-softmax margin (WeSpeaker's definitions).

Both are pure functions of the global step (``epoch * steps_per_epoch + batch``), so resuming needs only
the step, and a value at any step can be checked in isolation.

Learning rate (``ExponentialDecrease``)::

    lr(t) = scale * initial_lr * warm(t) * (final_lr / initial_lr) ** (t / T)
    warm(t) = min(1, t / W) if warm_from_zero else 1

with ``T = epochs * steps_per_epoch`` and ``W = warm_up_epochs * steps_per_epoch``. ``scale`` is
WeSpeaker's linear scaling rule ``world_size * batch_size / 64`` (``scheduler.scale_by_batch``): the
recipe's LRs are tuned for 64 samples per optimiser step, so 8 GPUs x 128 run at 16x them.

Margin (``MarginScheduler``): ``initial_margin`` before ``increase_start_epoch``, ``final_margin`` from
``fix_start_epoch``, and in between either linear or WeSpeaker's "exp" ramp
``ratio = 1 - exp(r * ln(1e-3))`` (= ``1 - 1e-3 ** r``, fast at first then flattening), ``r`` the
fraction of the ramp done.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def lr_scale(world_size: int, batch_size: int) -> float:
    """WeSpeaker's LR scaling: ``world_size * batch_size / 64``."""
    return world_size * batch_size / 64.0


class ExponentialDecrease:
    """Exponential LR decay from ``initial_lr`` to ``final_lr`` over all steps, linear warm-up from 0.

    Args:
        optimizer: its param groups' ``lr`` are set by :meth:`step`.
        epochs, steps_per_epoch: define ``T`` (total steps).
        initial_lr, final_lr: before scaling.
        warm_up_epochs: warm-up length in epochs (may be fractional).
        warm_from_zero: linear ramp from 0 over the warm-up (otherwise no warm-up).
        scale: multiplies every LR (see :func:`lr_scale`).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer | None,
        *,
        epochs: int,
        steps_per_epoch: int,
        initial_lr: float,
        final_lr: float,
        warm_up_epochs: float = 6,
        warm_from_zero: bool = True,
        scale: float = 1.0,
    ) -> None:
        self.optimizer = optimizer
        self.total_steps = max(1, epochs * steps_per_epoch)
        self.warm_up_steps = warm_up_epochs * steps_per_epoch
        self.initial_lr, self.final_lr = float(initial_lr), float(final_lr)
        self.warm_from_zero = warm_from_zero
        self.scale = float(scale)
        self.current_step = 0

    def lr_at(self, step: int) -> float:
        """The LR applied at global step ``step`` (0-based)."""
        warm = 1.0
        if self.warm_from_zero and self.warm_up_steps > 0:
            warm = min(1.0, step / self.warm_up_steps)
        decay = math.exp(step / self.total_steps * math.log(self.final_lr / self.initial_lr))
        return self.scale * self.initial_lr * warm * decay

    def step(self, step: int) -> float:
        """Set the optimizer's LR for global step ``step``; returns it."""
        self.current_step = step
        lr = self.lr_at(step)
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {"current_step": self.current_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step(int(state["current_step"]))


class MarginScheduler:
    """AAM margin per step: ``initial`` -> ``final`` between two epochs, exp or linear ramp.

    Args:
        head: an object with ``set_margin(float)`` (the AAM-softmax head), or None.
        steps_per_epoch: converts the epoch bounds to steps.
        increase_start_epoch, fix_start_epoch: ramp from the first to the second (epochs, 0-based).
        increase_type: ``"exp"`` or ``"linear"``.
    """

    def __init__(
        self,
        head: Any,
        *,
        steps_per_epoch: int,
        initial_margin: float = 0.0,
        final_margin: float = 0.2,
        increase_start_epoch: float = 20,
        fix_start_epoch: float = 40,
        increase_type: str = "exp",
    ) -> None:
        if increase_type not in ("exp", "linear"):
            raise ValueError(f"increase_type must be 'exp' or 'linear', got {increase_type!r}")
        self.head = head
        self.initial, self.final = float(initial_margin), float(final_margin)
        self.start = increase_start_epoch * steps_per_epoch
        self.fix = fix_start_epoch * steps_per_epoch
        self.increase_type = increase_type
        self.current_step = 0

    def margin_at(self, step: int) -> float:
        """The margin applied at global step ``step`` (0-based)."""
        if step >= self.fix:
            return self.final
        if step < self.start:
            return self.initial
        r = (step - self.start) / (self.fix - self.start)
        ratio = 1.0 - math.exp(r * math.log(1e-3)) if self.increase_type == "exp" else r
        return self.initial + (self.final - self.initial) * ratio

    def step(self, step: int) -> float:
        """Set the head's margin for global step ``step``; returns it."""
        self.current_step = step
        margin = self.margin_at(step)
        if self.head is not None:
            self.head.set_margin(margin)
        return margin

    def state_dict(self) -> dict[str, Any]:
        return {"current_step": self.current_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step(int(state["current_step"]))
