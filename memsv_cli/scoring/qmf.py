"""Quality-measure function (QMF) calibration, as WeSpeaker's ``score_calibration.py`` offers it.

A linear logistic regression maps each trial's score and *quality measures* to a calibrated
log-likelihood ratio (natural log). It is trained on a held-out labelled trial list, scored exactly as
the evaluated lists (same embeddings processing, normalisation and cohort), and then applied to them.
Because the quality measures shift the decision threshold trial by trial (short recordings, or
recordings that resemble many cohort speakers, score differently), QMF can lower the EER and minDCF of
a pooled list, not only calibrate it.

Features of a trial (each pair ordered as the smaller and the larger of the enrolment and test values,
so that a trial scores the same whichever side is enrolment; WeSpeaker orders them the same way):

- ``score``: the trial's score (cosine, or AS-norm / S-norm when normalised);
- ``min_log_duration``, ``max_log_duration``: natural log of the two recordings' durations, from
  ``utt2num_frames`` or ``utt2dur`` (the unit only shifts both by a constant, which the bias absorbs);
- ``min_imposter_mean``, ``max_imposter_mean``: the mean of each side's top-N cohort cosine scores
  (the AS-norm statistic; S-norm: of all cohort scores), available with ``--norm``.

Training weighs target and non-target trials equally (``class_weight="balanced"``), so it minimises
Cllr as WeSpeaker's calibration does; features are standardised and sklearn's default L2 (C = 1) keeps
the weights finite on a separable list while being negligible for lists of thousands of trials.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memsv_cli.data.kaldi_dir import read_table
from memsv_cli.errors import InputError, MemsvError
from memsv_cli.scoring.keys import KeyIndex

QMF_FILE = "qmf.json"


@dataclass
class Durations:
    """Durations of recordings, merged from one or more ``<key> <duration>`` files.

    Attributes:
        index: lookup of the keys (exact or modulo an audio extension).
        values: ``(M,)`` float64 durations, positive, in the files' unit (frames or seconds).
        source: the file names, for messages.
    """

    index: KeyIndex
    values: np.ndarray
    source: str


def read_durations(paths: Sequence[str | Path]) -> Durations:
    """Read ``utt2num_frames`` / ``utt2dur`` files (use one unit for all of them).

    Raises:
        InputError: missing or malformed file, a duration that is not a positive number, a key given
            two different durations.
    """
    merged: dict[str, float] = {}
    for path in map(Path, paths):
        for number, (key, text) in enumerate(read_table(path).items(), start=1):
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not (math.isfinite(value) and value > 0):
                raise InputError(path, f"duration of {key!r} is not a positive number: {text!r}", number)
            if merged.setdefault(key, value) != value:
                problem = f"{key!r} has duration {value:g} here but {merged[key]:g} in an earlier file"
                raise InputError(path, problem, number)
    source = ", ".join(str(p) for p in paths)
    if not merged:
        raise MemsvError(f"{source}: no durations")
    keys = list(merged)
    return Durations(KeyIndex(keys, source), np.fromiter(merged.values(), np.float64, len(keys)), source)


def quality_features(
    scores: np.ndarray, log_durations: np.ndarray | None, imposter_means: np.ndarray | None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """The QMF feature matrix of a list and the features' names (see the module docstring).

    Args:
        scores: ``(T,)`` trial scores.
        log_durations: ``(T, 2)`` log durations of enrolment and test, or None.
        imposter_means: ``(T, 2)`` mean top-N cohort scores of enrolment and test, or None.

    Returns:
        ``((T, F) float64 features, F names)``, ``1 <= F <= 5``.
    """
    columns = [np.asarray(scores, dtype=np.float64)]
    names = ["score"]
    for pair, what in ((log_durations, "log_duration"), (imposter_means, "imposter_mean")):
        if pair is not None:
            columns += [pair.min(axis=1), pair.max(axis=1)]
            names += [f"min_{what}", f"max_{what}"]
    return np.column_stack(columns), tuple(names)


def cllr(llr: np.ndarray, labels: np.ndarray) -> float:
    """Cllr in bits of natural-log likelihood ratios ``(T,)`` for labels ``(T,)`` bool (0 is perfect,
    1 is an uninformative system)."""
    tar, non = llr[labels], llr[~labels]
    return float((np.logaddexp(0, -tar).mean() + np.logaddexp(0, non).mean()) / (2 * math.log(2)))


@dataclass(frozen=True)
class QmfModel:
    """A trained QMF: ``llr = bias + features @ weights`` on the raw (unstandardised) features.

    Attributes:
        features: the ``F`` feature names, in column order.
        weights: ``(F,)`` float64.
        bias: the intercept.
        train: the training trial list (absolute path).
        train_cllr: Cllr of the training list before (the raw scores as LLRs) and after calibration.
    """

    features: tuple[str, ...]
    weights: np.ndarray
    bias: float
    train: str
    train_cllr: tuple[float, float]

    def apply(self, features: np.ndarray) -> np.ndarray:
        """``(T, F)`` features -> ``(T,)`` calibrated log-likelihood ratios."""
        return features @ self.weights + self.bias

    def to_json(self) -> dict[str, object]:
        """The record written to ``qmf.json`` beside the score files."""
        return {
            "version": 1,
            "train": self.train,
            "features": list(self.features),
            "weights": [float(w) for w in self.weights],
            "bias": self.bias,
            "train_cllr_raw": self.train_cllr[0],
            "train_cllr_calibrated": self.train_cllr[1],
        }


def fit_qmf(features: np.ndarray, labels: np.ndarray, names: Sequence[str], train: str | Path) -> QmfModel:
    """Train a QMF on a labelled list: ``(T, F)`` features (column 0 the score), ``(T,)`` bool labels.

    Raises:
        InputError: the list lacks target or non-target trials.
    """
    from sklearn.linear_model import LogisticRegression

    n_tar = int(labels.sum())
    if n_tar == 0 or n_tar == labels.size:
        raise InputError(train, "QMF training needs both target and non-target trials")
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale == 0] = 1.0  # a constant feature carries nothing; leave it unscaled
    regression = LogisticRegression(class_weight="balanced", max_iter=1000)
    regression.fit((features - mean) / scale, labels)
    weights = regression.coef_[0] / scale
    bias = float(regression.intercept_[0] - weights @ mean)
    train_cllr = (cllr(features[:, 0], labels), cllr(features @ weights + bias, labels))
    return QmfModel(tuple(names), weights, bias, str(Path(train).absolute()), train_cllr)
