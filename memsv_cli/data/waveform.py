"""The online chain that turns audio into a training chunk (``data.type`` raw and shard), WeSpeaker's order:

    speed perturbation (0.9 / 1.0 / 1.1, a new speaker class each) -> random crop -> with aug_prob
    reverberation or additive noise -> fbank with dither -> per-chunk mean normalisation -> SpecAugment

The crop is taken *before* resampling, of exactly the length that resamples to the chunk
(:func:`memsv_cli.data.online.crop_length`): the same distribution as perturbing the whole utterance
and cropping after, at a fraction of the cost. Every random choice comes from one generator per sample,
seeded from ``(seed, epoch, rank, sample)`` by the caller, so a resumed epoch repeats it exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from memsv_cli.data import online
from memsv_cli.data.dataset import SpecAugment
from memsv_cli.data.fbank import FbankConfig

SPEEDS = online.SPEED_FACTORS  # index 0 = unperturbed; label + num_speakers * index (WeSpeaker's order)

#: ``read(num_samples, rng) -> (num_samples,) float32``: a random crop of the utterance's audio
Reader = Callable[[int, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class WaveformChain:
    """Audio -> ``(chunk (chunk_frames, F) float32 tensor, label)``; see the module docstring.

    Args:
        chunk_frames: frames per chunk (10 ms each).
        num_speakers: speakers of the training set (C); speed index i adds ``i * C`` to the label.
        fbank: the feature options (those of ``extract-fbank``, so scoring sees the same features).
        dither: fbank dither (int16 units; WeSpeaker 1.0), 0 for none.
        speed_perturb: draw the speed from :data:`SPEEDS`.
        aug_prob: probability of reverberation or additive noise.
        sources: the RIR / noise pools (None: no augmentation).
        spec_aug: SpecAugment after mean normalisation, or None.
    """

    chunk_frames: int
    num_speakers: int
    fbank: FbankConfig
    dither: float = 1.0
    speed_perturb: bool = False
    aug_prob: float = 0.0
    sources: online.AugmentSources | None = None
    spec_aug: SpecAugment | None = None

    @property
    def num_samples(self) -> int:
        """Samples of a chunk (200 frames of 25 / 10 ms at 16 kHz: 32,240)."""
        return online.samples_for_frames(self.chunk_frames, self.fbank)

    @property
    def num_classes(self) -> int:
        return self.num_speakers * (len(SPEEDS) if self.speed_perturb else 1)

    def __call__(self, read: Reader, label: int, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        """Draws, in order: speed, crop start, augmentation, dither, SpecAugment."""
        speed, factor = online.choose_speed(rng) if self.speed_perturb else (0, 1.0)
        rate, num = self.fbank.sample_rate, self.num_samples
        wave = read(online.crop_length(num, factor), rng)
        wave = online.speed_perturb(wave, factor, rate)[:num] if factor != 1.0 else wave
        if self.sources is not None and self.aug_prob > 0:
            wave, _ = online.augment(wave, self.sources, rng, aug_prob=self.aug_prob)
        feats = online.cmn(online.fbank(wave, self.fbank, self.dither, rng))
        if self.spec_aug is not None:
            feats = self.spec_aug(feats, rng)
        return torch.from_numpy(
            np.ascontiguousarray(feats, dtype=np.float32)
        ), label + self.num_speakers * speed
