"""Count the activation memory a training forward pass caches for backward.

Used by the model tests and benchmarks, and by the memory profiler (``memsv profile-memory``).
"""

from __future__ import annotations

import torch
from torch import nn


def saved_activation_bytes(model: nn.Module, feats: torch.Tensor) -> int:
    """Bytes of tensors saved for backward by one forward pass of ``model`` on ``feats``.

    Every tensor packed through ``torch.autograd.graph.saved_tensors_hooks`` during the forward
    (including tensors saved by custom autograd Functions such as the reversible chain) is counted once
    per underlying storage, at the storage's full size; storages of the model's parameters and buffers
    are excluded (they are weights, not activations). ``feats`` counts if the first layer saves it.
    The model runs in its current mode (call ``model.train()`` for training memory) with gradients
    enabled, so BatchNorm running statistics advance by one step as in a real training step.

    Args:
        model: any module taking ``feats``.
        feats: its input, e.g. ``(batch, frames, feat_dim)``.
    Returns:
        bytes (int).
    """
    weights = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    seen: set[tuple[torch.device, int]] = set()
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = t.untyped_storage()
        key = (t.device, storage.data_ptr())
        if storage.data_ptr() not in weights and key not in seen:
            seen.add(key)
            total += storage.nbytes()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(feats)
    del out  # frees the graph and everything it saved
    return total
