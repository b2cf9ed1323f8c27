"""Offline Kaldi-style copies grouped under the utterance they were made from.

``memsv speed-perturb`` names its copies ``sp<F>-<utt>`` (new speakers ``sp<F>-<spk>``) and ``memsv
augment-data`` names them ``<utt>-<type>`` (type: reverb, noise, music, babble). An epoch is one pass
over the *original* utterances (WeSpeaker's semantics, whatever the augmentation): each original gives
one training sample per epoch, drawn from its group of copies by :meth:`VariantGroup.pick`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from memsv_cli.data.augment import AUG_TYPES

_SPEED = re.compile(r"^sp(\d+(?:\.\d+)?)-")
_AUG = re.compile(r"-(" + "|".join(AUG_TYPES) + r")$")


def split_variant(utt: str) -> tuple[str, str, str]:
    """``"sp0.9-id1/v/00001-reverb"`` -> (original ``"id1/v/00001"``, speed ``"sp0.9"``, aug ``"reverb"``);
    an original is ``(utt, "", "")``."""
    speed = _SPEED.match(utt)
    rest = utt[speed.end() :] if speed else utt
    aug = _AUG.search(rest)
    orig = rest[: aug.start()] if aug else rest
    return orig, (speed.group(0)[:-1] if speed else ""), (aug.group(1) if aug else "")


@dataclass
class VariantGroup:
    """The indices of one original utterance's copies: ``by_speed[speed][aug] = index`` (``""`` = none)."""

    original: str
    by_speed: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(len(v) for v in self.by_speed.values())

    def pick(self, rng: np.random.Generator, aug_prob: float) -> int:
        """One copy: a speed uniformly (as online speed perturbation draws 0.9 / 1.0 / 1.1), then with
        probability ``aug_prob`` one of its augmented copies (uniformly), else its clean copy.

        A group of one draws nothing from ``rng`` (a data dir without copies trains exactly as before)."""
        if self.size == 1:
            return next(iter(next(iter(self.by_speed.values())).values()))
        speeds = sorted(self.by_speed)
        copies = self.by_speed[speeds[int(rng.integers(len(speeds)))] if len(speeds) > 1 else speeds[0]]
        augmented = sorted(k for k in copies if k)
        if augmented and ("" not in copies or rng.random() < aug_prob):
            return copies[augmented[int(rng.integers(len(augmented)))]]
        return copies[""] if "" in copies else copies[augmented[0]]


def group_variants(utts: Sequence[str]) -> list[VariantGroup]:
    """Group ``utts`` (index = position) by original utterance, in order of first appearance."""
    groups: dict[str, VariantGroup] = {}
    for index, utt in enumerate(utts):
        orig, speed, aug = split_variant(utt)
        group = groups.setdefault(orig, VariantGroup(orig))
        group.by_speed.setdefault(speed, {})[aug] = index
    return list(groups.values())
