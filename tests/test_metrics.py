"""EER and minDCF: hand-computed cases (ties included) and an independent check against sklearn's ROC."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from memsv_cli.errors import MemsvError
from memsv_cli.scoring import compute_eer, compute_error_rates, compute_min_dcf


def test_eer_is_zero_for_perfectly_separated_scores() -> None:
    assert compute_eer([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 0.0


def test_eer_is_one_for_perfectly_inverted_scores() -> None:
    assert compute_eer([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 1.0


def test_eer_at_exact_crossing_point() -> None:
    # Targets 0.9, 0.6, 0.3 / non-targets 0.7, 0.4, 0.1. Accepting >= 0.6: one non-target of three
    # accepted and one target of three missed, so P_miss = P_fa = 1/3 exactly.
    scores = [0.9, 0.6, 0.3, 0.7, 0.4, 0.1]
    labels = [1, 1, 1, 0, 0, 0]
    assert compute_eer(scores, labels) == pytest.approx(1 / 3, abs=1e-12)


def test_eer_interpolates_between_operating_points() -> None:
    # Targets 0.9, 0.3 / non-targets 0.6, 0.1. Points (P_fa, P_miss), decreasing threshold:
    # (0, 1) (0, .5) (.5, .5) (.5, 0) (1, 0): the curve meets P_miss = P_fa at the point (.5, .5).
    assert compute_eer([0.9, 0.3, 0.6, 0.1], [1, 1, 0, 0]) == pytest.approx(0.5)
    # Targets 0.9 / non-targets 0.95, 0.1, 0.2, 0.3: points (0,1) (.25,1) (.25,0) ...; the crossing
    # is on the vertical segment from (.25, 1) to (.25, 0): EER = 0.25.
    assert compute_eer([0.9, 0.95, 0.1, 0.2, 0.3], [1, 0, 0, 0, 0]) == pytest.approx(0.25)


def test_tied_target_and_nontarget_scores_move_together() -> None:
    # One threshold cannot separate tied scores: points (0, 1) and (1, 0) only, crossing at 0.5.
    assert compute_eer([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    rates = compute_error_rates([0.5, 0.5, 0.5, 0.2], [1, 0, 1, 0])
    np.testing.assert_array_equal(rates.thresholds, [np.inf, 0.5, 0.2])
    np.testing.assert_allclose(rates.p_miss, [1, 0, 0])
    np.testing.assert_allclose(rates.p_fa, [0, 0.5, 1])


def test_min_dcf_hand_computed() -> None:
    # Targets 0.9, 0.6, 0.3 / non-targets 0.7, 0.4, 0.1 (see above). With p_target = 0.5 the cost of
    # a point is 0.5 (P_miss + P_fa), normalised by 0.5: min over points of P_miss + P_fa = 2/3.
    scores = [0.9, 0.6, 0.3, 0.7, 0.4, 0.1]
    labels = [1, 1, 1, 0, 0, 0]
    assert compute_min_dcf(scores, labels, p_target=0.5) == pytest.approx(2 / 3)
    # p_target = 0.01: a false alarm costs 0.99, a miss 0.01; rejecting everything costs 0.01,
    # normalised 1.0; accepting only 0.9 costs 0.01 * 2/3 / 0.01 = 2/3.
    assert compute_min_dcf(scores, labels, p_target=0.01) == pytest.approx(2 / 3)
    # Unequal costs: C_miss = 10 at p_target 0.01 -> normalisation min(0.1, 0.99) = 0.1.
    got = compute_min_dcf(scores, labels, p_target=0.01, c_miss=10, c_fa=1)
    assert got == pytest.approx(min(1.0, (0.1 * 2 / 3) / 0.1, (0.1 * 1 / 3 + 0.99 / 3) / 0.1))


def test_min_dcf_never_exceeds_one() -> None:
    # The reject-all point is always available: normalised cost 1 when C_miss P_tar is the smaller cost.
    assert compute_min_dcf([0.1, 0.9], [1, 0], p_target=0.01) == pytest.approx(1.0)


def test_min_dcf_with_ties_cannot_split_a_tie() -> None:
    # All scores tied: only accept-all (P_fa = 1) or reject-all (P_miss = 1): min(1, 0.99/0.01) = 1.
    assert compute_min_dcf([0.3] * 4, [1, 0, 0, 1], p_target=0.01) == pytest.approx(1.0)
    # At p_target 0.5 both trivial points cost 0.5 -> normalised 1.
    assert compute_min_dcf([0.3] * 4, [1, 0, 0, 1], p_target=0.5) == pytest.approx(1.0)


def _sklearn_rates(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return fpr, 1 - tpr


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_min_dcf_matches_sklearn_roc(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(5000) < 0.1
    # Rounded scores create many ties, the case where a careless implementation splits them.
    scores = np.round(rng.normal(size=5000) + 2.0 * labels, 2)
    fpr, fnr = _sklearn_rates(scores, labels)
    for p in (0.01, 0.05, 0.3):
        want = np.min(p * fnr + (1 - p) * fpr) / min(p, 1 - p)
        assert compute_min_dcf(scores, labels, p_target=p) == pytest.approx(want, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_eer_matches_sklearn_roc_where_it_crosses_exactly(seed: int) -> None:
    # Build lists where some ROC point has P_miss == P_fa exactly: n_tar == n_non and the k-th best
    # threshold accepts n - k targets and k non-targets.
    rng = np.random.default_rng(seed)
    n = 400
    tar = np.sort(rng.normal(1.5, 1.0, n))
    non = np.sort(rng.normal(0.0, 1.0, n))
    scores = np.concatenate([tar, non])
    labels = np.concatenate([np.ones(n, bool), np.zeros(n, bool)])
    fpr, fnr = _sklearn_rates(scores, labels)
    exact = np.flatnonzero(np.abs(fpr - fnr) < 1e-15)
    assert exact.size > 0, "construction must give an exact crossing"
    assert compute_eer(scores, labels) == pytest.approx(fpr[exact[0]], abs=1e-6)


def test_eer_random_scores_lies_between_sklearn_neighbours() -> None:
    rng = np.random.default_rng(7)
    labels = rng.random(20000) < 0.05
    scores = rng.normal(size=20000) + 2.5 * labels
    fpr, fnr = _sklearn_rates(scores, labels)
    i = np.argmax(fnr - fpr <= 0)
    eer = compute_eer(scores, labels)
    lo, hi = sorted([fpr[i - 1], fpr[i]])
    assert lo - 1e-12 <= eer <= hi + 1e-12
    lo, hi = sorted([fnr[i - 1], fnr[i]])
    assert lo - 1e-12 <= eer <= hi + 1e-12


def test_metrics_are_invariant_to_trial_order() -> None:
    rng = np.random.default_rng(3)
    labels = rng.random(3000) < 0.2
    scores = np.round(rng.normal(size=3000) + labels, 1)
    perm = rng.permutation(3000)
    assert compute_eer(scores, labels) == compute_eer(scores[perm], labels[perm])
    assert compute_min_dcf(scores, labels) == compute_min_dcf(scores[perm], labels[perm])


def test_single_label_list_raises_clear_error() -> None:
    with pytest.raises(MemsvError, match="no non-target"):
        compute_eer([0.1, 0.2], [1, 1])
    with pytest.raises(MemsvError, match="no target"):
        compute_min_dcf([0.1, 0.2], [0, 0])


def test_non_finite_scores_raise() -> None:
    with pytest.raises(MemsvError, match="NaN"):
        compute_eer([0.1, np.nan], [1, 0])


def test_bad_p_target_raises() -> None:
    with pytest.raises(ValueError, match="p_target"):
        compute_min_dcf([0.1, 0.2], [1, 0], p_target=1.0)


def _nist_sre_eer_min_dcf(scores: np.ndarray, labels: np.ndarray, p_target: float) -> tuple[float, float]:
    """The NIST SRE scoring-tool formulation (one operating point per trial, ascending sort), as used
    by WeSpeaker and 3D-Speaker; independent of memsv's tie-aware, descending implementation."""
    order = np.argsort(scores, kind="mergesort")
    y = labels[order]
    fnr = np.cumsum(y) / y.sum()
    fpr = 1 - np.cumsum(~y) / (~y).sum()
    diff = fnr - fpr
    x1 = np.flatnonzero(diff >= 0)[0]
    x2 = np.flatnonzero(diff < 0)[-1]
    a = (fnr[x1] - fpr[x1]) / (fpr[x2] - fpr[x1] - (fnr[x2] - fnr[x1]))
    eer = fnr[x1] + a * (fnr[x2] - fnr[x1])
    # Add the accept-all point (fnr 0, fpr 1) that the per-trial curve lacks.
    dcf = np.min(np.append(p_target * fnr + (1 - p_target) * fpr, 1 - p_target))
    return float(eer), float(dcf / min(p_target, 1 - p_target))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_nist_sre_formulation_without_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(20000) < 0.08
    scores = rng.normal(size=20000) + 2.0 * labels  # continuous: no ties
    for p in (0.01, 0.05):
        eer, dcf = _nist_sre_eer_min_dcf(scores, labels, p)
        assert compute_eer(scores, labels) == pytest.approx(eer, abs=1e-12)
        assert compute_min_dcf(scores, labels, p_target=p) == pytest.approx(dcf, abs=1e-12)
