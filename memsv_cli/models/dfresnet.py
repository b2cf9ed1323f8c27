"""DF-ResNet: Liu, Chen, Qian, "DF-ResNet: Boosting Speaker Verification Performance with Depth-First
Design", Interspeech 2022 (WeSpeaker ``DFResNet``; the same blocks as WeSpeaker's ``gemini_dfresnet.py``).

A 3x3 stem, then four stages, each one *separate* down-sampling layer (3x3 conv + BN, no skip) followed
by inverted-bottleneck blocks (1x1 expand x4, depthwise 3x3, 1x1 project, identity skip). Widths
``w, w, 2w, 4w, 8w`` (w = 32); the first down-sampling layer keeps the resolution (32 -> 32), the other
three stride by 2 over frequency and time, like the thin ResNet. The depth in the name counts 3 convs per
block plus stem and embedding layer, not the down-sampling layers: DF-ResNet56 = 3 * (3+3+9+3) + 2.
"""

from __future__ import annotations

from torch import nn

from memsv_cli.models.units import Unit, conv_bn

#: depth -> blocks per stage.
DFRESNET_CONFIGS: dict[int, tuple[int, int, int, int]] = {
    56: (3, 3, 9, 3),
    110: (3, 3, 27, 3),
    179: (3, 8, 45, 3),
    233: (3, 8, 63, 3),
}


def inverted_bottleneck(dim: int) -> Unit:
    """1x1 (dim -> 4 dim), depthwise 3x3, 1x1 (4 dim -> dim); identity skip and post-add ReLU."""
    hidden = 4 * dim
    branch = nn.Sequential(
        *conv_bn(dim, hidden, 1),
        nn.ReLU(),
        *conv_bn(hidden, hidden, 3, groups=hidden),
        nn.ReLU(),
        *conv_bn(hidden, dim, 1),
    )
    return Unit(branch, dim, dim)


def downsample_layer(in_ch: int, out_ch: int, stride: int) -> Unit:
    """3x3 conv (strided) + BN, no skip path and no activation, as in the paper."""
    return Unit(
        nn.Sequential(*conv_bn(in_ch, out_ch, 3, stride)), in_ch, out_ch, (stride, stride), residual=False
    )


def dfresnet_parts(depth: int, base_width: int = 32) -> tuple[nn.Module, list[Unit]]:
    """Stem and units (down-sampling layers and blocks, in order) of DF-ResNet<depth>."""
    dims = [base_width, base_width, 2 * base_width, 4 * base_width, 8 * base_width]
    stem = nn.Sequential(*conv_bn(1, dims[0], 3), nn.ReLU())
    units: list[Unit] = []
    for stage, n_blocks in enumerate(DFRESNET_CONFIGS[depth]):
        units.append(downsample_layer(dims[stage], dims[stage + 1], 1 if stage == 0 else 2))
        units.extend(inverted_bottleneck(dims[stage + 1]) for _ in range(n_blocks))
    return stem, units
