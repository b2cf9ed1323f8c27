"""The one training step, run by ``memsv train`` and measured by ``memsv profile-memory``.

A step, top to bottom::

    zero_grad(set_to_none)                       # no gradients live through the forward pass
    for each of the A micro-batches (B, T, F):   # A = train.accum_steps; DDP syncs only on the last
        with autocast(precision): logits, cosines = net(feats, labels)
        loss = cross_entropy(logits (fp32), labels)
        scaler.scale(loss / A).backward()
    before_update(stats)                         # trainer: all-reduce, stop on a non-finite loss
    unscale, clip the global gradient norm       # only with train.grad_clip
    scaler.step(optimizer); scaler.update()      # a disabled scaler (fp32/bf16) is a plain step

``GradScaler(enabled=precision == "fp16")`` is a no-op when off, so there is no second code path. The
step reads no tensor value (no ``.item()``): the profiler runs it on fake tensors, and the trainer does
its value checks in ``before_update``, after backward (DDP's all-reduce has run on every rank, so none
is left waiting) and before the update (a non-finite loss is never applied).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from memsv_cli.train.heads import AAMSoftmax

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

#: positions in the (4,) float64 statistics a step returns, summed over its micro-batches
STAT_LOSS_SUM, STAT_CORRECT, STAT_COUNT, STAT_NONFINITE = range(4)

Batch = tuple[torch.Tensor, torch.Tensor]  # feats (B, T, F) float32, labels (B,) int64


class TrainingNet(nn.Module):
    """Embedding model + AAM-softmax head as one module (so DDP syncs both in one pass).

    ``forward(feats (B, T, F), labels (B,)) -> (margin logits (B, C), plain cosines (B, C))``.
    """

    def __init__(self, model: nn.Module, head: AAMSoftmax) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.model(feats), labels, return_cosine=True)


class TrainStep:
    """One optimizer step over A micro-batches; see the module docstring.

    Args:
        net: the model and head (this process's copy).
        optimizer: over ``net``'s parameters.
        precision: ``fp32`` | ``bf16`` | ``fp16`` (autocast; fp16 also scales the loss).
        device_type: ``cpu`` or ``cuda`` (autocast and the scaler's device).
        grad_clip: max global L2 norm of the gradients, or None.
        forward: the module to call, e.g. the DDP wrapper of ``net`` (default ``net``); when it has
            ``no_sync`` (DDP), gradients are all-reduced only in the last micro-batch's backward.
    """

    def __init__(
        self,
        net: TrainingNet,
        optimizer: torch.optim.Optimizer,
        precision: str = "fp32",
        device_type: str = "cpu",
        grad_clip: float | None = None,
        forward: nn.Module | None = None,
    ) -> None:
        self.net, self.optimizer, self.grad_clip = net, optimizer, grad_clip
        self.forward = forward if forward is not None else net
        self.device_type = device_type
        self.autocast_dtype = AUTOCAST_DTYPES.get(precision)
        self.scaler = torch.amp.GradScaler(device_type, enabled=precision == "fp16")

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = self.autocast_dtype or torch.float32
        return torch.autocast(self.device_type, dtype=dtype, enabled=self.autocast_dtype is not None)

    def _sync(self, last: bool) -> contextlib.AbstractContextManager:
        no_sync = getattr(self.forward, "no_sync", None)
        return contextlib.nullcontext() if last or no_sync is None else no_sync()

    def __call__(
        self, micro_batches: Sequence[Batch], before_update: Callable[[torch.Tensor], None] | None = None
    ) -> torch.Tensor:
        """Run the step; returns this process's statistics ``(4,)`` float64 (see ``STAT_*``).

        ``before_update(stats)`` runs after every backward and before the optimizer step; raising there
        leaves the parameters and optimizer state untouched (the gradients are then garbage).
        """
        self.optimizer.zero_grad(set_to_none=True)
        stats = torch.zeros(4, dtype=torch.float64, device=micro_batches[0][1].device)
        count = len(micro_batches)
        for i, (feats, labels) in enumerate(micro_batches):
            with self._sync(last=i == count - 1):
                with self._autocast():
                    logits, cosine = self.forward(feats, labels)
                loss = F.cross_entropy(logits.float(), labels)
                stats += _micro_stats(loss.detach(), cosine, labels)
                # autograd keeps what backward needs; a reference here would hold two (B, C) maps
                # through the whole backward pass (6 MB at the paper's setup)
                del logits, cosine
                # the mean over the step's samples, like one batch of A x B (and like DDP's average)
                self.scaler.scale(loss / count if count > 1 else loss).backward()
            del loss
        if before_update is not None:
            before_update(stats)
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return stats


def _micro_stats(loss: torch.Tensor, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[loss * n, correct, n, non-finite]`` of one micro-batch, float64 on the labels' device.

    Accuracy is the plain cosine classifier's: unlike WeSpeaker's (argmax of the margin logits) it
    does not drop while the margin ramps up."""
    n = labels.numel()
    return torch.stack(
        [
            loss.double() * n,
            (cosine.argmax(dim=1) == labels).sum().double(),
            torch.full((), float(n), dtype=torch.float64, device=labels.device),
            (~torch.isfinite(loss)).double(),
        ]
    )
