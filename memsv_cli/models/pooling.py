"""Temporal statistics pooling (TSTP), as in WeSpeaker's ``pooling_layers.TSTP``."""

from __future__ import annotations

import torch
from torch import nn


class TSTP(nn.Module):
    """Mean and standard deviation over time, concatenated.

    Input ``(batch, channels, freq, frames)`` (or ``(batch, dims, frames)``); output
    ``(batch, 2 * channels * freq)``: all means first, then all standard deviations, as WeSpeaker.
    The variance is unbiased like WeSpeaker's; with a single frame it falls back to the biased one
    (otherwise a one-frame input would give NaN).
    """

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = 2 * in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1, -2)  # (batch, channels * freq, frames)
        mean = x.mean(dim=-1)
        var = torch.var(x, dim=-1, correction=1 if x.shape[-1] > 1 else 0)
        std = torch.sqrt(var + 1e-7)
        return torch.cat((mean, std), dim=1)
