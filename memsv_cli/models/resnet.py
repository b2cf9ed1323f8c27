"""Thin ResNets for speaker embedding, WeSpeaker ``resnet.py`` shapes (Chung et al. / Zeinali et al.).

3x3 stem (no max-pool), four stages of widths ``w, 2w, 4w, 8w`` (w = 32 in WeSpeaker) with strides
1, 2, 2, 2 over both frequency and time, BasicBlock for ResNet18/34, Bottleneck (expansion 4) above.
"""

from __future__ import annotations

from torch import nn

from memsv_cli.models.units import Unit, conv_bn, projection

#: depth -> (block type, blocks per stage), as in WeSpeaker.
RESNET_CONFIGS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    221: ("bottleneck", (6, 16, 48, 3)),
    293: ("bottleneck", (10, 20, 64, 3)),
}


def basic_block(in_ch: int, planes: int, stride: int) -> Unit:
    """Two 3x3 convs; output ``planes`` channels."""
    branch = nn.Sequential(*conv_bn(in_ch, planes, 3, stride), nn.ReLU(), *conv_bn(planes, planes, 3))
    return Unit(branch, in_ch, planes, (stride, stride), projection(in_ch, planes, stride))


def bottleneck_block(in_ch: int, planes: int, stride: int) -> Unit:
    """1x1 reduce, 3x3 (strided), 1x1 expand to ``4 * planes`` channels."""
    out_ch = 4 * planes
    branch = nn.Sequential(
        *conv_bn(in_ch, planes, 1),
        nn.ReLU(),
        *conv_bn(planes, planes, 3, stride),
        nn.ReLU(),
        *conv_bn(planes, out_ch, 1),
    )
    return Unit(branch, in_ch, out_ch, (stride, stride), projection(in_ch, out_ch, stride))


def resnet_parts(depth: int, base_width: int = 32) -> tuple[nn.Module, list[Unit]]:
    """Stem and units of the thin ResNet of the given depth.

    Returns ``(stem, units)``: stem ``(B, 1, F, T) -> (B, w, F, T)``; units in order, the first unit of
    stages 2-4 striding by 2.
    """
    kind, blocks = RESNET_CONFIGS[depth]
    make = basic_block if kind == "basic" else bottleneck_block
    stem = nn.Sequential(*conv_bn(1, base_width, 3), nn.ReLU())
    units: list[Unit] = []
    in_ch = base_width
    for stage, n_blocks in enumerate(blocks):
        planes = base_width * 2**stage
        for i in range(n_blocks):
            unit = make(in_ch, planes, 2 if (stage > 0 and i == 0) else 1)
            units.append(unit)
            in_ch = unit.out_ch
    return stem, units
