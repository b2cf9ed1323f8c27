"""Per-block activation checkpointing of a vanilla network: the baseline users reach for instead.

``torch.utils.checkpoint`` (non-reentrant) around each unit keeps only the unit's input during the
forward pass and re-runs the unit in backward to get what its backward needs. The function, the
parameters and their names are the vanilla model's (the units stay children ``body.0``, ``body.1``, ...),
so a vanilla checkpoint loads unchanged. As for the reversible models, BatchNorm running statistics
change once per step: the recomputation normalises with batch statistics but leaves the running ones
and ``num_batches_tracked`` as they were (:func:`running_stats_kept`). Used by
``profile-memory --compare checkpoint`` and the memory table, so every reversible figure stands beside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import partial

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint


@contextlib.contextmanager
def running_stats_kept(module: nn.Module) -> Iterator[None]:
    """Within the block, training-mode BatchNorm layers still normalise with batch statistics and save
    the same tensors for backward, but their running statistics stay as they are: the momentum is 0
    (``(1 - 0) * running + 0 * batch``) and ``num_batches_tracked`` is put back on exit.

    Unlike ``reversible.frozen_batchnorm_stats`` the layers keep ``track_running_stats``, because
    ``torch.utils.checkpoint`` checks that the recomputation saves as many tensors as the forward did.
    """
    layers = [
        m for m in module.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats
    ]
    kept = [(m, m.momentum, m.num_batches_tracked.clone()) for m in layers]
    for m in layers:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, tracked in kept:
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)


def _contexts(unit: nn.Module) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    """(forward context, recomputation context) for ``checkpoint(context_fn=...)``."""
    return contextlib.nullcontext(), running_stats_kept(unit)


class CheckpointedSequential(nn.Sequential):
    """``nn.Sequential`` whose children each run under ``torch.utils.checkpoint`` when autograd records
    (training with gradients); otherwise (eval, ``no_grad``) exactly ``nn.Sequential``.

    Input and output: whatever the children take, e.g. ``(B, C, F, T)`` feature maps.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return super().forward(x)
        for unit in self:
            x = checkpoint(unit, x, use_reentrant=False, context_fn=partial(_contexts, unit))
        return x
