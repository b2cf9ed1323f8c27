"""Stem + units + TSTP + embedding layer, assembled as the vanilla, Type I or Type II network.

``variant`` (PAPER.md, decisions for the reversible models):

- ``"vanilla"``: the units as they are (WeSpeaker).
- ``"rev"`` (Type I, partially reversible): every run of consecutive shape-preserving residual blocks
  becomes one :class:`ReversibleSequence` of half-steps; stem, stage transitions and DF-ResNet
  down-sampling layers stay ordinary (non-reversible) layers, but are :class:`Recomputed` in backward
  from their cached input, so what is cached grows with the number of stages only. Same parameters.
- ``"fullrev"`` (Type II, fully reversible): every unit's branch becomes a half-step of one chain
  (transitions through space-to-depth); a transition's shortcut projection is kept inside its f
  (``branch(x) + proj(x)``), so the parameters equal the vanilla model's. The stem is
  :class:`Recomputed` (caches only the input features). Input time and frequency are
  zero-padded to a multiple of the total stride (8 for these models) so space-to-depth divides evenly;
  the output frame count equals the vanilla one, ``ceil(frames / 8)``, so no output frame is made only
  of padding.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from memsv_cli.errors import MemsvError
from memsv_cli.models.checkpointed import CheckpointedSequential
from memsv_cli.models.chunked import PER_SAMPLE
from memsv_cli.models.pooling import TSTP
from memsv_cli.models.reversible import HalfStep, Recomputed, ReversibleChain, ReversibleSequence
from memsv_cli.models.units import Conv2d, ProjectedBranch, Unit

VARIANTS = ("vanilla", "rev", "fullrev")
#: module types whose forward acts on each sample on its own: torch's layers plus this package's
#: containers, whose children are checked one by one (which branches may be recomputed in micro-batches)
MODEL_PER_SAMPLE = (*PER_SAMPLE, Conv2d, ProjectedBranch, Unit)


def scaled_chunks(units: list[Unit], stem_ch: int, chunks: int) -> tuple[int, list[int]]:
    """Micro-batches for the stem and for each unit under ``recompute_chunks=chunks``.

    ``chunks`` goes to the layers with the largest feature maps; the others get
    ``ceil(chunks * size / largest)``, at least 1, where a unit's size is the per-sample element count
    of its larger end, ``channels / (frequency stride * time stride so far)`` (the stem: its output).
    Why: the recomputation of one layer is what chunking shrinks, and it scales with the layer's maps;
    the step's peak sits at the largest ones. Chunking small maps as finely buys no memory and costs
    time: for rev_dfresnet233 at K = 4 this rule and a uniform K give the same peak (4.34 GiB), and
    the deep, low-resolution stages that hold most of the compute run unchunked (docs/results.md).
    """
    area = 1
    sizes: list[Fraction] = []
    for unit in units:
        size_in = Fraction(unit.in_ch, area)
        area *= unit.stride[0] * unit.stride[1]
        sizes.append(max(size_in, Fraction(unit.out_ch, area)))
    largest = max(Fraction(stem_ch), *sizes)

    def k(size: Fraction) -> int:
        return max(1, math.ceil(chunks * size / largest))

    return k(Fraction(stem_ch)), [k(size) for size in sizes]


def _type1_body(units: list[Unit], reversible_backward: bool, chunks: list[int]) -> nn.Sequential:
    body: list[nn.Module] = []
    run: list[tuple[Unit, int]] = []

    def flush() -> None:
        if run:
            c = run[0][0].in_ch
            steps = [HalfStep(u.branch, c, c, c) for u, _ in run]
            chain = ReversibleChain(steps, reversible_backward, [k for _, k in run], MODEL_PER_SAMPLE)
            body.append(ReversibleSequence(chain, c))
            run.clear()

    for unit, k in zip(units, chunks, strict=True):
        if unit.shape_preserving:
            run.append((unit, k))
        else:
            flush()
            body.append(Recomputed(unit, reversible_backward, k, MODEL_PER_SAMPLE))
    flush()
    return nn.Sequential(*body)


def _type2_body(
    units: list[Unit], stem_ch: int, reversible_backward: bool, chunks: list[int]
) -> ReversibleSequence:
    steps: list[HalfStep] = []
    stream = stem_ch
    for unit in units:
        f = unit.branch if unit.shortcut is None else ProjectedBranch(unit.branch, unit.shortcut)
        step = HalfStep(f, unit.in_ch, unit.out_ch, stream, unit.stride)
        steps.append(step)
        stream = step.stream_out
    chain = ReversibleChain(steps, reversible_backward, chunks, MODEL_PER_SAMPLE)
    return ReversibleSequence(chain, units[-1].out_ch)


class SpeakerNet(nn.Module):
    """Embedding extractor: ``(batch, frames, feat_dim)`` fbank -> ``(batch, embed_dim)``.

    Args:
        stem: ``(B, 1, F, T) -> (B, stem_ch, F, T)``.
        units: the network's blocks and layers in order (see :class:`Unit`).
        stem_ch: stem output channels.
        feat_dim: fbank dimensions F.
        embed_dim: embedding size.
        variant: ``"vanilla"``, ``"rev"`` or ``"fullrev"``.
        reversible_backward: for ``rev``/``fullrev``: memory-saving backward (True) or plain autograd
            through the identical function (False).
        recompute_chunks: for ``rev``/``fullrev``: recompute the reversible steps and recomputed layers
            of the largest feature maps over this many micro-batches in backward, smaller maps over
            proportionally fewer (:func:`scaled_chunks`; exact, :mod:`memsv_cli.models.chunked`); 1 = off.
        checkpoint_blocks: for ``vanilla``: run each unit under ``torch.utils.checkpoint`` in training
            (:mod:`memsv_cli.models.checkpointed`); same function and parameter names.
    """

    def __init__(
        self,
        stem: nn.Module,
        units: list[Unit],
        stem_ch: int,
        feat_dim: int,
        embed_dim: int,
        variant: str = "vanilla",
        reversible_backward: bool = True,
        recompute_chunks: int = 1,
        checkpoint_blocks: bool = False,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
        if checkpoint_blocks and variant != "vanilla":
            raise ValueError("checkpoint_blocks applies to the vanilla variant only")
        self.variant, self.feat_dim, self.embed_dim = variant, feat_dim, embed_dim
        self.freq_stride = math.prod(u.stride[0] for u in units)
        self.time_stride = math.prod(u.stride[1] for u in units)
        out_freq = feat_dim
        for unit in units:  # 'same'-padded strided convs give ceil(n / s)
            out_freq = -(-out_freq // unit.stride[0])
        stem_chunks, unit_chunks = scaled_chunks(units, stem_ch, recompute_chunks)
        if variant != "vanilla":
            stem = Recomputed(stem, reversible_backward, stem_chunks, MODEL_PER_SAMPLE)
        self.stem = stem
        if variant == "vanilla":
            self.body: nn.Module = (CheckpointedSequential if checkpoint_blocks else nn.Sequential)(*units)
        elif variant == "rev":
            self.body = _type1_body(units, reversible_backward, unit_chunks)
        else:
            self.body = _type2_body(units, stem_ch, reversible_backward, unit_chunks)
        self.pool = TSTP(units[-1].out_ch * out_freq)
        self.embedding = nn.Linear(self.pool.out_dim, embed_dim)

    @property
    def reversible_backward(self) -> bool | None:
        """The backward mode of the reversible chains (None for a vanilla model); settable."""
        chains = [m for m in self.modules() if isinstance(m, (ReversibleChain, Recomputed))]
        return chains[0].reversible_backward if chains else None

    @reversible_backward.setter
    def reversible_backward(self, value: bool) -> None:
        for m in self.modules():
            if isinstance(m, (ReversibleChain, Recomputed)):
                m.reversible_backward = bool(value)

    def frame_features(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, T, F)`` -> last feature map ``(B, C, ceil(F/8), ceil(T/8))`` before pooling."""
        if feats.dim() != 3 or feats.shape[-1] != self.feat_dim:
            raise MemsvError(
                f"model expects (batch, frames, {self.feat_dim}) features, got {tuple(feats.shape)}; "
                "check --feat-dim / the fbank config"
            )
        x = feats.transpose(1, 2).unsqueeze(1)  # (B, 1, F, T), a view: the caller's tensor is not touched
        if self.variant == "fullrev":
            pad_f = -x.shape[2] % self.freq_stride
            pad_t = -x.shape[3] % self.time_stride
            if pad_f or pad_t:
                x = F.pad(x, (0, pad_t, 0, pad_f))
        return self.body(self.stem(x))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.pool(self.frame_features(feats)))
