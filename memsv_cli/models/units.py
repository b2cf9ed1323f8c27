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


#: CPU convolutions with at most this many input and output channels train in channels_last (see
#: :class:`Conv2d`); above it the layout conversions cost more than they save (measured, docs/design.md)
THIN_CHANNELS = 8


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, same function) that trains thin convolutions faster on CPU.

    oneDNN's backward of a convolution with few channels is slow in the NCHW layout: for 4 channels on
    80 x 100 maps about 6x slower than in channels_last (docs/design.md, "Thin convolutions on CPU").
    The reduced-width models of the demo and the tests are made of such layers. So on CPU in training
    mode, with or without gradients (a recomputation must repeat the forward bit for bit), convolutions
    of at most :data:`THIN_CHANNELS` channels in and out run through :class:`_ChannelsLastConv`: NCHW in
    and out, channels_last inside. It saves the same tensors for backward as ``nn.Conv2d`` (input and
    weight), so cached activations are unchanged; its layout copies are transient. Strided 1x1
    convolutions keep the NCHW path: their channels_last backward crashes in torch 2.13's oneDNN
    (4 -> 8 channels).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._thin_training(x):
            return super().forward(x)
        return _ChannelsLastConv.apply(x, self.weight, self.stride, self.padding, self.groups)

    def _thin_training(self, x: torch.Tensor) -> bool:
        return (
            self.training  # the same path with and without grad: recomputation must match the forward
            and x.device.type == "cpu"
            and not torch.jit.is_scripting()
            and not torch.jit.is_tracing()
            and not torch.is_autocast_enabled("cpu")  # autocast casts inside F.conv2d; keep its path
            and max(self.in_channels, self.out_channels) <= THIN_CHANNELS
            and (self.kernel_size != (1, 1) or self.stride == (1, 1))
            and self.bias is None
            and self.padding_mode == "zeros"
            and self.dilation == (1, 1)
        )


class _ChannelsLastConv(torch.autograd.Function):
    """``F.conv2d(x, w)`` (no bias) computed in channels_last; saves ``x`` and ``w`` as they are."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, groups):  # noqa: ANN001, ANN205 - autograd protocol
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, groups)
        cl = torch.channels_last
        x_cl, weight_cl = x.contiguous(memory_format=cl), weight.contiguous(memory_format=cl)
        return F.conv2d(x_cl, weight_cl, None, stride, padding, 1, groups).contiguous()

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205 - autograd protocol
        x, weight = ctx.saved_tensors
        stride, padding, groups = ctx.conv
        cl = torch.channels_last
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad.contiguous(memory_format=cl), x.contiguous(memory_format=cl),
            weight.contiguous(memory_format=cl), None, stride, padding, (1, 1), False, (0, 0), groups,
            (ctx.needs_input_grad[0], ctx.needs_input_grad[1], False),
        )  # fmt: skip
        grad_x = grad_x.contiguous() if grad_x is not None else None
        grad_w = grad_w.contiguous() if grad_w is not None else None
        return grad_x, grad_w, None, None, None


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int | tuple[int, int] = 1, groups: int = 1) -> list:
    """``[Conv2d (no bias, 'same' padding), BatchNorm2d]`` as a list to splice into a Sequential."""
    conv = Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(out_ch)]


def projection(in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    """WeSpeaker's 1x1 conv + BN skip projection, or None when the identity fits."""
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(*conv_bn(in_ch, out_ch, 1, stride))
