"""The unit every model here is built from: one residual block or one plain down-sampling layer.

A model is a stem followed by a list of :class:`Unit`. The vanilla network runs the units as they are;
the reversible variants (see :mod:`memsv_cli.models.backbone`) reuse each unit's ``branch`` (its
residual function f) unchanged as one reversible half-step, so parameter counts carry over.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Unit(nn.Module):
    """``y = relu(branch(x) + shortcut(x))`` for a residual block, ``y = branch(x)`` for a plain layer.

    Args:
        branch: the residual function f, ``(B, in_ch, H, W) -> (B, out_ch, H/sf, W/st)``.
        shortcut: projection for the skip path (1x1 conv + BN), or None for the identity.
        residual: False for a plain layer (DF-ResNet down-sampling), which has no skip path at all.
        in_ch, out_ch: channels in and out.
        stride: ``(sf, st)``, the stride over (frequency, time).
    """

    def __init__(
        self,
        branch: nn.Module,
        in_ch: int,
        out_ch: int,
        stride: tuple[int, int] = (1, 1),
        shortcut: nn.Module | None = None,
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.branch = branch
        self.shortcut = shortcut
        self.residual = residual
        self.in_ch, self.out_ch, self.stride = in_ch, out_ch, tuple(stride)

    @property
    def shape_preserving(self) -> bool:
        """True for a residual block whose input and output shapes agree (identity skip)."""
        return self.residual and self.shortcut is None and self.stride == (1, 1) and self.in_ch == self.out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.branch(x)
        if not self.residual:
            return y
        skip = x if self.shortcut is None else self.shortcut(x)
        return F.relu(y + skip)


class ProjectedBranch(nn.Module):
    """``branch(x) + shortcut(x)``: a transition block's whole pre-activation output, used as the
    residual function f of a Type II transition half-step so the projection's weights are kept."""

    def __init__(self, branch: nn.Module, shortcut: nn.Module) -> None:
        super().__init__()
        self.branch, self.shortcut = branch, shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(x) + self.shortcut(x)


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int | tuple[int, int] = 1, groups: int = 1) -> list:
    """``[Conv2d (no bias, 'same' padding), BatchNorm2d]`` as a list to splice into a Sequential."""
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(out_ch)]


def projection(in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    """WeSpeaker's 1x1 conv + BN skip projection, or None when the identity fits."""
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(*conv_bn(in_ch, out_ch, 1, stride))
