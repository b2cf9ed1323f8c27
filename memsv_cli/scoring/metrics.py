"""Detection metrics for speaker verification: EER and normalised minDCF (NIST SRE definitions).

A trial is accepted when its score is ``>= threshold``. Both metrics are read off the same operating
points, computed by one sort of all scores: one point per *distinct* score value (tied scores move
together, as a threshold cannot separate them) plus the point that rejects everything.

- EER: where the miss rate P_miss and false-alarm rate P_fa cross. When they cross exactly at an
  operating point that point's rate is the EER; otherwise the two operating points around the crossing
  are joined by a straight line (as WeSpeaker and Kaldi's ``compute-eer`` effectively do) and the
  crossing of that line with P_miss = P_fa is returned.
- minDCF: ``min_t C_miss P_tar P_miss(t) + C_fa (1 - P_tar) P_fa(t)``, divided by the cost of the best
  trivial system ``min(C_miss P_tar, C_fa (1 - P_tar))`` (NIST SRE normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from memsv_cli.errors import MemsvError


@dataclass(frozen=True)
class ErrorRates:
    """Operating points, ordered by decreasing threshold (the first rejects every trial).

    Attributes:
        thresholds: ``(K + 1,)`` float64; ``thresholds[0] = +inf``, then the distinct scores, decreasing.
        p_miss: ``(K + 1,)`` fraction of targets scored below the threshold (starts at 1, ends at 0).
        p_fa: ``(K + 1,)`` fraction of non-targets scored at or above it (starts at 0, ends at 1).
    """

    thresholds: np.ndarray
    p_miss: np.ndarray
    p_fa: np.ndarray


def _as_arrays(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) differ in length")
    if y.dtype != np.bool_:
        if not np.isin(y, (0, 1)).all():
            raise ValueError("labels must be boolean or 0/1")
        y = y.astype(np.bool_)
    if not np.isfinite(s).all():
        raise MemsvError(f"{int((~np.isfinite(s)).sum())} score(s) are NaN or infinite")
    n_tar = int(y.sum())
    if n_tar == 0 or n_tar == y.size:
        kind = "no target" if n_tar == 0 else "no non-target"
        raise MemsvError(f"{kind} trials among {y.size}: EER and minDCF need both kinds")
    return s, y


def compute_error_rates(scores: ArrayLike, labels: ArrayLike) -> ErrorRates:
    """Miss and false-alarm rates at every distinct threshold, with one sort.

    Args:
        scores: ``(N,)`` trial scores (higher means more likely the same speaker).
        labels: ``(N,)`` bool or 0/1, True for target trials.

    Raises:
        MemsvError: only one kind of trial present, or a non-finite score.
    """
    s, y = _as_arrays(scores, labels)
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    tar_cum = np.cumsum(y[order], dtype=np.int64)
    # The last index of each run of tied scores: a threshold there accepts the whole run.
    last = np.flatnonzero(np.append(s_sorted[1:] != s_sorted[:-1], True))
    n_tar = int(tar_cum[-1])
    n_non = s.size - n_tar
    tp = np.concatenate(([0], tar_cum[last]))
    fp = np.concatenate(([0], last + 1 - tar_cum[last]))
    return ErrorRates(
        thresholds=np.concatenate(([np.inf], s_sorted[last])),
        p_miss=(n_tar - tp) / n_tar,
        p_fa=fp / n_non,
    )


def eer_from_rates(rates: ErrorRates) -> tuple[float, float]:
    """EER (fraction) and its threshold: the largest distinct score ``t`` at which accepting
    ``score >= t`` gives P_miss(t) <= P_fa(t), i.e. the first operating point at or past the crossing
    (P_miss = P_fa exactly there, or the crossing lies on the segment just before it)."""
    diff = rates.p_miss - rates.p_fa  # decreasing from 1 to -1
    # First point where the miss rate no longer exceeds the false-alarm rate.
    i = int(np.argmax(diff <= 0))
    if diff[i] == 0:  # i > 0 always: the first point has p_miss = 1, p_fa = 0
        return float(rates.p_fa[i]), float(rates.thresholds[i])
    # Crossing lies on the segment between points i - 1 (diff > 0) and i (diff < 0).
    t = diff[i - 1] / (diff[i - 1] - diff[i])
    eer = rates.p_fa[i - 1] + t * (rates.p_fa[i] - rates.p_fa[i - 1])
    return float(eer), float(rates.thresholds[i])


def min_dcf_from_rates(
    rates: ErrorRates, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0
) -> tuple[float, float]:
    """Normalised minDCF and the threshold that attains it (``+inf`` means reject all)."""
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must lie in (0, 1), got {p_target}")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError("c_miss and c_fa must be positive")
    dcf = c_miss * p_target * rates.p_miss + c_fa * (1.0 - p_target) * rates.p_fa
    i = int(np.argmin(dcf))
    norm = min(c_miss * p_target, c_fa * (1.0 - p_target))
    return float(dcf[i] / norm), float(rates.thresholds[i])


def compute_eer(scores: ArrayLike, labels: ArrayLike) -> float:
    """Equal error rate as a fraction (0.01 = 1 %).

    Args:
        scores: ``(N,)`` trial scores.
        labels: ``(N,)`` bool or 0/1, True for target trials.
    """
    return eer_from_rates(compute_error_rates(scores, labels))[0]


def compute_min_dcf(
    scores: ArrayLike, labels: ArrayLike, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0
) -> float:
    """Normalised minimum detection cost (NIST SRE), e.g. ``p_target=0.01``, ``C_miss = C_fa = 1``."""
    return min_dcf_from_rates(compute_error_rates(scores, labels), p_target, c_miss, c_fa)[0]


@dataclass(frozen=True)
class Metrics:
    """The figures reported for one labelled trial list (EER in percent, as papers quote it).

    Thresholds are on the scale of the scores (accept a trial when ``score >= threshold``):
    ``eer_threshold`` is the largest distinct score at which P_miss <= P_fa (the first operating point at
    or past the EER crossing, see :func:`eer_from_rates`); ``min_dcf_*_threshold`` the largest one that
    attains the minimum cost, ``+inf`` when rejecting every trial is (one of) the cheapest.
    """

    num_trials: int
    num_target: int
    eer_percent: float
    eer_threshold: float
    min_dcf_01: float
    min_dcf_05: float
    min_dcf_01_threshold: float
    min_dcf_05_threshold: float


def compute_metrics(scores: ArrayLike, labels: ArrayLike) -> tuple[Metrics, ErrorRates]:
    """EER and minDCF at p_target 0.01 and 0.05 (C_miss = C_fa = 1) from one sort."""
    rates = compute_error_rates(scores, labels)
    eer, thr = eer_from_rates(rates)
    dcf_01, thr_01 = min_dcf_from_rates(rates, 0.01)
    dcf_05, thr_05 = min_dcf_from_rates(rates, 0.05)
    y = np.asarray(labels).reshape(-1)
    return Metrics(
        num_trials=int(y.size),
        num_target=int(np.count_nonzero(y)),
        eer_percent=100.0 * eer,
        eer_threshold=thr,
        min_dcf_01=dcf_01,
        min_dcf_05=dcf_05,
        min_dcf_01_threshold=thr_01,
        min_dcf_05_threshold=thr_05,
    ), rates
